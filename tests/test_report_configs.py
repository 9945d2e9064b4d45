"""The committed report configs still plan the runs their committed records were made from.

A record holds the plan of its run (``plan``); ``unisrec report`` reuses the record only while the config plans
the same run (``report.same_plan``). A changed default (the recipe's precision became ``auto``) would silently
turn recorded runs into runs to redo, unless the configs pin what the records were made with.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from unisrec.report import plan_runs, record_name, same_plan, stale_records
from unisrec.report_config import load_report_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs" / "report").glob("*.yaml"))


def recorded_data_root() -> str:
    """The data root the records were made with (a source path of a recorded plan, up to its data folder)."""
    plan = json.loads((ROOT / "results" / "scientific" / "pretrain-all-seed-0.json").read_text())["plan"]
    source = str(plan["datasets"][0]["source"])
    return source.split("/multi-domain/")[0]


def plans_against_records(config_file: Path, out: Path) -> tuple[int, list[str]]:
    """(records matching their planned run, names of records whose plan differs from the config's)."""
    config = load_report_config(config_file, data_root=recorded_data_root())
    matching, differing = 0, []
    for run in plan_runs(config, out):
        name = record_name(run, config) if run.kind != "prepare" else None
        record = ROOT / "results" / config_file.stem / f"{name}.json"
        if name is None or not record.exists():
            continue
        plan = json.loads(record.read_text()).get("plan")
        if not isinstance(plan, dict):
            continue  # a record made by hand (``unisrec record``), adopted by name
        if same_plan(plan, run.spec):
            matching += 1
        else:
            differing.append(name)
    return matching, differing


@pytest.mark.parametrize("config_file", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_planned_record_is_still_the_planned_run(config_file: Path, tmp_path: Path) -> None:
    matching, differing = plans_against_records(config_file, tmp_path)
    assert differing == []
    # what a report says of them, under the config's own data root (another machine's paths): none stale
    assert stale_records(load_report_config(config_file), ROOT / "results" / config_file.stem) == []
    expected = {"scientific": 168, "leave-one-out": 34, "gpu-pretraining-scientific": 6}
    if config_file.stem in expected:  # the configs whose records carry plans: all of them still match
        assert matching >= expected[config_file.stem]


def test_an_unpinned_recipe_change_would_be_caught(tmp_path: Path) -> None:
    """Without the pinned bfloat16 the Scientific report's pre-trainings plan another run than their records."""
    text = (ROOT / "configs" / "report" / "scientific.yaml").read_text()
    assert "train.precision=bfloat16" in text
    unpinned = tmp_path / "configs" / "report" / "scientific.yaml"
    unpinned.parent.mkdir(parents=True)
    unpinned.write_text(text.replace(", train.precision=bfloat16", ""))
    config = load_report_config(unpinned, data_root=recorded_data_root())
    runs = [r for r in plan_runs(config, tmp_path / "out") if r.kind == "pretrain"]
    record = json.loads((ROOT / "results" / "scientific" / "pretrain-all-seed-0.json").read_text())
    planned = next(r for r in runs if record_name(r, config) == "pretrain-all-seed-0")
    assert not same_plan(record["plan"], planned.spec)
