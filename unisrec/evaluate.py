"""Full-ranking evaluation: every item of the catalogue is scored for every target, in item chunks.

The adapted item table is computed once per evaluation pass. A target's rank is the count of items scored
at least as high (other than the target itself), so no sort is needed and memory stays bounded by
``batch_size x item_chunk`` scores. A finished run is evaluated on valid and test by ``final_evaluation``
(with metrics over cold items when some were withheld); a pre-trained text model is evaluated on a new domain
as it is by ``zero_shot_model``.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from unisrec.atomic import atomic_write_text
from unisrec.baselines import build_model
from unisrec.batches import EvalBatch, make_eval_batch
from unisrec.checkpoint import from_pretrained, load_transferable, read_items, read_model_config, read_text_config
from unisrec.config import EvalConfig, ModelConfig, TextConfig, from_plain
from unisrec.datasets.processed import ProcessedDataset, load_processed
from unisrec.devices import resolve_device
from unisrec.errors import UnisrecError
from unisrec.metrics import ranking_metrics
from unisrec.model import Offsets, SequenceModel, add_offsets
from unisrec.text_cache import check_recorded_model, load_text


@dataclass(frozen=True)
class DuplicateRows:
    """The rows of a scoring table that equal another row bit for bit (items of the same text, in a text-only
    model): ``items`` (M,) their rows, ``groups`` (M,) the index of their group, ``representatives`` (R,) one row
    per group."""

    items: Tensor
    groups: Tensor
    representatives: Tensor


_HASH_ROWS = 8192  # rows hashed at a time: (8192, H) values' bits as int64, 20 MB at H = 300


def duplicate_rows(table: Tensor) -> DuplicateRows | None:
    """The groups of identical rows of ``table`` (N, H), or None when every row is unique.

    A matrix product does not give identical rows identical scores everywhere: kernels for few queries (or the
    tail of a chunk) sum in another order, so copies of the target's vector could land on either side of it by a
    rounding error, and a tie would not count against the target as the protocol says. ``count_ranks`` scores
    each group once and gives every member that score. Rows are hashed exactly (integer arithmetic on their
    values' bits, so no rounding), candidates then compared bit for bit.
    """
    n = table.shape[0]
    if n < 2:
        return None
    word = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[table.element_size()]
    raw = table.detach().contiguous().view(word).reshape(n, -1)  # (N, H) each value's bits as an integer
    weights = torch.randint(1, 2**31 - 1, (raw.shape[1],), generator=torch.Generator().manual_seed(0),
                            dtype=torch.int64).to(raw.device)  # (H,)
    hashes = torch.cat([(raw[lo : lo + _HASH_ROWS].to(torch.int64) * weights).sum(dim=1)  # wraps: exact, any order
                        for lo in range(0, n, _HASH_ROWS)]).cpu().numpy()  # (N,)
    _, first, inverse, counts = np.unique(hashes, return_index=True, return_inverse=True, return_counts=True)
    shared = np.flatnonzero(counts[inverse] > 1)  # (M',) rows whose hash another row has
    if not len(shared):
        return None
    candidates = torch.from_numpy(shared).to(table.device)
    heads = torch.from_numpy(first[inverse[shared]]).to(table.device)  # (M',) the first row of each hash
    equal = torch.cat([(raw[candidates[lo : lo + _HASH_ROWS]] == raw[heads[lo : lo + _HASH_ROWS]]).all(dim=1)
                       for lo in range(0, len(candidates), _HASH_ROWS)])  # (M',) a hash collision is no duplicate
    items, heads = candidates[equal], heads[equal]
    if not len(items) or bool((items == heads).all()):  # only the first rows left: no copies
        return None
    representatives, groups = torch.unique(heads, return_inverse=True)  # (R,), (M,)
    return DuplicateRows(items, groups, representatives)


def count_ranks(
    queries: Tensor, table: Tensor, targets: Tensor, item_chunk: int, seen: tuple[Tensor, Tensor] | None = None,
    offsets: Offsets | None = None, duplicates: DuplicateRows | bool | None = True,
) -> Tensor:
    """(B, H) queries, (N, H) scoring table, (B,) targets -> (B,) 0-based pessimistic ranks.

    Scores come from one matmul per chunk; the target's own score is read from the same matmul, so it
    equals its column bit for bit, and rows of the table that are copies of one another get one score (their
    group's, ``duplicate_rows``), so a copy of the target counts against it. ``seen`` = (rows, items) pairs excluded
    from the ranking (never the target); ``offsets``: the model's repeat offsets (``unisrec.model.history_offsets``),
    added to the scores before ranking. ``duplicates``: ``duplicate_rows(table)`` computed once by a caller that
    ranks many batches against one table; True (the default) computes it here.
    """
    n = table.shape[0]
    if item_chunk < 1:
        raise UnisrecError(f"item_chunk must be >= 1, got {item_chunk}")
    low, high = (int(targets.min()), int(targets.max())) if len(targets) else (0, 0)
    if low < 0 or high >= n:
        raise UnisrecError(f"target item row {low if low < 0 else high} is outside the scoring table of {n} items")
    chunks = [(s, min(n, s + item_chunk)) for s in range(0, n, item_chunk)]
    target_score = torch.empty(len(targets), dtype=queries.dtype, device=queries.device)
    copies = duplicate_rows(table) if duplicates is True else duplicates or None
    group_scores = queries @ table[copies.representatives].T if copies is not None else None  # (B, R)

    def chunk_scores(lo: int, hi: int) -> Tensor:
        scores = queries @ table[lo:hi].T  # (B, C)
        if copies is not None and group_scores is not None:
            inside = (copies.items >= lo) & (copies.items < hi)  # (M,)
            scores[:, copies.items[inside] - lo] = group_scores[:, copies.groups[inside]]
        return scores if offsets is None else add_offsets(scores, offsets, lo)

    cached: Tensor | None = None
    for lo, hi in chunks:  # pass 1: the targets' scores
        scores = chunk_scores(lo, hi)
        inside = (targets >= lo) & (targets < hi)
        target_score[inside] = scores[inside, targets[inside] - lo]
        cached = scores if len(chunks) == 1 else None
    _refuse_broken(~torch.isfinite(target_score), "the targets' scores")
    ranks = torch.zeros(len(targets), dtype=torch.long, device=queries.device)
    nan_rows = torch.zeros(len(targets), dtype=torch.bool, device=queries.device)  # (B,) one check at the end
    for lo, hi in chunks:  # pass 2: count items scored >= the target
        scores = cached if cached is not None else chunk_scores(lo, hi)  # (B, C)
        nan_rows |= torch.isnan(scores).any(dim=1)  # NaN >= x is false: a broken item would rank last unseen
        if seen is not None and len(seen[0]):
            rows, items = seen
            inside = (items >= lo) & (items < hi) & (items != targets[rows])
            scores = scores.clone()
            scores[rows[inside], items[inside] - lo] = float("-inf")
        ranks += (scores >= target_score[:, None]).sum(dim=1)
    _refuse_broken(nan_rows, "the scores of some items")
    return ranks - 1  # the target itself is counted once


def _refuse_broken(bad: Tensor, what: str) -> None:
    """``bad``: (B,) histories with a NaN (or infinite) score. Comparisons with NaN are false, so a NaN target
    would rank first (recall 1.0) and a NaN item last, silently: stop with an error instead."""
    if bool(bad.any()):
        rows = int(bad.sum())
        raise UnisrecError(f"evaluation: {what} are not finite for {rows} of {len(bad)} histories (NaN or inf "
                           "in the weights or the text vectors: did the training diverge?)")


@torch.no_grad()
def rank_split(
    model: SequenceModel,
    dataset: ProcessedDataset,
    split: str,
    config: EvalConfig,
    device: torch.device | str = "cpu",
    table: Tensor | None = None,
) -> np.ndarray:
    """(T,) 0-based ranks of the targets of ``split`` ("valid" / "test")."""
    was_training = model.training
    model.eval()
    try:
        if table is None:
            table = model.item_table()  # (N, H): once per pass
        scoring = model.scoring_table(table)
        copies = duplicate_rows(scoring)  # once per pass, not per batch
        rows = dataset.target_rows(split)
        seq_start = dataset.offsets[:-1][dataset.user_of_rows()[rows]]
        lengths = np.minimum(rows - seq_start, model.config.max_seq_len)
        order = np.argsort(lengths, kind="stable")  # similar lengths together: little padding
        ranks = np.zeros(len(rows), dtype=np.int64)
        for lo in range(0, len(rows), config.batch_size):
            part = order[lo : lo + config.batch_size]
            batch = make_eval_batch(
                dataset.items, rows[part], seq_start[part], model.config.max_seq_len,
                with_seen=config.exclude_seen,
            )
            ranks[part] = _rank_batch(model, batch, table, scoring, config, device, copies).cpu().numpy()
        return ranks
    finally:
        model.train(was_training)


def _rank_batch(
    model: SequenceModel, batch: EvalBatch, table: Tensor, scoring: Tensor, config: EvalConfig, device: Any,
    copies: DuplicateRows | None,
) -> Tensor:
    inputs, lengths = batch.inputs.to(device), batch.lengths.to(device)
    queries = model.query_vectors(model.sequence_vectors(inputs, lengths, table))  # (B, H)
    seen = (batch.seen_rows.to(device), batch.seen_items.to(device)) if config.exclude_seen else None
    offsets = model.repeat_offsets(inputs, lengths)
    return count_ranks(queries, scoring, batch.targets.to(device), config.item_chunk, seen, offsets, copies)


def evaluate(
    model: SequenceModel,
    dataset: ProcessedDataset,
    split: str,
    config: EvalConfig | None = None,
    device: torch.device | str = "cpu",
    table: Tensor | None = None,
    withheld: np.ndarray | None = None,
) -> dict[str, float]:
    """Recall / NDCG / MRR at ``config.ks`` over the targets of ``split``, full ranking. ``withheld``: (N,) bool,
    the items training never saw (``train.cold_items``): the cases whose target is one of them are left out, so
    that choosing an epoch or a mixture on validation uses nothing of the withheld items either."""
    config = config or EvalConfig()
    ranks = rank_split(model, dataset, split, config, device, table)  # (T,)
    if withheld is not None and withheld.any():
        ranks = ranks[warm_cases(dataset, split, withheld)]  # (T',)
    return ranking_metrics(ranks, config.ks)


def warm_cases(dataset: ProcessedDataset, split: str, withheld: np.ndarray) -> np.ndarray:
    """(T,) bool: the cases of ``split`` whose target is not a withheld item (``withheld``: (N,) bool); none is an
    error, there being nothing to choose an epoch on."""
    warm = ~withheld[dataset.items[dataset.target_rows(split)]]
    if not warm.any():
        what = "validation" if split == "valid" else split
        raise UnisrecError(f"train.cold_items: every {what} target is a withheld (cold) item, so there is no case to "
                           "choose an epoch on; lower train.cold_items or draw other cold items (train.seed)")
    return warm


def cold_metrics(ranks: np.ndarray, targets: np.ndarray, cold: np.ndarray, ks: tuple[int, ...]) -> dict[str, float]:
    """``cold_recall@K`` / ``cold_ndcg@K`` over the cases whose target is cold, and their count ``cold_cases``.
    With no cold target there is nothing to average: ``cold_cases`` 0 and no ``cold_recall`` / ``cold_ndcg`` (a
    0.0 would read as a model that ranks every cold item out of its top K).

    ranks (T,) 0-based full-ranking ranks, targets (T,) item ids, cold (N,) bool.
    """
    here = cold[targets]
    if not here.any():
        return {"cold_cases": 0.0}
    scored = ranking_metrics(ranks[here], ks)
    out: dict[str, float] = {f"cold_{m}@{k}": scored[f"{m}@{k}"] for k in ks for m in ("recall", "ndcg")}
    out["cold_cases"] = float(here.sum())
    return out


@dataclass(frozen=True)
class FinalEvaluation:
    """A model's metrics on valid and test, and the rank of every test target."""

    valid: dict[str, float]
    test: dict[str, float] | None  # with cold_* metrics when items were withheld; None: eval.test=false
    test_ranks: np.ndarray | None  # (T,) 0-based full-ranking ranks; None: eval.test=false
    seconds: float  # wall seconds per split (the mean of the splits scored)


def final_evaluation(
    model: SequenceModel,
    dataset: ProcessedDataset,
    config: EvalConfig,
    device: torch.device | str = "cpu",
    cold: np.ndarray | None = None,
) -> FinalEvaluation:
    """Evaluate on valid and test (what a run reports when it ends); ``cold``: (N,) bool, items never trained on:
    validation counts the cases of the other items only (as the run chose on), test counts every case and adds
    the ``cold_*`` metrics. With ``config.test`` false, valid only (test and its ranks None)."""
    started = time.perf_counter()
    valid = evaluate(model, dataset, "valid", config, device, withheld=cold)
    if not config.test:
        return FinalEvaluation(valid, None, None, time.perf_counter() - started)
    ranks = rank_split(model, dataset, "test", config, device)  # (T,)
    test = ranking_metrics(ranks, config.ks)
    if cold is not None and cold.any():
        test.update(cold_metrics(ranks, dataset.items[dataset.target_rows("test")], cold, config.ks))
    return FinalEvaluation(valid, test, ranks, (time.perf_counter() - started) / 2)


def probe_scores(model: SequenceModel, dataset: ProcessedDataset, name: str, *, exclude_seen: bool = False
                 ) -> dict[str, dict[str, float]]:
    """Valid and test metrics of ``model`` (default evaluation, CPU; ``exclude_seen``: the history's items left
    out of the ranking) rounded to 6 digits, as a probe's record holds them (``scripts/*_probe.py``); prints one
    line with both NDCG@10 to stderr under ``name``."""
    final = final_evaluation(model, dataset, EvalConfig(exclude_seen=exclude_seen), torch.device("cpu"))
    assert final.test is not None  # EvalConfig scores test by default
    print(f"{name}: valid ndcg@10 {final.valid['ndcg@10']:.4f}, test ndcg@10 {final.test['ndcg@10']:.4f}",
          file=sys.stderr, flush=True)
    return {"valid": {k: round(v, 6) for k, v in final.valid.items()},
            "test": {k: round(v, 6) for k, v in final.test.items()}}


def emit_probe(result: dict[str, object], record: Path | None) -> None:
    """A probe's result: written atomically to ``record`` if given, and printed as the last line of stdout."""
    if record is not None:
        atomic_write_text(record, json.dumps(result, indent=1) + "\n")
    print(json.dumps(result))


def zero_shot_model(init_dir: Path, dataset: ProcessedDataset) -> SequenceModel:
    """A pre-trained text model applied to a new domain as is (no fine-tuning): text-only item vectors.

    ``init_dir``: a pre-training run, or a fine-tuning run of a text mode (inductive, transductive without
    its ID table, zesrec). The new domain's items are encoded with the run's own text settings.
    """
    saved = read_model_config(init_dir)
    config = from_plain(ModelConfig, saved["model"], f"{init_dir}/config.json: model")
    if config.architecture not in ("unisrec", "zesrec") or not config.uses_text:
        raise UnisrecError(f"{init_dir}: a {config.architecture} model of {config.item_repr} items cannot score "
                           "new items by their text")
    config = replace(config, item_repr="text")
    settings = read_text_config(init_dir) or TextConfig()
    check_recorded_model(settings, saved.get("text_encoder") or {}, init_dir)
    text = load_text(dataset, settings)
    model = build_model(config, dataset.n_items, torch.from_numpy(text.matrix))
    load_transferable(model, init_dir)
    return model


def check_run_items(run_dir: str | Path, dataset: ProcessedDataset, data_dir: str | Path) -> None:
    """A run's saved item list must be ``dataset``'s (same ids in the same order), else an error naming both."""
    item_ids, _texts = read_items(run_dir)
    if len(item_ids) != dataset.n_items or any(a != str(b) for a, b in zip(item_ids, dataset.item_ids, strict=True)):
        raise UnisrecError(
            f"{data_dir}: its {dataset.n_items} items are not the {len(item_ids)} items of run {run_dir} "
            "(same ids in the same order expected)"
        )


def evaluate_run(
    run_dir: str | Path,
    data_dir: str | Path,
    split: str,
    *,
    ks: tuple[int, ...] = (10, 20, 50),
    exclude_seen: bool = False,
    device: str = "auto",
    zero_shot: bool = False,
) -> dict[str, float]:
    """Metrics of a saved run on ``split`` ("valid" or "test") of a processed dataset with the same item list;
    ``zero_shot``: of any dataset, its items scored by their text with the run's weights as they are
    (``zero_shot_model``; always so for a pre-trained run, which has no catalogue)."""
    if split not in ("valid", "test"):  # as `unisrec evaluate --split` (a bare KeyError for "TEST" before)
        raise UnisrecError(f"split must be 'valid' or 'test', got {split!r}")
    torch_device = resolve_device(device)
    dataset = load_processed(data_dir)
    if zero_shot or read_model_config(run_dir)["n_items"] == 0:  # a pre-trained model: items by their text
        model = zero_shot_model(Path(run_dir), dataset).to(torch_device)
        return evaluate(model, dataset, split, EvalConfig(ks=ks, exclude_seen=exclude_seen), torch_device)
    model, _config = from_pretrained(run_dir, torch_device)
    check_run_items(run_dir, dataset, data_dir)
    config = EvalConfig(ks=ks, exclude_seen=exclude_seen)
    return evaluate(model, dataset, split, config, torch_device)
