"""The public serving object: a ``Recommender`` joins a model, its item catalogue and a top-k backend.

``Recommender.from_pretrained(run)`` loads a run folder of any model kind (UniSRec and every baseline, all
``SequenceModel``s) with its catalogue; ``recommend`` (known users), ``recommend_histories`` (DataFrames) and
``recommend_lists`` (lists of ``Recommendation``) rank; ``add_items`` grows the catalogue by text;
``save_pretrained`` writes it back; ``export_vectors`` writes the vectors for other systems (``unisrec.export``).

Scores are the model's logits: ``query_vectors(s) . scoring_table(v)`` (cosine / temperature for text models),
computed against a scoring table that is built once (in item chunks, bounded memory) and extended, not rebuilt,
when items are added. Top-k runs in item chunks too (a running top-k merged chunk by chunk), so memory stays
bounded by about 2^24 scores whatever the catalogue size; from 16k items it scans a bfloat16 copy of the table
first and rescores the candidates in float32, with a proven error bound that keeps the result exact (see
``unisrec.topk``); ``backend="faiss"`` searches an exact inner-product index instead (the same top-k).

Histories are lists of item ids (strings, as in the dataset; an unknown id is an error naming it), or with
``by_text=True`` lists of raw item texts encoded by the run's language model (text-only models). A history
longer than the model's ``max_seq_len`` is cut to its last ``max_seq_len`` items (as in training).
``exclude_seen`` removes the history's items from the ranking (for texts: catalogue items with that exact text).

New items (``add_items``) are encoded with the language model recorded in the run (its file fingerprint is
checked) and join the catalogue with no retraining (``SequenceModel.extend_items`` grows the model's text
buffer). Only text-only models accept them: a model with item IDs (transductive, SASRec, GRU4Rec, BERT4Rec,
FDSA) would have no learned ID vector for them.
"""

from __future__ import annotations

import contextlib
import functools
import json
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeGuard

import numpy as np
import torch
from safetensors import safe_open
from torch import Tensor

from unisrec.catalogue import (
    Catalogue,
    CatalogueFullError,
    ItemConflictError,
    UnknownItemError,
    as_item_id,
)
from unisrec.checkpoint import from_pretrained, read_items, save_pretrained, save_tensors
from unisrec.config import TextConfig
from unisrec.errors import UnisrecError
from unisrec.export import ExportManifest, export_vectors
from unisrec.growing_rows import append_rows
from unisrec.locking import waiting_for
from unisrec.model import Offsets, SequenceModel
from unisrec.topk import MIN_COARSE_ITEMS, CoarseTable, FlatIndex, chunked_top_k, faiss_search, flat_ip_index

if TYPE_CHECKING:
    import pandas as pd

    from unisrec.text_encoder import TextEncoder

__all__ = [
    "ADDED_DIR", "ENCODE_BATCH", "Backend", "Catalogue", "CatalogueFullError", "ItemConflictError", "Recommendation",
    "Recommender", "UnknownItemError", "adapted_items", "eval_mode", "persist_addition", "replay_additions",
    "to_frame",
]

Backend = Literal["torch", "faiss"]
TABLE_CHUNK = 8192  # items adapted at once when building the scoring table
# the fewest rows a chunk is computed with (padded), so that it takes the kernels of a large matrix (_table_chunk)
TABLE_MIN_ROWS = 256
PACK_TOKENS = 256  # history items encoded together (one attention block)
ENCODE_BATCH = 64  # texts per language-model pass in ``Recommender.encode_texts`` (one pass at a time)
ADDED_DIR = "catalogue"  # RUN/catalogue/NNNNNNNN.safetensors: one file per addition, replayed in order
CHECKPOINT_KEYS = ("format", "format_version", "unisrec_version", "model", "n_items", "text_dim", "parameters")


@dataclass(frozen=True)
class Recommendation:
    item_id: str
    score: float  # the model's logit: cosine / temperature (text models) or a dot product (SASRec)
    text: str


def is_list_like(values: object) -> TypeGuard[Iterable[Any]]:
    """A list, tuple, numpy array, pandas Series, ...: iterable, and not a string (whose characters would be taken
    one by one)."""
    return isinstance(values, Iterable) and not isinstance(values, str | bytes)


def as_list(values: object, what: str) -> list[Any]:
    """A list of ``values`` (``is_list_like``); a string, None or any other non-iterable is an error naming
    ``what``."""
    if not is_list_like(values):
        got = f"a string ({values!r:.60})" if isinstance(values, str | bytes) else type(values).__name__
        raise UnisrecError(f"{what} must be a list, got {got}")
    return list(values)


