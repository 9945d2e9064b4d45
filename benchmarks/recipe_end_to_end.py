"""The default pre-training recipe end to end on this machine, as a new user runs it: prepare the ten shared
domains and Scientific, encode every item's text with the default vectors, pre-train with `unisrec pretrain`'s
defaults. Each step is a fresh process under GNU time (`/usr/bin/time -v`): its wall time and peak resident
memory go into one JSON record, with the pre-training's own figures (steps, seconds of training, the precision
it resolved to) and the machine.

    python benchmarks/recipe_end_to_end.py ../shared/data --work /tmp/e2e \
        --record results/benchmarks/recipe_end_to_end.json

`--collect` writes the record from the time files (`WORK/time-STEP.txt`) and the run folder of an earlier run of
the same steps, without running anything. Needs GNU time and an empty (or absent) WORK folder.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

DOMAINS = ("amazon2014-beauty", "amazon2014-book", "amazon2014-clothing", "amazon2014-electronic", "amazon2014-health",
           "amazon2018-electronic", "amazon2018-game", "food", "movielens-1m", "steam")


def steps(data: Path, run: str) -> list[tuple[str, list[str]]]:
    """(name, command) of each step, run in the work folder."""
    md = [f"md/{d}" for d in DOMAINS]
    return [
        ("prepare-md", ["unisrec", "prepare", *(str(data / "multi-domain" / d) for d in DOMAINS), "--format", "csv",
                        "--out", "md"]),
        ("prepare-sci", ["unisrec", "prepare", str(data / "amazon-scientific"), "--format", "unisrec", "--out", "sci"]),
        ("encode", ["unisrec", "encode", "sci", *md]),
        ("pretrain", ["unisrec", "pretrain", *md, "--out", run, "--seed", "0"]),
    ]


def read_time_file(path: Path) -> dict[str, Any]:
    """The command as run, wall seconds, CPU seconds and peak RSS (MiB) from a `/usr/bin/time -v` output file."""
    text = path.read_text()
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    user = re.search(r"User time \(seconds\): ([\d.]+)", text)
    system = re.search(r"System time \(seconds\): ([\d.]+)", text)
    status = re.search(r"Exit status: (\d+)", text)
    command = re.search(r'Command being timed: "(.*)"', text)
    if not (wall and rss and user and system):
        raise SystemExit(f"{path}: not a complete `/usr/bin/time -v` output")
    if status and status.group(1) != "0":
        raise SystemExit(f"{path}: the step exited with status {status.group(1)}")
    seconds = 0.0
    for part in wall.group(1).split(":"):
        seconds = seconds * 60 + float(part)
    return {"command": command.group(1) if command else "",
            "wall_seconds": round(seconds, 2), "cpu_seconds": round(float(user.group(1)) + float(system.group(1)), 2),
            "peak_rss_mib": round(int(rss.group(1)) / 1024, 1)}


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="the shared data folder (multi-domain/ and amazon-scientific/)")
    parser.add_argument("--work", type=Path, required=True, help="folder for the prepared data and the run")
    parser.add_argument("--record", type=Path, required=True, help="JSON record to write")
    parser.add_argument("--run", default="runs/pre", help="the pre-training's run folder, inside --work")
    parser.add_argument("--collect", action="store_true", help="record an earlier run of the steps; run nothing")
    args = parser.parse_args(argv)
    data, work = args.data.resolve(), args.work.resolve()
    plan = steps(data, args.run)
    if not args.collect:
        if work.exists() and any(work.iterdir()):
            raise SystemExit(f"{work}: not empty; give a new folder (or --collect to record what is there)")
        work.mkdir(parents=True, exist_ok=True)
        for name, command in plan:
            print(f"{name}: {' '.join(command)}", file=sys.stderr, flush=True)
            done = subprocess.run(["/usr/bin/time", "-v", "-o", f"time-{name}.txt", *command], cwd=work)
            if done.returncode:
                raise SystemExit(f"{name} failed (exit {done.returncode})")
    measured = {name: read_time_file(work / f"time-{name}.txt") for name, _ in plan}
    metrics = json.loads((work / args.run / "metrics.json").read_text())
    run = json.loads((work / args.run / "run.json").read_text())
    record: dict[str, Any] = {
        "benchmark": "recipe_end_to_end",
        "written": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "steps": measured,
        "total_wall_seconds": round(sum(m["wall_seconds"] for m in measured.values()), 2),
        "peak_rss_mib": max(m["peak_rss_mib"] for m in measured.values()),
        "pretrain": {key: metrics[key] for key in ("epochs", "steps", "seconds_train", "peak_memory_mb", "device",
                                                   "domains", "code")},
        "precision": run["config"]["train"]["precision"],
        "threads": run["config"]["train"]["threads"],
        "machine": {"cpu": cpu_model(), "cpu_count": _cpu_count(), "platform": platform.platform()},
    }
    from unisrec.atomic import atomic_write_json  # here: --help and the steps need only the `unisrec` command

    atomic_write_json(args.record, record)
    print(json.dumps({k: record[k] for k in ("total_wall_seconds", "peak_rss_mib", "precision")}))
    return 0


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


if __name__ == "__main__":
    sys.exit(main())
