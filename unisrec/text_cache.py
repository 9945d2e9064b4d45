"""The on-disk cache of item text vectors, with metadata that keeps them honest.

The (N, D) float32 language-model vectors of a processed dataset's items (``unisrec.text_encoder``) are stored
as ``DIR/embeddings/<model slug>.<pooling>[.len<N>][.bf16].safetensors``; the safetensors header records the model
fingerprint, pooling, max length, precision, dimension and hashes of the item-id order and of the texts, so a
matrix is reused only while all of them match, and a stale one is refused with a message saying what to re-run.

Word-drop views for the sequence-sequence pre-training loss (``unisrec.word_drop``) are stored beside it as a
(V, N, D) tensor of V independently sampled variants (``<slug>.<pooling>.worddrop-p0.2-v3-s0.safetensors``).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from unisrec.atomic import atomic_write, clean_stale
from unisrec.config import DEFAULT_TEXT_MODEL, TextConfig
from unisrec.datasets.processed import ProcessedDataset, load_processed
from unisrec.errors import UnisrecError
from unisrec.locking import hold, release
from unisrec.text_encoder import DEFAULT_BATCH_SIZE, TextEncoder
from unisrec.text_model import looks_like_path, model_fingerprint
from unisrec.version import __version__
from unisrec.word_drop import check_word_drop, word_drop_texts

EMBEDDINGS_DIR = "embeddings"
FILE_FORMAT = "unisrec-item-embeddings/1"
TENSOR_KEY = "embeddings"
# what a run records about its item vectors (config.json "text_encoder"): the vector file's header (strings)
# and the text settings they were asked for (``TextConfig.from_saved`` reads either back)
TextRecord = dict[str, str | int]


# ----------------------------------------------------------------------------------------------------------
# File names


def model_slug(model: str) -> str:
    """A file-name-safe short name of a language model: the hub name or the folder name."""
    if model == DEFAULT_TEXT_MODEL:
        return DEFAULT_TEXT_MODEL
    name = Path(model).expanduser().name if looks_like_path(model) else model
    return re.sub(r"[^a-z0-9._-]+", "-", name.lower().replace("/", "--")).strip("-.") or "model"


def _stem(text: TextConfig) -> str:
    length = f".len{text.max_length}" if text.max_length != TextConfig().max_length else ""
    return f"{model_slug(text.model)}.{text.pooling}{length}" + (".bf16" if text.precision == "bfloat16" else "")


def vectors_file_name(text: TextConfig) -> str:
    """``<slug>.<pooling>[.len<max_length>][.bf16].safetensors``: the file of the item vectors made with ``text``
    (the max length named only where it is not the default, so that two lengths do not replace each other's
    vectors in turn)."""
    return f"{_stem(text)}.safetensors"


def word_drop_file_name(text: TextConfig, p: float, variants: int, seed: int) -> str:
    # repr: every distinct p its own file (":g" gave 0.2 and 0.2000001 one name); "0.2" for the usual values
    return f"{_stem(text)}.worddrop-p{float(p)!r}-v{variants}-s{seed}.safetensors"


def encode_command(text: TextConfig, dataset_dir: str | Path) -> str:
    """The ``unisrec encode`` command line that (re)computes the vectors of ``dataset_dir`` made with ``text``."""
    default = TextConfig()
    parts = ["unisrec encode", str(dataset_dir)]
    if text.model != default.model:
        parts += ["--model", text.model]
    if text.pooling != default.pooling:
        parts += ["--pooling", text.pooling]
    if text.max_length != default.max_length:
        parts += ["--max-length", str(text.max_length)]
    if text.precision != default.precision:
        parts += ["--precision", text.precision]
    return " ".join(parts)


# ----------------------------------------------------------------------------------------------------------
# Files: writing, reading, checking


@dataclass
class ItemEmbeddings:
    """Language-model vectors of a dataset's items, in item-index order, and the header they were stored with.

    ``matrix`` is (N, D) float32 for the base embeddings and (V, N, D) for word-drop variants; ``config``: the
    text settings they were loaded for.
    """

    matrix: np.ndarray
    meta: dict[str, str]
    path: Path
    config: TextConfig

    @property
    def dim(self) -> int:
        return int(self.matrix.shape[-1])

    def record(self) -> TextRecord:
        """What a run saved with these vectors records in config.json ("text_encoder")."""
        return {**self.meta, "model": self.config.model, "pooling": self.config.pooling,
                "max_length": self.config.max_length, "precision": self.config.precision}


def check_recorded_model(text: TextConfig, recorded: Mapping[str, Any], source: str | Path) -> None:
    """A run that starts from the saved run ``source`` with its text settings (``recorded``: its config.json
    "text_encoder") must find the language model files it recorded: a model folder changed in place since gives
    vectors its adaptor never saw (``Recommender.text_encoder`` checks the same when serving). Hashes the model's
    files, before anything is encoded or written. A run given other text settings, or a saved run that recorded
    no fingerprint, is not checked."""
    before = recorded.get("fingerprint")
    keys = ("model", "pooling", "max_length")
    if not before or any(str(recorded.get(key)) != str(getattr(text, key)) for key in keys):
        return
    now = model_fingerprint(text)["digest"]
    if now != before:
        raise UnisrecError(f"{source}: language model '{text.model}' differs from the one this run was trained "
                           f"with (fingerprint {now[:12]}, recorded {str(before)[:12]}); its vectors would not "
                           "match the run's adaptor: restore the model's files or give the run's model")


class EncodeSummary(TypedDict):
    """What ``unisrec encode`` prints for one file."""

    path: str
    n_items: int
    dim: int
    seconds: float
    items_per_second: float | None
    reused: bool


@dataclass
class EncodeResult:
    """One vector file made or reused: where, its size, timings."""

    path: Path
    n_items: int
    dim: int
    seconds: float  # wall time for this file, model loading and checks included
    encode_seconds: float  # tokenisation + forward passes only (0 when reused)
    reused: bool
    n_encoded: int = 0  # texts encoded: n_items, or variants x n_items for word drop (0 when reused)
    encoder: TextEncoder | None = field(default=None, repr=False)  # the model loaded for this file, if any

    def summary(self) -> EncodeSummary:
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


def _read(path: Path, text: TextConfig | None) -> ItemEmbeddings:
    """The file at ``path``; ``text`` None: the settings its header records."""
    damaged = f"{path}: not a unisrec embedding file (or damaged); run `unisrec encode` again"
    try:  # header and matrix from one open file: a writer replacing the file meanwhile cannot pair two files
        with safe_open(str(path), framework="np") as handle:
            meta = dict(handle.metadata() or {})
            matrix = handle.get_tensor(TENSOR_KEY) if meta.get("format") == FILE_FORMAT else None
    except Exception:  # a truncated or foreign file
        raise UnisrecError(damaged) from None
    if matrix is None:
        raise UnisrecError(damaged)
    return ItemEmbeddings(matrix=matrix, meta=meta, path=path, config=text or TextConfig.from_saved(meta))


def _matches(meta: dict[str, str] | None, expected: dict[str, str]) -> bool:
    return meta is not None and all(meta.get(key) == value for key, value in expected.items())


class _EncoderSource:
    """Builds the TextEncoder only when something has to be encoded (reuse never loads the model)."""

    def __init__(self, text: TextConfig, device: str, batch_size: int, encoder: TextEncoder | None) -> None:
        if encoder is not None and encoder.config != text:
            raise ValueError(f"encoder was built for {encoder.config}, not {text}")
        self.text, self.device, self.batch_size, self.encoder = text, device, batch_size, encoder

    def get(self) -> TextEncoder:
        if self.encoder is None:
            self.encoder = TextEncoder(self.text, device=self.device, batch_size=self.batch_size)
        return self.encoder

    def fingerprint(self) -> dict[str, str]:
        return self.encoder.fingerprint() if self.encoder is not None else model_fingerprint(self.text)


def _expected_header(dataset: ProcessedDataset, source: _EncoderSource, kind: str) -> dict[str, str]:
    fingerprint = source.fingerprint()
    return {
        "format": FILE_FORMAT,
        "kind": kind,
        "fingerprint": fingerprint["digest"],
        "pooling": source.text.pooling,
        "max_length": str(source.text.max_length),
        "precision": source.text.precision,
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
    n_items = int(expected["n_items"])

    def reused() -> EncodeResult | None:
        meta = read_header(path)
        if force or meta is None or not _matches(meta, expected):
            return None
        return EncodeResult(path, n_items, int(meta["dim"]), time.perf_counter() - start, 0.0, True)

    if (result := reused()) is not None:
        return result
    lock = path.parent / f".{path.name}.lock"
    # one writer per vector file (readers of a finished file need no lock); a run that needs the file waits
    # for a writer already at it (two runs on one dataset at once), then reuses what it wrote
    hold(lock, str(path), wait=not force)
    if (result := reused()) is not None:
        release(lock)
        return result
    try:
        clean_stale(path)  # what a killed writer left (``.NAME.*.tmp``): no live writer owns it now
        encoder = source.get()
        encode_start = time.perf_counter()
        matrix = compute(encoder)
        encode_seconds = time.perf_counter() - encode_start
        info = {
            "model": source.text.model,
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


def encode_dataset(
    dataset: str | Path | ProcessedDataset,
    text: TextConfig | None = None,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = "cpu",
    force: bool = False,
    progress: bool = True,
    encoder: TextEncoder | None = None,
) -> EncodeResult:
    """Encode every item text of a processed dataset into ``DIR/embeddings/`` (``vectors_file_name``).

    The (n_items, D) float32 matrix is in item-index order. An existing file is reused (nothing is loaded or
    encoded) while its model fingerprint, pooling, max length, item-id order and texts all match; ``force``
    re-encodes regardless. ``encoder`` lets several datasets share one loaded model. Returns the file, its
    timings and whether it was reused (what ``unisrec encode`` prints).
    """
    start = time.perf_counter()
    text = text or TextConfig()
    data = _as_dataset(dataset)
    source = _EncoderSource(text, device, batch_size, encoder)
    path = _dataset_dir(data) / EMBEDDINGS_DIR / vectors_file_name(text)
    expected = _expected_header(data, source, "base")
    return _cached(path, expected, source, lambda enc: enc.encode(data.item_texts, progress=progress), force, start)


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


def _check_settings(emb: ItemEmbeddings, text: TextConfig, command: str) -> None:
    """Pooling and max length must match; the model too, whenever its files are available without download."""
    meta = emb.meta
    if meta.get("pooling") != text.pooling or meta.get("max_length") != str(text.max_length):
        raise UnisrecError(
            f"embeddings of {emb.path.name} use pooling={meta.get('pooling')}, "
            f"max_length={meta.get('max_length')}; run `{command}` again"
        )
    try:
        digest = model_fingerprint(text, local_only=True)["digest"]
    except UnisrecError:
        return  # model files not here (e.g. a hub model on another machine): trust the file name
    if meta.get("fingerprint") != digest:
        raise UnisrecError(
            f"embeddings of {emb.path.name} were computed with a different language model "
            f"(files of '{meta.get('model')}' changed since); run `{command}` again"
        )


def _find_base_file(folder: Path, dataset_dir: Path) -> Path:
    files = sorted(p for p in folder.glob("*.safetensors") if ".worddrop-" not in p.name and p.name[0] != ".")
    if not files:
        raise UnisrecError(f"{dataset_dir}: no text embeddings; run `unisrec encode {dataset_dir}` first")
    if len(files) == 1:
        return files[0]
    default = folder / vectors_file_name(TextConfig())
    if default.exists():
        return default
    names = ", ".join(p.name for p in files)
    raise UnisrecError(f"{dataset_dir}: several embedding files ({names}); say which model and pooling")


def load_item_embeddings(dataset: str | Path | ProcessedDataset, text: TextConfig | None = None) -> ItemEmbeddings:
    """The (N, D) float32 item vectors of a dataset, checked against its current item list and texts.

    With ``text`` None: the only embedding file of the dataset, or the default model's when there are several.
    """
    data = _as_dataset(dataset)
    folder = _dataset_dir(data) / EMBEDDINGS_DIR
    if text is None:
        path = _find_base_file(folder, _dataset_dir(data))
    else:
        path = folder / vectors_file_name(text)
        if not path.exists():
            raise UnisrecError(f"{path}: no such embeddings; run `{encode_command(text, _dataset_dir(data))}` first")
    emb = _read(path, text)
    command = encode_command(emb.config, _dataset_dir(data))
    _check_against(emb, data, command)
    if text is not None:
        _check_settings(emb, text, command)
    return emb


def load_text(dataset: ProcessedDataset, text: TextConfig) -> ItemEmbeddings:
    """The (N, D) language-model vectors of ``dataset``'s items made with ``text`` (encoded now if not cached)."""
    encode_dataset(dataset, text)
    return load_item_embeddings(dataset, text)


