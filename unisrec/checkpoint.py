"""Model files without pickle: ``config.json`` (architecture + provenance) and safetensors weights.

A saved model folder holds::

    config.json         format, versions, ModelConfig, n_items, text dimension, text encoder, dataset
    model.safetensors   every parameter (strictly checked on load: names and shapes)
    items.safetensors   the (N, D) language-model item vectors (text modes)
    items.parquet       item_id, text of every item (for recommendations by id or text)
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from unisrec.atomic import atomic_write, atomic_write_json
from unisrec.baselines import build_model
from unisrec.config import LATER_ABSENT, LATER_MODEL_SETTINGS, ModelConfig, TextConfig, from_plain, to_plain
from unisrec.devices import resolve_device
from unisrec.errors import ConfigError, UnisrecError
from unisrec.json_io import read_json
from unisrec.model import SequenceModel
from unisrec.version import __version__

MODEL_FORMAT = "unisrec-model"
MODEL_FORMAT_VERSION = 1
SAVE_ID = "save_id"  # config.json's key, and the files' metadata key, of the save that wrote a model folder
SAVE_FILES = "save_files"  # config.json's list of the files that save wrote
# an ID table, the mean text vector (model.center_text) and the repeat offsets (model.repeat_bias) belong to one
# catalogue: never transferred
DOMAIN_SPECIFIC_PREFIX = ("item_id.", "text_center", "repeat_weight")


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file that unisrec saved; a truncated or edited file is an error naming it."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UnisrecError(f"{path}: damaged weights file ({first}); save or train the run again") from None


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Atomically write ``tensors`` (made contiguous, on CPU) as a safetensors file."""
    plain = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(plain, str(tmp), metadata=metadata))


