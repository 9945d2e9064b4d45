"""Ranks and metrics, cross-checked against ir-measures (pytrec_eval) on random rankings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unisrec.evaluate import count_ranks
from unisrec.metrics import ranking_metrics

ir_measures = pytest.importorskip("ir_measures")


def test_metrics_equal_ir_measures_on_random_rankings() -> None:
    rng = np.random.default_rng(0)
    n_users, n_items = 60, 200
    scores = rng.normal(size=(n_users, n_items))
    targets = rng.integers(0, n_items, size=n_users)
    ranks = count_ranks(torch.from_numpy(scores), torch.eye(n_items, dtype=torch.float64),
                        torch.from_numpy(targets), item_chunk=64)
    ours = ranking_metrics(ranks.numpy(), (10, 20, 50))
    qrels = {f"u{u}": {f"i{targets[u]}": 1} for u in range(n_users)}
    run = {f"u{u}": {f"i{i}": float(scores[u, i]) for i in range(n_items)} for u in range(n_users)}
    from ir_measures import RR, R, nDCG

    measures = [m @ k for k in (10, 20, 50) for m in (nDCG, R, RR)]
    theirs = ir_measures.calc_aggregate(measures, qrels, run)
    for k in (10, 20, 50):
        assert ours[f"ndcg@{k}"] == pytest.approx(theirs[nDCG @ k], abs=1e-12)
        assert ours[f"recall@{k}"] == pytest.approx(theirs[R @ k], abs=1e-12)
        assert ours[f"mrr@{k}"] == pytest.approx(theirs[RR @ k], abs=1e-12)


def test_hand_computed_metrics() -> None:
    m = ranking_metrics(np.array([0, 1, 9, 10, 60]), (10,))
    assert m["recall@10"] == pytest.approx(3 / 5)
    assert m["ndcg@10"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(11)) / 5)
    assert m["mrr@10"] == pytest.approx((1 + 1 / 2 + 1 / 10) / 5)


def test_ranks_are_pessimistic_on_ties_and_chunk_independent() -> None:
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    table = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [2.0, 0.0]])
    targets = torch.tensor([0, 3])
    for chunk in (1, 2, 5, 100):
        ranks = count_ranks(queries, table, targets, chunk)
        # user 0: item 4 scores higher, item 1 ties -> rank 2; user 1: nothing above -> 0
        assert ranks.tolist() == [2, 0]


def test_exclude_seen_never_removes_the_target() -> None:
    queries = torch.tensor([[1.0, 0.0]])
    table = torch.tensor([[3.0, 0.0], [2.0, 0.0], [1.0, 0.0]])
    targets = torch.tensor([2])
    seen = (torch.tensor([0, 0]), torch.tensor([0, 2]))  # item 0 seen; the target was seen too
    assert count_ranks(queries, table, targets, 2).tolist() == [2]
    assert count_ranks(queries, table, targets, 2, seen).tolist() == [1]


def test_empty_ranks_are_an_error() -> None:
    with pytest.raises(ValueError, match="no targets"):
        ranking_metrics(np.zeros(0), (10,))
