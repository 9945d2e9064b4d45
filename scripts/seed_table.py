"""Mean and standard deviation over seeds of finished runs' test metrics, as a Markdown table.

    python scripts/seed_table.py "SASRec=runs/sasrec-s*" "UniSRec_t+ID=runs/transductive-s*" [--split test]
    python scripts/seed_table.py --long-tail ndcg@10 "scratch=results/a-s*.json" "transfer=results/b-s*.json"
    python scripts/seed_table.py --versus ndcg@10 "Scientific inductive=results/a-s*.json::results/b-s*.json"
    python scripts/seed_table.py --curve ndcg@10 "scratch=results/a-s1.json" "transfer=runs/b-s1" [--epochs 1,5,10]

Each argument is LABEL=GLOB of run folders (each with the ``metrics.json`` of ``unisrec finetune``) or of
record files (``results/NAME/RUN.json`` of ``unisrec record`` / ``unisrec report``). The standard deviation
is the sample one (n - 1), formatted as in ``unisrec report`` (a row with one run shows the value alone).

``--long-tail METRIC`` prints instead one row per popularity group of the test targets (the records'
``long_tail`` counts, ``unisrec.analysis``): the group's training-interaction range, items and test targets,
METRIC's mean +- std over each argument's records, and the last argument against the first. Every record must
carry the same groups (same data and grouping), so the rows compare like with like.

``--versus METRIC`` takes arguments ``LABEL=REFERENCE_GLOB::CANDIDATE_GLOB`` and prints one row each: the runs
of both sides, METRIC's mean +- std on ``--split`` for each, the candidate's change of the mean in percent, and
whether every candidate run scores above every reference run.

``--curve METRIC`` takes arguments ``LABEL=PATH`` of ONE run each: a record (its ``curve``), a run folder (its
``train.log``) or an epoch log file (``train.log`` / ``*.jsonl``, one JSON object a line; other lines, such as
resume notes, are skipped), and prints one row per epoch (``--epochs`` picks them) with each run's validation
METRIC / training loss after that epoch ("-" where a run has not reached it, the metric alone where an epoch
logged no loss): the learning curves of unfinished
runs side by side. An epoch logged twice (a resumed run) keeps its last entry.
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
from pathlib import Path
from typing import Any, NoReturn

from unisrec.records import log_curve
from unisrec.report_writer import cell, change_over_seeds, group_metric, group_shape, paired_note, relative_change

METRICS = ("recall@10", "ndcg@10", "recall@50", "ndcg@50")


def fail(message: str) -> NoReturn:
    """Bad input: one line on stderr, exit status 2."""
    print(f"seed_table: {message}", file=sys.stderr)
    sys.exit(2)


def _is_result(path: Path) -> bool:
    """A record or metrics file (it holds ``valid`` or ``test``), not a report's spec file beside a run folder
    (``seed-1.json``) nor the record of a remade run kept aside (``NAME.remade.json``: a seed counted twice)."""
    if path.name.endswith(".remade.json"):
        return False
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        fail(f"{path}: not a JSON file")
    return isinstance(content, dict) and ("valid" in content or "test" in content)


def _sources(pattern: str) -> list[Path]:
    """Run folders with a metrics.json, or record files (``results/NAME/RUN.json``), matching ``pattern``."""
    found = [Path(p) for p in glob.glob(pattern)]
    return sorted(p / "metrics.json" if p.is_dir() else p for p in found
                  if (p.is_dir() and (p / "metrics.json").is_file())
                  or (p.is_file() and p.suffix == ".json" and _is_result(p)))


def _values(pattern: str, split: str, metric: str) -> list[float]:
    """``metric`` on ``split`` of every run or record matching ``pattern``, in file order."""
    files = _sources(pattern)
    if not files:
        fail(f"{pattern}: no run folder with a metrics.json and no record file")
    values = []
    for path in files:
        content = json.loads(path.read_text())
        if content.get("kind") == "pretrain":
            fail(f"{path}: a pre-training record, which holds no {split} metrics (its fine-tunings' records do)")
        scores = content.get(split, content)
        if scores is None:  # a run made with eval.test=false
            fail(f"{path}: its {split} split was not scored (eval.test=false; `unisrec evaluate RUN DATA --split "
                 f"{split} --save` scores it once)")
        if metric not in scores:
            fail(f"{path}: no {split} {metric}")
        values.append(float(scores[metric]))
    return values


def _by_seed(pattern: str, split: str, metric: str) -> dict[int, float] | None:
    """``metric`` on ``split`` by seed of the runs or records matching ``pattern``; None where a file names no seed
    or two name the same one (a glob over several experiments), so that no pairing is guessed."""
    found: dict[int, float] = {}
    for path in _sources(pattern):
        content = json.loads(path.read_text())
        seed, scores = content.get("seed"), content.get(split)
        if not isinstance(seed, int) or seed in found or not isinstance(scores, dict) or metric not in scores:
            return None
        found[seed] = float(scores[metric])
    return found


def _note_repeated_seeds(label: str, seeds: list[Any]) -> None:
    """Say on stderr when two of a row's records (their ``seeds``) name one seed: they count as two runs (e.g. one
    setting made on one and on two threads), which a mean over seeds does not show."""
    repeated = sorted({s for s in seeds if isinstance(s, int) and seeds.count(s) > 1})
    if repeated:
        print(f"seed_table: note: {label}: seed {', '.join(map(str, repeated))} in more than one record, each "
              "counted as a run", file=sys.stderr)


def row(label: str, pattern: str, split: str, metrics: tuple[str, ...] = METRICS) -> str:
    values = {m: _values(pattern, split, m) for m in metrics}
    runs = len(values[metrics[0]])
    _note_repeated_seeds(label, [json.loads(path.read_text()).get("seed") for path in _sources(pattern)])
    return f"| {label} | {runs} | " + " | ".join(cell(values[m]) for m in metrics) + " |"


def long_tail_table(specs: list[tuple[str, str]], metric: str) -> list[str]:
    """Markdown rows: METRIC per popularity group for each (label, glob), and the last label against the first."""
    shape: list[dict[str, Any]] | None = None
    shape_source = ""
    columns: list[list[list[float]]] = []  # label -> group -> values over records
    seeded: list[list[dict[int, float]] | None] = []  # label -> group -> seed -> value (None: seeds not unique)
    for label, pattern in specs:
        files = [f for f in _sources(pattern) if f.name != "metrics.json"]
        if not files:
            fail(f"{pattern}: no record file (--long-tail reads the records' long_tail counts)")
        records = [json.loads(path.read_text()) for path in files]  # each read once
        seeds = [record.get("seed") for record in records]
        _note_repeated_seeds(label, seeds)
        unique = all(isinstance(s, int) for s in seeds) and len(set(seeds)) == len(seeds)
        per_group: list[list[float]] = []
        for path, record in zip(files, records, strict=True):
            rows = record.get("long_tail")
            if not isinstance(rows, list) or not rows:
                fail(f"{path}: no long_tail counts")
            if shape is None:
                shape, shape_source = rows, str(path)
            elif group_shape(rows) != group_shape(shape):
                fail(f"{path}: its popularity groups differ from those of {shape_source}")
            per_group = per_group or [[] for _ in rows]
            for g, row in enumerate(rows):
                value = group_metric(row, metric)
                if value is None:
                    fail(f"{path}: group {g + 1} has no counts for {metric}")
                per_group[g].append(value)
        columns.append(per_group)
        seeded.append([dict(zip(seeds, values, strict=True)) for values in per_group] if unique else None)
    assert shape is not None
    labels = [label for label, _ in specs]
    header = ["group", "training interactions", "items", "test targets", *labels]
    if len(specs) >= 2:
        header.append(f"{labels[-1]} vs {labels[0]}")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for g, group in enumerate(shape):
        low, high = group["frequency_range"]
        cells = [str(g + 1), f"{low}–{high}", str(group["items"]), str(group["targets"]),
                 *(cell(column[g]) for column in columns)]
        if len(specs) >= 2:  # where the two hold other seeds, also over those both hold (as --versus)
            first, last = seeded[0], seeded[-1]
            cells.append(change_over_seeds(last[g], first[g]) if first is not None and last is not None
                         else relative_change(columns[-1][g], columns[0][g]))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def versus_table(specs: list[tuple[str, str]], split: str, metric: str) -> list[str]:
    """Markdown rows: reference vs candidate runs of each (label, "REFERENCE_GLOB::CANDIDATE_GLOB")."""
    lines = [f"| comparison | runs | reference {metric} | candidate {metric} | change | every run above |",
             "|---|---|---|---|---|---|"]
    for label, patterns in specs:
        reference_glob, sep, candidate_glob = patterns.partition("::")
        if not sep:
            fail(f"{label}={patterns}: --versus expects LABEL=REFERENCE_GLOB::CANDIDATE_GLOB")
        old, new = _values(reference_glob, split, metric), _values(candidate_glob, split, metric)
        above = "yes" if min(new) > max(old) else "no"
        seeded_old, seeded_new = _by_seed(reference_glob, split, metric), _by_seed(candidate_glob, split, metric)
        paired = paired_note(seeded_new, seeded_old) if seeded_old is not None and seeded_new is not None else ""
        lines.append(f"| {label} | {len(old)} / {len(new)} | {cell(old)} | {cell(new)} | "
                     f"{relative_change(new, old)}{paired} | {above} |")
    return lines


def _epochs(path: Path) -> dict[int, dict[str, Any]]:
    """Epoch -> that epoch's log entry (``valid`` metrics, ``train_loss``) of one run, record or epoch log."""
    if path.is_dir():
        path = path / "train.log"
    if not path.is_file():
        fail(f"{path}: no such record, run folder or epoch log")
    if path.suffix == ".json":
        entries = json.loads(path.read_text()).get("curve")
        if not isinstance(entries, list):
            fail(f"{path}: no curve (a record of unisrec finetune carries one)")
        entries = [e for e in entries if isinstance(e, dict) and "epoch" in e and "valid" in e]  # pre-training: none
    else:
        entries = [e for e in log_curve(path) if "epoch" in e and "valid" in e]  # progress lines skipped
    found = {int(entry["epoch"]): entry for entry in entries}
    if not found:
        fail(f"{path}: no epoch with validation metrics")
    return found


