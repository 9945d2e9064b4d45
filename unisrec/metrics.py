"""Ranking metrics from the 0-based rank of each target item in a full ranking.

rank = number of other items scored >= the target (ties are counted against the target, i.e. the
pessimistic convention: an item tied with the target is ranked above it).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def ranking_metrics(ranks: np.ndarray, ks: Sequence[int]) -> dict[str, float]:
    """``{"recall@K", "ndcg@K", "mrr@K"}`` averaged over targets; ranks (T,) are 0-based."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size == 0:
        raise ValueError("no targets to evaluate")
    if not np.isfinite(ranks).all() or (ranks < 0).any():
        raise ValueError("ranks must be finite and >= 0 (0 = the target ranked first)")
    gain = 1.0 / np.log2(ranks + 2.0)  # (T,) one relevant item per target: IDCG = 1
    reciprocal = 1.0 / (ranks + 1.0)
    out: dict[str, float] = {}
    for k in sorted(ks):
        hit = ranks < k
        out[f"recall@{k}"] = float(hit.mean())
        out[f"ndcg@{k}"] = float(np.where(hit, gain, 0.0).mean())
        out[f"mrr@{k}"] = float(np.where(hit, reciprocal, 0.0).mean())
    return out