def checked_k(k: object) -> int:
    """``k`` as an int: a whole number >= 1 (numpy's integers too, not bools, floats or strings)."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise UnisrecError(f"k must be a whole number >= 1, got {k!r}")
    if k < 1:
        raise UnisrecError(f"k must be >= 1, got {k}")
    return int(k)


def exclude_flags(exclude_seen: object, n: int) -> list[bool]:
    """``exclude_seen`` -> one flag per history: one bool for all, or one bool per history (a list, a numpy
    array, a pandas Series)."""
    if isinstance(exclude_seen, np.ndarray) and exclude_seen.ndim == 0:  # np.array(True): one flag
        exclude_seen = exclude_seen.item()
    flag_types = bool | int | np.bool_ | np.integer
    if isinstance(exclude_seen, flag_types):  # one flag for all
        return [bool(exclude_seen)] * n
    is_sequence = isinstance(exclude_seen, Iterable) and not isinstance(exclude_seen, str | bytes | Mapping)
    flags = list(exclude_seen) if is_sequence else []  # type: ignore[call-overload]
    if not is_sequence or not all(isinstance(flag, flag_types) for flag in flags):
        raise UnisrecError(f"exclude_seen must be true/false, or one true/false per history; got {exclude_seen!r}")
    if len(flags) != n:
        raise UnisrecError(f"exclude_seen: {len(flags)} flags for {n} histories; give one flag, or one per history")
    return [bool(flag) for flag in flags]


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """No dropout, no gate noise, no autograd; the previous training flag is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def _weights_key(model: torch.nn.Module) -> tuple[tuple[int, int], ...]:
    """Changes whenever a parameter or buffer is replaced, moved or updated in place (optimizer steps)."""
    return tuple((t.data_ptr(), t._version) for t in [*model.parameters(), *model.buffers()])


def adapted_items(model: SequenceModel, text: Tensor | None = None) -> Tensor:
    """(N, H) item vectors of all items, or (M, H) of new items' text vectors ``text`` (M, D).

    Text models build them in chunks of ``TABLE_CHUNK`` items, so the adaptor's (chunk, K*H) intermediate stays
    small; ID-only models copy their embedding table.
    """
    device = model.device
    with eval_mode(model):
        if text is not None:
            return torch.cat([_table_chunk(model, text[lo:lo + TABLE_CHUNK].to(device), by_text=True)
                              for lo in range(0, max(len(text), 1), TABLE_CHUNK)])  # (M, H)
        if not model.config.uses_text:
            return model.item_table().detach().clone()  # (N, H): an embedding table, nothing to bound
        rows = torch.arange(model.n_items, device=device)
        return torch.cat([_table_chunk(model, rows[lo:lo + TABLE_CHUNK], by_text=False)
                          for lo in range(0, max(len(rows), 1), TABLE_CHUNK)])  # (N, H)


def _table_chunk(model: SequenceModel, chunk: Tensor, by_text: bool) -> Tensor:
    """(C, H) vectors of C items, given by their (C,) rows or, ``by_text``, their (C, D) text vectors.

    A chunk of fewer than ``TABLE_MIN_ROWS`` items is computed padded to that many rows (its first row repeated):
    the BLAS takes other kernels for a matrix of few rows, whose rounding differs from a large chunk's, so an item
    added alone would get another vector than the rebuilt table gives it, and could rank otherwise before and
    after a rebuild. Measured with MKL on an AVX2 CPU: matrices of 1-3 rows (and, with two threads, 5-7 in one of
    two measurements) round otherwise, larger ones as any chunk up to 9,000 rows; a pair, enough on an AVX-512 CPU,
    is not here. Checked on CPUs only: a GPU library may choose its kernels by row count too.
    """
    size = len(chunk)
    if 0 < size < TABLE_MIN_ROWS:
        chunk = torch.cat([chunk, chunk[:1].expand(TABLE_MIN_ROWS - size, *chunk.shape[1:])])  # (MIN,) or (MIN, D)
    table = model.item_table(text=chunk) if by_text else model.item_table(chunk)  # (C or MIN, H)
    return table[:size]


