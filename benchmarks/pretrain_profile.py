"""Where a pre-training step's time goes: the MoE adaptor over the items a batch touches vs the rest.

For real batches of the corpus (the default recipe's batch size), each repetition in a fresh process times:
- ``step``: the whole training step (loss of ``PretrainTask`` + backward + Adam), as ``unisrec pretrain`` runs it;
- ``adaptor``: forward + backward of the adaptor alone on the same batch's unique items (M x D -> M x H);
- ``rest`` = step - adaptor (Transformer on both views, contrastive losses, optimizer);
at ``--precision float32`` and ``bfloat16`` (autocast, ``train.precision``), and prints medians, the adaptor's
share of the step and the bf16/fp32 ratios.

    python benchmarks/pretrain_profile.py DATA_DIR [DATA_DIR ...] [--steps 4] [--repeats 3] [--batch-size 2048]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def child(dirs: list[Path], steps: int, batch_size: int, threads: int, precision: str) -> dict[str, float]:
    import numpy as np
    import torch

    from unisrec.config import RunConfig
    from unisrec.distributed import Distributed
    from unisrec.model import UniSRec
    from unisrec.pretrain import PretrainTask, load_corpus

    torch.set_num_threads(threads)
    config = RunConfig().with_overrides(
        [f"train.batch_size={batch_size}", "pretrain.word_drop_variants=0", "train.progress=false",
         f"train.precision={precision}"])
    corpus = load_corpus(dirs, config)
    torch.manual_seed(0)
    model = UniSRec.without_catalogue(config.model, corpus.text.shape[1])
    task = PretrainTask(model, corpus, config, torch.device("cpu"), Distributed.single())
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    text = torch.from_numpy(corpus.text)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16")
    step_times, adaptor_times, unique_items, targets = [], [], [], []
    for index, plan in enumerate(task.batches(0)):
        if index > steps:  # the first step warms up the kernels and is not timed
            break
        windows = corpus.windows.subset(plan.windows)
        first = corpus.items[windows.start]
        rows = windows.start[:, None] + np.arange(config.model.max_seq_len)[None]
        inside = np.arange(config.model.max_seq_len)[None] <= windows.length[:, None]
        unique = np.unique(np.concatenate([corpus.items[rows[inside]], first]))
        started = time.perf_counter()
        with autocast:
            loss = task.loss(plan)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step_seconds = time.perf_counter() - started
        started = time.perf_counter()
        assert model.adaptor is not None
        with autocast:
            out = model.adaptor(text[torch.from_numpy(unique)])  # (M, H)
        out.float().square().mean().backward()
        adaptor_seconds = time.perf_counter() - started
        if index:
            step_times.append(step_seconds)
            adaptor_times.append(adaptor_seconds)
            unique_items.append(len(unique))
            targets.append(int(windows.n_targets.sum()))
    step, adaptor = statistics.median(step_times), statistics.median(adaptor_times)
    return {"step_seconds": step, "adaptor_seconds": adaptor, "rest_seconds": step - adaptor,
            "adaptor_share": adaptor / step, "unique_items": statistics.median(unique_items),
            "targets": statistics.median(targets), "examples_per_second": statistics.median(targets) / step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dirs", type=Path, nargs="+")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None, help="also write the summary to this JSON file")
    parser.add_argument("--child", choices=("float32", "bfloat16"), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.data_dirs, args.steps, args.batch_size, args.threads, args.child)))
        return
    from unisrec.precision import cpu_summary

    results: dict[str, dict[str, float]] = {}
    for precision in ("float32", "bfloat16"):
        runs = []
        for _ in range(args.repeats):
            command = [sys.executable, __file__, *map(str, args.data_dirs), "--steps", str(args.steps),
                       "--batch-size", str(args.batch_size), "--threads", str(args.threads), "--child", precision]
            out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))
        results[precision] = {k: round(statistics.median(r[k] for r in runs), 4) for k in runs[0]}
    summary = {
        "benchmark": "pretrain_profile", "datasets": [d.name for d in args.data_dirs], "steps": args.steps,
        "repeats": args.repeats, "batch_size": args.batch_size, "threads": args.threads, "cpu": cpu_summary(),
        **results,
        "bf16_over_fp32_step": round(results["bfloat16"]["step_seconds"] / results["float32"]["step_seconds"], 3),
        "bf16_over_fp32_adaptor": round(
            results["bfloat16"]["adaptor_seconds"] / results["float32"]["adaptor_seconds"], 3),
    }
    if args.out is not None:
        from unisrec.atomic import atomic_write_json

        atomic_write_json(args.out, summary)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
