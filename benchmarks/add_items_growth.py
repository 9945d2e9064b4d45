"""The cost of adding one item to a large served catalogue: tables grown in place against copied whole.

    .venv/bin/python benchmarks/add_items_growth.py                      # 100,000 items, 40 additions timed
    .venv/bin/python benchmarks/add_items_growth.py --items 20000 --additions 100

``Recommender.add_items`` extends the model's (N, D) text vectors, the (N, H) adapted items and the scoring
table (and its bfloat16 copy where the CPU has bf16 units). Each way runs in a fresh process on one thread, a
random UniSRec of the default size, the tables built first: ``grown`` is the library (``append_rows``: the new
rows written into spare rows), ``copied`` replaces ``append_rows`` by a copy of the whole table plus the new
rows (how additions worked before). The median of ``--additions`` single-item additions, interleaved by round
(``--rounds`` fresh processes per way), and their ratio; one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def one_process(n: int, additions: int, copied: bool) -> list[float]:
    import numpy as np
    import torch

    import unisrec.model
    import unisrec.recommend
    import unisrec.topk
    from unisrec.config import ModelConfig
    from unisrec.model import UniSRec
    from unisrec.recommend import Catalogue, Recommender

    if copied:
        def whole_copy(current: torch.Tensor, new: torch.Tensor,
                       store: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
            rows = torch.cat([current, new.to(device=current.device, dtype=current.dtype)])
            return rows, rows

        for module in (unisrec.model, unisrec.recommend, unisrec.topk):
            module.append_rows = whole_copy  # type: ignore[attr-defined]
    torch.set_num_threads(1)
    torch.manual_seed(0)
    d = 768  # the default text vectors (MiniLM, cls+mean)
    model = UniSRec(ModelConfig(), n, torch.randn(n, d)).eval()
    recommender = Recommender(model, Catalogue([f"i{j}" for j in range(n)]))
    recommender.tables()
    vectors = np.random.default_rng(0).normal(size=(additions, d)).astype(np.float32)
    times = []
    for j in range(additions):
        began = time.perf_counter()
        recommender.add_items([f"text {j}"], [f"new{j}"], vectors[j : j + 1])
        times.append(time.perf_counter() - began)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000, help="catalogue size before the additions")
    parser.add_argument("--additions", type=int, default=40, help="single-item additions timed per process")
    parser.add_argument("--rounds", type=int, default=2, help="fresh processes per way, interleaved")
    parser.add_argument("--worker", choices=("grown", "copied"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(one_process(args.items, args.additions, args.worker == "copied")))
        return 0
    times: dict[str, list[float]] = {"grown": [], "copied": []}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for _ in range(args.rounds):
        for way in times:
            done = subprocess.run([sys.executable, __file__, "--items", str(args.items), "--additions",
                                   str(args.additions), "--worker", way], check=True, capture_output=True,
                                  text=True, env=env)
            times[way] += json.loads(done.stdout.strip().splitlines()[-1])
    grown, copied = statistics.median(times["grown"]), statistics.median(times["copied"])
    print(json.dumps({
        "items": args.items, "additions_timed": len(times["grown"]), "threads": 1,
        "seconds_per_addition": {"grown": round(grown, 5), "copied": round(copied, 5)},
        "speedup": round(copied / grown, 1),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