class Recommender:
    """A model, its catalogue and a cached scoring table; thread-safe for one writer and many readers.

    ``model``: any ``SequenceModel`` (UniSRec or a baseline), in eval mode while serving. ``text_encoder``: the
    run's recorded language-model spec (``config.json`` "text_encoder"), used to encode new item texts and text
    histories. ``info``: the run's other records (dataset provenance, kind, ...) that ``save_pretrained`` keeps.
    """

    def __init__(
        self,
        model: SequenceModel,
        catalogue: Catalogue,
        text_encoder: Mapping[str, Any] | None = None,
        *,
        backend: Backend = "torch",
        info: Mapping[str, Any] | None = None,
    ) -> None:
        if len(catalogue) != model.n_items:
            raise UnisrecError(f"catalogue of {len(catalogue)} items for a model of {model.n_items} items")
        if backend not in ("torch", "faiss"):
            raise UnisrecError(f"backend must be torch or faiss, got {backend!r}")
        self.model, self.catalogue, self.backend = model, catalogue, backend
        self.text_encoder_info: dict[str, Any] = dict(text_encoder or {})
        self.info: dict[str, Any] = {k: v for k, v in (info or {}).items() if k != "text_encoder"}
        self._lock = threading.RLock()
        self._encoder: TextEncoder | None = None
        self._items: Tensor | None = None  # (N, H) adapted item vectors: what histories are made of
        self._table: Tensor | None = None  # (N, H) scoring table (the same tensor for SASRec)
        self._coarse: CoarseTable | None = None  # its bfloat16 copy for the exact coarse-to-fine top-k
        self._items_store: Tensor | None = None  # rows _items views, with room for added items (append_rows)
        self._table_store: Tensor | None = None  # the same for _table
        self._key: tuple[tuple[int, int], ...] = ()
        self._faiss: FlatIndex | None = None
        self.users: dict[str, list[str]] = {}  # known users' histories (``set_users``)
        self.run_dir: Path | None = None  # the run folder it was loaded from (``from_pretrained``, ``unisrec.fit``)
        self.persist_dir: Path | None = None  # additions are also written here (``persist_addition``), if set
        self.max_items: int | None = None  # add_items refuses to grow the catalogue past this (CatalogueFullError)
        self.encode_batch = ENCODE_BATCH  # texts per language-model pass
        self._encode_lock = threading.Lock()  # one language-model pass at a time, whatever the calling threads

    # -- loading and saving ------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls, run_dir: str | Path, device: str | torch.device = "cpu", backend: Backend = "torch"
    ) -> Recommender:
        """A saved run (config.json + safetensors, strictly checked) of any model kind, in eval mode, with its
        catalogue; items added while it was served (``RUN/catalogue/``) come back.

        A pre-trained run (no catalogue of its own) loads with an empty catalogue: ``add_items`` fills it
        (zero-shot recommendations on a new domain).
        """
        run_dir = Path(run_dir)
        model, config = from_pretrained(run_dir, device)
        if model.n_items:
            ids, texts = read_items(run_dir)
            if len(ids) != model.n_items:
                raise UnisrecError(f"{run_dir / 'items.parquet'}: {len(ids)} items for a model of {model.n_items}")
        else:
            ids, texts = [], []
        model.eval()
        info = {k: v for k, v in config.items() if k not in CHECKPOINT_KEYS}
        recommender = cls(model, Catalogue(ids, texts), config.get("text_encoder"), backend=backend, info=info)
        recommender.run_dir = run_dir
        added = run_dir / ADDED_DIR
        if added.is_dir():  # items added while it was served (``unisrec serve``) come back
            replay_additions(recommender, added)
        return recommender

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the model with its catalogue (ids, texts, the text vectors of added items) and the run's records:
        config.json, model.safetensors, items.safetensors, items.parquet (no pickle)."""
        with self._lock:
            model, catalogue = self.model, self.catalogue
            extra = dict(self.info)
            if self.text_encoder_info:
                extra["text_encoder"] = self.text_encoder_info
            if not model.n_items:
                return save_pretrained(model, directory, extra=extra, save_text=False)
            if extra.get("kind") == "pretrained":
                extra.pop("kind")  # items were added: it now ranks a catalogue of its own
            return save_pretrained(model, directory, item_ids=catalogue.item_ids, item_texts=catalogue.texts,
                                   extra=extra)

    def export_vectors(
        self, out: str | Path, data_dir: str | Path | None = None, index: bool = True
    ) -> ExportManifest:
        """Item (and, with ``data_dir``, user sequence) vectors as .npy + .safetensors, and a FAISS index
        (``unisrec.export``): ``sequences[u] . items[i]`` is the model's logit."""
        return export_vectors(self, out, data_dir=data_dir, index=index)

    # -- tables ------------------------------------------------------------------------------------------

    def tables(self) -> tuple[Tensor, Tensor]:
        """(N, H) adapted item vectors and (N, H) scoring table, cached until the weights change.

        Scoring: ``query_vectors(s) @ scoring.T`` equals the model's logits. Caching the adapted vectors
        too means a request runs no adaptor, only the sequence encoder (at twice the table memory).
        """
        with self._lock:
            key = _weights_key(self.model)
            if self._table is None or self._items is None or key != self._key:
                self._items = adapted_items(self.model)
                with eval_mode(self.model):  # e.g. BERT4Rec's table holds its per-item output bias (a parameter)
                    self._table = self.model.scoring_table(self._items).contiguous()
                self._coarse = CoarseTable.build(self._table)
                self._key, self._faiss = key, None
                self._items_store = self._table_store = None  # the old stores are not these tables' rows
            return self._items, self._table

    def scoring_table(self) -> Tensor:
        """(N, H) item vectors whose inner product with ``query_vectors`` is the model's logit (cached)."""
        return self.tables()[1]

    def faiss_index(self) -> FlatIndex:
        """The exact inner-product FAISS index of the scoring table (built on first use)."""
        with self._lock:
            table = self.scoring_table()
            if self._faiss is None:
                self._faiss = flat_ip_index(table)
            return self._faiss

    # -- histories ---------------------------------------------------------------------------------------

    def resolve(self, histories: Sequence[Sequence[str]]) -> list[np.ndarray]:
        """Item ids -> catalogue rows, for every history; all unknown ids are named in one error."""
        rows, unknown = [], []
        for number, history in enumerate(histories):
            if isinstance(history, str | bytes):  # not a history of one-character ids
                raise UnisrecError(f"history {number} is a string, not a list of item ids: {history!r}")
            if not is_list_like(history):
                raise UnisrecError(f"history {number} must be a list of item ids, got {type(history).__name__}")
            history = list(history)
            if len(history) == 0:
                raise UnisrecError(f"history {number} is empty; give at least one item")
            try:
                rows.append(self.catalogue.indices(history, number))
            except UnknownItemError as exc:
                unknown.extend(exc.unknown)
        if unknown:
            raise UnknownItemError(unknown)
        return rows

    def queries_of_rows(self, histories: Sequence[np.ndarray]) -> Tensor:
        """Catalogue rows of B histories -> (B, H) query vectors (the last ``max_seq_len`` items of each)."""
        model = self.model
        device = model.device
        cut = self._windows(histories)
        unique, local = np.unique(np.concatenate(cut), return_inverse=True)  # (M,), (sum L,)
        items, _ = self.tables()
        with eval_mode(model):
            table = items[torch.from_numpy(unique).to(device)]  # (M, H): only the items used
            return self._queries([len(h) for h in cut], local, table)

    def queries_of_texts(self, histories: Sequence[Sequence[str]]) -> Tensor:
        """Raw item texts of B histories -> (B, H) query vectors (text-only models)."""
        self._require_text_only("recommendations for histories of item texts")
        cut = []
        for number, history in enumerate(histories):  # lists, arrays, Series alike; every entry is checked
            entries = [] if isinstance(history, str) else list(history)
            if not entries or not all(isinstance(t, str) for t in entries):
                raise UnisrecError(f"history {number} must be a non-empty list of item texts")
            cut.append(entries[-self.model.config.max_seq_len:])
        position: dict[str, int] = {}
        local = np.asarray([position.setdefault(t, len(position)) for h in cut for t in h], dtype=np.int64)
        vectors = torch.from_numpy(self.encode_texts(list(position)))  # (M, D): each distinct text once
        with eval_mode(self.model):
            table = adapted_items(self.model, text=vectors)  # (M, H): as the catalogue's vectors of these texts
            return self._queries([len(h) for h in cut], local, table)

    def _queries(self, history_lengths: list[int], local: np.ndarray, table: Tensor) -> Tensor:
        """Concatenated rows ``local`` of ``table`` (M, H) split by ``history_lengths`` -> (B, H) queries.

        Histories are encoded packed end to end (no padding), in packs of at most ``PACK_TOKENS`` items:
        attention inside a pack costs its length squared, so packs stay short.
        """
        lengths = np.asarray(history_lengths, dtype=np.int64)  # (B,)
        ends = np.cumsum(lengths)  # (B,)
        device = table.device
        rows = torch.from_numpy(local).to(device)  # (T,)
        states = []
        first = 0
        while first < len(lengths):
            start = ends[first] - lengths[first]
            last = max(first + 1, int(np.searchsorted(ends, start + PACK_TOKENS, side="right")))  # (first, last]
            states.append(self.model.packed_sequence_vectors(
                rows[start : ends[last - 1]], torch.from_numpy(lengths[first:last]).to(device), table
            ))  # (P, H)
            first = last
        return self.model.query_vectors(torch.cat(states))  # (B, H)

    # -- ranking -----------------------------------------------------------------------------------------

    def top_rows(
        self, queries: Tensor, k: int,
        seen: Sequence[np.ndarray] | Callable[[], Sequence[np.ndarray]] | None = None,
    ) -> list[list[tuple[int, float]]]:
        """(B, H) queries -> per query the (row, score) pairs of its top k, best first, seen rows left out.

        ``seen`` may be a function, called under the lock right after the table is taken: rows it reads from
        the catalogue then cover every row of that table, even while items are being added.
        """
        k = checked_k(k)
        if self.backend == "faiss":
            with self._lock:  # a FAISS index is not safe to search while items are being added
                index = self.faiss_index()
                scores, rows = faiss_search(index, queries, k, seen() if callable(seen) else seen)
        else:
            with self._lock:
                table, coarse = self.scoring_table(), self._coarse
                if callable(seen):
                    seen = seen()
            if coarse is not None:
                scores_t, rows_t = coarse.top_k(queries, k, seen)
            else:
                scores_t, rows_t = chunked_top_k(queries, table, k, seen)
            scores, rows = scores_t.cpu().numpy(), rows_t.cpu().numpy()
        out = []
        for row_scores, row_items in zip(scores, rows, strict=True):
            keep = np.isfinite(row_scores) & (row_items >= 0)
            out.append([(int(i), float(s)) for i, s in zip(row_items[keep], row_scores[keep], strict=True)])
        return out

    def recommend_rows(
        self, histories: Sequence[np.ndarray], k: int, exclude_seen: bool | Sequence[bool] = True
    ) -> list[list[Recommendation]]:
        """Top-k for histories already given as catalogue rows (what the HTTP service batches)."""
        k = checked_k(k)
        if not histories:
            return []
        flags = exclude_flags(exclude_seen, len(histories))
        if len(self.catalogue) == 0:
            return [[] for _ in histories]
        queries = self.queries_of_rows(histories)
        seen = [np.unique(h) if flag else h[:0] for h, flag in zip(histories, flags, strict=True)]
        if not self.model.has_repeat_offsets or all(flags):
            return [self._format(r) for r in self.top_rows(queries, k, seen)]
        offsets = self.repeat_offsets_of_rows(histories)
        window = max(len(w) for w in self._windows(histories))
        return [self._format(r) for r in self._top_rows_with_repeats(queries, offsets, window, k, seen, flags)]

    def _windows(self, histories: Sequence[np.ndarray]) -> list[np.ndarray]:
        """The model's input window of each history: its last ``max_seq_len`` catalogue rows."""
        return [h[-self.model.config.max_seq_len:] for h in histories]

    def repeat_offsets_of_rows(self, histories: Sequence[np.ndarray]) -> Offsets | None:
        """The model's repeat offsets (``model.repeat_bias``, or a baseline's fixed ones) of histories given as
        catalogue rows, over the model's input window (the last ``max_seq_len`` items), as
        ``unisrec.model.history_offsets`` gives them (add them to a (B, N) score matrix with
        ``unisrec.model.add_offsets``); None for a model without them."""
        return self._offsets_of_windows([w.astype(np.int64) for w in self._windows(histories)])

    def _offsets_of_windows(self, windows: Sequence[Sequence[int] | np.ndarray]) -> Offsets | None:
        """The model's repeat offsets of B input windows of item numbers (right-padded into (B, L) here)."""
        lengths = torch.tensor([len(w) for w in windows], dtype=torch.long)  # (B,)
        padded = torch.zeros(len(windows), int(lengths.max()), dtype=torch.long)  # (B, L)
        for b, w in enumerate(windows):
            padded[b, : len(w)] = torch.as_tensor(w, dtype=torch.long)
        with torch.no_grad():
            return self.model.repeat_offsets(padded.to(self.model.device), lengths.to(self.model.device))

    def repeat_offsets_of_texts(self, histories: Sequence[Sequence[str]]) -> Offsets | None:
        """The repeat offsets of histories given as item texts (``by_text``): each catalogue item whose text is
        exactly one of the window's texts gets the offset that item would get in the same history given by ids
        (the one per distinct item, and the last item's on the items with the last text), as ``exclude_seen``
        takes those items out; None for a model without offsets."""
        cut = [list(h)[-self.model.config.max_seq_len:] for h in histories]
        position: dict[str, int] = {}
        local = [[position.setdefault(t, len(position)) for t in h] for h in cut]  # a distinct text, a number
        offsets = self._offsets_of_windows(local)
        if offsets is None:
            return None
        with self._lock:  # the text index grows with add_items
            matched = [self.catalogue.rows_with_texts([text]) for text in position]  # text number -> rows
        rows, numbers, values = (t.cpu() for t in offsets)
        counts = torch.tensor([len(m) for m in matched], dtype=torch.long)[numbers]  # (S,) rows per offset
        items = torch.from_numpy(np.concatenate([matched[n] for n in numbers.tolist()] or [np.zeros(0, np.int64)]))
        return rows.repeat_interleave(counts), items, values.repeat_interleave(counts)

    def _top_rows_with_repeats(
        self, queries: Tensor, offsets: Offsets | None, window: int, k: int, seen: list[np.ndarray] |
        Callable[[], Sequence[np.ndarray]], flags: list[bool]
    ) -> list[list[tuple[int, float]]]:
        """``top_rows`` with the model's repeat offsets (``model.repeat_bias``) on the items of each history
        whose seen items stay in the ranking: only the items with an offset change their scores, and a history
        of ``window`` items gives offsets to at most that many items (more by text: every catalogue item with
        one of its texts; they are scored exactly in any case), so the top k + ``window`` without offsets holds
        every item of the true top k that has none; the items with one are scored exactly and merged in."""
        ranked = self.top_rows(queries, k + window, seen)
        assert offsets is not None
        with torch.no_grad():
            rows, items, values = (t.cpu() for t in offsets)
            table = self.scoring_table()
            out = []
            for b, pairs in enumerate(ranked):
                if flags[b]:  # the history's items are left out: no offset applies
                    out.append(pairs[:k])
                    continue
                mine = rows == b
                bonus: dict[int, float] = {}
                for item, value in zip(items[mine].tolist(), values[mine].tolist(), strict=True):
                    bonus[item] = bonus.get(item, 0.0) + value
                # long even when empty (by text, no catalogue item may have one of the history's texts)
                exact = (table[torch.tensor(list(bonus), dtype=torch.long, device=table.device)]
                         @ queries[b]).cpu().tolist()
                merged = {row: score for row, score in pairs if row not in bonus}
                merged.update({row: s + bonus[row] for row, s in zip(bonus, exact, strict=True)})
                # equal scores: the lower row first, as everywhere else (not the history's order of the offsets)
                out.append(sorted(merged.items(), key=lambda pair: (-pair[1], pair[0]))[:k])
        return out

    def recommend_lists(
        self, histories: Sequence[Sequence[str]], k: int = 10, exclude_seen: bool | Sequence[bool] = True,
        by_text: bool = False
    ) -> list[list[Recommendation]]:
        """Top-k recommendations of each history (item ids, or raw texts with ``by_text``), as lists;
        ``exclude_seen``: one flag for all histories, or one per history."""
        if len(self.catalogue) == 0:
            raise UnisrecError("the catalogue is empty; add items first (add_items)")
        k = checked_k(k)
        if not is_list_like(histories):
            raise UnisrecError("histories must be a list of histories, each a list of item ids (or texts)")
        histories = list(histories)
        if not by_text:
            return self.recommend_rows(self.resolve(histories), k, exclude_seen)
        if len(histories) == 0:
            return []
        flags = exclude_flags(exclude_seen, len(histories))
        queries = self.queries_of_texts(histories)

        def seen() -> list[np.ndarray]:  # under the lock (the text index grows with add_items), after the table
            return [self.catalogue.rows_with_texts(h) if flag else np.zeros(0, np.int64)
                    for h, flag in zip(histories, flags, strict=True)]

        if all(flags) or not self.model.has_repeat_offsets:
            return [self._format(r) for r in self.top_rows(queries, k, seen)]
        offsets = self.repeat_offsets_of_texts(histories)
        assert offsets is not None
        window = int(torch.bincount(offsets[0], minlength=len(histories)).max()) if len(offsets[0]) else 0
        return [self._format(r) for r in self._top_rows_with_repeats(queries, offsets, window, k, seen, flags)]

    # -- the DataFrame API (RecTools style): always a DataFrame user_id, item_id, score, rank, text -------

    def set_users(self, histories: Mapping[str, Sequence[str]]) -> None:
        """Known users and their histories (item ids, oldest first): what ``recommend(users=...)`` ranks for."""
        if not callable(getattr(histories, "items", None)):  # a dict, or a pandas Series (groupby(...).apply(list))
            raise UnisrecError(f"histories must map user ids to their histories, got {type(histories).__name__}")
        self.users = {str(u): [str(i) for i in as_list(h, f"the history of user {u!r}")] for u, h in histories.items()}

    def recommend(self, users: Iterable[str], k: int = 10, exclude_seen: bool | Sequence[bool] = True
                  ) -> pd.DataFrame:
        """Top-k of known users (``set_users``; ``unisrec.fit`` sets the dataset's users) as a DataFrame with
        columns user_id, item_id, score, rank (1..k), text; users in the order asked (a list, a pandas Series
        such as ``df.user_id.unique()``, a numpy array)."""
        known = self.users
        if isinstance(users, str | bytes | Mapping) or not isinstance(users, Iterable):
            raise UnisrecError("users must be a list of user ids")
        given = list(users)
        asked = [as_item_id(u) for u in given]
        unknown = [u for u, a in zip(given, asked, strict=True) if a not in known]  # as given (not as_item_id's mark)
        if unknown:
            some = ", ".join(repr(u) for u in unknown[:5])
            some += f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            examples = ", ".join(repr(u) for u in list(known)[:3]) or "none"
            raise UnisrecError(f"unknown users: {some} ({len(known)} users known, e.g. {examples}); "
                               "use recommend_histories for other histories")
        results = self.recommend_lists([known[u] for u in asked], k, exclude_seen) if asked else []
        return to_frame(results, asked)

    def recommend_histories(
        self, histories: Sequence[Sequence[str]], k: int = 10, exclude_seen: bool | Sequence[bool] = True,
        by_text: bool = False
    ) -> pd.DataFrame:
        """Top-k of ad-hoc histories (item ids, or texts with ``by_text``) as a DataFrame like ``recommend``;
        user_id is the history's position in ``histories``."""
        message = "histories must be a list of lists of item ids (or texts)"
        if not is_list_like(histories):
            raise UnisrecError(message)
        histories = list(histories)
        if not all(is_list_like(h) for h in histories):
            raise UnisrecError(message)
        histories = [list(h) for h in histories]  # numpy arrays and Series too, as recommend_lists takes them
        results = self.recommend_lists(histories, k, exclude_seen, by_text) if len(histories) else []
        return to_frame(results, list(range(len(histories))))

    def _format(self, ranked: list[tuple[int, float]]) -> list[Recommendation]:
        ids, texts = self.catalogue.item_ids, self.catalogue.texts
        return [Recommendation(ids[row], score, texts[row]) for row, score in ranked]

    # -- new items ---------------------------------------------------------------------------------------

    def _require_text_only(self, what: str) -> None:
        if not self.model.adds_items_by_text:
            repr_, architecture = self.model.config.item_repr, self.model.config.architecture
            kind = "transductive (text + ID)" if repr_ == "text+id" else "ID-only (SASRec)"
            if architecture != "unisrec":
                kind = f"{architecture} ({'text + ID' if repr_ == 'text+id' else 'ID-only'})"
            raise ItemConflictError(
                f"{what} needs an inductive (text-only) model; this model is {kind}, whose items also need "
                "a learned ID vector: fine-tune with --mode inductive to add items by their text alone"
            )

    def text_encoder(self) -> TextEncoder:
        """The run's language model, loaded once; its files must match the fingerprint recorded in the run."""
        from unisrec.text_encoder import TextEncoder  # the language-model stack, loaded on first use

        # not under self._lock, which every ranking takes: loading the language model and hashing its files may
        # take seconds; the encoding lock (texts wait for the encoder anyway) makes it load once
        with self._encode_lock:
            if self._encoder is None:
                info = self.text_encoder_info
                if "model" not in info:
                    raise UnisrecError("this model records no text encoder; pass the items' vectors instead")
                spec = TextConfig.from_saved(info)  # model, pooling, max length, precision as recorded
                encoder = TextEncoder(spec)
                recorded, found = info.get("fingerprint"), encoder.fingerprint()["digest"]
                if recorded and recorded != found:
                    raise UnisrecError(
                        f"language model '{spec.model}' differs from the one the run was trained with "
                        f"(fingerprint {found[:12]}, recorded {str(recorded)[:12]}); new texts would not match"
                    )
                if encoder.dim != self.model.text_dim:
                    raise UnisrecError(f"language model '{spec.model}' gives {encoder.dim}-d vectors; "
                                       f"the model expects {self.model.text_dim}")
                self._encoder = encoder
            return self._encoder

    def _check_room(self, count: int) -> None:
        cap, size = self.max_items, len(self.catalogue)
        if cap is not None and size + count > cap:
            raise CatalogueFullError(f"catalogue full: it holds {size} items and its cap is {cap} (--max-catalogue); "
                                     f"{count} more cannot be added")

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(M, D) float32 language-model vectors of ``texts``, in batches of ``encode_batch`` texts.

        One batch runs at a time across all threads (a lock per batch, so concurrent callers take turns batch
        by batch): the language model never holds more than one batch of activations.
        """
        encoder, texts = self.text_encoder(), list(texts)
        parts = [np.zeros((0, encoder.dim), dtype=np.float32)]
        for lo in range(0, len(texts), self.encode_batch):
            with self._encode_lock:
                parts.append(encoder.encode(texts[lo : lo + self.encode_batch]))
        return np.concatenate(parts)

    def add_items(
        self, texts: Sequence[str], ids: Sequence[str], vectors: np.ndarray | Tensor | None = None
    ) -> int:
        """Append items by their text (encoded now) or given (M, D) ``vectors``; returns the catalogue size."""
        self._require_text_only("adding items")
        texts, ids = as_list(texts, "texts"), as_list(ids, "ids")
        self.catalogue.check_new(ids, texts)
        self._check_room(len(ids))
        if vectors is None:
            vectors = self.encode_texts(texts)  # outside the lock: readers go on meanwhile
        new = torch.as_tensor(np.asarray(vectors, dtype=np.float32))  # (M, D)
        if new.ndim != 2 or new.shape != (len(ids), self.model.text_dim):
            raise UnisrecError(f"vectors must be ({len(ids)}, {self.model.text_dim}), got {tuple(new.shape)}")
        if not torch.isfinite(new).all():  # a NaN row would take a top-k place and be dropped from every list
            row = int((~torch.isfinite(new)).any(dim=1).nonzero()[0])
            raise UnisrecError(f"the text vector of item {ids[row]!r} is not finite (NaN or inf)")
        with self._lock:
            self.catalogue.check_new(ids, texts)  # again: another writer may have added them meanwhile
            self._check_room(len(ids))
            model = self.model
            items, table = self.tables()  # current ones, before the model changes
            centre = getattr(model, "text_center", None)  # (D,) with model.center_text
            # a centred model's first catalogue, persisted: the folder is held from the choice of the centre to the
            # write, so that every server of the run, and a restart's replay, centre on its first addition's mean
            first = centre is not None and model.n_items == 0
            shared = self.persist_dir if first and self.persist_dir is not None else None
            with waiting_for(shared / ".lock") if shared is not None else contextlib.nullcontext():
                added, added_scoring = self._add_to_model(model, ids, texts, new, centre if first else None, shared)
            self.catalogue.append(ids, texts)  # before the tables grow: a ranked row always has an id
            # longer views of stores with spare rows (only the new rows are written, nothing is copied while room
            # lasts): readers holding the old views see the same rows as before
            self._items_store, self._items = append_rows(items, added, self._items_store)
            self._table_store, self._table = append_rows(table, added_scoring, self._table_store)
            self._coarse = self._grown_coarse(len(table))
            self._key = _weights_key(model)
            if self._faiss is not None:
                try:
                    self._faiss.add(added_scoring.cpu().numpy())
                except Exception:  # the items are in (model, catalogue, tables, disk): the index is rebuilt from the
                    self._faiss = None  # table on its next use rather than left short of them
            return len(self.catalogue)


    def _add_to_model(self, model: SequenceModel, ids: list[str], texts: list[str], new: Tensor,
                      centre: Tensor | None, shared: Path | None) -> tuple[Tensor, Tensor]:
        """Adapt the (M, D) text vectors ``new``, persist them (``self.persist_dir``) and extend the model with them:
        all of it or, on any error, none (the model and the disk as they were). ``centre``: the text centre of a
        centred model's first catalogue, set here to the mean of the persisted folder's first addition (another
        server's, when one wrote it; ``shared``: that folder, whose lock the caller holds) or else of ``new``.
        Returns the (M, H) adapted vectors and their (M, H) scoring rows."""
        previous = None
        if centre is not None:
            # a pre-trained model's first catalogue: centred on its own mean, as pre-training centred each
            # domain and evaluate's zero-shot model centres the dataset; later additions keep that centre
            previous = centre.clone()
            files = _addition_files(shared) if shared is not None and shared.is_dir() else []
            first = _read_addition(files[0])[2] if files else new  # (M', D)
            assert first is not None
            centre.copy_(first.mean(0).to(centre))
        persisted = None
        try:
            # everything that can fail first, nothing else changed yet: only the new items are adapted, (M, H)
            added = adapted_items(model, text=new)
            with eval_mode(model):
                added_scoring = model.scoring_table(added)  # (M, H)
            # durable before anything changes: a kill -9 after the answer cannot lose it
            if self.persist_dir is not None:
                persisted = persist_addition(self.persist_dir, ids, texts, new, locked=shared is not None)
            model.extend_items(new)  # (N + M, D) text buffer, n_items + M: the model owns them
        except BaseException:  # the model and the disk as they were (a retry would add a persisted item twice)
            if persisted is not None:
                persisted.unlink(missing_ok=True)
            if previous is not None and centre is not None:
                centre.copy_(previous)
            raise
        return added, added_scoring

    def _grown_coarse(self, before: int) -> CoarseTable | None:
        """The coarse copy of the scoring table after an addition to a table of ``before`` rows: the previous one
        extended by the new rows, or built once the table reaches its minimum size."""
        assert self._table is not None
        if self._coarse is not None:
            return self._coarse.extended(self._table, self._table[before:])
        if before < MIN_COARSE_ITEMS <= len(self._table):  # too small until now; otherwise it was refused
            return CoarseTable.build(self._table)
        return None


# -- items added while serving: persisted beside the run -------------------------------------------------

def persist_addition(folder: str | Path, ids: Sequence[str], texts: Sequence[str], vectors: Tensor, *,
                     locked: bool = False) -> Path:
    """Write one addition (ids, texts, (M, D) vectors) atomically and fsynced as the next numbered file;
    ``locked``: the caller holds the folder's lock already."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # two servers of one run never take the same number
    with contextlib.nullcontext() if locked else waiting_for(folder / ".lock"):
        for stale in folder.glob(".*.safetensors.*.tmp"):  # a writer killed midway (none is live: we hold the lock)
            stale.unlink(missing_ok=True)
        files = _addition_files(folder)  # one listing for the ids on disk and the next number
        stored = {i for file in files for i in _addition_ids(file)}  # another server's too
        taken = [i for i in ids if i in stored]
        if taken:
            raise ItemConflictError(f"item id {taken[0]!r} is already in the catalogue (added by another server)")
        path = folder / f"{int(files[-1].stem) + 1 if files else 1:08d}.safetensors"
        save_tensors(path, {"text_vectors": vectors.float()}, {"ids": json.dumps(list(ids)),
                                                                "texts": json.dumps(list(texts))})
    return path


def _addition_files(folder: str | Path) -> list[Path]:
    return sorted((p for p in Path(folder).glob("*.safetensors") if p.stem.isdigit()), key=lambda p: int(p.stem))


def _addition_ids(path: Path) -> tuple[str, ...]:
    """The ids of an addition file, read once per process: a POST /items checks every earlier file, and reading
    each one's header every time cost 0.86 s per addition over 2,000 files against 0.19 s with this cache
    (``benchmarks/persist_additions.py``). A file is written once, atomically, and never changed, so its path,
    inode, modification time and size name its content; a folder cleared and written anew has new files."""
    stat = path.stat()
    return _addition_ids_of(str(path), stat.st_ino, stat.st_mtime_ns, stat.st_size)


@functools.cache
def _addition_ids_of(path: str, inode: int, mtime_ns: int, size: int) -> tuple[str, ...]:
    return tuple(_read_addition(Path(path), vectors=False)[0])


def _read_addition(path: Path, vectors: bool = True) -> tuple[list[str], list[str], Tensor | None]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
            tensor = handle.get_tensor("text_vectors") if vectors else None
        return json.loads(meta["ids"]), json.loads(meta["texts"]), tensor
    except (OSError, KeyError, ValueError, json.JSONDecodeError) as exc:
        raise UnisrecError(f"{path}: unreadable added-items file ({exc})") from None


def replay_additions(recommender: Recommender, folder: str | Path) -> int:
    """Add the items of every persisted addition in ``folder`` (in order, by their stored vectors). An item the
    catalogue holds already with the same text is skipped (a run saved with its added items, ``save_pretrained``
    into its own folder); the same id with another text is an error."""
    added = 0
    for path in _addition_files(folder):
        ids, texts, vectors = _read_addition(path)
        assert vectors is not None
        rows = recommender.catalogue.lookup(ids)  # (M,) -1: not in the catalogue
        known = [row >= 0 and recommender.catalogue.texts[row] == text for row, text in zip(rows, texts, strict=True)]
        keep = [n for n, k in enumerate(known) if not k]
        if keep:
            recommender.add_items([texts[n] for n in keep], [ids[n] for n in keep], vectors[keep])
        added += len(keep)
    return added


def to_frame(results: list[list[Recommendation]], users: Sequence[object]) -> pd.DataFrame:
    """Ranked lists -> DataFrame user_id, item_id, score, rank (1 = best), text; one block per user in order (a
    user with an empty list, every item seen, has no row: the frame is long, one row per recommendation)."""
    import pandas as pd

    rows = [
        {"user_id": user, "item_id": r.item_id, "score": r.score, "rank": rank, "text": r.text}
        for user, ranked in zip(users, results, strict=True)
        for rank, r in enumerate(ranked, start=1)
    ]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "score", "rank", "text"])