# ----------------------------------------------------------------------------------------------------------
# Word-drop views


def _encode_variants(encoder: TextEncoder, views: list[list[str]], progress: bool) -> np.ndarray:
    flat = [text for view in views for text in view]  # (V * N,) one call, so batches mix variants
    vectors = encoder.encode(flat, progress=progress)  # (V * N, D)
    return vectors.reshape(len(views), len(views[0]), encoder.dim)  # (V, N, D)


def _word_drop_path(data: ProcessedDataset, text: TextConfig, p: float, variants: int, seed: int) -> Path:
    """The file of ``variants`` word-dropped views (arguments checked first)."""
    check_word_drop(p, variants, seed)
    return _dataset_dir(data) / EMBEDDINGS_DIR / word_drop_file_name(text, p, variants, seed)


def encode_word_drop(
    dataset: str | Path | ProcessedDataset,
    text: TextConfig | None = None,
    *,
    p: float = 0.2,
    variants: int = 3,
    seed: int = 0,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: str = "cpu",
    force: bool = False,
    progress: bool = True,
    encoder: TextEncoder | None = None,
) -> EncodeResult:
    """Encode ``variants`` word-dropped views of every item text into one (V, N, D) float32 file.

    In each variant every word (whitespace token) of every item is dropped independently with probability
    ``p``, keeping at least one word per item (``unisrec.word_drop``). Stored as
    ``<slug>.<pooling>.worddrop-p<p>-v<V>-s<seed>`` beside the base matrix, with the same header and reuse rules.
    """
    start = time.perf_counter()
    text = text or TextConfig()
    data = _as_dataset(dataset)
    path = _word_drop_path(data, text, p, variants, seed)
    source = _EncoderSource(text, device, batch_size, encoder)
    expected = {**_expected_header(data, source, "word_drop"), **_word_drop_header(p, variants, seed)}
    # the views are drawn only when the file has to be (re)written, not when a cached one is reused
    return _cached(path, expected, source,
                   lambda enc: _encode_variants(enc, word_drop_texts(data.item_texts, p, variants, seed), progress),
                   force, start)


