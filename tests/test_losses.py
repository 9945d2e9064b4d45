"""Losses against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from unisrec.losses import contrastive, distance_to_start, full_softmax_ce


def test_full_softmax_ce_matches_hand_computation() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    targets = torch.tensor([0, 1])
    by_hand = [
        -(2.0 - math.log(math.exp(2.0) + 1 + math.exp(-1.0))),
        -(0.5 - math.log(2 * math.exp(0.5) + math.exp(3.0))),
    ]
    assert float(full_softmax_ce(logits, targets)) == pytest.approx(sum(by_hand) / 2, rel=1e-6)


def _setup() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    c = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    ids = torch.tensor([7, 9, 7])  # queries 0 and 2 share target item 7
    return q, c, ids


def _cos(a: list[float], b: list[float]) -> float:
    return (a[0] * b[0] + a[1] * b[1]) / math.hypot(*a) / math.hypot(*b)


def _by_hand(mode: str, tau: float) -> float:
    q, c, ids = _setup()
    total = 0.0
    for j in range(3):
        logits = [_cos(q[j].tolist(), c[k].tolist()) / tau for k in range(3)]
        denominator = 0.0
        for k in range(3):
            false_negative = k != j and int(ids[k]) == int(ids[j])
            if false_negative and mode == "remove":
                continue
            denominator += math.exp(0.0 if false_negative and mode == "zero_logit" else logits[k])
        total += -(logits[j] - math.log(denominator))
    return total / 3


@pytest.mark.parametrize("mode", ["remove", "zero_logit", "keep"])
def test_contrastive_false_negative_modes(mode: str) -> None:
    q, c, ids = _setup()
    tau = 0.5
    got = contrastive(q, c, tau, query_ids=ids, candidate_ids=ids, false_negatives=mode)  # type: ignore[arg-type]
    assert float(got) == pytest.approx(_by_hand(mode, tau), rel=1e-6)


def test_modes_differ_when_there_are_false_negatives() -> None:
    q, c, ids = _setup()
    values = {m: float(contrastive(q, c, 0.5, query_ids=ids, candidate_ids=ids, false_negatives=m))
              for m in ("remove", "zero_logit", "keep")}
    assert len(set(values.values())) == 3


def test_positives_index_other_candidates() -> None:
    q = torch.tensor([[1.0, 0.0]])
    c = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    loss = contrastive(q, c, 1.0, positives=torch.tensor([1]))
    assert float(loss) == pytest.approx(-(1 - math.log(math.exp(0) + math.exp(1))), rel=1e-6)


def test_candidate_bias_is_added_to_each_candidates_logit() -> None:
    q, c, ids = _setup()
    tau = 0.5
    bias = torch.tensor([0.3, -1.2, 0.7])  # one offset per candidate (e.g. -log q of its item)
    got = contrastive(q, c, tau, query_ids=ids, candidate_ids=ids, candidate_bias=bias, reduction="none")
    for j in range(3):
        logits = [_cos(q[j].tolist(), c[k].tolist()) / tau + float(bias[k]) for k in range(3)]
        kept = [k for k in range(3) if k == j or int(ids[k]) != int(ids[j])]  # false negatives removed
        by_hand = -(logits[j] - math.log(sum(math.exp(logits[k]) for k in kept)))
        assert float(got[j]) == pytest.approx(by_hand, rel=1e-6)
    same = contrastive(q, c, tau, query_ids=ids, candidate_ids=ids, candidate_bias=torch.full((3,), 4.0))
    assert float(same) == pytest.approx(_by_hand("remove", tau), rel=1e-6)  # a constant offset changes nothing


def test_extra_logits_join_only_their_own_querys_denominator() -> None:
    q, c, ids = _setup()
    tau = 0.5
    extra = torch.tensor([[1.5, float("-inf")], [float("-inf"), float("-inf")], [0.2, -0.4]])  # (Q, E)
    got = contrastive(q, c, tau, query_ids=ids, candidate_ids=ids, extra_logits=extra, reduction="none")
    for j in range(3):
        logits = [_cos(q[j].tolist(), c[k].tolist()) / tau for k in range(3)]
        kept = [logits[k] for k in range(3) if k == j or int(ids[k]) != int(ids[j])]
        kept += [float(x) for x in extra[j] if math.isfinite(float(x))]
        by_hand = -(logits[j] - math.log(sum(math.exp(x) for x in kept)))
        assert float(got[j]) == pytest.approx(by_hand, rel=1e-6)
    plain = contrastive(q, c, tau, query_ids=ids, candidate_ids=ids, reduction="none")
    assert float(got[1]) == pytest.approx(float(plain[1]), rel=1e-6)  # all -inf: nothing added
    assert float(got[0]) > float(plain[0]) + 0.1  # a negative more: a larger loss


def test_distance_to_start_is_half_the_squared_distance_and_pulls_toward_the_start() -> None:
    param = torch.tensor([1.0, 2.0, -1.0], requires_grad=True)
    matrix = torch.tensor([[0.5, 0.0], [0.0, 3.0]], requires_grad=True)
    start, start_matrix = torch.tensor([0.0, 2.0, 1.0]), torch.zeros(2, 2)
    penalty = distance_to_start([(param, start), (matrix, start_matrix)])
    assert float(penalty.detach()) == pytest.approx(0.5 * (1.0 + 0.0 + 4.0 + 0.25 + 9.0))
    penalty.backward()
    assert param.grad is not None and matrix.grad is not None
    torch.testing.assert_close(param.grad, torch.tensor([1.0, 0.0, -2.0]))  # theta - theta_0
    torch.testing.assert_close(matrix.grad, torch.tensor([[0.5, 0.0], [0.0, 3.0]]))
    with pytest.raises(ValueError, match="no parameter"):
        distance_to_start([])
