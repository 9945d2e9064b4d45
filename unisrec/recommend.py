"""Recommendations for real users: top-k for any history, new items added by their text alone.

A ``Recommender`` joins a model to its ``Catalogue`` (item ids, texts, id -> index). Scores are the model's
logits: ``query_vectors(s) . scoring_table(v)`` (cosine / temperature for text models), computed against a
scoring table that is built once (in item chunks, bounded memory) and extended, not rebuilt, when items are
added. Top-k runs in item chunks too (a running top-k merged chunk by chunk), so memory stays bounded by
about 2^24 scores whatever the catalogue size; from 16k items it scans a bfloat16 copy of the table first
and rescores the candidates in float32, with a proven error bound that keeps the result exact (see
``unisrec.topk``); ``backend="faiss"`` searches an exact inner-product index instead (the same top-k, see
``unisrec.export``).

Histories are lists of item ids (strings, as in the dataset; an unknown id is an error naming it), or with
``by_text=True`` lists of raw item texts encoded by the run's language model (text-only models). A history
longer than the model's ``max_seq_len`` is cut to its last ``max_seq_len`` items (as in training).
``exclude_seen`` removes the history's items from the ranking (for texts: catalogue items with that exact text).

New items (``add_items``) are encoded with the language model recorded in the run (its file fingerprint is
checked) and join the catalogue with no retraining. Only inductive (text-only) models accept them: a
transductive model (text + ID) would have no learned ID vector for them, and an ID-only model no text path.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

import numpy as np
import torch
from torch import Tensor

from unisrec.errors import UnisrecError
from unisrec.topk import CoarseTable, chunked_top_k

if TYPE_CHECKING:
    from unisrec.model import UniSRec
    from unisrec.text_encoder import TextEncoder

Backend = Literal["torch", "faiss"]
TABLE_CHUNK = 8192  # items adapted at once when building the scoring table
PACK_TOKENS = 256  # history items encoded together (one attention block)
ENCODE_BATCH = 64  # texts per language-model pass in ``Recommender.encode_texts`` (one pass at a time)


class UnknownItemError(UnisrecError):
    """History items that are not in the catalogue; ``positions`` = (history, position) of each."""

    def __init__(self, unknown: list[tuple[int, int, str]]) -> None:
        self.unknown = unknown
        names = ", ".join(repr(item) for _, _, item in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        super().__init__(f"unknown item id(s) {names}{more}; every history entry must be an item id of the catalogue")


class ItemConflictError(UnisrecError):
    """New items that cannot join the catalogue (duplicate ids, a model without a text-only item path)."""


class CatalogueFullError(ItemConflictError):
    """New items that would take the catalogue over ``Recommender.max_items``."""


@dataclass(frozen=True)
class Recommendation:
    item_id: str
    score: float  # the model's logit: cosine / temperature (text models) or a dot product (SASRec)
    text: str


class Catalogue:
    """The items a model ranks: ids (str), texts, and the id -> row map (row = index into the item table)."""

    def __init__(self, item_ids: Sequence[Any], texts: Sequence[str] | None = None) -> None:
        ids = [str(i) for i in item_ids]
        texts = list(texts) if texts is not None else [""] * len(ids)
        if len(texts) != len(ids):
            raise UnisrecError(f"{len(ids)} item ids but {len(texts)} texts")
        self.item_ids: list[str] = []
        self.texts: list[str] = []
        self._index: dict[str, int] = {}
        self._by_text: dict[str, list[int]] | None = None
        self.append(ids, texts)

    def __len__(self) -> int:
        return len(self.item_ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._index

    def check_new(self, ids: Sequence[str], texts: Sequence[str]) -> None:
        """Raise naming the first problem: lengths, non-strings, empty ids, ids already known or repeated."""
        if len(ids) != len(texts):
            raise UnisrecError(f"{len(ids)} item ids but {len(texts)} texts")
        for value, what in [*((i, "item id") for i in ids), *((t, "item text") for t in texts)]:
            if not isinstance(value, str):
                raise UnisrecError(f"every {what} must be a string, got {value!r}")
        if any(not i for i in ids):
            raise UnisrecError("item ids must be non-empty strings")
        existing = [i for i in ids if i in self._index]
        if existing:
            raise ItemConflictError(f"item id {existing[0]!r} is already in the catalogue")
        seen: set[str] = set()
        for item in ids:
            if item in seen:
                raise ItemConflictError(f"item id {item!r} is given twice")
            seen.add(item)

    def append(self, ids: Sequence[str], texts: Sequence[str]) -> None:
        self.check_new(ids, texts)
        start = len(self.item_ids)
        self.item_ids.extend(ids)
        self.texts.extend(texts)
        self._index.update((item, start + offset) for offset, item in enumerate(ids))
        if self._by_text is not None:
            for offset, text in enumerate(texts):
                self._by_text.setdefault(text, []).append(start + offset)

    def lookup(self, ids: Sequence[str]) -> np.ndarray:
        """(M,) int64 rows of ``ids``, -1 for ids not in the catalogue."""
        return np.asarray([self._index.get(i, -1) for i in ids], dtype=np.int64)

    def indices(self, history: Sequence[str], history_number: int = 0) -> np.ndarray:
        """(L,) int64 rows of the items of one history; unknown ids raise ``UnknownItemError``."""
        rows = [self._index.get(_as_id(item), -1) for item in history]  # -1: unknown
        if -1 in rows:
            unknown = [(history_number, pos, str(item)) for pos, (item, row) in enumerate(zip(history, rows,
                                                                                               strict=True))
                       if row < 0]
            raise UnknownItemError(unknown)
        return np.asarray(rows, dtype=np.int64)

    def search(self, query: str, limit: int) -> list[int]:
        """Rows of the first ``limit`` items whose text or id contains ``query`` (case-insensitive), in order."""
        needle = query.casefold()
        rows = []
        for row, (item, text) in enumerate(zip(self.item_ids, self.texts, strict=True)):
            if needle in text.casefold() or needle in item.casefold():
                rows.append(row)
                if len(rows) >= limit:
                    break
        return rows

    def rows_with_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(M,) rows of the catalogue items whose text is exactly one of ``texts``.

        Builds its text index on first use and ``append`` extends it: a ``Recommender`` calls it under its lock.
        """
        if self._by_text is None:
            self._by_text = {}
            for row, text in enumerate(self.texts):
                self._by_text.setdefault(text, []).append(row)
        rows = [row for text in set(texts) for row in self._by_text.get(text, [])]
        return np.asarray(sorted(rows), dtype=np.int64)


