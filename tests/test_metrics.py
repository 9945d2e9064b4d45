"""Ranks and metrics, cross-checked against ir-measures (pytrec_eval) on random rankings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unisrec.config import EvalConfig
from unisrec.errors import ConfigError, UnisrecError
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


@pytest.mark.parametrize("chunk", [64, 4096])
def test_copies_of_the_target_count_against_it_whatever_the_batch_size(chunk: int) -> None:
    """Items of one text have one vector in a text-only model. Matrix products of a few queries (or the tail of a
    chunk) sum in another order on this CPU and scored such copies apart by a rounding error (the earlier code
    ranked them differently in 159 of these cases): each copy, as the target, must get the same pessimistic rank,
    whatever the batch it is ranked in."""
    from unisrec.evaluate import duplicate_rows

    generator = torch.Generator().manual_seed(0)
    table = torch.randn(997, 300, generator=generator)  # (N, H)
    copies = [3, 250, 251, 600, 996]
    table[copies] = table[3].clone()
    table[[10, 11]] = table[500].clone()  # a second group
    queries = torch.randn(40, 300, generator=generator)
    found = duplicate_rows(table)
    assert found is not None
    assert sorted(found.items.tolist()) == sorted([*copies, 10, 11, 500]) and len(found.representatives) == 2
    groups = dict(zip(found.items.tolist(), found.groups.tolist(), strict=True))
    assert len({groups[i] for i in copies}) == 1 and groups[10] == groups[11] == groups[500] != groups[3]
    assert duplicate_rows(torch.randn(50, 8, generator=generator)) is None
    reference = count_ranks(queries, table, torch.full((40,), copies[0]), chunk)  # (40,) one batch of 40
    for size in (1, 2, 3, 5, 7, 11, 16):
        for lo in range(0, 40, size):
            for target in copies:
                ranks = count_ranks(queries[lo:lo + size], table, torch.full((len(queries[lo:lo + size]),), target),
                                    chunk)
                assert torch.equal(ranks, reference[lo:lo + size]), (size, lo, target)
    # and through the float64 scores: every copy is at or above the rank of the items scored strictly higher
    exact = queries.double() @ table.double().T  # (40, N)
    strictly_higher = (exact > exact[:, [3]] + 1e-9).sum(dim=1)  # (40,)
    assert torch.equal(reference, strictly_higher + len(copies) - 1)


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


def test_ranks_that_cannot_be_are_an_error() -> None:
    for bad in ([-1, 0], [0.0, math.nan]):
        with pytest.raises(ValueError, match="ranks must be finite and >= 0"):
            ranking_metrics(np.array(bad), (10,))


def test_not_finite_scores_stop_the_evaluation_instead_of_ranking_first_or_last() -> None:
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    table = torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1.0], [2.0, 0.0]])
    targets = torch.tensor([0, 2, 1])
    assert count_ranks(queries, table, targets, 2).tolist() == [1, 0, 3]  # ties count against the target
    broken = queries.clone()
    broken[1, 0] = math.nan  # a diverged query: every comparison with its NaN target score would be false
    with pytest.raises(UnisrecError, match=r"the targets' scores are not finite for 1 of 3 histories"):
        count_ranks(broken, table, targets, 2)
    nan_item = table.clone()
    nan_item[3] = math.nan  # one broken item, not a target: it would silently rank last for everyone
    for chunk in (1, 3, 100):
        with pytest.raises(UnisrecError, match=r"the scores of some items are not finite for 3 of 3 histories"):
            count_ranks(queries, nan_item, targets, chunk)


def test_targets_outside_the_table_and_empty_chunks_are_errors() -> None:
    queries, table = torch.ones(2, 2), torch.ones(4, 2)
    with pytest.raises(UnisrecError, match="target item row 4 is outside the scoring table of 4 items"):
        count_ranks(queries, table, torch.tensor([1, 4]), 2)
    with pytest.raises(UnisrecError, match="target item row -1 is outside"):
        count_ranks(queries, table, torch.tensor([-1, 0]), 2)
    with pytest.raises(UnisrecError, match="item_chunk must be >= 1, got 0"):
        count_ranks(queries, table, torch.tensor([1, 0]), 0)
    for value in (0, -1):
        with pytest.raises(ConfigError, match=f"eval.batch_size must be >= 1, got {value}"):
            EvalConfig(batch_size=value)
        with pytest.raises(ConfigError, match=f"eval.item_chunk must be >= 1, got {value}"):
            EvalConfig(item_chunk=value)
