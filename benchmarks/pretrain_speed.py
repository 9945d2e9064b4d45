"""Pre-training throughput on 2 CPU cores: training examples (prefix -> next item) per second.

Two ways of computing the same losses (sequence-item + sequence-sequence with item drop) are timed on the
same data, model and batch size, each in a fresh process, for a fixed number of steps:

- ``unisrec``: this library's step: training windows (one causal pass trains every prefix of a window),
  length-bucketed batches, the adapted vectors of only the items the batch touches.
- ``per-prefix``: the reference implementation's layout, rebuilt here with the same model code: every
  training example is its own prefix sequence padded to max_seq_len (50), the encoder runs on all of
  them, and the sequence-item loss reads the last position.

The reference code itself (RecBole-based) cannot be fetched or installed in this offline workplace, so
its own throughput is not measured; the per-prefix layout above is its data layout and cost model, run
with our kernels, and is the baseline the ratio refers to.

Measured 2026-11-27 on the idle 2-core development machine (torch 2.13 CPU, 2 threads), the ten
multi-domain folders (4.09 M interactions, mean-pooled bf16 MiniLM vectors), 5 steps, 3 repetitions:
batch 2048: unisrec 3,756 examples/s (1.3 GB peak), per-prefix 55 examples/s (9.1 GB): 67x;
batch 8192 (the paper's): unisrec 2,396 examples/s (3.3 GB); per-prefix killed by the out-of-memory killer
(over 24 GB resident).

    python benchmarks/pretrain_speed.py DATA_DIR [DATA_DIR ...] [--steps 20] [--repeats 3] [--batch-size 8192]
        [--pooling cls+mean] [--precision float32]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def child(
    dirs: list[Path], method: str, steps: int, batch_size: int, threads: int, pooling: str, precision: str
) -> dict[str, float]:
    import numpy as np
    import torch

    from unisrec.augment import item_drop
    from unisrec.config import RunConfig
    from unisrec.distributed import Distributed
    from unisrec.losses import contrastive
    from unisrec.model import UniSRec
    from unisrec.pretrain import PretrainTask, load_corpus
    from unisrec.train import peak_memory_mb

    torch.set_num_threads(threads)
    config = RunConfig().with_overrides(
        [f"train.batch_size={batch_size}", "pretrain.word_drop_variants=0", "train.progress=false",
         f"text.pooling={pooling}", f"text.precision={precision}"]
    )
    corpus = load_corpus(dirs, config)
    torch.manual_seed(0)
    model = UniSRec.without_catalogue(config.model, corpus.text.shape[1])
    optimizer = torch.optim.Adam(model.parameters(), lr=config.train.lr)
    rng = np.random.default_rng(0)
    tau, max_len = config.model.temperature, config.model.max_seq_len
    examples = 0
    if method == "unisrec":
        task = PretrainTask(model, corpus, config, torch.device("cpu"), Distributed.single())
        plans = iter(task.batches(0))

        def step_fn() -> tuple[dict[str, torch.Tensor], int]:
            plan = next(plans)
            return task.loss(plan), int(corpus.windows.n_targets[plan.windows].sum())
    else:
        windows = corpus.windows
        # every (window row, counted position) pair is one reference training example
        n_targets = windows.n_targets
        owners = np.repeat(np.arange(len(windows)), n_targets)
        positions = np.concatenate([np.arange(f, n) for f, n in zip(windows.first_target, windows.length, strict=True)])
        text = torch.from_numpy(corpus.text)

        def step_fn() -> tuple[dict[str, torch.Tensor], int]:
            pick = rng.integers(0, len(owners), size=batch_size)
            end = windows.start[owners[pick]] + positions[pick] + 1  # one past the last history item
            user = np.searchsorted(corpus.seq_offsets, end - 1, "right") - 1
            start = np.maximum(end - max_len, corpus.seq_offsets[user])
            lengths = end - start
            grid = start[:, None] + np.arange(max_len)[None, :]  # (B, 50): always padded to max_len
            inputs = corpus.items[np.where(np.arange(max_len)[None, :] < lengths[:, None], grid, start[:, None])]
            targets = corpus.items[end]
            aug, aug_lengths = item_drop(inputs, lengths, 0.2, rng.random(inputs.shape))
            unique = np.unique(np.concatenate([inputs.ravel(), targets]))
            seqs = torch.from_numpy(np.searchsorted(unique, np.concatenate([inputs, aug])))
            hidden, table = model(seqs, text=text[unique])
            rows = torch.arange(batch_size)
            seq = hidden[rows, torch.from_numpy(lengths - 1)]
            seq_aug = hidden[batch_size + rows, torch.from_numpy(aug_lengths - 1)]
            ids = torch.from_numpy(targets)
            candidates = table[torch.from_numpy(np.searchsorted(unique, targets))]
            si = contrastive(seq, candidates, tau, query_ids=ids, candidate_ids=ids)
            ss = contrastive(seq, seq_aug, tau, query_ids=ids, candidate_ids=ids)
            return {"loss": si + config.pretrain.lambda_ss * ss}, batch_size

    started = time.perf_counter()
    for _ in range(steps):
        terms, n = step_fn()
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        examples += n
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "examples": examples, "examples_per_second": examples / seconds,
            "peak_memory_mb": peak_memory_mb(torch.device("cpu"))}


def main() -> None:
    from unisrec.config import POOLINGS, TEXT_PRECISIONS, TextConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, nargs="+", help="processed dataset folders (items encoded)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--pooling", default=TextConfig.pooling, choices=POOLINGS,
                        help="which cached text vectors to use (encoded on first use if missing)")
    parser.add_argument("--precision", default=TextConfig.precision, choices=TEXT_PRECISIONS)
    parser.add_argument("--child", choices=("unisrec", "per-prefix"), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.data, args.child, args.steps, args.batch_size, args.threads, args.pooling,
                               args.precision)))
        return
    results: dict[str, list[dict[str, float]]] = {"unisrec": [], "per-prefix": []}
    failures: dict[str, str] = {}
    for _ in range(args.repeats):
        for method in results:  # alternate, so drifting machine speed hits both alike
            if method in failures:
                continue
            done = subprocess.run(
                [sys.executable, __file__, *map(str, args.data), "--child", method, "--steps", str(args.steps),
                 "--batch-size", str(args.batch_size), "--threads", str(args.threads),
                 "--pooling", args.pooling, "--precision", args.precision],
                capture_output=True, text=True,
            )
            if done.returncode != 0:  # e.g. -9: killed by the kernel's out-of-memory killer
                why = "killed by signal 9 (out of memory?)" if done.returncode == -9 else done.stderr.strip()[-500:]
                failures[method] = f"exit {done.returncode}: {why}"
                print(method, failures[method], file=sys.stderr)
                continue
            results[method].append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(method, done.stdout.strip().splitlines()[-1], file=sys.stderr)
    summary: dict[str, object] = {"steps": args.steps, "batch_size": args.batch_size, "threads": args.threads}
    for method, runs in results.items():
        if method in failures:
            summary[method] = {"failed": failures[method]}
            continue
        rates = [r["examples_per_second"] for r in runs]
        summary[method] = {
            "examples_per_second_median": round(statistics.median(rates), 1),
            "min": round(min(rates), 1),
            "max": round(max(rates), 1),
            "peak_memory_mb_median": round(statistics.median(r["peak_memory_mb"] for r in runs), 1),
        }
    if not failures:
        ratios = [a["examples_per_second"] / b["examples_per_second"]
                  for a, b in zip(results["unisrec"], results["per-prefix"], strict=True)]
        summary["speedup_over_per_prefix_median"] = round(statistics.median(ratios), 2)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