def _word_drop_header(p: float, variants: int, seed: int) -> dict[str, str]:
    """What a word-drop file's header records of its views (written by encode, checked by load)."""
    return {"word_drop_p": repr(float(p)), "variants": str(variants), "seed": str(seed)}


def load_word_drop(
    dataset: str | Path | ProcessedDataset,
    text: TextConfig | None = None,
    p: float = 0.2,
    variants: int = 3,
    seed: int = 0,
) -> ItemEmbeddings:
    """The (V, N, D) vectors written by ``encode_word_drop``, checked like ``load_item_embeddings``."""
    text = text or TextConfig()
    data = _as_dataset(dataset)
    path = _word_drop_path(data, text, p, variants, seed)
    command = f"{encode_command(text, _dataset_dir(data))} --word-drop {float(p)!r} --variants {variants} --seed {seed}"
    if not path.exists():
        raise UnisrecError(f"{path}: no such word-drop embeddings; run `{command}` first")
    emb = _read(path, text)
    _check_against(emb, data, command)
    if emb.matrix.ndim != 3 or emb.matrix.shape[0] != variants:
        raise UnisrecError(f"{path}: expected {variants} word-drop variants, found shape {emb.matrix.shape}")
    wanted = {"kind": "word_drop", **_word_drop_header(p, variants, seed)}
    other = {key: emb.meta.get(key) for key, value in wanted.items() if emb.meta.get(key) != value}
    if other:
        raise UnisrecError(f"{path}: made with {', '.join(f'{k}={v}' for k, v in other.items())}, not "
                           f"{', '.join(f'{k}={wanted[k]}' for k in other)}; run `{command} --force`")
    _check_settings(emb, text, command)
    return emb