def save_pretrained(
    model: SequenceModel,
    directory: str | Path,
    *,
    item_ids: list[str] | np.ndarray | None = None,
    item_texts: list[str] | None = None,
    extra: dict[str, Any] | None = None,
    save_text: bool = True,
) -> Path:
    """Write the model folder; ``extra`` (text encoder, dataset provenance, ...) goes into config.json.

    ``save_text=False`` leaves out the item text vectors (a pre-trained model has no catalogue of its own).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v for k, v in model.state_dict().items()}
    # one id for the files of this save, config.json written last: files of two saves (one killed midway, e.g. new
    # weights beside the old config) are found when loaded, never taken for one model (``check_same_save``)
    save_id = uuid.uuid4().hex
    written = ["model.safetensors"]  # the files of this save: only those are checked against its id
    save_tensors(directory / "model.safetensors", state, {"format": MODEL_FORMAT, SAVE_ID: save_id})
    if model.config.uses_text and save_text and model.n_items:
        save_tensors(directory / "items.safetensors", {"item_text": model.item_text}, {SAVE_ID: save_id})
        written.append("items.safetensors")
    if item_ids is not None:
        texts = item_texts if item_texts is not None else [""] * len(item_ids)
        if len(item_ids) != model.n_items or len(texts) != model.n_items:
            raise ValueError(f"{len(item_ids)} item ids / {len(texts)} texts for {model.n_items} items")
        table = pa.table({"item_id": [str(i) for i in item_ids], "text": list(texts)},
                         metadata={SAVE_ID: save_id})
        atomic_write(directory / "items.parquet", lambda tmp: pq.write_table(table, tmp))
        written.append("items.parquet")
    config = {
        "format": MODEL_FORMAT,
        "format_version": MODEL_FORMAT_VERSION,
        "unisrec_version": __version__,
        "model": to_plain(model.config),
        "n_items": model.n_items,
        "text_dim": model.text_dim,
        "parameters": {k: list(v.shape) for k, v in state.items()},
        **(extra or {}),
        SAVE_ID: save_id,
        SAVE_FILES: written,
    }
    atomic_write_json(directory / "config.json", config)
    return directory


def check_same_save(config: dict[str, Any], path: Path, found: str | None) -> None:
    """``path``'s save id (``found``: its metadata's) is the one config.json holds, where that save wrote it (a save
    without an item list leaves an earlier save's beside it, as before); folders saved before save ids were kept
    (none in config.json) and files written by other means (no id) are not checked."""
    expected, files = config.get(SAVE_ID), config.get(SAVE_FILES)
    wrote = not isinstance(files, list) or path.name in files
    if isinstance(expected, str) and wrote and found is not None and found != expected:
        raise UnisrecError(f"{path}: from another save than config.json beside it (a save interrupted midway, or "
                           "two writers at once): its files are not one model; save or train it again")


def _save_id_of(path: Path) -> str | None:
    """The save id in the metadata of a safetensors or parquet file unisrec wrote (None when it has none)."""
    if path.suffix == ".parquet":
        meta = pq.read_schema(path).metadata or {}
        value = meta.get(SAVE_ID.encode())
        return value.decode() if value is not None else None
    try:
        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}).get(SAVE_ID)
    except (SafetensorError, OSError):
        return None  # a damaged file: reading its tensors says so


def read_model_config(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / "config.json"
    if not path.exists():
        raise UnisrecError(f"{path}: missing; {directory} is not a saved unisrec model or run")
    try:
        config = read_json(path)
    except json.JSONDecodeError as exc:
        raise UnisrecError(f"{path}: not valid JSON ({exc})") from None
    if config.get("format") != MODEL_FORMAT:
        raise UnisrecError(f"{path}: not a unisrec model file (format {config.get('format')!r})")
    if config.get("format_version") != MODEL_FORMAT_VERSION:
        raise UnisrecError(
            f"{path}: model format version {config.get('format_version')!r} (written by unisrec "
            f"{config.get('unisrec_version')}); this unisrec {__version__} reads version {MODEL_FORMAT_VERSION}"
        )
    if isinstance(config.get("model"), dict):
        # a setting added after the model was saved reads as what earlier models had (no format version change)
        default = ModelConfig()
        earlier = {name: LATER_ABSENT.get(("model", name), getattr(default, name)) for name in LATER_MODEL_SETTINGS}
        config["model"] = {**earlier, **config["model"]}
    return config


def read_text_config(directory: str | Path) -> TextConfig | None:
    """The text settings a saved run's item vectors were made with (None: the run records none, e.g. ID-only).

    The one way to read them back from a run folder, for runs of every unisrec version (``TextConfig.from_saved``).
    """
    path = Path(directory) / "config.json"
    saved = read_model_config(directory).get("text_encoder") or {}
    if not isinstance(saved, dict) or "model" not in saved:
        return None
    try:
        return TextConfig.from_saved(saved)
    except ConfigError as exc:
        raise UnisrecError(f"{path}: {exc}") from None


def check_saved_config(config: dict[str, Any], path: Path) -> None:
    """Raise naming every key that config.json lacks, and every model setting unknown to or missing from it."""
    import dataclasses

    where = f"{path} (written by unisrec {config.get('unisrec_version')}; this is unisrec {__version__})"
    absent = [key for key in ("model", "n_items", "text_dim") if key not in config]
    if absent:
        raise UnisrecError(f"{where}: missing key(s) {', '.join(absent)}")
    if not isinstance(config["model"], dict):
        raise UnisrecError(f"{where}: 'model' must be a mapping of model settings")
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    problems = []
    unknown, missing = sorted(set(config["model"]) - known), sorted(known - set(config["model"]))
    if unknown:
        problems.append(f"unknown model setting(s) {', '.join(unknown)}")
    if missing:
        problems.append(f"missing model setting(s) {', '.join(missing)}")
    if problems:
        raise UnisrecError(f"{where}: the model configuration differs from this version: {'; '.join(problems)}")


def check_state(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], where: str) -> None:
    """Raise naming every missing, unexpected or differently shaped tensor."""
    problems = []
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected)}")
    for key in sorted(set(expected) & set(found)):
        if tuple(expected[key].shape) != tuple(found[key].shape):
            problems.append(f"{key} has shape {tuple(found[key].shape)}, expected {tuple(expected[key].shape)}")
    if problems:
        raise UnisrecError(f"{where}: weights do not match the configuration: {'; '.join(problems)}")


# train.transfer -> prefixes of the names copied (encoder: the sequence encoder and the LayerNorm on its inputs)
# skip_weight (model.skip_gate) weighs the last item in the sequence's output: the sequence side's
TRANSFER_PARTS = {"all": ("",), "adaptor": ("adaptor.",), "encoder": ("encoder.", "input_norm.", "skip_weight")}


def load_transferable(model: SequenceModel, init_dir: Path, parts: str = "all") -> list[str]:
    """Copy the parameters of a saved run except domain-specific ones into ``model``; returns the names copied.

    ``parts`` (``train.transfer``): ``all`` copies every one, ``adaptor`` only the text adaptor's, ``encoder`` only
    the sequence encoder's, its input LayerNorm's and the last-item skip's gate (the rest keeps ``model``'s own
    initialisation). Strict
    either way: a parameter the model has and the run lacks (other than a new ID table), or a shape that differs,
    is an error naming it.
    """
    if parts not in TRANSFER_PARTS:
        raise ValueError(f"unknown transfer parts {parts!r}; expected one of {sorted(TRANSFER_PARTS)}")
    path = init_dir / "model.safetensors"
    if not path.exists():
        raise UnisrecError(f"{path}: missing; --init expects a run folder of `unisrec pretrain` or `finetune`")
    found = {k: v for k, v in read_weights(path).items() if not k.startswith(DOMAIN_SPECIFIC_PREFIX)}
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith(DOMAIN_SPECIFIC_PREFIX)}
    check_state(expected, found, str(path))
    found = {k: v for k, v in found.items() if k.startswith(TRANSFER_PARTS[parts])}
    if not found:
        raise UnisrecError(f"{path}: nothing to transfer with train.transfer={parts} (a model without that part?)")
    model.load_state_dict(found, strict=False)  # the keys were checked above; the rest keeps the model's own values
    return sorted(found)


def from_pretrained(directory: str | Path, device: str | torch.device = "cpu") -> tuple[SequenceModel, dict[str, Any]]:
    """Rebuild a saved model (strict: every tensor present with its shape) and return it with its config.

    The network is the one the run trained (``build_model``: UniSRec, or a baseline), as a ``SequenceModel``.
    """
    directory = Path(directory)
    torch_device = resolve_device(device)
    config = read_model_config(directory)
    check_saved_config(config, directory / "config.json")
    try:
        model_config = from_plain(ModelConfig, config["model"], f"{directory / 'config.json'}: model")
    except ConfigError as exc:
        raise UnisrecError(f"{exc} (saved by unisrec {config.get('unisrec_version')})") from None
    n_items = int(config["n_items"])
    text = None
    if model_config.uses_text:
        items_path = directory / "items.safetensors"
        if n_items == 0:
            text = torch.zeros(0, int(config["text_dim"]))  # a pre-trained model: no catalogue
        elif not items_path.exists():
            raise UnisrecError(f"{items_path}: missing; the model needs its item text vectors")
        else:
            check_same_save(config, items_path, _save_id_of(items_path))
            saved = read_weights(items_path)
            if "item_text" not in saved:
                raise UnisrecError(f"{items_path}: damaged weights file (no item_text tensor); save or train the run "
                                   "again")
            text = saved["item_text"]
            expected = (n_items, int(config["text_dim"]))
            if tuple(text.shape) != expected:
                shape = tuple(text.shape)
                raise UnisrecError(f"{items_path}: item_text has shape {shape}, config.json says {expected}")
    model = build_model(model_config, n_items, text)
    weights_path = directory / "model.safetensors"
    if not weights_path.exists():
        raise UnisrecError(f"{weights_path}: missing")
    check_same_save(config, weights_path, _save_id_of(weights_path))
    state = read_weights(weights_path)
    check_state(model.state_dict(), state, str(weights_path))
    model.load_state_dict(state, strict=True)
    return model.to(torch_device), config


def read_items(directory: str | Path) -> tuple[list[str], list[str]]:
    """(item ids, texts) saved beside a model."""
    path = Path(directory) / "items.parquet"
    if not path.exists():
        raise UnisrecError(f"{path}: missing; the model was saved without its item list")
    if (Path(directory) / "config.json").exists():
        check_same_save(read_model_config(directory), path, _save_id_of(path))
    table = pq.read_table(path)
    return table.column("item_id").to_pylist(), table.column("text").to_pylist()
