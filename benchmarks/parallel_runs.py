"""Two 1-thread runs at once vs one 2-thread run after another: which finishes a report's runs sooner?

`unisrec report --jobs N` runs N runs at once with cores/N torch threads each. This benchmark measures, on
this machine, the wall time of the same two fine-tuning runs (Scientific, transductive, a fixed number of
epochs, seeds 1 and 2, fresh processes):

- sequential: one after the other, each with all the cores (``--train.threads=CORES``), as ``--jobs 1``;
- parallel: both at once, each with CORES/2 threads, as ``--jobs 2``.

Repetitions alternate the two layouts (A B A B ...) so that a drift of the machine's speed hits both; the
medians and their ratio are printed, and the last line of stdout is one JSON object.

    python benchmarks/parallel_runs.py --data DIR [--epochs 3] [--repeats 3] [--cores 2]

DIR is a processed Scientific folder with its text vectors encoded (``unisrec prepare`` + ``unisrec encode``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def finetune_command(data: Path, out: Path, seed: int, epochs: int, threads: int) -> list[str]:
    return [sys.executable, "-m", "unisrec", "finetune", str(data), "--mode", "transductive", "--seed", str(seed),
            "--epochs", str(epochs), "--out", str(out), "--overwrite", f"--train.threads={threads}",
            "--train.progress=false", "--train.log=jsonl"]


def timed(commands: list[list[str]], at_once: bool, threads: int) -> float:
    """Wall seconds to finish every command, started together (``at_once``) or one after another."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    began = time.perf_counter()
    if at_once:
        procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in commands]
        for proc in procs:
            _, err = proc.communicate()
            if proc.returncode:
                raise SystemExit(err.decode()[-2000:])
    else:
        for command in commands:
            done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            if done.returncode:
                raise SystemExit(done.stderr.decode()[-2000:])
    return time.perf_counter() - began


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="processed Scientific folder (vectors encoded)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    if args.cores < 2:
        raise SystemExit("--cores must be at least 2 to compare the layouts")
    sequential, parallel = [], []
    with tempfile.TemporaryDirectory(prefix="unisrec-parallel-") as tmp:
        for repeat in range(args.repeats):
            runs = [Path(tmp) / f"r{repeat}-{seed}" for seed in (1, 2)]
            seconds = timed([finetune_command(args.data, r, s, args.epochs, args.cores)
                             for r, s in zip(runs, (1, 2), strict=True)], at_once=False, threads=args.cores)
            sequential.append(seconds)
            half = args.cores // 2
            seconds = timed([finetune_command(args.data, r, s, args.epochs, half)
                             for r, s in zip(runs, (1, 2), strict=True)], at_once=True, threads=half)
            parallel.append(seconds)
            print(f"repeat {repeat + 1}: one after another ({args.cores} threads each) {sequential[-1]:.1f} s, "
                  f"at once ({half} threads each) {parallel[-1]:.1f} s", file=sys.stderr, flush=True)
    ratios = [p / s for p, s in zip(parallel, sequential, strict=True)]
    result = {
        "benchmark": "parallel_runs", "data": str(args.data), "epochs": args.epochs, "cores": args.cores,
        "repeats": args.repeats, "sequential_seconds": [round(x, 2) for x in sequential],
        "parallel_seconds": [round(x, 2) for x in parallel],
        "sequential_median": round(statistics.median(sequential), 2),
        "parallel_median": round(statistics.median(parallel), 2),
        "parallel_over_sequential_median": round(statistics.median(ratios), 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
