"""Vectors for other systems: item and user-sequence vectors (NumPy + safetensors) and an exact FAISS index.

The exported item vectors are the model's *scoring table* and the sequence vectors its *query vectors*, so a
plain inner product ``query . item`` equals the model's logit (cosine / temperature for text models). An exact
inner-product index (``faiss.IndexFlatIP``) over the item vectors therefore returns the model's own top-k.

An export folder holds::

    manifest.json           what each file is, shapes, metric, run provenance
    items.npy               (N, H) float32 item vectors, row = position in items.parquet
    items.parquet           item_id, text
    items.faiss             exact inner-product index of items.npy (needs faiss-cpu: pip install 'unisrec[serve]')
    sequences.npy           (U, H) float32 query vectors of the users of --data (their whole history)
    users.parquet           user_id of each row of sequences.npy
    vectors.safetensors     the same matrices: "items" and (with --data) "sequences"

The files are written into a staging folder inside ``out`` and moved into place once all are complete, the
manifest last (``out`` may be absent, empty or an earlier export; a folder without a manifest is an interrupted
export, which the next one completes). With repeat offsets (``model.repeat_bias``, textknn's fixed ones) the
manifest's ``repeat_offsets`` holds the two logit offsets of the items of a user's window, which an inner product
leaves out.

``export_vectors`` reads what it writes from a ``VectorSource``: in practice a ``unisrec.recommend.Recommender``
(``Recommender.export_vectors`` calls it), described here by what export uses so that this module needs
nothing above the model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, TypedDict

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch import Tensor

from unisrec.atomic import atomic_write, atomic_write_json, fsync_dir
from unisrec.catalogue import Catalogue
from unisrec.errors import UnisrecError
from unisrec.locking import waiting_for
from unisrec.model import SequenceModel
from unisrec.topk import FlatIndex, faiss_module, faiss_search, flat_ip_index
from unisrec.version import __version__

__all__ = ["ExportManifest", "VectorSource", "export_vectors", "faiss_search", "flat_ip_index", "load_faiss_index",
           "user_histories"]

EXPORT_FORMAT = "unisrec-vectors"
EXPORT_VERSION = 1
EXPORT_LOCK = ".export.lock"  # held while an export writes the folder (kept there, like any lock file)
EXPORT_TEMP_PREFIX = ".export-"  # the staging folder inside the export folder, moved from file by file
EXPORT_FILES = ("manifest.json", "items.npy", "items.parquet", "items.faiss", "sequences.npy", "users.parquet",
                "vectors.safetensors")


class VectorSource(Protocol):
    """What an export reads: a model with its catalogue, its scoring table and query vectors (a Recommender)."""

    model: SequenceModel
    catalogue: Catalogue
    text_encoder_info: dict[str, Any]

    def scoring_table(self) -> Tensor: ...

    def queries_of_rows(self, histories: Sequence[np.ndarray]) -> Tensor: ...


class ExportManifest(TypedDict):
    """``manifest.json`` of an export folder."""

    format: str
    format_version: int
    unisrec_version: str
    n_items: int
    dim: int
    metric: str  # inner_product
    score: str
    model: str  # the item representation: text, text+id, id
    text_encoder: dict[str, str | int] | None  # the run's config.json "text_encoder"
    files: dict[str, dict[str, object]]  # file name -> shape, rows, columns, ...
    # models with model.repeat_bias: the two logit offsets the inner product leaves out; None for other models
    repeat_offsets: dict[str, object] | None


USER_BATCH = 256  # users whose query vectors are computed at once


def user_histories(catalogue: Catalogue, data_dir: str | Path) -> tuple[list[str], list[np.ndarray]]:
    """(user ids, catalogue rows of each user's whole history) of a processed dataset."""
    from unisrec.datasets.processed import load_processed

    dataset = load_processed(data_dir)
    rows = catalogue.lookup([str(i) for i in dataset.item_ids])  # (N_data,) catalogue row, -1 if absent
    if (rows < 0).any():
        missing = [str(dataset.item_ids[i]) for i in np.flatnonzero(rows < 0)[:5]]
        raise UnisrecError(
            f"{data_dir}: {(rows < 0).sum()} of its items are not in the model's catalogue (e.g. {', '.join(missing)})"
        )
    mapped = rows[dataset.items]  # (I,) catalogue row of every interaction
    users = [u for u in range(dataset.n_users) if dataset.offsets[u + 1] > dataset.offsets[u]]
    histories = [mapped[dataset.offsets[u] : dataset.offsets[u + 1]] for u in users]
    return [str(dataset.user_ids[u]) for u in users], histories


def export_vectors(
    recommender: VectorSource, out: str | Path, *, data_dir: str | Path | None = None, index: bool = True
) -> ExportManifest:
    """Write the export folder ``out`` (see the module docstring); returns the manifest."""
    try:  # a missing faiss is an error before anything is written
        faiss = faiss_module() if index else None
    except UnisrecError as exc:
        raise UnisrecError(f"{exc}; or export without the index (--no-index, index=False)") from None
    out = Path(out).resolve()  # "." and a link to a folder: the folder itself
    created = not out.exists()
    _check_export_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        with waiting_for(out / EXPORT_LOCK):  # one export of a folder at a time
            for stale in out.glob(f"{EXPORT_TEMP_PREFIX}*"):  # what a killed export left (no live one: we hold it)
                shutil.rmtree(stale, ignore_errors=True)
            _check_export_folder(out)  # again, under the lock
            staging = Path(tempfile.mkdtemp(prefix=EXPORT_TEMP_PREFIX, suffix=".tmp", dir=out))
            try:
                manifest = _write_export(recommender, staging, faiss, data_dir)
                _commit_export(staging, out, manifest)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except BaseException:
        if created and {p.name for p in out.iterdir()} <= {EXPORT_LOCK}:  # made here and nothing else in it
            shutil.rmtree(out, ignore_errors=True)
        raise
    return manifest


def _commit_export(staging: Path, out: Path, manifest: ExportManifest) -> None:
    """Move a complete export from ``staging`` into ``out``, the manifest last: while the files change ``out``
    has no manifest (an interrupted export is recognisable, and the next one completes it), then the new
    manifest names exactly the files there (those of an earlier export that it lacks are removed)."""
    (out / "manifest.json").unlink(missing_ok=True)
    new = set(manifest["files"])
    for name in sorted(new):
        os.replace(staging / name, out / name)
    for name in EXPORT_FILES:
        if name != "manifest.json" and name not in new:
            (out / name).unlink(missing_ok=True)
    os.replace(staging / "manifest.json", out / "manifest.json")
    fsync_dir(out)


def _check_export_folder(out: Path) -> None:
    """``out`` may be absent, empty, or an export (an earlier or an interrupted one: export files only, and a
    manifest, if any, of this format); anything else is refused rather than mixed with an export's files."""
    if not out.exists():
        return
    if not out.is_dir():
        raise UnisrecError(f"{out}: a file, not an export folder")
    held = sorted(entry.name for entry in out.iterdir()
                  if entry.name != EXPORT_LOCK and not entry.name.startswith(EXPORT_TEMP_PREFIX))
    other = next((name for name in held if name not in EXPORT_FILES), None)
    if other is None and "manifest.json" in held:
        try:
            kind = json.loads((out / "manifest.json").read_text(encoding="utf-8")).get("format")
        except (OSError, ValueError, AttributeError):
            kind = None
        if kind != EXPORT_FORMAT:
            other = "a manifest.json of another kind"
    if other is not None:
        raise UnisrecError(f"{out}: not empty and not a unisrec export ({other}); give a new or empty folder, or "
                           "an earlier export's")


def _write_export(recommender: VectorSource, out: Path, faiss: Any, data_dir: str | Path | None) -> ExportManifest:
    """Every file of an export into the (new, empty) folder ``out``; returns the manifest, written last."""
    from safetensors.numpy import save_file

    items = recommender.scoring_table().cpu().numpy().astype(np.float32)  # (N, H)
    catalogue = recommender.catalogue
    n = len(items)  # the catalogue only grows (items added while serving): its first N rows are the table's
    atomic_write(out / "items.npy", lambda tmp: _save_npy(tmp, items))
    item_table = pa.table({"item_id": catalogue.item_ids[:n], "text": catalogue.texts[:n]})
    atomic_write(out / "items.parquet", lambda tmp: pq.write_table(item_table, tmp))
    tensors = {"items": items}
    files: dict[str, dict[str, object]] = {
        "items.npy": {"shape": list(items.shape), "rows": "items.parquet"},
        "items.parquet": {"columns": ["item_id", "text"]},
    }
    if data_dir is not None:
        user_ids, histories = user_histories(catalogue, data_dir)
        parts = [recommender.queries_of_rows(histories[lo : lo + USER_BATCH]).cpu().numpy()
                 for lo in range(0, len(histories), USER_BATCH)]
        sequences = np.concatenate(parts).astype(np.float32) if parts else np.zeros((0, items.shape[1]), np.float32)
        atomic_write(out / "sequences.npy", lambda tmp: _save_npy(tmp, sequences))
        users = pa.table({"user_id": user_ids})
        atomic_write(out / "users.parquet", lambda tmp: pq.write_table(users, tmp))
        tensors["sequences"] = sequences
        files["sequences.npy"] = {"shape": list(sequences.shape), "rows": "users.parquet",
                                  "history": f"each user's whole history in {data_dir}, last max_seq_len items"}
        files["users.parquet"] = {"columns": ["user_id"]}
    atomic_write(out / "vectors.safetensors", lambda tmp: save_file(tensors, str(tmp)))
    files["vectors.safetensors"] = {"tensors": sorted(tensors)}
    if faiss is not None:
        built = flat_ip_index(items)
        atomic_write(out / "items.faiss", lambda tmp: faiss.write_index(built, str(tmp)))
        files["items.faiss"] = {"type": "IndexFlatIP", "exact": True, "ntotal": int(built.ntotal)}
    manifest: ExportManifest = {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        "unisrec_version": __version__,
        "n_items": int(items.shape[0]),
        "dim": int(items.shape[1]),
        "metric": "inner_product",
        "score": "sequences[u] . items[i] = the model's logit of item i for user u",
        "model": recommender.model.config.item_repr,
        "text_encoder": recommender.text_encoder_info or None,
        "files": files,
        "repeat_offsets": _repeat_offsets(recommender.model),
    }
    if manifest["repeat_offsets"] is not None:
        manifest["score"] += (", plus repeat_offsets on the items of the user's window (the inner product alone, "
                              "and the index, leave them out)")
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def _repeat_offsets(model: SequenceModel) -> dict[str, object] | None:
    """The repeat offsets of a model that has them (``model.repeat_bias``, textknn's fixed ones) as the manifest
    states them (``unisrec.model.history_offsets``'s rule), or None. Read off the model's own offsets of a
    two-item probe history [0, 1]: item 0 gets ``history``, item 1 (the last) ``history + last``."""
    if not model.has_repeat_offsets:
        return None
    device = model.device
    with torch.no_grad():
        offsets = model.repeat_offsets(torch.tensor([[0, 1]], device=device), torch.tensor([2], device=device))
    assert offsets is not None
    _, items, values = (t.cpu() for t in offsets)
    by_item: dict[int, float] = {}
    for item, value in zip(items.tolist(), values.tolist(), strict=True):
        by_item[item] = by_item.get(item, 0.0) + value
    history = by_item.get(0, 0.0)
    last = by_item.get(1, 0.0) - history
    return {"last": last, "history": history, "window": model.config.max_seq_len,
            "rule": "logit += history for each distinct item of the user's last `window` items, and += last once "
                    "more for the last item"}


def _save_npy(path: Path, array: np.ndarray) -> None:
    with open(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def load_faiss_index(path: str | Path) -> FlatIndex:
    """An exported ``items.faiss``."""
    if not Path(path).exists():
        raise UnisrecError(f"{path}: no such index file (write one with `unisrec export`)")
    index: FlatIndex = faiss_module().read_index(str(path))
    return index

