"""One serving batch, stage by stage: the new paths against the ones they replaced, timed in the same run.

    .venv/bin/python benchmarks/serve_batch.py                       # the load test's 100k-item synthetic run
    .venv/bin/python benchmarks/serve_batch.py --run runs/transfer --batch 16 --repeats 30

For ``--batch`` histories of 1..50 random items (as in ``load_test.py``) it times, median of ``--repeats``:

- scoring: ``chunked_top_k`` over the float32 table (before) vs ``CoarseTable.top_k`` (bf16 scan, float32
  rescoring), and checks that both return the same items; both are timed on any machine, while the recommender
  takes the coarse pass only where bf16 is native (``native_bfloat16``, ``recommender_uses_coarse``);
- encoding: ``sequence_vectors`` on length-sorted padded groups of 8 (before) vs the packed encoding of
  ``Recommender.queries_of_rows``, and the largest difference of their query vectors.

It also prints how tight the coarse pass is on this run: the largest |bf16 - float32| score error as a
fraction of the proven bound, and how many candidates each query needed (items within 2E of its k-th
coarse score; the pool holds k + 64). One JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

OLD_GROUP = 8  # histories per padded group in the encoder path that packing replaced


def median_ms(work: Callable[[], Any], repeats: int) -> float:
    for _ in range(3):
        work()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return round(1000 * statistics.median(times), 2)


def padded_queries(model: Any, histories: list[np.ndarray], items: torch.Tensor) -> torch.Tensor:
    """The replaced encoder path: histories sorted by length, padded groups of ``OLD_GROUP``, every position."""
    lengths = np.array([len(h) for h in histories])
    states = torch.empty(len(histories), items.shape[1])  # (B, H)
    order = np.argsort(lengths, kind="stable")
    for lo in range(0, len(order), OLD_GROUP):
        group = order[lo : lo + OLD_GROUP]
        width = int(lengths[group].max())
        padded = torch.zeros(len(group), width, dtype=torch.long)  # (G, L)
        for row, b in enumerate(group):
            padded[row, : lengths[b]] = torch.from_numpy(histories[b])
        states[torch.from_numpy(group)] = model.sequence_vectors(padded, torch.from_numpy(lengths[group]), items)
    return model.query_vectors(states)


def run(args: argparse.Namespace) -> dict[str, Any]:
    from unisrec.precision import native_bfloat16
    from unisrec.recommend import Recommender
    from unisrec.topk import POOL_EXTRA, CoarseTable, chunked_top_k

    torch.set_num_threads(args.threads)
    recommender = Recommender.from_pretrained(args.run)
    model = recommender.model
    items, table = recommender.tables()  # (N, H) adapted items, (N, H) scoring table
    # timed on every machine; the recommender itself uses it only where bf16 is native ("recommender_uses_coarse")
    coarse = CoarseTable.build(table, require_native=False)
    if coarse is None:
        raise SystemExit(f"{args.run}: no coarse table ({len(table)} items: under 16,384, or the bound failed)")
    rng = np.random.default_rng(args.seed)
    n = len(table)
    histories = [rng.integers(0, n, size=int(rng.integers(1, 51))) for _ in range(args.batch)]
    seen = [np.unique(h) for h in histories]
    with torch.no_grad():
        queries = recommender.queries_of_rows(histories)  # (B, H)
        old_queries = padded_queries(model, histories, items)
        _, exact_rows = chunked_top_k(queries, table, args.k, seen)
        _, coarse_rows = coarse.top_k(queries, args.k, seen)
        timings = {
            "scoring_float32_ms": median_ms(lambda: chunked_top_k(queries, table, args.k, seen), args.repeats),
            "scoring_coarse_ms": median_ms(lambda: coarse.top_k(queries, args.k, seen), args.repeats),
            "encoding_padded_ms": median_ms(lambda: padded_queries(model, histories, items), args.repeats),
            "encoding_packed_ms": median_ms(lambda: recommender.queries_of_rows(histories), args.repeats),
        }
        # how tight the bound is here: errors over a wider sample of queries
        probe = recommender.queries_of_rows([rng.integers(0, n, size=int(rng.integers(1, 51))) for _ in range(256)])
        exact = probe @ table.T  # (Q, N)
        approx = (probe.bfloat16() @ coarse.coarse.T).float()
        bound = coarse.coefficient * probe.norm(dim=1, keepdim=True) * table.norm(dim=1)[None, :]
        margin = 2 * coarse.coefficient * coarse.max_norm * probe.norm(dim=1, keepdim=True)  # (Q, 1) = 2E
        needed = (approx >= approx.topk(args.k, dim=1).values[:, -1:] - margin).sum(dim=1).float()  # (Q,)
    return {
        "run": str(args.run), "n_items": n, "batch": args.batch, "k": args.k, "threads": args.threads,
        "repeats": args.repeats, "native_bfloat16": native_bfloat16(table.device),
        "recommender_uses_coarse": recommender._coarse is not None, **timings,
        "scoring_ratio": round(timings["scoring_coarse_ms"] / timings["scoring_float32_ms"], 3),
        "encoding_ratio": round(timings["encoding_packed_ms"] / timings["encoding_padded_ms"], 3),
        "same_top_k": bool(torch.equal(exact_rows, coarse_rows)),
        "query_max_abs_difference": float((queries - old_queries).abs().max()),
        "max_error_over_bound": round(float(((approx - exact).abs() / bound).max()), 3),
        "candidates_needed": {"median": float(needed.median()), "max": float(needed.max()),
                              "pool": args.k + POOL_EXTRA},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=None, help="run folder (default: the load test's synthetic run)")
    parser.add_argument("--items", type=int, default=100_000, help="synthetic catalogue size")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "unisrec-load-test")
    parser.add_argument("--batch", type=int, default=16, help="histories per batch")
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.run is None:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from load_test import build_run

        args.run = build_run(args.work / f"run-{args.items}", args.items)
    print(json.dumps(run(args)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
