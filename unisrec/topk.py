"""Exact top-k of ``queries @ table.T`` over large item tables, in bounded memory.

``chunked_top_k`` scores the items chunk by chunk in float32 and keeps a running top-k.

``CoarseTable`` gives the same answer faster: the scan runs on a bfloat16 copy of the table (half the
memory traffic, and CPUs with bf16 dot-product instructions run it at twice the rate; it is used only on
devices with bf16 arithmetic, elsewhere bf16 is emulated and slower than float32), keeping a pool of
``k + POOL_EXTRA`` candidates per query, and the candidates are then rescored in float32. The result is
exact, not approximate, because every coarse score is within a proven bound ``E`` of the float32 score::

    |coarse - exact| <= c * ||q|| * max_j ||t_j||,   c = 3u + 4u^2 + H * 2^-23,   u = 2^-8 (bf16 rounding)

(inputs rounded to bf16, relative error u each; float32 accumulation over H terms; the result rounded to
bf16; the sum of |q_i t_i| bounded by ||q|| ||t|| by Cauchy-Schwarz). If ``A`` is the k-th best coarse
score, the true k-th score is at least ``A - E``, so every item of the true top k has a coarse score of at
least ``A - 2E``. A query whose pool ends below ``A - 2E`` therefore holds its whole true top k; any other
query is rescored with the exact float32 scan. The bound is checked against the running kernels when the
table is built (``CoarseTable.build`` returns None if they break it, and the exact scan is used).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from unisrec.errors import UnisrecError
from unisrec.growing_rows import append_rows
from unisrec.precision import native_bfloat16

SCORE_BUDGET = 1 << 24  # scores (queries x items) held at once by the chunked top-k: 64 MiB of float32
POOL_EXTRA = 64  # coarse candidates kept per query beyond k
MIN_COARSE_ITEMS = 16_384  # smaller tables are scanned exactly (the coarse pass would not pay for itself)
BF16_UNIT_ROUNDOFF = 2.0**-8


def chunked_top_k(
    queries: Tensor, table: Tensor, k: int, seen: Sequence[np.ndarray] | None = None
) -> tuple[Tensor, Tensor]:
    """(B, H) queries x (N, H) table -> (B, k') float32 scores and rows of the k' = min(k, N) best items.

    ``seen[b]`` rows are excluded for query b (score -inf: callers drop those). Items are scored in chunks
    of about ``SCORE_BUDGET / B``; a running top-k is merged with each chunk's, so the result is the top k of
    ``queries @ table.T``, best first, items of equal score in row order (the lower row first: the same answer
    whatever the chunking, and items with one vector, e.g. one text, always come in the same order). Queries
    and table may be bfloat16 (the coarse pass); scores are returned as float32 either way.
    """
    b, n = queries.shape[0], table.shape[0]
    k = min(k, n)
    best_scores = torch.empty(b, 0, dtype=torch.float32, device=queries.device)
    best_rows = torch.empty(b, 0, dtype=torch.long, device=queries.device)
    seen_b, seen_i = _seen_pairs(seen, b, queries.device)
    chunk = max(4096, SCORE_BUDGET // max(b, 1))
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        scores = (queries @ table[lo:hi].T).float()  # (B, C)
        if seen_b is not None and seen_i is not None:
            inside = (seen_i >= lo) & (seen_i < hi)
            scores[seen_b[inside], seen_i[inside] - lo] = float("-inf")
        chunk_scores, chunk_rows = top_k_lower_first(scores, min(k, hi - lo))  # (B, k)
        # the running best holds lower rows than the chunk, each in row order among equal scores: so is the merge
        merged = torch.cat([best_scores, chunk_scores], dim=1)  # (B, <= 2k)
        merged_rows = torch.cat([best_rows, chunk_rows + lo], dim=1)
        best_scores, order = top_k_lower_first(merged, min(k, merged.shape[1]))  # (B, k)
        best_rows = merged_rows.gather(1, order)
    return best_scores, best_rows


def top_k_lower_first(scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """(B, C) scores -> (B, k) the k best, best first, and their columns; equal scores: the lower column first.

    ``torch.topk`` leaves ties unordered and, at the k-th place, picks any of the tied columns; rows where a
    tie straddles the k-th place (rare but for duplicate vectors or excluded items at -inf) are sorted in full
    with a stable sort instead.
    """
    if k == 0:
        return scores.topk(0, dim=1)
    extra = int(scores.shape[1] > k)  # one more than asked: a tie across the cut shows as the (k+1)-th = the k-th
    values, cols = scores.topk(k + extra, dim=1)  # (B, k + extra)
    straddle = (values[:, k - 1] == values[:, k]) if extra else torch.zeros_like(values[:, 0], dtype=torch.bool)
    values, cols = values[:, :k], cols[:, :k]
    if bool(straddle.any()):
        rows = torch.nonzero(straddle).flatten()  # (R,)
        full, order = torch.sort(scores[rows], dim=1, descending=True, stable=True)  # (R, C)
        values[rows], cols[rows] = full[:, :k], order[:, :k]
    by_col = cols.argsort(dim=1)  # (B, k) the chosen columns in column order...
    cols = cols.gather(1, by_col)
    values, by_value = values.gather(1, by_col).sort(dim=1, descending=True, stable=True)  # ...then by score
    return values, cols.gather(1, by_value)


def _seen_pairs(
    seen: Sequence[np.ndarray] | None, b: int, device: torch.device
) -> tuple[Tensor | None, Tensor | None]:
    """(S,) query numbers and (S,) rows of every excluded (query, item) pair, or (None, None)."""
    if seen is None or not any(len(s) for s in seen):
        return None, None
    seen_b = torch.from_numpy(np.repeat(np.arange(b), [len(s) for s in seen])).to(device)  # (S,)
    seen_i = torch.from_numpy(np.concatenate(list(seen)).astype(np.int64)).to(device)  # (S,)
    return seen_b, seen_i


def error_coefficient(hidden: int) -> float:
    """c of the bound |coarse - exact| <= c ||q|| max||t|| for H = ``hidden`` (see the module docstring)."""
    u = BF16_UNIT_ROUNDOFF
    return 3 * u + 4 * u * u + hidden * 2.0**-23


@dataclass(frozen=True)
class CoarseTable:
    """A bfloat16 copy of a float32 scoring table, for the exact coarse-to-fine top-k."""

    table: Tensor  # (N, H) float32: the exact scores
    coarse: Tensor  # (N, H) bfloat16
    max_norm: float  # max_j ||table_j||
    coefficient: float  # c of the error bound
    store: Tensor | None = None  # (C, H) bfloat16 rows ``coarse`` views, with room for added items (``extended``)

    @classmethod
    def build(cls, table: Tensor, *, check_queries: int = 64, check_items: int = 8192,
              require_native: bool = True) -> CoarseTable | None:
        """The coarse copy of ``table`` (N, H), or None when it would not help or the bound fails here.

        The bound is checked on ``check_queries`` random unit queries against up to ``check_items`` rows:
        a kernel that breaks it (e.g. one accumulating in bfloat16) disables the coarse pass. So does a device
        without bf16 arithmetic (``unisrec.precision.native_bfloat16``): there the coarse scan is the slower one
        (16 histories over 100k items on one AVX2 thread: 140 ms against 32 ms in float32,
        ``results/benchmarks/serve_batch_avx2.jsonl``);
        ``require_native=False`` builds it anyway (benchmarks that time both paths on any machine).
        """
        n, h = table.shape
        if n < MIN_COARSE_ITEMS or table.dtype != torch.float32 or not bool(torch.isfinite(table).all()):
            return None
        if require_native and not native_bfloat16(table.device):  # emulated bf16 (AVX2-only CPU): ~10x slower
            return None
        coarse = table.to(torch.bfloat16)
        if not bool(torch.isfinite(coarse).all()):  # beyond the bf16 range
            return None
        made = cls(table, coarse, float(table.norm(dim=1).max()), error_coefficient(h))
        generator = torch.Generator().manual_seed(0)
        queries = torch.nn.functional.normalize(torch.randn(check_queries, h, generator=generator), dim=1)
        rows = torch.randperm(n, generator=generator)[:check_items].to(table.device)
        queries = queries.to(table.device)
        sample = table[rows]  # (I, H)
        exact = queries @ sample.T  # (Q, I)
        approx = (queries.to(torch.bfloat16) @ coarse[rows].T).float()
        bound = made.coefficient * queries.norm(dim=1, keepdim=True) * sample.norm(dim=1)[None, :]
        return made if bool(((approx - exact).abs() <= bound).all()) else None

    def extended(self, table: Tensor, added: Tensor) -> CoarseTable | None:
        """The coarse copy of ``table`` (N + M, H), whose first N rows are this one's table and its last M rows
        ``added`` (M, H): only the new rows are converted (into spare rows of the bfloat16 store, ``append_rows``);
        the error bound's check of ``build`` is about the kernel and holds for them. None when a new row is not
        finite in bfloat16 (the table is then scanned exactly, as ``build`` would decide)."""
        low = added.to(torch.bfloat16)  # (M, H)
        if not (bool(torch.isfinite(added).all()) and bool(torch.isfinite(low).all())):
            return None
        store, coarse = append_rows(self.coarse, low, self.store)
        norm = float(added.norm(dim=1).max()) if len(added) else 0.0
        return CoarseTable(table, coarse, max(self.max_norm, norm), self.coefficient, store)

    def top_k(self, queries: Tensor, k: int, seen: Sequence[np.ndarray] | None = None) -> tuple[Tensor, Tensor]:
        """(B, H) float32 queries -> (B, k') scores and rows: the items of ``chunked_top_k(queries, table)``
        in its order (equal scores: the lower row first), the scores equal up to float32 summation order."""
        n = self.table.shape[0]
        k = min(k, n)
        pool = min(n, k + POOL_EXTRA)
        approx, rows = chunked_top_k(queries.to(torch.bfloat16), self.coarse, pool, seen)  # (B, P)
        margin = 2 * self.coefficient * self.max_norm * queries.norm(dim=1)  # (B,) = 2E
        kth, last = approx[:, k - 1], approx[:, -1]
        certain = ~torch.isfinite(last) | (last < kth - margin) | (pool == n)  # (B,)
        by_row = rows.argsort(dim=1)  # (B, P) the pool in row order, for the tie rule of the rescoring's top k
        rows, approx = rows.gather(1, by_row), approx.gather(1, by_row)
        exact = torch.einsum("bh,bph->bp", queries, self.table[rows])  # (B, P) float32 rescoring
        exact = exact.masked_fill(~torch.isfinite(approx), float("-inf"))  # seen items stay out
        scores, order = top_k_lower_first(exact, k)  # (B, k)
        rows = rows.gather(1, order)
        if not bool(certain.all()):  # these queries' pools may miss an item of the true top k
            redo = torch.nonzero(~certain).flatten()  # (R,)
            redo_seen = None if seen is None else [seen[int(i)] for i in redo]
            scores[redo], rows[redo] = chunked_top_k(queries[redo], self.table, k, redo_seen)
        return scores, rows


# -- the FAISS backend: an exact inner-product index ----------------------------------------------------------


class FlatIndex(Protocol):
    """What unisrec uses of a FAISS index (``faiss.IndexFlatIP``)."""

    ntotal: int

    def add(self, x: np.ndarray) -> None: ...

    def search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...


def faiss_module() -> ModuleType:
    """The ``faiss`` module, or an error saying how to install it."""
    try:
        import faiss
    except ImportError:
        raise UnisrecError("FAISS is not installed: pip install faiss-cpu (or 'unisrec[serve]')") from None
    return faiss


def flat_ip_index(vectors: Tensor | np.ndarray) -> FlatIndex:
    """An exact inner-product FAISS index (IndexFlatIP) holding the (N, H) ``vectors``."""
    faiss = faiss_module()
    matrix = np.ascontiguousarray(_numpy(vectors), dtype=np.float32)  # (N, H)
    index: FlatIndex = faiss.IndexFlatIP(matrix.shape[1])
    if len(matrix):
        index.add(matrix)
    return index


def faiss_search(
    index: FlatIndex, queries: Tensor | np.ndarray, k: int, seen: Sequence[np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(B, H) queries -> (B, k) scores and rows, best first; ``seen[b]`` rows left out (row -1, score -inf).

    FAISS has no per-query exclusion list, so it is asked for k + the longest seen list (+ 1) and the seen rows
    are then dropped; every query still gets its exact top k of the remaining items. Equal scores come lower
    row first, as from ``chunked_top_k``: FAISS breaks ties its own way, so a query whose last result ties with
    its k-th is asked again for twice as many until the tie is whole.
    """
    q = np.ascontiguousarray(_numpy(queries), dtype=np.float32)  # (B, H)
    extra = max((len(s) for s in seen), default=0) if seen is not None else 0
    scores = np.full((len(q), k), -np.inf, dtype=np.float32)
    rows = np.full((len(q), k), -1, dtype=np.int64)
    wanted = min(k + extra + 1, index.ntotal)
    if wanted == 0 or k == 0:
        return scores, rows
    todo = np.arange(len(q))  # queries still to answer
    while len(todo):
        found_scores, found_rows = index.search(q[todo], wanted)  # (T, wanted)
        again: list[int] = []
        for n, b in enumerate(todo.tolist()):
            keep = found_rows[n] >= 0
            if seen is not None and len(seen[b]):
                keep &= ~np.isin(found_rows[n], seen[b])
            kept = np.flatnonzero(keep)
            if len(kept) > k and found_scores[n, kept[-1]] == found_scores[n, kept[k - 1]] and wanted < index.ntotal:
                again.append(b)  # the tie at the k-th place may go on beyond what was asked
                continue
            order = np.lexsort((found_rows[n, kept], -found_scores[n, kept]))[:k]  # by score, then row
            top = kept[order]
            scores[b, : len(top)], rows[b, : len(top)] = found_scores[n, top], found_rows[n, top]
        todo, wanted = np.array(again, dtype=np.int64), min(2 * wanted, index.ntotal)
    return scores, rows


def _numpy(x: Tensor | np.ndarray) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
