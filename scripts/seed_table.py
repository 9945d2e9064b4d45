"""Mean and standard deviation over seeds of finished runs' test metrics, as a Markdown table.

    python scripts/seed_table.py "SASRec=runs/sasrec-s*" "UniSRec_t+ID=runs/transductive-s*" [--split test]

Each argument is LABEL=GLOB of run folders (each with the ``metrics.json`` of ``unisrec finetune``) or of
record files (``results/NAME/RUN.json`` of ``unisrec record`` / ``unisrec report``). The standard deviation
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


def _sources(pattern: str) -> list[Path]:
    """Run folders with a metrics.json, or record files (``results/NAME/RUN.json``), matching ``pattern``."""
    found = [Path(p) for p in glob.glob(pattern)]
    return sorted(p / "metrics.json" if p.is_dir() else p for p in found
                  if (p.is_dir() and (p / "metrics.json").is_file()) or (p.is_file() and p.suffix == ".json"))


def row(label: str, pattern: str, split: str, metrics: tuple[str, ...] = METRICS) -> str:
    files = _sources(pattern)
    if not files:
        sys.exit(f"seed_table: {pattern}: no run folder with a metrics.json and no record file")
    values = {m: [] for m in metrics}  # type: dict[str, list[float]]
    for path in files:
        data = json.loads(path.read_text())
        scores = data.get(split, data)
        for m in metrics:
            if m not in scores:
                sys.exit(f"seed_table: {path}: no {split} {m}")
            values[m].append(float(scores[m]))
    return f"| {label} | {len(files)} | " + " | ".join(cell(values[m]) for m in metrics) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", nargs="+", help="LABEL=GLOB of run folders")
    parser.add_argument("--split", default="test", choices=["valid", "test"])
    parser.add_argument("--metrics", default=",".join(METRICS), help="comma-separated metric columns")
    args = parser.parse_args()
    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    print("| model | runs | " + " | ".join(metrics) + " |")
    print("|---|---|" + "---|" * len(metrics))
    for spec in args.rows:
        label, sep, pattern = spec.partition("=")
        if not sep:
            sys.exit(f"seed_table: {spec!r}: expected LABEL=GLOB")
        print(row(label, pattern, args.split, metrics))


if __name__ == "__main__":
    main()
