"""Mean and standard deviation over seeds of finished runs' test metrics, as a Markdown table.

    python scripts/seed_table.py "SASRec=runs/sasrec-s*" "UniSRec_t+ID=runs/transductive-s*" [--split test]

Each argument is LABEL=GLOB; every folder the glob matches must hold a ``metrics.json`` written by
``unisrec finetune`` (or by ``unisrec evaluate --out``-style ``{"test": {...}}`` objects). The standard deviation
is the sample one (n - 1), formatted as in ``unisrec report`` (a row with one run shows the value alone).
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path

from unisrec.report_writer import cell

METRICS = ("recall@10", "ndcg@10", "recall@50", "ndcg@50")


def row(label: str, pattern: str, split: str) -> str:
    folders = sorted(Path(p) for p in glob.glob(pattern) if (Path(p) / "metrics.json").is_file())
    if not folders:
        sys.exit(f"seed_table: {pattern}: no run folder with a metrics.json")
    values = {m: [] for m in METRICS}  # type: dict[str, list[float]]
    for folder in folders:
        metrics = json.loads((folder / "metrics.json").read_text())
        scores = metrics.get(split, metrics)
        for m in METRICS:
            if m not in scores:
                sys.exit(f"seed_table: {folder / 'metrics.json'}: no {split} {m}")
            values[m].append(float(scores[m]))
    return f"| {label} | {len(folders)} | " + " | ".join(cell(values[m]) for m in METRICS) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", nargs="+", help="LABEL=GLOB of run folders")
    parser.add_argument("--split", default="test", choices=["valid", "test"])
    args = parser.parse_args()
    print("| model | runs | " + " | ".join(METRICS) + " |")
    print("|---|---|" + "---|" * len(METRICS))
    for spec in args.rows:
        label, sep, pattern = spec.partition("=")
        if not sep:
            sys.exit(f"seed_table: {spec!r}: expected LABEL=GLOB")
        print(row(label, pattern, args.split))


if __name__ == "__main__":
    main()
