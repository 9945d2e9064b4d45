"""The cost of persisting one added item when the run's added-items folder already holds many additions.

    .venv/bin/python benchmarks/persist_additions.py                 # 2,000 earlier additions, 30 timed
    .venv/bin/python benchmarks/persist_additions.py --files 500 --repeats 50

``persist_addition`` checks, under the folder's lock, that no earlier addition (of any server of the run) took
an id. It times one more addition over ``--files`` earlier ones, median of ``--repeats``, two ways in the same
process: with the per-process cache of each file's ids (the default), and with that cache emptied before each
addition, so that every earlier file's header is read again (how it worked before the cache). One JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from unisrec.recommend import _addition_ids_of, persist_addition


def timed_additions(folder: Path, start: int, repeats: int, *, cached: bool) -> list[float]:
    if cached:  # the first addition after an emptied cache reads every file: untimed
        persist_addition(folder, [f"warm{start}"], ["warm-up"], torch.zeros(1, 384))
    times = []
    for n in range(start, start + repeats):
        if not cached:
            _addition_ids_of.cache_clear()
        began = time.perf_counter()
        persist_addition(folder, [f"new{n}"], [f"text {n}"], torch.zeros(1, 384))
        times.append(time.perf_counter() - began)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=2000, help="earlier additions in the folder")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "catalogue"
        for n in range(args.files):
            persist_addition(folder, [f"old{n}"], [f"text {n}"], torch.zeros(1, 384))
        # alternate the two ways in blocks so that both see the same folder sizes and machine load
        cached: list[float] = []
        uncached: list[float] = []
        block = max(args.repeats // 3, 1)
        done = 0
        while done < args.repeats:
            size = min(block, args.repeats - done)
            uncached += timed_additions(folder, 2 * done, size, cached=False)
            cached += timed_additions(folder, 2 * done + size, size, cached=True)
            done += size
    before, after = statistics.median(uncached), statistics.median(cached)
    print(json.dumps({
        "earlier_files": args.files, "repeats": args.repeats,
        "every_header_read_ms": round(1000 * before, 2), "cached_ids_ms": round(1000 * after, 2),
        "speedup": round(before / after, 2),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