def _as_id(item: object) -> str:
    """Item ids are strings; integers (e.g. MovieLens ids) are accepted as their decimal string."""
    if isinstance(item, str):
        return item
    if isinstance(item, int | np.integer) and not isinstance(item, bool):
        return str(item)
    return "\0not an id"  # no catalogue id: reported as unknown


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


def adapted_items(model: UniSRec, text: Tensor | None = None) -> Tensor:
    """(N, H) adapted vectors of all items, or (M, H) of new items' text vectors ``text`` (M, D).

    Built in chunks of ``TABLE_CHUNK`` items, so the adaptor's (chunk, K*H) intermediate stays small.
    """
    device = next(model.parameters()).device
    with eval_mode(model):
        if text is not None:
            parts = [model.item_table(text=text[lo:lo + TABLE_CHUNK].to(device))
                     for lo in range(0, len(text), TABLE_CHUNK)]
        else:
            rows = torch.arange(model.n_items, device=device)
            parts = [model.item_table(rows[lo:lo + TABLE_CHUNK]) for lo in range(0, len(rows), TABLE_CHUNK)]
        if not parts:
            return torch.zeros(0, model.config.hidden_size, device=device)
        return torch.cat(parts)  # (N, H)


class Recommender:
    """A model, its catalogue and a cached scoring table; thread-safe for one writer and many readers.

    ``text_encoder``: the run's recorded language-model spec (``config.json`` "text_encoder"), used to encode
    new item texts and text histories.
    """

    def __init__(
        self,
        model: UniSRec,
        catalogue: Catalogue,
        text_encoder: dict[str, Any] | None = None,
        *,
        backend: Backend = "torch",
    ) -> None:
        if len(catalogue) != model.n_items:
            raise UnisrecError(f"catalogue of {len(catalogue)} items for a model of {model.n_items} items")
        if backend not in ("torch", "faiss"):
            raise UnisrecError(f"backend must be torch or faiss, got {backend!r}")
        self.model, self.catalogue, self.backend = model, catalogue, backend
        self.text_encoder_info = dict(text_encoder or {})
        self._lock = threading.RLock()
        self._encoder: TextEncoder | None = None
        self._items: Tensor | None = None  # (N, H) adapted item vectors: what histories are made of
        self._table: Tensor | None = None  # (N, H) scoring table (the same tensor for SASRec)
        self._coarse: CoarseTable | None = None  # its bfloat16 copy for the exact coarse-to-fine top-k
        self._key: tuple[tuple[int, int], ...] = ()
        self._faiss: Any = None
        self.users: dict[str, list[str]] = {}  # known users' histories (``set_users``)
        self.run_dir: Any = None  # the run folder it was trained in (``unisrec.fit``), if any
        self.persist_dir: Any = None  # additions are also written here (``persist_additions``), if set
        self.max_items: int | None = None  # add_items refuses to grow the catalogue past this (CatalogueFullError)
        self.encode_batch = ENCODE_BATCH  # texts per language-model pass
        self._encode_lock = threading.Lock()  # one language-model pass at a time, whatever the calling threads

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
                self._table = self.model.scoring_table(self._items).contiguous()
                self._coarse = CoarseTable.build(self._table)
                self._key, self._faiss = key, None
            return self._items, self._table

    def scoring_table(self) -> Tensor:
        """(N, H) item vectors whose inner product with ``query_vectors`` is the model's logit (cached)."""
        return self.tables()[1]

    def faiss_index(self) -> Any:
        """The exact inner-product FAISS index of the scoring table (built on first use)."""
        from unisrec.export import flat_ip_index

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
        device = next(model.parameters()).device
        cut = [h[-model.config.max_seq_len:] for h in histories]
        unique, local = np.unique(np.concatenate(cut), return_inverse=True)  # (M,), (sum L,)
        items, _ = self.tables()
        with eval_mode(model):
            table = items[torch.from_numpy(unique).to(device)]  # (M, H): only the items used
            return self._queries([len(h) for h in cut], local, table)

    def queries_of_texts(self, histories: Sequence[Sequence[str]]) -> Tensor:
        """Raw item texts of B histories -> (B, H) query vectors (text-only models)."""
        self._require_text_only("recommendations for histories of item texts")
        cut = [list(h)[-self.model.config.max_seq_len:] for h in histories]
        for number, history in enumerate(cut):
            if not history or not all(isinstance(t, str) for t in history):
                raise UnisrecError(f"history {number} must be a non-empty list of item texts")
        position: dict[str, int] = {}
        local = np.asarray([position.setdefault(t, len(position)) for h in cut for t in h], dtype=np.int64)
        vectors = torch.from_numpy(self.encode_texts(list(position)))  # (M, D): each distinct text once
        device = next(self.model.parameters()).device
        with eval_mode(self.model):
            table = self.model.item_table(text=vectors.to(device))  # (M, H)
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
        if k < 1:
            raise UnisrecError(f"k must be >= 1, got {k}")
        if self.backend == "faiss":
            from unisrec.export import faiss_search

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
        if not histories:
            return []
        flags = [exclude_seen] * len(histories) if isinstance(exclude_seen, bool) else list(exclude_seen)
        if len(self.catalogue) == 0:
            return [[] for _ in histories]
        queries = self.queries_of_rows(histories)
        seen = [np.unique(h) if flag else h[:0] for h, flag in zip(histories, flags, strict=True)]
        return [self._format(r) for r in self.top_rows(queries, k, seen)]

    def recommend_lists(
        self, histories: Sequence[Sequence[str]], k: int = 10, exclude_seen: bool = True, by_text: bool = False
    ) -> list[list[Recommendation]]:
        """Top-k recommendations of each history (item ids, or raw texts with ``by_text``), as lists."""
        if len(self.catalogue) == 0:
            raise UnisrecError("the catalogue is empty; add items first (add_items)")
        if not by_text:
            return self.recommend_rows(self.resolve(histories), k, exclude_seen)
        queries = self.queries_of_texts(histories)

        def seen() -> list[np.ndarray]:  # under the lock (the text index grows with add_items), after the table
            return [self.catalogue.rows_with_texts(h) if exclude_seen else np.zeros(0, np.int64) for h in histories]

        return [self._format(r) for r in self.top_rows(queries, k, seen)]

    # -- the DataFrame API (RecTools style): always a DataFrame user_id, item_id, score, rank, text -------

    def set_users(self, histories: Mapping[str, Sequence[str]]) -> None:
        """Known users and their histories (item ids, oldest first): what ``recommend(users=...)`` ranks for."""
        self.users = {str(u): [str(i) for i in h] for u, h in histories.items()}

    def recommend(self, users: Sequence[Any], k: int = 10, exclude_seen: bool = True) -> Any:
        """Top-k of known users (``set_users``; ``unisrec.fit`` sets the dataset's users) as a DataFrame with
        columns user_id, item_id, score, rank (1..k), text; users in the order asked."""
        known = self.users
        if isinstance(users, str) or not isinstance(users, Sequence):
            raise UnisrecError("users must be a list of user ids")
        asked = [_as_id(u) for u in users]
        unknown = [u for u in asked if u not in known]
        if unknown:
            some = ", ".join(repr(u) for u in unknown[:5])
            some += f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
            examples = ", ".join(repr(u) for u in list(known)[:3]) or "none"
            raise UnisrecError(f"unknown users: {some} ({len(known)} users known, e.g. {examples}); "
                               "use recommend_histories for other histories")
        results = self.recommend_lists([known[u] for u in asked], k, exclude_seen) if asked else []
        return to_frame(results, asked)

    def recommend_histories(
        self, histories: Sequence[Sequence[str]], k: int = 10, exclude_seen: bool = True, by_text: bool = False
    ) -> Any:
        """Top-k of ad-hoc histories (item ids, or texts with ``by_text``) as a DataFrame like ``recommend``;
        user_id is the history's position in ``histories``."""
        if isinstance(histories, str) or not all(isinstance(h, Sequence) and not isinstance(h, str)
                                                 for h in histories):
            raise UnisrecError("histories must be a list of lists of item ids (or texts)")
        results = self.recommend_lists(histories, k, exclude_seen, by_text) if len(histories) else []
        return to_frame(results, list(range(len(histories))))

    def _format(self, ranked: list[tuple[int, float]]) -> list[Recommendation]:
        ids, texts = self.catalogue.item_ids, self.catalogue.texts
        return [Recommendation(ids[row], score, texts[row]) for row, score in ranked]

    # -- new items ---------------------------------------------------------------------------------------

    def _require_text_only(self, what: str) -> None:
        repr_ = self.model.config.item_repr
        if repr_ != "text":
            kind = "transductive (text + ID)" if repr_ == "text+id" else "ID-only (SASRec)"
            raise ItemConflictError(
                f"{what} needs an inductive (text-only) model; this model is {kind}, whose items also need "
                "a learned ID vector: fine-tune with --mode inductive to add items by their text alone"
            )

    def text_encoder(self) -> TextEncoder:
        """The run's language model, loaded once; its files must match the fingerprint recorded in the run."""
        from unisrec.config import TextConfig
        from unisrec.text_encoder import TextEncoder

        with self._lock:
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
        texts, ids = list(texts), list(ids)
        self.catalogue.check_new(ids, texts)
        self._check_room(len(ids))
        if vectors is None:
            vectors = self.encode_texts(texts)  # outside the lock: readers go on meanwhile
        new = torch.as_tensor(np.asarray(vectors, dtype=np.float32))  # (M, D)
        if new.ndim != 2 or new.shape != (len(ids), self.model.text_dim):
            raise UnisrecError(f"vectors must be ({len(ids)}, {self.model.text_dim}), got {tuple(new.shape)}")
        with self._lock:
            self.catalogue.check_new(ids, texts)  # again: another writer may have added them meanwhile
            self._check_room(len(ids))
            if self.persist_dir is not None:  # durable before anything changes: a kill -9 after the answer
                persist_addition(self.persist_dir, ids, texts, new)  # cannot lose it
            model = self.model
            items, table = self.tables()  # current ones, before the model changes
            current: Tensor = model.item_text  # (N, D) buffer
            model.item_text = torch.cat([current, new.to(current.device)])  # (N + M, D)
            model.n_items += len(ids)
            added = adapted_items(model, text=new)  # (M, H): only the new items are adapted
            added_scoring = model.scoring_table(added)  # (M, H)
            self.catalogue.append(ids, texts)  # before the tables grow: a ranked row always has an id
            # new tensors: readers holding the old ones are unaffected
            self._items, self._table = torch.cat([items, added]), torch.cat([table, added_scoring])
            self._coarse = CoarseTable.build(self._table)  # a fresh copy: the old one serves readers meanwhile
            self._key = _weights_key(model)
            if self._faiss is not None:
                self._faiss.add(added_scoring.cpu().numpy())
            return len(self.catalogue)


