"""What a report's training runs cost: the seconds their records hold, and an estimate for the runs not recorded
yet. One rule for the report's Compute section and the runner's budget (``unisrec report --budget-minutes``):
the median of the same experiment's (or pre-training's) recorded seeds, else of the recorded fine-tunings on the
same dataset (a pre-training: of the report's recorded pre-trainings), else no estimate (datasets differ in size
by orders of magnitude, so a median over other datasets misleads). Only records made on the same kind of device
count for an estimate: a GPU epoch was 18x (Scientific) to 137x (Food.com) shorter than a one-thread CPU epoch on
2026-12-04."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from pathlib import Path

from unisrec.records import read_record
from unisrec.report_config import ReportConfig


@dataclass(frozen=True)
class PlannedCost:
    """A training run of the report, by the name of its record."""

    kind: str  # "pretrain" | "finetune"
    group: str  # the experiment's or the pre-training's name
    seed: int | None
    record: str | None  # record file name without .json; None when the config gives the run no record of its own
    dataset: str | None  # the fine-tuning's dataset (config key); None for a pre-training


@dataclass(frozen=True)
class Recorded:
    seconds: float  # training seconds of the run
    device: str  # the device type: "cpu" or "cuda" (a record's "cuda:1" counts as "cuda"; records without it: "cpu")


def planned_costs(config: ReportConfig) -> list[PlannedCost]:
    """Every training run of the report config (pre-trainings, then fine-tunings; zero-shot runs train nothing)."""
    planned: list[PlannedCost] = []
    for name, pre in config.pretrain.items():
        for seed in [pre.seed] if pre.seed is not None else list(config.seeds):
            planned.append(PlannedCost("pretrain", name, seed, config.record_name("pretrain", name, seed), None))
    for e in config.experiments:
        if e.command == "finetune":
            planned += [PlannedCost("finetune", e.name, s, config.record_name("finetune", e.name, s), e.dataset)
                        for s in config.seeds]
    return planned


def recorded_costs(planned: list[PlannedCost], results_dir: Path) -> dict[str, Recorded]:
    """Record name -> its training seconds and device, for the planned runs whose record holds seconds > 0."""
    found: dict[str, Recorded] = {}
    if not results_dir.is_dir():
        return found
    for run in planned:
        record = read_record(results_dir / f"{run.record}.json") if run.record else None
        value = record.get("seconds_train") if record is not None else None
        if run.record and record is not None and isinstance(value, (int, float)) and value > 0:
            device = record.get("device")
            found[run.record] = Recorded(float(value), device.split(":")[0] if isinstance(device, str) else "cpu")
    return found


def estimate(run: PlannedCost, planned: list[PlannedCost], recorded: dict[str, Recorded],
             device: str = "cpu") -> float | None:
    """Estimated training seconds of ``run`` on ``device`` from the recorded runs made there (rule above)."""
    def seconds(runs: list[PlannedCost]) -> list[float]:
        return [recorded[r.record].seconds for r in runs
                if r.record in recorded and recorded[r.record].device == device]

    same = seconds([r for r in planned if r.kind == run.kind and r.group == run.group])
    if same:
        return float(statistics.median(same))
    alike = seconds([r for r in planned if r.kind == run.kind and (run.kind == "pretrain" or r.dataset == run.dataset)])
    return float(statistics.median(alike)) if alike else None
