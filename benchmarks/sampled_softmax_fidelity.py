"""How closely each sampled softmax of fine-tuning follows the full one: the gradient of the same step, same weights.

``train.negatives`` trains each target against a sample of the catalogue instead of all of it. This takes a
trained run (its ``model.safetensors``) and its dataset, and for the first ``--steps`` training steps of epoch 0
(the run's own batches) computes, from one forward pass over the whole catalogue, the loss and the gradient of
every trainable parameter under each estimator:

- ``full``: the paper's full softmax (what the others estimate);
- ``uniform``: the target against ``--negatives`` uniform draws (``train.negatives=N``);
- ``batch``: the draws plus the step's own items, each negative's logit less log(pi) of its item, the target's
  as it is (``train.batch_negatives``: the target is always a candidate of its row);
- ``batch-target-corrected``: the same with the target's logit corrected too (the convention of TensorFlow's
  sampled softmax and of Yi et al. 2019);
- ``batch-window-exact``: the same as ``batch``, also the items of the row's own window (always among its
  candidates) uncorrected.

pi is the probability that a step's candidates hold the item: 1 - (1 - S/P)(1 - b), b the share of epoch 0's
steps holding it (``FinetuneTask._log_inclusion``). Each estimator's gradient is compared with the full
softmax's: cosine similarity and norm ratio over all parameters, and the cosine per part of the model (the first
component of a parameter's name: ``adaptor``, ``item_id``, ``input_norm``, ``encoder``), medians over the steps.
The model is in eval mode (no dropout), so every estimator sees the same forward pass.

    python benchmarks/sampled_softmax_fidelity.py RUN_DIR DATA_DIR --negatives 1024 --steps 3 \
        [--record results/benchmarks/F.json]

The last line of stdout is one JSON object (also written to ``--record``).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

ESTIMATORS = ("full", "uniform", "batch", "batch-target-corrected", "batch-window-exact")


def step_losses(model: torch.nn.Module, batch: object, drawn: torch.Tensor, union: torch.Tensor,
                log_pi: torch.Tensor) -> dict[str, torch.Tensor]:
    """The loss of one step under every estimator, from one forward pass over the whole catalogue."""
    from unisrec.batches import TrainBatch

    assert isinstance(batch, TrainBatch)
    hidden, table = model(batch.inputs)  # (B, L, H), (N, H)
    scores = model.logits(hidden[batch.mask], table)  # type: ignore[operator]  # (T, N)
    n_rows, n_items = scores.shape
    targets = batch.targets  # (T,)
    rows = torch.arange(n_rows)
    is_target = torch.zeros(n_rows, n_items, dtype=torch.bool)
    is_target[rows, targets] = True  # (T, N)
    at_row = batch.mask.nonzero(as_tuple=True)[0]  # (T,) the window of each target
    in_window = torch.zeros(len(batch.inputs), n_items, dtype=torch.bool)  # (B, N)
    in_window.scatter_(1, batch.inputs, True)
    in_window[at_row, targets] = True
    own = in_window[at_row]  # (T, N): items certain to be among the row's candidates

    def sampled(candidates: torch.Tensor, exact: torch.Tensor | None) -> torch.Tensor:
        """Cross-entropy over each row's candidates (its target always one), logits less log(pi) except where
        ``exact`` (T, N) is True; ``exact`` None = no correction."""
        logits = scores if exact is None else scores - torch.where(exact, 0.0, log_pi[None, :])
        keep = is_target.clone()
        keep[:, candidates] = True  # (T, N)
        return torch.nn.functional.cross_entropy(logits.masked_fill(~keep, float("-inf")), targets)

    return {
        "full": torch.nn.functional.cross_entropy(scores, targets),
        "uniform": sampled(drawn, None),
        "batch": sampled(union, is_target),
        "batch-target-corrected": sampled(union, torch.zeros_like(is_target)),
        "batch-window-exact": sampled(union, own),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a fine-tuning run folder (model.safetensors, run.json)")
    parser.add_argument("data", type=Path, help="its processed dataset")
    parser.add_argument("--negatives", type=int, default=1024, help="uniform draws per step (train.negatives)")
    parser.add_argument("--steps", type=int, default=3, help="training steps of epoch 0 to compare on")
    parser.add_argument("--record", type=Path, default=None)
    args = parser.parse_args()
    if args.negatives < 1 or args.steps < 1:
        parser.error("--negatives and --steps must be >= 1")

    from unisrec.atomic import atomic_write_json
    from unisrec.batches import TrainBatch
    from unisrec.checkpoint import from_pretrained
    from unisrec.config import RunConfig
    from unisrec.datasets import load_processed
    from unisrec.finetune import FinetuneTask
    from unisrec.json_io import read_json

    torch.set_num_threads(1)
    dataset = load_processed(args.data)
    config = RunConfig.from_dict(read_json(args.run / "run.json", "")["config"], source=str(args.run / "run.json"))
    if config.train.cold_items > 0:  # the full softmax here ranks every item; the run's withheld items are not
        parser.error(f"{args.run}: a run with train.cold_items > 0 (its full softmax leaves the withheld items out); "
                     "use a run without it")
    model, _ = from_pretrained(args.run)
    model.eval()  # no dropout: every estimator sees the same forward pass
    uniform = FinetuneTask(model, dataset, config.with_overrides(
        [f"train.negatives={args.negatives}", "train.batch_negatives=false"]), torch.device("cpu"))
    mixed = FinetuneTask(model, dataset, config.with_overrides(
        [f"train.negatives={args.negatives}", "train.batch_negatives=true"]), torch.device("cpu"))
    assert mixed.log_inclusion is not None
    log_pi = mixed.log_inclusion.float()  # (N,)
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    parts = sorted({name.split(".")[0] for name, _ in named})
    bounds: dict[str, list[tuple[int, int]]] = {part: [] for part in parts}  # slices of the flat gradient
    at = 0
    for name, p in named:
        bounds[name.split(".")[0]].append((at, at + p.numel()))
        at += p.numel()
    per_step: list[dict[str, dict[str, float]]] = []
    for step, (plain, both) in enumerate(zip(uniform.batches(0), mixed.batches(0), strict=True)):
        if step == args.steps:
            break
        assert isinstance(plain, TrainBatch) and isinstance(both, TrainBatch)
        assert plain.negatives is not None and both.negatives is not None
        losses = step_losses(model, plain, plain.negatives, both.negatives, log_pi)
        grads = {}
        for name in ESTIMATORS:
            pieces = torch.autograd.grad(losses[name], params, retain_graph=True, allow_unused=True)
            grads[name] = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten()
                                     for g, p in zip(pieces, params, strict=True)]).double()  # (P,)
        full = grads["full"]

        def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
            return float(torch.nn.functional.cosine_similarity(a, b, dim=0))

        def part_of(flat: torch.Tensor, part: str) -> torch.Tensor:
            return torch.cat([flat[start:end] for start, end in bounds[part]])

        per_step.append({name: {"loss": float(losses[name].detach()), "cosine": cosine(grads[name], full),
                                "norm_ratio": float(grads[name].norm() / full.norm()),
                                **{f"cosine_{part}": cosine(part_of(grads[name], part), part_of(full, part))
                                   for part in parts}}
                         for name in ESTIMATORS})
        print(f"step {step}: " + ", ".join(
            f"{name} cos {row['cosine']:.3f} (" + " ".join(f"{part} {row['cosine_' + part]:.3f}" for part in parts)
            + f") norm {row['norm_ratio']:.2f}" for name, row in per_step[-1].items()), flush=True)
    summary = {name: {key: round(statistics.median(s[name][key] for s in per_step), 4)
                      for key in per_step[0][name]} for name in ESTIMATORS}
    result = {"benchmark": "sampled_softmax_fidelity", "run": str(args.run), "dataset": args.data.name,
              "items": dataset.n_items, "negatives": args.negatives, "steps": len(per_step),
              "median": summary, "per_step": per_step}
    if args.record is not None:
        atomic_write_json(args.record, result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