# -- items added while serving: persisted beside the run -------------------------------------------------

ADDED_DIR = "catalogue"  # RUN/catalogue/NNNNNNNN.safetensors: one file per addition, replayed in order


def persist_addition(folder: Any, ids: Sequence[str], texts: Sequence[str], vectors: Tensor) -> Any:
    """Write one addition (ids, texts, (M, D) vectors) atomically and fsynced as the next numbered file."""
    import json
    from pathlib import Path

    from unisrec.checkpoint import save_tensors
    from unisrec.locking import waiting_for

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with waiting_for(folder / ".lock"):  # two servers of one run never take the same number
        for stale in folder.glob(".*.safetensors.*.tmp"):  # a writer killed midway (none is live: we hold the lock)
            stale.unlink(missing_ok=True)
        numbers = [int(p.stem) for p in folder.glob("*.safetensors") if p.stem.isdigit()]
        path = folder / f"{max(numbers, default=0) + 1:08d}.safetensors"
        save_tensors(path, {"text_vectors": vectors.float()}, {"ids": json.dumps(list(ids)),
                                                                "texts": json.dumps(list(texts))})
    return path


def replay_additions(recommender: Recommender, folder: Any) -> int:
    """Add the items of every persisted addition in ``folder`` (in order, by their stored vectors)."""
    import json
    from pathlib import Path

    from safetensors import safe_open

    files = sorted((p for p in Path(folder).glob("*.safetensors") if p.stem.isdigit()), key=lambda p: int(p.stem))
    added = 0
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
                vectors = handle.get_tensor("text_vectors")
            ids, texts = json.loads(meta["ids"]), json.loads(meta["texts"])
        except (OSError, KeyError, ValueError, json.JSONDecodeError) as exc:
            raise UnisrecError(f"{path}: unreadable added-items file ({exc})") from None
        recommender.add_items(texts, ids, vectors)
        added += len(ids)
    return added


