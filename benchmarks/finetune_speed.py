"""Fine-tuning speed on the paper's Scientific set at the reference settings, against the reference code.

Each repetition runs in a fresh process: one training epoch (batch 2048 targets, 8 experts, hidden 300,
max length 50, transductive text+ID), then full-ranking evaluation of all 8,442 test users; the process's
peak resident memory is read at the end. The medians are printed with their ratio to the reference
implementation's figures on the same kind of machine (2 CPU cores), quoted in the issue:
545 s per epoch, 29 s per evaluation, 7.6 GB peak memory.

    python benchmarks/finetune_speed.py [--data DIR] [--repeats 3] [--mode transductive] [--threads 2]

DIR is a processed Scientific folder; by default it is prepared from ../shared/data/amazon-scientific into
~/.cache/unisrec/bench/scientific (and its items encoded with the default MiniLM) on first use.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REFERENCE = {"epoch_seconds": 545.0, "eval_seconds": 29.0, "peak_memory_mb": 7.6 * 1024}
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "amazon-scientific"


def default_data() -> Path:
    from unisrec.datasets import prepare

    out = Path.home() / ".cache" / "unisrec" / "bench" / "scientific"
    if not (out / "dataset.json").exists():
        if not SHARED.exists():
            raise SystemExit(f"no --data given and {SHARED} is missing")
        prepare(SHARED, "unisrec", out, overwrite=True)
    return out


def child(data: Path, mode: str, threads: int) -> dict[str, float]:
    import numpy as np
    import torch

    from unisrec.config import MODES, RunConfig
    from unisrec.datasets import load_processed
    from unisrec.evaluate import evaluate
    from unisrec.finetune import FinetuneTask
    from unisrec.model import UniSRec
    from unisrec.text_cache import load_text
    from unisrec.train import Task, fit, peak_memory_mb

    torch.set_num_threads(threads)
    config = RunConfig().with_overrides([f"model.item_repr={MODES[mode]}", "train.epochs=1", "train.progress=false"])
    dataset = load_processed(data)
    text = torch.from_numpy(load_text(dataset, config.text).matrix) if config.model.uses_text else None
    torch.manual_seed(0)
    model = UniSRec(config.model, dataset.n_items, text)
    task = FinetuneTask(model, dataset, config, torch.device("cpu"))
    started = time.perf_counter()
    fit(model, Task(task.batches, task.steps, task.loss), config.train, None, device=torch.device("cpu"))
    epoch = time.perf_counter() - started
    started = time.perf_counter()
    metrics = evaluate(model, dataset, "test", config.eval)
    evaluation = time.perf_counter() - started
    return {
        "epoch_seconds": epoch,
        "eval_seconds": evaluation,
        "peak_memory_mb": peak_memory_mb(torch.device("cpu")),
        "steps": task.steps,
        "targets": int(np.sum(task.windows.n_targets)),
        "users_evaluated": len(dataset.target_rows("test")),
        "ndcg@10_after_one_epoch": metrics["ndcg@10"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mode", default="transductive", choices=("inductive", "transductive", "sasrec"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.data, args.mode, args.threads)))
        return
    data = args.data or default_data()
    runs = []
    for _ in range(args.repeats):
        done = subprocess.run(
            [sys.executable, __file__, "--child", "--data", str(data), "--mode", args.mode,
             "--threads", str(args.threads)],
            capture_output=True, text=True, check=True,
        )
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(json.dumps(runs[-1]), file=sys.stderr)
    summary: dict[str, object] = {"mode": args.mode, "repeats": args.repeats, "threads": args.threads}
    for key, reference in REFERENCE.items():
        values = [r[key] for r in runs]
        median = statistics.median(values)
        summary[key] = {"median": round(median, 3), "min": round(min(values), 3), "max": round(max(values), 3),
                        "reference": reference, "ratio_to_reference": round(median / reference, 4)}
    summary["steps_per_epoch"] = runs[0]["steps"]
    summary["users_evaluated"] = runs[0]["users_evaluated"]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
