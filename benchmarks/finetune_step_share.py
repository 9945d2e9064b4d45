"""Where an inductive fine-tuning step's time goes, per dataset: the whole step vs adapting the catalogue.

UniSRec_t scores every item of the catalogue at every step (full softmax), so each step passes all N items'
text vectors through the MoE adaptor (8 experts, 768 -> 300) and back: the step's cost grows with N, while
the number of steps per epoch grows with the interactions. For each dataset, in a fresh process on one
torch thread, this times (median over ``--steps`` steps after one warm-up) a training step of
``unisrec finetune --mode inductive --train.windows=strided`` (forward, loss, backward) and, separately, the
catalogue adaptor alone (``model.item_table()`` forward + backward), and estimates an epoch as step x
steps per epoch. It tells whether a report's runs fit a CPU session (e.g. the leave-one-out domains).

    python benchmarks/finetune_step_share.py DATA_DIR... [--steps 5] [--precision float32,bfloat16]
        [--record results/benchmarks/F.json]

``--precision`` lists the ``train.precision`` settings to time (bfloat16: the step under the same autocast as
``unisrec/train.py``); ``--negatives`` the ``train.negatives`` settings (0 = the full softmax; N > 0 = each target
against N drawn items, the adaptor over the step's items only; ``N+batch`` = the same with
``train.batch_negatives``, the step's items as negatives too), each row then with its step time relative to
the full softmax's of the same dataset and precision (``vs_full``). Every setting runs in its own fresh process,
alternating per dataset, so their ratios are measured under the same conditions.

    python benchmarks/finetune_step_share.py DATA_DIR --negatives 0,1024,1024+batch,4096 --steps 5

Each DATA_DIR is a processed dataset with its text vectors encoded (``unisrec prepare`` + ``unisrec encode``).
The last line of stdout is one JSON object (also written to ``--record``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def parse_negatives(text: str) -> list[tuple[int, bool]]:
    """``--negatives``: comma-separated N (train.negatives) or N+batch (with train.batch_negatives)."""
    settings = []
    for part in filter(None, text.split(",")):
        count, plus, what = part.partition("+")
        if not count.isdigit() or (plus and (what != "batch" or int(count) == 0)):
            raise ValueError(part)
        settings.append((int(count), bool(plus)))
    if not settings:
        raise ValueError(text)
    return settings


def child(data: Path, steps: int, precision: str, negatives: int = 0, batch_negatives: bool = False
          ) -> dict[str, object]:
    import torch

    from unisrec.baselines import build_model
    from unisrec.config import RunConfig
    from unisrec.datasets import load_processed
    from unisrec.finetune import FinetuneTask, resolve_config
    from unisrec.text_cache import load_text

    torch.set_num_threads(1)
    dataset = load_processed(data)
    overrides = ["train.windows=strided", f"train.precision={precision}", f"train.negatives={negatives}",
                 f"train.batch_negatives={str(batch_negatives).lower()}"]
    config = resolve_config(RunConfig().with_overrides(overrides), "inductive", None, [])
    vectors = load_text(dataset, config.text)
    torch.manual_seed(0)
    model = build_model(config.model, dataset.n_items, torch.from_numpy(vectors.matrix))
    model.train()
    task = FinetuneTask(model, dataset, config, torch.device("cpu"))
    batches = task.batches(0)
    step_seconds, adaptor_seconds = [], []
    bf16 = config.train.precision == "bfloat16"
    for _ in range(steps + 1):
        batch = next(batches)
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # as in unisrec/train.py
            loss = task.loss(batch)["loss"]
        loss.backward()
        step_seconds.append(time.perf_counter() - started)
        model.zero_grad()
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            table = model.item_table()  # (N, H): every item through the adaptor
        table.float().sum().backward()  # and back
        adaptor_seconds.append(time.perf_counter() - started)
        model.zero_grad()
    step, adaptor = statistics.median(step_seconds[1:]), statistics.median(adaptor_seconds[1:])
    # a sampled step never adapts the whole catalogue: a share of it would say nothing
    return {"dataset": Path(data).name, "precision": precision, "negatives": negatives,
            "batch_negatives": batch_negatives, "items": dataset.n_items,
            "steps_per_epoch": task.steps,
            "step_seconds": round(step, 4), "catalogue_adaptor_seconds": round(adaptor, 4),
            "adaptor_share": round(adaptor / step, 3) if negatives == 0 else None,
            "epoch_seconds_estimate": round(step * task.steps, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="+", type=Path)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per dataset (after one warm-up)")
    parser.add_argument("--precision", default="float32",
                        help="comma-separated train.precision settings to time (float32, bfloat16)")
    parser.add_argument("--negatives", default="0",
                        help="comma-separated train.negatives settings to time (0 = the full softmax; "
                             "N+batch: with train.batch_negatives)")
    parser.add_argument("--record", type=Path, default=None)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    precisions = [p for p in args.precision.split(",") if p]
    unknown = [p for p in precisions if p not in ("float32", "bfloat16")]
    if unknown or not precisions:
        parser.error(f"--precision: expected float32 and/or bfloat16, got {args.precision!r}")
    try:
        negatives = parse_negatives(args.negatives)
    except ValueError:
        parser.error(f"--negatives: expected integers >= 0 (0 = the full softmax) or N+batch with N > 0, "
                     f"got {args.negatives!r}")
    if args.child:
        print(json.dumps(child(args.data[0], args.steps, precisions[0], *negatives[0])))
        return
    rows = []
    for data in args.data:
        for precision in precisions:
            group = []
            for n, mixed in negatives:
                setting = f"{n}+batch" if mixed else str(n)
                done = subprocess.run([sys.executable, __file__, str(data), "--steps", str(args.steps),
                                       "--precision", precision, "--negatives", setting, "--child"],
                                      capture_output=True, text=True, check=True)
                group.append(json.loads(done.stdout.strip().splitlines()[-1]))
            full = next((float(r["step_seconds"]) for r in group if r["negatives"] == 0), None)
            for row in group:  # each setting against the full softmax of the same dataset and precision, if timed
                if full is not None:
                    row["vs_full"] = round(float(row["step_seconds"]) / full, 3)
                rows.append(row)
                n = int(row["negatives"])
                setting = f", {n} negatives" if n else ", full softmax"
                setting += " + the step's items" if row["batch_negatives"] else ""
                ratio = f", {row['vs_full']:.3f} of the full softmax's step" if n and "vs_full" in row else ""
                share = f" ({100 * float(row['adaptor_share']):.0f}% of the step)" if n == 0 else ""
                print(f"{row['dataset']} ({precision}{setting}): {row['items']} items, {row['steps_per_epoch']} steps "
                      f"per epoch, step {row['step_seconds']:.2f} s{ratio}, catalogue adaptor "
                      f"{row['catalogue_adaptor_seconds']:.2f} s{share}, epoch ~{row['epoch_seconds_estimate']:.0f} s",
                      flush=True)
    from unisrec.atomic import atomic_write_json
    from unisrec.precision import cpu_summary

    result = {"benchmark": "finetune_step_share", "threads": 1, "steps": args.steps, "cpu": cpu_summary(),
              "datasets": rows}
    if args.record is not None:
        atomic_write_json(args.record, result)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