# -- loading and saving a model with its catalogue ------------------------------------------------------

CHECKPOINT_KEYS = ("format", "format_version", "unisrec_version", "model", "n_items", "text_dim", "parameters")


def load_model(run_dir: Any, device: str | torch.device = "cpu", backend: Backend = "torch") -> UniSRec:
    """A saved run (``finetune``) as an eval-mode model with its catalogue attached (``model.recommender``).

    A pre-trained run (no catalogue of its own) loads with an empty catalogue: ``add_items`` fills it
    (zero-shot recommendations on a new domain).
    """
    from pathlib import Path

    from unisrec.checkpoint import from_pretrained, read_items

    loaded, config = from_pretrained(run_dir, device)
    # baselines load too and share the interface serving uses (SequenceModel + packed_sequence_vectors),
    # except that only UniSRec adds items by text (Recommender checks the item representation)
    model = cast("UniSRec", loaded)
    if model.n_items:
        ids, texts = read_items(run_dir)
        if len(ids) != model.n_items:
            raise UnisrecError(f"{Path(run_dir) / 'items.parquet'}: {len(ids)} items for a model of {model.n_items}")
    else:
        ids, texts = [], []
    model.eval()
    model.saved_info = {k: v for k, v in config.items() if k not in CHECKPOINT_KEYS}
    model.recommender = Recommender(model, Catalogue(ids, texts), config.get("text_encoder"), backend=backend)
    added = Path(run_dir) / ADDED_DIR
    if added.is_dir():  # items added while it was served (``unisrec serve``) come back
        replay_additions(model.recommender, added)
    return model


