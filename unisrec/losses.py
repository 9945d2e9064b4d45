"""Training losses as pure functions (paper sections 2 and 3).

- ``full_softmax_ce``: fine-tuning / SASRec, softmax over every item of the domain.
- ``contrastive``: InfoNCE over in-batch candidates, used for both pre-training losses:
  sequence-item (candidates: the batch's target items) and sequence-sequence (candidates: the batch's
  augmented views). Candidates that share the query's target item are false negatives: by default they
  are removed from the denominator; ``false_negatives="zero_logit"`` keeps the reference code's behaviour
  (their logit is set to 0, i.e. each adds exp(0) = 1 to the denominator).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

FalseNegatives = Literal["remove", "zero_logit", "keep"]


def full_softmax_ce(logits: Tensor, targets: Tensor) -> Tensor:
    """(T, N) logits over all items, (T,) target items -> mean cross-entropy."""
    return F.cross_entropy(logits, targets)


def contrastive(
    queries: Tensor,
    candidates: Tensor,
    temperature: float,
    *,
    query_ids: Tensor | None = None,
    candidate_ids: Tensor | None = None,
    positives: Tensor | None = None,
    false_negatives: FalseNegatives = "remove",
    reduction: Literal["mean", "sum", "none"] = "mean",
    candidate_bias: Tensor | None = None,
    extra_logits: Tensor | None = None,
) -> Tensor:
    """InfoNCE: query j's positive is candidate ``positives[j]`` (default j) among all candidates.

    queries (Q, H) and candidates (C, H) are L2-normalised here; logits = cos / temperature, plus
    ``candidate_bias`` (C,) if given (e.g. -log q of each candidate: the logQ sampling-bias correction).
    ``query_ids`` (Q,) / ``candidate_ids`` (C,): the target item of each query / candidate; a candidate
    other than the positive with the same id as the query is a false negative.
    ``extra_logits`` (Q, E): logits of further negatives of each query alone (already divided by the
    temperature; -inf where a query has fewer than E), appended to that query's denominator.
    """
    q = F.normalize(queries, dim=-1)
    c = F.normalize(candidates, dim=-1)
    logits = q @ c.T / temperature  # (Q, C)
    if candidate_bias is not None:
        logits = logits + candidate_bias.to(logits.dtype)[None, :]  # (Q, C)
    if positives is None:
        positives = torch.arange(len(q), device=q.device)
    if query_ids is not None and candidate_ids is not None and false_negatives != "keep":
        same = query_ids[:, None] == candidate_ids[None, :]  # (Q, C)
        same[torch.arange(len(q), device=q.device), positives] = False
        fill = float("-inf") if false_negatives == "remove" else 0.0
        logits = logits.masked_fill(same, fill)
    if extra_logits is not None:
        logits = torch.cat([logits, extra_logits.to(logits.dtype)], dim=1)  # (Q, C + E)
    return F.cross_entropy(logits, positives, reduction=reduction)


def distance_to_start(pairs: list[tuple[Tensor, Tensor]]) -> Tensor:
    """0.5 * the summed squared difference of each (parameter, its starting value) pair: the L2-SP penalty
    (Li et al., ICML 2018; ``train.anchor``), which pulls a fine-tuned model toward the weights it started from.
    Gradient flows to the parameters only."""
    if not pairs:
        raise ValueError("distance_to_start: no parameter")
    return 0.5 * torch.stack([(param - start).pow(2).sum() for param, start in pairs]).sum()


def withhold_items(logits: Tensor, withheld: Tensor | None) -> Tensor:
    """(T, N) logits with the columns ``withheld`` (M,) item ids set to -inf: items withheld from training
    (``train.cold_items``) are no candidate of the training softmax either, as items that did not exist yet
    would not be (they are never a target, so no row loses its positive); None: the logits unchanged."""
    if withheld is None:
        return logits
    return logits.index_fill(1, withheld, float("-inf"))