def _curve_cell(entry: dict[str, Any], metric: str) -> str:
    """``0.0580 / 6.970``: validation metric / training loss (the metric alone where no loss was logged)."""
    loss = entry.get("train_loss")
    value = f"{entry['valid'][metric]:.4f}"
    return value if loss is None else f"{value} / {loss:.3f}"


def curve_table(specs: list[tuple[str, str]], metric: str, epochs: list[int] | None) -> list[str]:
    """Markdown rows: per epoch, each run's validation ``metric`` / training loss."""
    runs = [(label, _epochs(Path(pattern))) for label, pattern in specs]
    for label, run in runs:
        for epoch, entry in run.items():
            if metric not in entry["valid"]:
                fail(f"{label}: epoch {epoch} has no validation {metric}")
    wanted = epochs if epochs is not None else sorted({epoch for _, run in runs for epoch in run})
    lines = ["| epoch | " + " | ".join(label for label, _ in runs) + " |", "|---|" + "---|" * len(runs)]
    for epoch in wanted:
        cells = [_curve_cell(run[epoch], metric) if epoch in run else "-" for _, run in runs]
        lines.append(f"| {epoch} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rows", nargs="+", help="LABEL=GLOB of run folders")
    parser.add_argument("--split", default="test", choices=["valid", "test"])
    parser.add_argument("--metrics", default=",".join(METRICS), help="comma-separated metric columns")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--long-tail", metavar="METRIC", default=None,
                      help="rows by popularity group of the test targets, METRIC (e.g. ndcg@10) per argument")
    kind.add_argument("--versus", metavar="METRIC", default=None,
                      help="rows of LABEL=REFERENCE_GLOB::CANDIDATE_GLOB: both sides, change, every run above")
    kind.add_argument("--curve", metavar="METRIC", default=None,
                      help="rows by epoch: validation METRIC / training loss of each LABEL=RUN (record, folder, log)")
    parser.add_argument("--epochs", default=None, help="with --curve: comma-separated epochs to show (default all)")
    args = parser.parse_args()
    specs = []
    for spec in args.rows:
        label, sep, pattern = spec.partition("=")
        if not sep:
            fail(f"{spec!r}: expected LABEL=GLOB")
        specs.append((label, pattern))
    if args.long_tail is not None:
        name, _, k = args.long_tail.partition("@")
        if name not in ("recall", "ndcg", "mrr") or not k.isdigit():
            fail(f"--long-tail {args.long_tail!r}: expected recall@K, ndcg@K or mrr@K")
        print("\n".join(long_tail_table(specs, args.long_tail)))
        return
    if args.curve is not None:
        try:
            epochs = [int(e) for e in args.epochs.split(",")] if args.epochs else None
        except ValueError:
            fail(f"--epochs {args.epochs!r}: expected comma-separated epoch numbers")
        print("\n".join(curve_table(specs, args.curve, epochs)))
        return
    if args.epochs is not None:
        fail("--epochs goes with --curve")
    if args.versus is not None:
        print("\n".join(versus_table(specs, args.split, args.versus)))
        return
    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    if not metrics:
        fail(f"--metrics {args.metrics!r} names no metric: give comma-separated metrics (e.g. ndcg@10,recall@10)")
    rows = [row(label, pattern, args.split, metrics) for label, pattern in specs]  # a bad one fails before output
    print("| model | runs | " + " | ".join(metrics) + " |")
    print("|---|---|" + "---|" * len(metrics))
    print("\n".join(rows))


if __name__ == "__main__":
    main()