def save_model(model: UniSRec, directory: Any) -> Any:
    """``save_pretrained`` with the catalogue (ids, texts, text vectors of added items) and the run's records."""
    from unisrec.checkpoint import save_pretrained

    recommender = model.recommender
    extra = dict(model.saved_info)
    if recommender is None:
        return save_pretrained(model, directory, extra=extra, save_text=model.n_items > 0)
    catalogue = recommender.catalogue
    if recommender.text_encoder_info:
        extra["text_encoder"] = recommender.text_encoder_info
    if model.n_items and extra.get("kind") == "pretrained":
        extra.pop("kind")  # items were added: it now ranks a catalogue of its own
    if not model.n_items:
        return save_pretrained(model, directory, extra=extra, save_text=False)
    return save_pretrained(model, directory, item_ids=catalogue.item_ids, item_texts=catalogue.texts, extra=extra)


def recommender_of(model: UniSRec) -> Recommender:
    if model.recommender is None:
        raise UnisrecError(
            "this model has no item catalogue: load a run with UniSRec.from_pretrained(run_dir) or call "
            "model.set_catalogue(item_ids, texts)"
        )
    return model.recommender


def recommend(
    model: UniSRec, histories: Sequence[Any], k: int = 10, exclude_seen: bool = True, by_text: bool = False
) -> Any:
    """One history (a list of str) -> a list of ``Recommendation``; many (a list of lists) -> a DataFrame
    with columns history (its position in the input), rank (1 = best), item_id, score, text."""
    if isinstance(histories, str) or not isinstance(histories, Sequence) or len(histories) == 0:
        raise UnisrecError("give one history (a list of item ids) or a non-empty list of histories")
    if all(isinstance(entry, str) for entry in histories):
        return recommender_of(model).recommend_lists([histories], k, exclude_seen, by_text)[0]
    if not all(isinstance(h, Sequence) and not isinstance(h, str) for h in histories):
        raise UnisrecError("a history is a list of item ids (or texts); got a mix of lists and other values")
    results = recommender_of(model).recommend_lists(histories, k, exclude_seen, by_text)
    frame = to_frame(results, list(range(len(results))))
    return frame.rename(columns={"user_id": "history"})[["history", "rank", "item_id", "score", "text"]]


def to_frame(results: list[list[Recommendation]], users: Sequence[Any]) -> Any:
    """Ranked lists -> DataFrame user_id, item_id, score, rank (1 = best), text; one block per user in order."""
    import pandas as pd

    rows = [
        {"user_id": user, "item_id": r.item_id, "score": r.score, "rank": rank, "text": r.text}
        for user, ranked in zip(users, results, strict=True)
        for rank, r in enumerate(ranked, start=1)
    ]
    return pd.DataFrame(rows, columns=["user_id", "item_id", "score", "rank", "text"])
