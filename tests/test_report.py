"""Long-tail grouping, report configs, and `unisrec report` end to end with cached runs."""

from __future__ import annotations

import importlib
import io
import json
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from conftest import write_synthetic_source

from unisrec.analysis import metrics_by_group, popularity_groups
from unisrec.cli import main
from unisrec.errors import ConfigError, UnisrecError
from unisrec.report import _duration, plan_runs, progress_note, resolved_spec, run_report, same_plan
from unisrec.report_config import load_report_config
from unisrec.report_writer import render_report
from unisrec.runs import fingerprint

ROOT = Path(__file__).parent.parent
REPORT_CONFIGS = sorted((ROOT / "configs" / "report").glob("*.yaml"))
COMMITTED_REPORTS = sorted((ROOT / "results").glob("*/report.md"))
SMALL = [
    "model.hidden_size=16", "model.inner_size=16", "model.max_seq_len=6", "model.n_experts=2",
    "model.hidden_dropout=0.1", "model.attn_dropout=0.1", "train.batch_size=64", "train.lr=0.01",
    "train.progress=false", "pretrain.word_drop_variants=0",
]


def test_popularity_groups_by_hand() -> None:
    frequency = np.array([5, 1, 3, 1, 10, 2])  # training interactions of items 0..5
    targets = np.array([4, 4, 4, 0, 0, 2, 1, 3, 5, 5])
    # order (frequency, index): 1, 3, 5, 2, 0, 4 with 1, 1, 2, 1, 2, 3 targets; cumulative midpoints
    # 0.5, 1.5, 3, 4.5, 6, 8.5 -> groups floor(mid * 5 / 10) = 0, 0, 1, 2, 3, 4
    groups = popularity_groups(frequency, targets, 5)
    assert groups.item_group.tolist() == [3, 0, 2, 0, 4, 1]
    assert groups.n_targets.tolist() == [2, 2, 1, 2, 3] and groups.n_items.tolist() == [2, 1, 1, 1, 1]
    assert groups.frequency_range == [(1, 1), (2, 2), (3, 3), (5, 5), (10, 10)]
    ranks = np.array([0, 20, 0, 5, 15, 0, 0, 30, 9, 10])
    by_group = metrics_by_group(ranks, groups, (10,))
    assert [m["recall@10"] for m in by_group if m] == [0.5, 0.5, 1.0, 0.5, 2 / 3]
    two = popularity_groups(frequency, targets, 2)  # 10 targets: items 1,3,5,2 (5) | 0,4 (5)
    assert two.item_group.tolist() == [1, 0, 0, 0, 1, 0] and two.n_targets.tolist() == [5, 5]
    empty = popularity_groups(np.array([1, 2]), np.array([1, 1, 1]), 3)  # one item: other groups empty
    assert metrics_by_group(np.zeros(3, dtype=np.int64), empty, (10,))[0] is None


@pytest.mark.parametrize("path", REPORT_CONFIGS, ids=[p.name for p in REPORT_CONFIGS])
def test_every_shipped_report_config_loads(path: Path, tmp_path: Path) -> None:
    config = load_report_config(path)
    assert len(config.seeds) >= 3 and config.experiments
    runs = plan_runs(config, tmp_path)  # every reference resolves; nothing runs
    assert {r.kind for r in runs} >= {"prepare", "finetune"}


def test_there_are_shipped_report_configs() -> None:
    assert {p.name for p in REPORT_CONFIGS} >= {"scientific.yaml", "transfer.yaml"}


def _config(tmp_path: Path, tiny_lm_dir: Path, **changes: object) -> Path:
    write_synthetic_source(tmp_path / "data" / "target", seed=3, n_items=20)
    write_synthetic_source(tmp_path / "data" / "other", seed=4)
    config = {
        "title": "Tiny report",
        "seeds": [1, 2],
        "data_root": "data",
        "text_model": str(tiny_lm_dir),
        "overrides": [*SMALL, "train.epochs=2"],
        "datasets": {"target": {"source": "target", "format": "csv", "user_core": 0, "item_core": 0,
                                "paper": "Scientific"},
                     "other": {"source": "other", "format": "csv", "user_core": 0, "item_core": 0}},
        "pretrain": {"other-pt": {"datasets": ["other"], "overrides": ["train.epochs=1"], "seed": 7,
                                  "label": "other domain"}},
        "experiments": [
            {"name": "sasrec", "dataset": "target", "mode": "sasrec", "paper": "SASRec"},
            {"name": "gru", "dataset": "target", "mode": "gru4rec"},
            {"name": "scratch", "dataset": "target", "mode": "inductive", "tables": ["main", "ablations"]},
            {"name": "unisrec", "dataset": "target", "mode": "inductive", "init": "other-pt",
             "tables": ["main", "ablations"], "reference": "scratch", "label": "UniSRec_t"},
            {"name": "zero-shot", "dataset": "target", "command": "zeroshot", "init": "other-pt",
             "tables": ["ablations"]},
        ],
        "long_tail": {"experiments": ["sasrec", "unisrec"], "groups": 3},
        "transfer": {"baseline": "scratch", "experiments": ["unisrec"]},
        **changes,
    }
    path = tmp_path / "report.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_report_end_to_end_then_reuses_runs_then_regenerates_from_records_alone(
        tmp_path: Path, tiny_lm_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    config_path = _config(tmp_path, tiny_lm_dir)
    out, results = tmp_path / "out", tmp_path / "results"
    report = run_report(config_path, out, results_dir=results)
    assert report == results / "report.md"
    text = report.read_text()
    for needle in ("# Tiny report", "## main", "## ablations", "UniSRec_t", "## Long tail", "## Transfer",
                   "2/2", "vs scratch", "0.1080"):  # the paper's SASRec figure sits beside ours ...
        assert needle in text, needle
    body = text.split("\n", 1)[1]  # after the line naming the command that regenerates it
    assert "not run" not in body and str(tmp_path) not in body  # every run recorded; no paths of this machine
    for png in ("long_tail.png", "transfer.png", "curves-main.png", "curves-ablations.png", "curves-pretrain.png"):
        assert (results / png).stat().st_size > 1000, png
    summary = json.loads((results / "report.json").read_text())
    assert set(summary["experiments"]) == {"sasrec", "gru", "scratch", "unisrec", "zero-shot"}
    assert summary["experiments"]["sasrec"]["seeds"] == [1, 2]
    assert len(list((out / "pretrain" / "other-pt").glob("seed-*/metrics.json"))) == 1  # shared seed 7
    assert (out / "runs" / "sasrec" / "seed-1" / "ranks_test.npy").exists()
    assert (results / "pretrain-other-pt-seed-7.json").exists()
    zero_shot = json.loads((results / "zeroshot-zero-shot-seed-2.json").read_text())
    # its seed, init, data and per-group counts (None before: it has no run.json; its long-tail cells "not run")
    assert (zero_shot["seed"], zero_shot["init"], zero_shot["data"]["name"]) == (2, "seed-7", "target")
    assert sum(row["targets"] for row in zero_shot["long_tail"]) == len(np.load(
        out / "runs" / "zero-shot" / "seed-2" / "ranks_test.npy"))
    # each record and card names the run's own command (was the whole `unisrec report ...` invocation)
    runs = {(r.kind, r.name, r.seed): r for r in plan_runs(load_report_config(config_path), out)}
    assert json.loads((results / "finetune-unisrec-seed-2.json").read_text())["command"] == \
        runs[("finetune", "unisrec", 2)].command()
    pre_command = runs[("pretrain", "other-pt", 7)].command()
    assert json.loads((results / "pretrain-other-pt-seed-7.json").read_text())["command"] == pre_command
    assert f"```bash\n{pre_command}\n```" in (out / "pretrain" / "other-pt" / "seed-7" / "README.md").read_text()
    # the long-tail cells are the per-group counts of the records, equal to the metrics of the ranks
    record = json.loads((results / "finetune-sasrec-seed-1.json").read_text())
    from unisrec.analysis import load_ranks, split_targets, training_frequency
    from unisrec.datasets import load_processed
    from unisrec.report_writer import group_metric

    dataset = load_processed(out / "data" / "target")
    groups = popularity_groups(training_frequency(dataset), split_targets(dataset), 3)
    direct = metrics_by_group(load_ranks(out / "runs" / "sasrec" / "seed-1"), groups, (10, 20, 50))
    for row, metrics in zip(record["long_tail"], direct, strict=True):
        for name in ("recall@10", "ndcg@10", "mrr@20", "ndcg@50"):
            assert metrics is not None and group_metric(row, name) == pytest.approx(metrics[name], abs=1e-6)

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a finished run was trained again")

    monkeypatch.setattr("unisrec.finetune.finetune", refuse)
    monkeypatch.setattr("unisrec.pretrain.pretrain", refuse)
    monkeypatch.setattr("unisrec.datasets.prepare", refuse)
    capsys.readouterr()
    args = ["report", str(config_path), "--results", str(results)]
    assert main([*args, "--out", str(out)]) == 0
    assert "13 of 13 runs reused, 0 to run" in capsys.readouterr().err
    # the same data under another root and another --out (another machine): every record is still its run
    shutil.copytree(tmp_path / "data", tmp_path / "moved" / "data")
    moved = tmp_path / "moved" / "report.yaml"
    moved.write_text(config_path.read_text())
    assert main(["report", str(moved), "--results", str(results), "--out", str(tmp_path / "out2"),
                 "--dry-run"]) == 0
    statuses = [line.split()[0] for line in capsys.readouterr().err.splitlines()
                if line[:1] != " " and str(tmp_path / "out2") in line]  # "STATUS FOLDER" (commands indented)
    assert len(statuses) == 13 and set(statuses) == {"recorded"}  # 2 datasets, 1 pre-training, 10 runs of 5 experiments
    assert main(["report", str(moved), "--results", str(results), "--out", str(tmp_path / "out2")]) == 0
    assert "13 of 13 runs reused, 0 to run" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists() or not any((tmp_path / "out2").rglob("metrics.json"))
    # ... and under the same --out its finished folders are the runs they were: a fine-tuning to make again (no
    # record, no folder) needs the pre-training, which was "stale" and would have been trained again
    shutil.copytree(results, tmp_path / "results-3")
    shutil.copytree(out, tmp_path / "out-3")
    (tmp_path / "results-3" / "finetune-unisrec-seed-2.json").unlink()
    shutil.rmtree(tmp_path / "out-3" / "runs" / "unisrec" / "seed-2")
    assert main(["report", str(moved), "--results", str(tmp_path / "results-3"), "--out", str(tmp_path / "out-3"),
                 "--dry-run"]) == 0
    folder_status = {line.split()[1]: line.split()[0] for line in capsys.readouterr().err.splitlines()
                     if line[:1] != " " and str(tmp_path / "out-3") in line}
    assert folder_status[str(tmp_path / "out-3" / "pretrain" / "other-pt" / "seed-7")] == "cached"
    to_train = [folder for folder, status in folder_status.items() if status not in ("cached", "recorded")]
    assert to_train == [str(tmp_path / "out-3" / "runs" / "unisrec" / "seed-2")]
    assert main([*args, "--out", str(out)]) == 0  # the report again as the original config names it
    text = report.read_text()  # its first line now names the CLI command (with --results)
    # another number of long-tail groups: the records get its counts from their run folders (nothing trains);
    # they kept the old count, and the long-tail section said "No record with per-group counts yet"
    regrouped = tmp_path / "regrouped.yaml"
    regrouped.write_text(config_path.read_text().replace("groups: 3", "groups: 4"))
    assert main(["report", str(regrouped), "--results", str(results), "--out", str(out)]) == 0
    assert len(json.loads((results / "finetune-sasrec-seed-1.json").read_text())["long_tail"]) == 4
    assert "No record with per-group counts yet" not in report.read_text()
    assert main([*args, "--out", str(out)]) == 0  # back to 3 groups: the report as it was
    assert report.read_text() == text
    # a config edited since the records were made: its records are named as stale (they were shown as current)
    edited = tmp_path / "edited.yaml"
    plain = yaml.safe_load(config_path.read_text())
    plain["experiments"][0]["overrides"] = ["model.n_layers=1"]  # sasrec
    edited.write_text(yaml.safe_dump(plain))
    assert main(["report", str(edited), "--results", str(results), "--report-only"]) == 0
    assert ("**Stale records:** 2 of the records were made with other settings than this config plans now "
            "(finetune-sasrec-seed-1, finetune-sasrec-seed-2); their figures are shown as recorded until "
            "`unisrec report` with `--out` remakes them.") in report.read_text()
    assert json.loads((results / "report.json").read_text())["stale_records"] == [
        "finetune-sasrec-seed-1", "finetune-sasrec-seed-2"]
    assert main([*args, "--report-only"]) == 0  # the config they were made with: none
    assert "Stale records" not in report.read_text() and "stale_records" not in (results / "report.json").read_text()

    # no run folders, no datasets: the report comes back byte for byte from the records alone
    shutil.rmtree(out)
    shutil.rmtree(tmp_path / "data")
    for png_file in results.glob("*.png"):
        png_file.unlink()
    assert main([*args, "--report-only"]) == 0
    assert report.read_text() == text
    assert (results / "long_tail.png").stat().st_size > 1000

    # a missing record is a "not run" cell, never an error
    (results / "finetune-gru-seed-2.json").unlink()
    (results / "finetune-unisrec-seed-1.json").unlink()
    (results / "finetune-unisrec-seed-2.json").unlink()
    assert main([*args, "--report-only"]) == 0
    partial = report.read_text()
    assert "| gru | target |" in partial and "| 1/2 |" in partial
    assert "| gru | 2 | finetune-gru-seed-2 | not run | | | |" in partial
    row = next(line for line in partial.splitlines() if line.startswith("| UniSRec_t | target |"))
    assert row.count("not run") == 4 and "0/2" in row
    assert "(7 of 10 runs recorded)" in partial


def test_changed_settings_retrain_only_what_depends_on_them(tmp_path: Path, tiny_lm_dir: Path) -> None:
    config_path = _config(tmp_path, tiny_lm_dir, seeds=[1])
    out = tmp_path / "out"
    run_report(config_path, out, only=["unisrec"])
    statuses = {(r.kind, r.name): r.status() for r in plan_runs(load_report_config(config_path), out)}
    assert statuses[("finetune", "unisrec")] == "cached" and statuses[("finetune", "sasrec")] == "new"
    data = yaml.safe_load(config_path.read_text())
    data["pretrain"]["other-pt"]["overrides"] = ["train.epochs=2"]  # another pre-training run ...
    config_path.write_text(yaml.safe_dump(data))
    statuses = {(r.kind, r.name): r.status() for r in plan_runs(load_report_config(config_path), out)}
    assert statuses[("pretrain", "other-pt")] == "stale"
    assert statuses[("finetune", "unisrec")] == "stale"  # ... so the run initialised from it is stale too
    assert statuses[("prepare", "target")] == "cached"


def test_a_new_recipe_keeps_the_runs_whose_settings_resolve_alike(
        tmp_path: Path, tiny_lm_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from unisrec.pretrain import recipe_config

    config_path = _config(tmp_path, tiny_lm_dir, seeds=[1])
    out, results = tmp_path / "out", tmp_path / "results"
    run_report(config_path, out, only=["unisrec"], results_dir=results)
    old_warmup = recipe_config().train.warmup_steps
    monkeypatch.setattr("unisrec.report.recipe_config",
                        lambda: recipe_config().with_overrides([f"train.warmup_steps={old_warmup + 5}"]))

    def statuses() -> dict[tuple[str, str], str]:
        return {(r.kind, r.name): r.status() for r in plan_runs(load_report_config(config_path), out)}

    assert statuses()[("pretrain", "other-pt")] == "stale"  # the recipe changed: another pre-training ...
    assert statuses()[("finetune", "unisrec")] == "stale"
    data = yaml.safe_load(config_path.read_text())
    data["pretrain"]["other-pt"]["overrides"] = [*data["pretrain"]["other-pt"]["overrides"],
                                                 f"train.warmup_steps={old_warmup}"]
    config_path.write_text(yaml.safe_dump(data))
    assert statuses()[("pretrain", "other-pt")] == "cached"  # ... unless the report pins the old value
    assert statuses()[("finetune", "unisrec")] == "cached" and statuses()[("finetune", "scratch")] == "new"
    shutil.rmtree(out)  # from the records alone as well
    capsys.readouterr()
    run_report(config_path, out, only=["unisrec"], dry_run=True, results_dir=results)
    assert re.search(r"^recorded \S+unisrec", capsys.readouterr().err, re.M)


def test_runs_known_from_their_records_are_not_run_again_without_their_folders(
        tmp_path: Path, tiny_lm_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    config_path = _config(tmp_path, tiny_lm_dir, seeds=[1])
    out, results = tmp_path / "out", tmp_path / "results"
    run_report(config_path, out, only=["unisrec", "scratch"], results_dir=results)
    text = (results / "report.md").read_text()
    record = json.loads((results / "finetune-unisrec-seed-1.json").read_text())
    assert record["plan"]["kind"] == "finetune" and record["plan"]["init"]["kind"] == "pretrain"
    shutil.rmtree(out)  # a new session: the committed records, no run folders, no prepared data
    trained: list[str] = []
    real_finetune = importlib.import_module("unisrec.finetune").finetune

    def spy(data: object, mode: str, out_dir: object, **kwargs: object) -> object:
        trained.append(Path(str(out_dir)).parent.name)
        return real_finetune(data, mode, out_dir, **kwargs)

    monkeypatch.setattr("unisrec.finetune.finetune", spy)
    capsys.readouterr()
    run_report(config_path, out, only=["unisrec", "scratch"], results_dir=results)
    assert trained == [] and not (out / "data").exists() and not (out / "pretrain").exists()
    assert "0 to run (3 of 3 results known, 3 of them from their records alone)" in capsys.readouterr().err
    assert (results / "report.md").read_text() == text
    # a record whose plan differs (settings changed) is not a result of this plan: rerun, with what it needs
    record["plan"]["overrides"] = [*record["plan"]["overrides"], "train.lr=0.5"]
    (results / "finetune-unisrec-seed-1.json").write_text(json.dumps(record))
    run_report(config_path, out, only=["unisrec", "scratch"], dry_run=True, results_dir=results)
    plan = capsys.readouterr().err
    assert re.search(r"^new +\S+unisrec", plan, re.M) and re.search(r"^recorded \S+scratch", plan, re.M)
    run_report(config_path, out, only=["unisrec", "scratch"], results_dir=results)
    assert trained == ["unisrec"]  # scratch stays known from its record
    assert (out / "pretrain" / "other-pt" / "seed-7" / "metrics.json").exists()  # rerun: its weights are needed
    assert json.loads((results / "finetune-unisrec-seed-1.json").read_text())["plan"] != record["plan"]


def test_a_remade_pretraining_keeps_its_record_and_says_how_it_compares(
        tmp_path: Path, tiny_lm_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A pre-training whose folder is gone is made again when a new transfer needs it: its committed record,
    from which the earlier transfers' records came, stays as it is (it was silently replaced by the remake's,
    with the remake's times and code), and NAME.remade.json beside it holds the differences."""
    config_path = _config(tmp_path, tiny_lm_dir, seeds=[1])
    out, results = tmp_path / "out", tmp_path / "results"
    run_report(config_path, out, only=["unisrec"], results_dir=results)
    pre_record = results / "pretrain-other-pt-seed-7.json"
    original = pre_record.read_text()
    remade = results / "pretrain-other-pt-seed-7.remade.json"
    assert not remade.exists()

    def rerun_transfer() -> str:  # a new session: records only; the transfer's plan changed, so it runs again
        shutil.rmtree(out)
        transfer = json.loads((results / "finetune-unisrec-seed-1.json").read_text())
        transfer["plan"]["overrides"] = [*transfer["plan"]["overrides"], "train.lr=0.002"]
        (results / "finetune-unisrec-seed-1.json").write_text(json.dumps(transfer))
        capsys.readouterr()
        run_report(config_path, out, only=["unisrec"], results_dir=results)
        return capsys.readouterr().err

    err = rerun_transfer()
    assert (out / "pretrain" / "other-pt" / "seed-7" / "metrics.json").exists()  # remade: the transfer reads it
    assert pre_record.read_text() == original
    compared = json.loads(remade.read_text())
    assert compared["run"] == "pretrain-other-pt-seed-7" and compared["max_abs_diff"] <= 1e-6
    assert set(compared["diff"]["curve"]) == {"train_loss@1", "train_si@1", "train_ss@1", "train_si@other@1"}
    assert compared["record"]["seconds_train"] == json.loads(original)["seconds_train"]
    assert compared["remade"]["run_dir"] == str(out / "pretrain" / "other-pt" / "seed-7")
    assert f"its record {pre_record} is kept; largest difference from it" in err and "WARNING" not in err

    tampered = json.loads(original)  # a record the remake does not reproduce: kept, and the log says so
    tampered["curve"][0]["train_loss"] += 0.5
    pre_record.write_text(json.dumps(tampered))
    err = rerun_transfer()
    assert json.loads(pre_record.read_text()) == tampered
    assert json.loads(remade.read_text())["diff"]["curve"]["train_loss@1"] == pytest.approx(-0.5)
    assert "WARNING: beyond rounding" in err


def test_dry_run_says_how_far_an_interrupted_run_got(tmp_path: Path, tiny_lm_dir: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    config_path = _config(tmp_path, tiny_lm_dir, seeds=[1])
    out, results = tmp_path / "out", tmp_path / "results"
    run_report(config_path, out, only=["unisrec"], results_dir=results)
    run_dir = out / "runs" / "unisrec" / "seed-1"
    log = [json.loads(line) for line in (run_dir / "train.log").read_text().splitlines()]
    scores = [entry["valid"]["ndcg@10"] for entry in log]
    best = max(scores)
    at = scores.index(best) + 1
    (run_dir / "metrics.json").unlink()  # as if stopped after its epochs: resumed, not finished
    (results / "finetune-unisrec-seed-1.json").unlink()
    capsys.readouterr()
    run_report(config_path, out, only=["unisrec"], results_dir=results, dry_run=True)
    plan = capsys.readouterr().err
    assert re.search(rf"^resume +{re.escape(str(run_dir))}$", plan, re.M)
    median = sorted(entry["seconds"] for entry in log)[len(log) // 2]
    assert (f"so far: {len(log)} epochs, best valid ndcg@10 {best:.4f} at epoch {at} (patience 10: ends by "
            f"epoch {min(at + 10, 2)} unless it improves), {median:.0f} s an epoch") in plan  # train.epochs=2
    assert plan.count("so far:") == 1  # finished and recorded runs say nothing
    device = "cuda" if torch.cuda.is_available() else "cpu"  # where the runs would go
    assert plan.rstrip().endswith("training left: 1 run(s) to train, 1 without an estimate (nothing like them "
                                  f"recorded on {device})")  # no record of this experiment's or this dataset's runs
    # a record of another experiment on the same dataset: the estimate is its training time less the epochs done
    from unisrec.records import RECORD_FORMAT

    held = {"format": RECORD_FORMAT, "seconds_train": 5000.0, "device": device}
    (results / "finetune-scratch-seed-1.json").write_text(json.dumps(held))
    seconds = [float(entry["seconds"]) for entry in log]
    rule = (f"(each as long as the median of its experiment's records on {device}, else of its dataset's "
            "fine-tunings or of every pre-training, less the epochs it has done)")

    def last_line(**kwargs: Any) -> str:
        run_report(config_path, out, only=["unisrec"], results_dir=results, dry_run=True, **kwargs)
        return capsys.readouterr().err.rstrip().splitlines()[-1]

    left = 5000.0 - sum(seconds)  # one run: --jobs cannot make it shorter
    assert last_line(jobs=2) == (f"training left: about {_duration(left)} over 1 of the 1 run(s) to train {rule}; "
                                 f"at least {_duration(left)} with --jobs 2")
    held["seconds_train"] = sum(seconds) / 2  # already past its estimate: still one epoch (the median) to go
    (results / "finetune-scratch-seed-1.json").write_text(json.dumps(held))
    median_epoch = _duration(sorted(seconds)[len(seconds) // 2])
    assert last_line() == f"training left: about {median_epoch} over 1 of the 1 run(s) to train {rule}"
    (run_dir / "run.json").write_text("{damaged")  # the settings unreadable: the log still tells the epochs
    with (run_dir / "train.log").open("a") as log_file:
        log_file.write('{"epoch": 3, "partial": true, "seconds": 1.0}\n{"epoch": 4, "seco')  # partial, then torn
    assert progress_note(run_dir) == (f"{len(log)} epochs, best valid ndcg@10 {best:.4f} at epoch {at}, "
                                      f"{median:.0f} s an epoch")
    assert progress_note(tmp_path / "nothing-yet") == ""
    held["seconds_train"] = 9000.0
    (results / "finetune-scratch-seed-1.json").write_text(json.dumps(held))
    shutil.rmtree(run_dir)  # not begun: the whole estimate, nothing taken off
    assert last_line() == f"training left: about 2.5 h over 1 of the 1 run(s) to train {rule}"
    assert _duration(5400) == "1.5 h" and _duration(150) == "2 min" and _duration(12.4) == "12 s"


def test_parallel_jobs_give_the_records_of_one_at_a_time(tmp_path: Path, tiny_lm_dir: Path) -> None:
    config_path = _config(tmp_path, tiny_lm_dir, seeds=[1])
    data = yaml.safe_load(config_path.read_text())
    data["overrides"] = [*data["overrides"], "train.threads=1"]  # the same arithmetic in both
    config_path.write_text(yaml.safe_dump(data))
    only = ["unisrec", "scratch", "zero-shot", "sasrec"]
    run_report(config_path, tmp_path / "one", only=only, results_dir=tmp_path / "r1")
    log = io.StringIO()
    run_report(config_path, tmp_path / "two", only=only, results_dir=tmp_path / "r2", jobs=2, log=log)
    names = sorted(p.name for p in (tmp_path / "r1").glob("*-seed-*.json"))
    assert len(names) == 5 and names == sorted(p.name for p in (tmp_path / "r2").glob("*-seed-*.json"))
    for name in names:
        one, two = (json.loads((tmp_path / r / name).read_text()) for r in ("r1", "r2"))
        assert one["test"] == two["test"] and one["valid"] == two["valid"], name
    text = log.getvalue()
    # the fine-tuning and the zero-shot run that read the pre-training start after it has finished
    pretrain_done = text.index("[done] pretrain")
    assert text.index("[start] new finetune " + str(tmp_path / "two" / "runs" / "unisrec")) > pretrain_done
    assert text.index("[start] new zeroshot") > pretrain_done
    with pytest.raises(UnisrecError, match="--jobs must be >= 1, got 0"):
        run_report(config_path, tmp_path / "three", jobs=0)


def test_shared_pretraining_overrides_go_to_the_pretrainings_only(tmp_path: Path, tiny_lm_dir: Path) -> None:
    """``overrides`` apply to every run; a pre-training setting among them reaches the pre-trainings, not the
    fine-tunings (which refuse it): their commands and settings leave it out, while their specs keep it as
    they always did, so that the runs of a report planned before stay cached."""
    from unisrec.config import pretraining_overrides
    from unisrec.report import TrainArgs

    data = yaml.safe_load(_config(tmp_path, tiny_lm_dir).read_text())
    data["overrides"] = [*data["overrides"], "pretrain.lambda_ss=0"]
    path = tmp_path / "shared.yaml"
    path.write_text(yaml.safe_dump(data))
    runs = plan_runs(load_report_config(path), tmp_path / "plan")
    for run in runs:
        if run.kind == "prepare":
            continue
        assert isinstance(run.args, TrainArgs)
        config, overrides = run.args.settings(run.kind)
        resolved = config.with_overrides(overrides)
        assert "pretrain.lambda_ss=0" in run.spec["overrides"]  # as planned before
        if run.kind == "pretrain":
            assert resolved.pretrain.lambda_ss == 0 and "--pretrain.lambda_ss=0" in run.command()
        else:
            assert not pretraining_overrides(overrides) and "pretrain.lambda_ss" not in run.command()
    assert {r.kind for r in runs} >= {"pretrain", "finetune", "zeroshot"}


def test_the_planned_prepare_command_of_a_unisrec_folder_runs(tmp_path: Path, tiny_lm_dir: Path) -> None:
    """The planned command gave --user-core / --item-core to a unisrec-format folder, which prepare refuses."""
    import shlex

    from test_format_unisrec import write_tiny

    config_path = _config(tmp_path, tiny_lm_dir, datasets={"target": {"source": "uni", "format": "unisrec"}},
                          pretrain={}, experiments=[{"name": "scratch", "dataset": "target", "mode": "inductive"}],
                          long_tail=None, transfer=None)
    write_tiny(tmp_path / "data" / "uni")
    run = next(r for r in plan_runs(load_report_config(config_path), tmp_path / "out") if r.kind == "prepare")
    assert "--user-core" not in run.command()
    assert main(shlex.split(run.command())[1:]) == 0 and (run.out / "dataset.json").exists()


def test_two_runners_of_one_results_folder_are_refused(tmp_path: Path, tiny_lm_dir: Path) -> None:
    """--out was locked, the results folder not: two runners with other --out folders trained the same runs and
    wrote the same records."""
    import os
    import signal
    import subprocess
    import sys

    config_path = _config(tmp_path, tiny_lm_dir)
    results = tmp_path / "results"
    results.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom pathlib import Path\n"
                               "from unisrec.locking import hold_results\nhold_results(Path(sys.argv[1]))\n"
                               "print('held', flush=True)\ntime.sleep(60)", str(results)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(UnisrecError, match=rf"^{results} \(the records of a report runner\): in use by process "
                                               rf"{holder.pid}$"):
            run_report(config_path, tmp_path / "other-out", results_dir=results, only=["sasrec"])
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert not (tmp_path / "other-out" / "runs").exists()  # refused before anything ran
    assert sorted(p.name for p in results.iterdir()) == [".runner.lock"]
    run_report(config_path, tmp_path / "other-out", results_dir=results, dry_run=True)  # a dry run takes no lock


def test_report_config_errors(tmp_path: Path, tiny_lm_dir: Path) -> None:
    bad = {"experiments": [{"name": "a", "dataset": "target", "mode": "inductive", "init": "b"},
                           {"name": "b", "dataset": "target", "mode": "zesrec"}]}
    with pytest.raises(ConfigError, match="init 'b' is neither a pre-training nor an earlier experiment"):
        load_report_config(_config(tmp_path, tiny_lm_dir, **bad))
    with pytest.raises(ConfigError, match="unknown mode 'bert'"):
        load_report_config(_config(tmp_path, tiny_lm_dir, experiments=[{"name": "a", "dataset": "target",
                                                                        "mode": "bert"}]))
    with pytest.raises(ConfigError, match="unknown key 'seed'"):
        load_report_config(_config(tmp_path, tiny_lm_dir, seed=[1]))
    experiments = yaml.safe_load(_config(tmp_path, tiny_lm_dir).read_text())["experiments"]
    elsewhere = [*experiments, {"name": "other-scratch", "dataset": "other", "mode": "inductive"}]
    for bad_config, message in (
            ({"experiments": [*elsewhere[:3], {**elsewhere[3], "reference": "other-scratch"}, *elsewhere[4:]]},
             "experiment 'unisrec': reference 'other-scratch' is on dataset 'other', not 'target': a relative "
             "change compares runs on one dataset"),
            ({"experiments": elsewhere, "transfer": {"baseline": "other-scratch", "experiments": ["unisrec"]}},
             "transfer: experiment 'unisrec' is on dataset 'target', the baseline 'other-scratch' on 'other': a "
             "transfer is judged on one dataset"),
            ({"transfer": {"baseline": "zero-shot", "experiments": ["unisrec"]}},
             "transfer.baseline 'zero-shot' starts from 'other-pt': the baseline of a transfer is trained from "
             "scratch"),
            ({"experiments": [*experiments, {"name": "after", "dataset": "target", "mode": "inductive",
                                             "init": "zero-shot"}]},
             "experiment 'after': init 'zero-shot' is a zero-shot evaluation, which trains no model to start "
             "from"),
            ({"pretrain": {"other-pt": {"datasets": ["other"], "seed": -1}}},
             "pretrain.other-pt.seed must be an integer >= 0, got -1"),
            ({"pretrain": {7: {"datasets": ["other"]}}}, "pre-training name 7: use letters, digits"),
            ({"experiments": [*experiments[:2], {**experiments[2], "record": "report"}, *experiments[3:]]},
             "experiment 'scratch': record 'report' is the name of a file the report writes itself")):
        with pytest.raises(ConfigError) as refused:
            load_report_config(_config(tmp_path, tiny_lm_dir, **bad_config))
        assert message in str(refused.value), (message, str(refused.value))
    unisrec_folder = {"target": {"source": "target", "format": "unisrec", "user_core": 10}}
    with pytest.raises(ConfigError, match=r"datasets.target.user_core does not apply to format unisrec \(its folder "
                                          r"is already filtered and split\): remove it"):
        load_report_config(_config(tmp_path, tiny_lm_dir, datasets=unisrec_folder))
    same = [{"name": "a", "dataset": "target", "record": "mine"}, {"name": "b", "dataset": "target", "record": "mine"}]
    with pytest.raises(ConfigError, match="two runs share the record name 'mine'"):
        load_report_config(_config(tmp_path, tiny_lm_dir, experiments=same, long_tail=None, transfer=None))
    with pytest.raises(ConfigError, match=r"record 'runs/a-\{seed\}': use letters"):
        load_report_config(_config(tmp_path, tiny_lm_dir, experiments=[{"name": "a", "dataset": "target",
                                                                        "record": "runs/a-{seed}"}]))
    one = load_report_config(_config(tmp_path, tiny_lm_dir, experiments=[
        {"name": "a", "dataset": "target", "record": "a-s{seed}"}, {"name": "z", "dataset": "target",
                                                                    "command": "zeroshot", "init": "other-pt",
                                                                    "record": "z"}], long_tail=None, transfer=None))
    assert [one.record_name("finetune", "a", s) for s in (1, 2)] == ["a-s1", "a-s2"]
    assert [one.record_name("zeroshot", "z", s) for s in (1, 2)] == ["z", None]  # no {seed}: the first seed's
    assert one.record_name("pretrain", "other-pt", 7) == "pretrain-other-pt-seed-7"
    # a pre-training per seed (seed null) with a record name without {seed}: the first seed's run has it
    per_seed = {"other-pt": {"datasets": ["other"], "seed": None, "record": "pre-other"}}
    each = load_report_config(_config(tmp_path, tiny_lm_dir, pretrain=per_seed))
    assert [each.record_name("pretrain", "other-pt", s) for s in (1, 2)] == ["pre-other", None]
    clash = {"other-pt": {"datasets": ["other"], "seed": 7, "record": "mine-s1"}}
    with pytest.raises(ConfigError, match="two runs share the record name 'mine-s1'"):
        load_report_config(_config(tmp_path, tiny_lm_dir, pretrain=clash, long_tail=None, transfer=None,
                                   experiments=[{"name": "a", "dataset": "target", "record": "mine-s{seed}"}]))
    # the tables' columns: written only after every run has trained, so checked when the config is read
    for metrics, message in (([], r"metrics: name at least one"),
                             (["foo@10"], r"metrics: 'foo@10' is not recall@K"),
                             (["ndcg@1000"], r"metrics: 'ndcg@1000' is not .* one of eval\.ks \[10, 20, 50\]"),
                             (["ndcg@010"], r"metrics: 'ndcg@010' is not")):
        with pytest.raises(ConfigError, match=message):
            load_report_config(_config(tmp_path, tiny_lm_dir, metrics=metrics, transfer=None))
    assert load_report_config(_config(tmp_path, tiny_lm_dir, metrics=["ndcg@10", "cold_ndcg@50"],
                                      transfer=None)).metrics == ("ndcg@10", "cold_ndcg@50")
    with pytest.raises(ConfigError, match=r"long_tail\.metric: 'ndcg@5' is not .* one of \[10, 20, 50\]"):
        load_report_config(_config(tmp_path, tiny_lm_dir, long_tail={"experiments": ["sasrec"], "metric": "ndcg@5"}))
    with pytest.raises(ConfigError, match=r"metrics: 'cold_mrr@10' is not"):  # the records hold no cold MRR
        load_report_config(_config(tmp_path, tiny_lm_dir, metrics=["cold_mrr@10"], transfer=None))
    # what fine-tuning refuses is refused when the report is planned, not hours into it
    for overrides, message in ((["train.transfer=adaptor"], r"train\.transfer=adaptor .* it needs --init"),
                               (["train.repeat_lr_scale=10"], r"train\.repeat_lr_scale=10 .* model\.repeat_bias"),
                               (["pretrain.lambda_ss=0"], r"pretrain\.lambda_ss=0 is a pre-training setting"),
                               # a bad value: named with its file and experiment (it was named alone)
                               (["train.lr=abc"], r"config\.train\.lr: expected a number, got 'abc'")):
        with pytest.raises(ConfigError, match=rf"experiment 'a': {message}"):
            load_report_config(_config(tmp_path, tiny_lm_dir, long_tail=None, transfer=None, experiments=[
                {"name": "a", "dataset": "target", "mode": "inductive", "overrides": overrides}]))
    with pytest.raises(ConfigError, match=rf"{re.escape(str(tmp_path / 'report.yaml'))}: overrides: .*train\.lr"):
        load_report_config(_config(tmp_path, tiny_lm_dir, overrides=["train.lr=abc"]))
    bad_pretrain = {"other-pt": {"datasets": ["other"], "overrides": ["train.bogus=1"]}}
    with pytest.raises(ConfigError, match=r"pretrain\.other-pt: override 'train\.bogus=1': unknown key 'bogus'"):
        load_report_config(_config(tmp_path, tiny_lm_dir, pretrain=bad_pretrain))
    other = {"source": "other", "format": "csv"}
    with pytest.raises(ConfigError, match=r"datasets\.target\.format: 'bogus' is not one of unisrec, csv"):
        load_report_config(_config(tmp_path, tiny_lm_dir, datasets={"target": {"source": "target", "format": "bogus"},
                                                                    "other": other}))
    with pytest.raises(ConfigError, match=r"datasets\.target\.user_core must be >= 0, got -3"):
        load_report_config(_config(tmp_path, tiny_lm_dir, datasets={"target": {"source": "target", "user_core": -3},
                                                                    "other": other}))
    with pytest.raises(ConfigError, match=r"seeds must be >= 0, got \[-1\]"):
        load_report_config(_config(tmp_path, tiny_lm_dir, seeds=[-1]))
    with pytest.raises(ConfigError, match=r"report\.yaml\.experiments\[0\]: missing key 'name'"):
        load_report_config(_config(tmp_path, tiny_lm_dir, experiments=[{"dataset": "target"}]))
    base = tmp_path / "base.yaml"  # the base run config counts as much as the overrides
    base.write_text("eval:\n  test: false\n")
    with pytest.raises(ConfigError, match=r"eval\.test=false leaves the run without test metrics"):
        load_report_config(_config(tmp_path, tiny_lm_dir, config=str(base)))


def test_training_left_counts_what_runs_have_done_and_the_longest_run(tmp_path: Path) -> None:
    from unisrec.report import seconds_left, training_left_line

    run = tmp_path / "run"
    run.mkdir()
    epochs = [{"epoch": 1, "seconds": 100.0}, {"epoch": 2, "seconds": 300.0}, {"epoch": 3, "seconds": 200.0},
              {"epoch": 4, "seconds": 50.0, "partial": True}]  # a max_steps epoch does not count
    (run / "train.log").write_text("\n".join(json.dumps(e) for e in epochs) + "\n{\"epoch\": 5, \"sec")  # torn
    assert seconds_left(run, 1000.0) == 400.0  # 1000 less 600 done
    assert seconds_left(run, 500.0) == 200.0  # past its estimate: one more (median) epoch
    assert seconds_left(run, None) is None
    assert seconds_left(tmp_path / "not-begun", 1000.0) == 1000.0
    line = training_left_line([3600.0, 7200.0, None], "cpu", jobs=2)
    assert line.startswith("training left: about 3.0 h over 2 of the 3 run(s) to train (each as long as")
    assert line.endswith("; 1 without an estimate (nothing like them recorded on cpu); at least 2.0 h with --jobs 2")
    assert training_left_line([3600.0, 3600.0, 3600.0, 3600.0], "cpu", jobs=2).endswith(
        "at least 2.0 h with --jobs 2")  # four equal runs on two jobs: half the total
    assert training_left_line([None], "cuda", jobs=1) == (
        "training left: 1 run(s) to train, 1 without an estimate (nothing like them recorded on cuda)")


def test_report_json_gives_no_deviation_for_one_value() -> None:
    from unisrec.report_writer import summary_stats

    assert summary_stats([0.5]) == {"mean": 0.5, "std": None}
    assert summary_stats([1.0, 3.0]) == {"mean": 2.0, "std": pytest.approx(2 ** 0.5)}  # sample deviation


def test_dry_run_prints_the_plan_as_commands(tmp_path: Path, tiny_lm_dir: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    config_path = _config(tmp_path, tiny_lm_dir)
    out = tmp_path / "out"
    assert main(["report", str(config_path), "--out", str(out), "--dry-run", "--only", "unisrec"]) == 0
    printed = capsys.readouterr()
    err = printed.err
    summary = json.loads(printed.out.strip().splitlines()[-1])
    planned = err.count("\n       unisrec ")  # one command line per planned run
    assert summary["dry_run"] is True and summary["runs"] == planned == sum(summary["status"].values()) > 2
    assert "unisrec pretrain" in err and "--mode inductive --out" in err and "--init" in err
    assert "--train.seed=1" in err and "--train.seed=7" in err and "sasrec" not in err
    assert not out.exists()  # nothing ran


def test_runs_go_seed_major_with_records_and_a_budget(tmp_path: Path, tiny_lm_dir: Path) -> None:
    from io import StringIO

    from unisrec.report import priority_order

    config_path = _config(tmp_path, tiny_lm_dir)
    config = load_report_config(config_path)
    order = priority_order(plan_runs(config, tmp_path / "plan"), config.seeds)
    trained = [(r.kind, r.name, r.seed) for r in order if r.kind != "prepare"]
    first_seed_2 = min(i for i, r in enumerate(trained) if r[2] == 2)
    assert all(r[2] != 2 for r in trained[:first_seed_2]) and trained[0] == ("finetune", "sasrec", 1)
    assert trained.index(("pretrain", "other-pt", 7)) < trained.index(("finetune", "unisrec", 1))
    assert all(r[2] in (2, 7) for r in trained[first_seed_2:])  # every seed-1 run came first

    results = tmp_path / "results"
    run_report(config_path, tmp_path / "out", only=["sasrec"], results_dir=results)
    names = sorted(p.name for p in results.glob("*-seed-*.json"))  # beside them: report.md, report.json, plots
    assert names == ["finetune-sasrec-seed-1.json", "finetune-sasrec-seed-2.json"]
    record = json.loads((results / names[0]).read_text())
    metrics = json.loads((tmp_path / "out" / "runs" / "sasrec" / "seed-1" / "metrics.json").read_text())
    assert record["test"] == metrics["test"] and record["seed"] == 1 and record["mode"] == "sasrec"
    assert record["curve"][0]["epoch"] == 1 and "valid" in record["curve"][0]
    assert len(record["data"]["fingerprint"]) == 64 and record["machine"]["cpu_count"] >= 1
    assert sum(g["targets"] for g in record["long_tail"]) == len(np.load(
        tmp_path / "out" / "runs" / "sasrec" / "seed-1" / "ranks_test.npy"))

    log = StringIO()  # a budget smaller than one recorded run: nothing new starts
    run_report(config_path, tmp_path / "out", only=["gru"], results_dir=results, budget_minutes=1e-6, log=log)
    assert "budget: stopping before finetune" in log.getvalue()
    assert not (tmp_path / "out" / "runs" / "gru").exists()


def test_verify_reruns_a_recorded_run_and_prints_the_differences(tmp_path: Path, tiny_lm_dir: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    config_path = _config(tmp_path, tiny_lm_dir, seeds=[1])
    results = tmp_path / "results"
    run_report(config_path, tmp_path / "out", only=["scratch"], results_dir=results)
    capsys.readouterr()
    args = ["report", str(config_path), "--out", str(tmp_path / "out"), "--results", str(results)]
    assert main([*args, "--verify", "finetune-scratch-seed-1"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["run"] == "finetune-scratch-seed-1" and summary["max_abs_diff"] < 1e-4  # same machine
    assert set(summary["diff"]["test"]) >= {"recall@10", "ndcg@10"}
    record = results / "finetune-scratch-seed-1.json"
    tampered = json.loads(record.read_text())
    tampered["test"]["ndcg@10"] += 0.5
    record.write_text(json.dumps(tampered))
    assert main([*args, "--verify", "finetune-scratch-seed-1"]) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["diff"]["test"]["ndcg@10"] == pytest.approx(-0.5)
    assert main([*args, "--verify", "nope"]) == 2
    assert "no such record (records there: finetune-scratch-seed-1)" in capsys.readouterr().err
    tampered["plan"]["overrides"] = [*tampered["plan"]["overrides"], "train.lr=0.5"]  # a record of other settings
    record.write_text(json.dumps(tampered))
    assert main([*args, "--verify", "finetune-scratch-seed-1"]) == 2
    assert "recorded with other settings than" in capsys.readouterr().err


def test_verify_against_a_finished_folder_compares_a_pretraining_epoch_by_epoch(
        tmp_path: Path, tiny_lm_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config_path = _config(tmp_path, tiny_lm_dir, seeds=[1])
    results = tmp_path / "results"
    run_report(config_path, tmp_path / "out", only=["unisrec"], results_dir=results)
    folder = tmp_path / "out" / "pretrain" / "other-pt" / "seed-7"
    args = ["report", str(config_path), "--out", str(tmp_path / "out"), "--results", str(results),
            "--verify", "pretrain-other-pt-seed-7"]
    capsys.readouterr()
    assert main([*args, "--against", str(folder)]) == 0  # no rerun: the folder the record was made from
    same = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert same["max_abs_diff"] == 0.0 and "epochs_only_in" not in same
    assert same["diff"]["valid"] == {} and "train_loss@1" in same["diff"]["curve"]  # a pre-training: losses only

    record = results / "pretrain-other-pt-seed-7.json"
    tampered = json.loads(record.read_text())
    tampered["curve"][0]["train_loss"] += 0.25
    tampered["curve"].append({**tampered["curve"][0], "epoch": 2})  # an epoch the folder does not have
    record.write_text(json.dumps(tampered))
    assert main([*args, "--against", str(folder)]) == 0
    changed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert changed["diff"]["curve"]["train_loss@1"] == pytest.approx(-0.25)
    assert changed["max_abs_diff"] == pytest.approx(0.25)
    assert changed["epochs_only_in"] == {"record": [2], "rerun": []}

    assert main([*args, "--against", str(tmp_path / "nowhere")]) == 2
    assert "not a finished run (no metrics.json)" in capsys.readouterr().err
    assert main(["report", str(config_path), "--against", str(folder)]) == 2
    assert "--against goes with --verify" in capsys.readouterr().err


def test_planned_commands_ask_for_the_settings_the_report_runs_with(tmp_path: Path, tiny_lm_dir: Path) -> None:
    import shlex

    from unisrec.cli import _run_config, build_parser, parse_overrides
    from unisrec.pretrain import recipe_config
    from unisrec.report import TrainArgs

    runs = plan_runs(load_report_config(_config(tmp_path, tiny_lm_dir, pooling="mean")), tmp_path / "out")
    for kind, name in (("finetune", "unisrec"), ("pretrain", "other-pt")):
        run = next(r for r in runs if (r.kind, r.name) == (kind, name))
        assert isinstance(run.args, TrainArgs)
        words = shlex.split(run.command())
        assert f"--text.model={tiny_lm_dir}" in words and "--text.pooling=mean" in words
        args, extra = build_parser().parse_known_args(words[1:])
        args.overrides = parse_overrides(extra)
        config, overrides = _run_config(args, recipe_config() if kind == "pretrain" else None,
                                        reads_pretrain=kind == "pretrain")
        base, planned = run.args.settings(run.kind)
        assert config.with_overrides(overrides) == base.with_overrides(planned)  # the command = what execute runs
        assert config.with_overrides(overrides).text.pooling == "mean"
        # specs keep the layout of earlier versions, so that their finished runs stay cached
        assert run.spec["text"] == {"model": str(tiny_lm_dir), "pooling": "mean"}
        assert set(run.spec["config"]) == {"model", "train", "eval", "pretrain"}
    tune = next(r for r in runs if (r.kind, r.name) == ("finetune", "unisrec"))
    assert isinstance(tune.args, TrainArgs) and tune.args.init is not None and str(tune.args.init) in tune.command()


def test_adopt_takes_a_run_made_by_hand_with_the_planned_command(tmp_path: Path, tiny_lm_dir: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import shlex

    from unisrec.report import adopt_run, execute

    config_path = _config(tmp_path, tiny_lm_dir)
    out = tmp_path / "out"
    runs = plan_runs(load_report_config(config_path), out)
    execute(next(r for r in runs if r.kind == "prepare" and r.name == "target"))
    run = next(r for r in runs if (r.kind, r.name, r.seed) == ("finetune", "scratch", 1))
    with pytest.raises(UnisrecError, match="missing; start the run with the report's command first"):
        adopt_run(config_path, out, run.out)
    assert main(shlex.split(run.command())[1:]) == 0  # made by hand, as on another machine
    assert run.status() == "stale"  # without its spec file the report would train it again
    capsys.readouterr()
    assert main(["report", str(config_path), "--out", str(out), "--adopt", str(run.out)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"run": str(run.out), "status": "cached"}
    assert run.status() == "cached"
    other = next(r for r in runs if (r.kind, r.name, r.seed) == ("finetune", "scratch", 2))
    assert main([*shlex.split(other.command())[1:], "--train.lr=0.02"]) == 0  # not the planned settings
    with pytest.raises(UnisrecError, match="its settings differ from the planned command's"):
        adopt_run(config_path, out, other.out)
    assert not other.spec_file.exists() and other.status() == "stale"
    pre = next(r for r in runs if r.kind == "pretrain")
    execute(next(r for r in runs if r.kind == "prepare" and r.name == "other"))
    assert main(shlex.split(pre.command())[1:]) == 0  # a pre-training made by hand too
    assert pre.status() == "stale"  # else trained again, and every fine-tuning from it after it
    made = (pre.out / "run.json").read_text()
    altered = json.loads(made)
    altered["config"]["train"]["lr"] = 0.5  # as if made with other settings
    altered["fingerprint"] = fingerprint({k: v for k, v in altered.items() if k != "fingerprint"})
    (pre.out / "run.json").write_text(json.dumps(altered))
    with pytest.raises(UnisrecError, match="its settings differ from the planned command's"):
        adopt_run(config_path, out, pre.out)
    (pre.out / "run.json").write_text(made)
    assert adopt_run(config_path, out, pre.out) == {"run": str(pre.out), "status": "cached"}
    assert pre.status() == "cached"
    with pytest.raises(UnisrecError, match="only fine-tuning and pre-training runs are adopted"):
        adopt_run(config_path, out, next(r for r in runs if r.kind == "zeroshot").out)
    with pytest.raises(UnisrecError, match="not a run folder that"):
        adopt_run(config_path, out, tmp_path / "elsewhere")
    assert main(["report", str(config_path), "--adopt", str(run.out)]) == 2  # --out is needed


def test_there_is_a_committed_report() -> None:
    assert any(p.parent.name == "pretraining-scientific" for p in COMMITTED_REPORTS)


@pytest.mark.parametrize("path", COMMITTED_REPORTS, ids=[p.parent.name for p in COMMITTED_REPORTS])
def test_committed_reports_regenerate_exactly_from_their_records(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nobody edits a report by hand: its first line names the command, and that command, run on the committed
    records alone, gives the same text byte for byte."""
    import shlex

    first = path.read_text().splitlines()[0]
    assert first.startswith("<!-- Generated from the run records beside this file by `"), first
    command = first.split("`")[1]
    words = shlex.split(command)
    assert words[:2] == ["unisrec", "report"] and "--report-only" in words
    config_path = words[2]
    results = Path(words[words.index("--results") + 1]) if "--results" in words else Path("results") / Path(
        config_path).stem
    monkeypatch.chdir(ROOT)  # the command's paths are relative to the repository root
    assert results.resolve() == path.parent.resolve()
    text, _ = render_report(load_report_config(config_path), results, command)
    assert text == path.read_text()


def test_compute_section_sums_recorded_training_time_and_estimates_the_rest(tmp_path: Path,
                                                                            tiny_lm_dir: Path) -> None:
    """Recorded seconds are summed per kind; a missing seed is estimated from its experiment's recorded seeds,
    an experiment with none from the median of its kind; zero-shot runs cost nothing here."""
    from unisrec.records import RECORD_FORMAT
    from unisrec.report_writer import compute_section

    config = load_report_config(_config(tmp_path, tiny_lm_dir))
    results = tmp_path / "results"
    results.mkdir()

    def record(name: str, seconds: float | None) -> None:
        (results / f"{name}.json").write_text(json.dumps({"format": RECORD_FORMAT, "seconds_train": seconds}))

    record("pretrain-other-pt-seed-7", 3600.0)
    record("finetune-sasrec-seed-1", 360.0)
    record("finetune-sasrec-seed-2", 720.0)
    record("finetune-scratch-seed-1", 1800.0)  # seed 2 estimated from its own seed 1: 1800
    record("zeroshot-zero-shot-seed-1", None)
    # gru and unisrec (2 seeds each) have no record: each estimated at the median of the three fine-tunings, 720
    lines, summary = compute_section(config, results)
    assert summary["pretrain"] == {"runs": 1, "recorded": 1, "hours_recorded": 1.0, "hours_estimated": 0.0,
                                   "without_estimate": 0}
    assert summary["finetune"]["runs"] == 8 and summary["finetune"]["recorded"] == 3
    assert summary["finetune"]["hours_recorded"] == pytest.approx((360 + 720 + 1800) / 3600, abs=1e-3)
    assert summary["finetune"]["hours_estimated"] == pytest.approx((1800 + 4 * 720) / 3600, abs=1e-3)
    assert summary["hours_total"] == pytest.approx((3600 + 2880 + 1800 + 2880) / 3600, abs=1e-3)
    assert "| fine-tuning | 3 of 8 | 0.80 | 5 | 1.30 |" in lines
    assert any("about 3.1 CPU-hours" in line and "about 1.6 hours of wall time" in line for line in lines)

    (results / "pretrain-other-pt-seed-7.json").unlink()  # nothing to estimate a pre-training from
    lines, summary = compute_section(config, results)
    assert summary["pretrain"]["without_estimate"] == 1
    assert "| pre-training | 0 of 1 | 0.00 | 1 | 0.00 + 1 without an estimate |" in lines


def test_compute_estimates_stay_within_a_dataset(tmp_path: Path, tiny_lm_dir: Path) -> None:
    """A fine-tuning with no recorded seed is estimated from the recorded fine-tunings on its own dataset only:
    on a dataset with none it has no estimate (a small domain's times say nothing about a large one's), and the
    runner's budget guess (``estimate_seconds``) follows the same rule."""
    from unisrec.records import RECORD_FORMAT
    from unisrec.report import estimate_seconds
    from unisrec.report_writer import compute_section

    experiments = [{"name": "scratch", "dataset": "target", "mode": "inductive"},
                   {"name": "unisrec", "dataset": "target", "mode": "inductive", "init": "other-pt"},
                   {"name": "other-scratch", "dataset": "other", "mode": "inductive"}]
    config_path = _config(tmp_path, tiny_lm_dir, experiments=experiments, long_tail=None,
                          transfer={"baseline": "scratch", "experiments": ["unisrec"]})
    config = load_report_config(config_path)
    results = tmp_path / "results"
    results.mkdir()
    record = {"format": RECORD_FORMAT, "kind": "finetune", "seconds_train": 600.0,
              "data": {"name": "target", "fingerprint": "x"}}
    (results / "finetune-scratch-seed-1.json").write_text(json.dumps(record))
    lines, summary = compute_section(config, results)
    # scratch seed 2: its own seed 1 (600); unisrec seeds 1-2: the target's fine-tunings (600 each);
    # other-scratch seeds 1-2: nothing recorded on "other"
    assert summary["finetune"]["hours_estimated"] == pytest.approx(3 * 600 / 3600, abs=1e-3)
    assert summary["finetune"]["without_estimate"] == 2
    assert "| fine-tuning | 1 of 6 | 0.17 | 5 | 0.50 + 2 without an estimate |" in lines
    runs = {(r.name, r.seed): r for r in plan_runs(config, tmp_path / "out")}
    assert estimate_seconds(runs[("unisrec", 1)], results, config) == 600.0
    assert estimate_seconds(runs[("other-scratch", 1)], results, config) is None


def test_runs_recorded_on_a_gpu_are_counted_apart_and_estimate_only_gpu_runs(tmp_path: Path,
                                                                              tiny_lm_dir: Path) -> None:
    """A GPU epoch is 15-100x shorter than a CPU one: a run recorded on a GPU counts as not recorded in the CPU
    hours (estimated from the CPU records like a missing run) and is listed apart; the runner's guess for a run
    on the GPU comes from the GPU records alone."""
    from unisrec.records import RECORD_FORMAT
    from unisrec.report import estimate_seconds
    from unisrec.report_writer import compute_section

    experiments = [{"name": "scratch", "dataset": "target", "mode": "inductive"},
                   {"name": "unisrec", "dataset": "target", "mode": "inductive", "init": "other-pt"}]
    config = load_report_config(_config(tmp_path, tiny_lm_dir, experiments=experiments, long_tail=None,
                                        transfer={"baseline": "scratch", "experiments": ["unisrec"]}))
    results = tmp_path / "results"
    results.mkdir()

    def record(name: str, seconds: float, device: str | None) -> None:
        body = {"format": RECORD_FORMAT, "kind": "finetune", "seconds_train": seconds}
        (results / f"{name}.json").write_text(json.dumps(body | ({"device": device} if device else {})))

    record("finetune-scratch-seed-1", 1200.0, None)  # before records named their device: the CPU
    record("finetune-scratch-seed-2", 1800.0, "cpu")
    record("finetune-unisrec-seed-1", 60.0, "cuda:1")  # one rank's device under DDP: a GPU all the same
    lines, summary = compute_section(config, results)
    # CPU: scratch 1-2 recorded (3000 s); unisrec 1 (on the GPU) and 2 estimated from the target's CPU runs (1500)
    assert summary["finetune"] == {"runs": 4, "recorded": 2, "hours_recorded": round(3000 / 3600, 3),
                                   "hours_estimated": round(3000 / 3600, 3), "without_estimate": 0}
    assert summary["gpu"] == {"runs": 1, "hours": round(60 / 3600, 3)}
    assert "| fine-tuning | 2 of 4 | 0.83 | 2 | 0.83 |" in lines
    assert any(line.startswith("1 run(s) were recorded on a GPU (0.02 hours there)") for line in lines)
    runs = {(r.name, r.seed): r for r in plan_runs(config, tmp_path / "out")}
    assert estimate_seconds(runs[("unisrec", 2)], results, config) == 1500.0
    assert estimate_seconds(runs[("unisrec", 2)], results, config, "cuda") == 60.0
    assert estimate_seconds(runs[("scratch", 1)], results, config, "cuda") == 60.0  # the target's GPU runs


def test_peers_section_puts_a_peers_records_beside_the_reference(tmp_path: Path, tiny_lm_dir: Path) -> None:
    """A peer's own records (a glob relative to the config) give mean ± std, the epoch span and the median seconds
    per epoch, beside the reference experiment and the change of ndcg@10 against it; a bad record or an unknown
    reference is an error that names it."""
    from unisrec.errors import ConfigError, UnisrecError
    from unisrec.report_writer import peers_section

    peers_dir = tmp_path / "peers"
    peers_dir.mkdir()
    for seed, (ndcg, epochs, speed) in enumerate([(0.04, 8, 150.0), (0.06, 10, 160.0), (0.05, 10, 170.0)], 1):
        (peers_dir / f"lib-s{seed}.json").write_text(json.dumps(
            {"test": {"recall@10": 2 * ndcg, "ndcg@10": ndcg, "recall@50": 0.3, "ndcg@50": 0.1},
             "valid": {"ndcg@10": ndcg}, "epochs": epochs, "seconds_per_epoch": speed}))
    peers = [{"name": "lib", "label": "Other library", "records": "peers/lib-s*.json", "reference": "scratch"}]
    config = load_report_config(_config(tmp_path, tiny_lm_dir, peers=peers))
    ours = {seed: {"test": {"recall@10": 0.2, "ndcg@10": 0.1, "recall@50": 0.4, "ndcg@50": 0.2},
                   "epochs": 30, "seconds_per_epoch": 20.0} for seed in (1, 2)}
    lines, summary = peers_section(config, {"scratch": ours})
    assert "| Other library | 3 | 0.1000 ± 0.0200 | 0.0500 ± 0.0100 | 0.3000 ± 0.0000 | 0.1000 ± 0.0000 | 8-10 | " \
           "160.0 | -50.0% |" in lines
    assert "| scratch (this report) | 2 | 0.2000 ± 0.0000 | 0.1000 ± 0.0000 | 0.4000 ± 0.0000 | 0.2000 ± 0.0000 " \
           "| 30 | 20.0 |  |" in lines
    assert summary["lib"]["runs"] == 3 and summary["lib"]["test"]["ndcg@10"]["mean"] == pytest.approx(0.05)

    (peers_dir / "lib-s4.json").write_text(json.dumps({"valid": {}}))
    with pytest.raises(UnisrecError, match=r"lib-s4\.json: peer record 'lib' has no 'test' metrics"):
        peers_section(config, {"scratch": ours})
    with pytest.raises(ConfigError, match=r"peers\.lib: unknown reference 'nope'"):
        load_report_config(_config(tmp_path, tiny_lm_dir, peers=[{**peers[0], "reference": "nope"}]))


def test_committed_scientific_records_match_the_plan_of_the_current_config(tmp_path: Path) -> None:
    """A new config field at its default (``LATER_SETTINGS``) or a new recipe must not make the committed records
    stale: the settings every record's plan resolves to equal those of the plan the current code makes."""
    config = load_report_config(ROOT / "configs" / "report" / "scientific.yaml")
    runs = {f"{r.kind}-{r.name}-seed-{r.seed}": r for r in plan_runs(config, tmp_path)}
    checked = 0
    for path in sorted((ROOT / "results" / "scientific").glob("*-seed-*.json")):
        if path.stem.startswith("verify-"):  # a --verify output, not a record
            continue
        record = json.loads(path.read_text())
        run = runs[path.stem]
        stored, planned = resolved_spec(record["plan"]), resolved_spec(run.spec)  # the settings they resolve to
        for key in ("settings", "mode", "kind"):
            assert stored.get(key) == planned.get(key), (path.name, key)
        if run.spec.get("init"):
            assert stored["init"]["settings"] == planned["init"]["settings"], path.name
        checked += 1
    assert checked >= 20
    assert "repeat_bias" not in runs["finetune-sasrec-seed-1"].spec["config"]["model"]
    assert "model.repeat_bias=true" in runs["finetune-sasrec-repeat-seed-1"].spec["overrides"]


def test_git_commit_outside_a_repository_reads_the_named_commit(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy of the sources without .git (a lent GPU machine) records the commit its sender names, marked as
    such; with no name it records nothing rather than a guess."""
    from unisrec.records import SOURCE_COMMIT_VARIABLE, git_commit

    monkeypatch.delenv(SOURCE_COMMIT_VARIABLE, raising=False)
    assert git_commit(tmp_path) == {}
    monkeypatch.setenv(SOURCE_COMMIT_VARIABLE, "0123abc")
    assert git_commit(tmp_path) == {"commit": "0123abc", "source": "environment"}
    inside = git_commit()  # the checkout itself: git's answer wins over the variable
    assert inside.get("commit") != "0123abc" and "dirty" in inside


def test_pretrain_only_runs_the_pretrainings_first_and_a_rerun_goes_on(
        tmp_path: Path, tiny_lm_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    config_path = _config(tmp_path, tiny_lm_dir, seeds=[1])
    out, results = tmp_path / "out", tmp_path / "results"
    run_report(config_path, out, only=["unisrec", "scratch"], dry_run=True, results_dir=results, pretrain_only=True)
    plan = capsys.readouterr().err
    assert re.search(r"^new +\S+other-pt", plan, re.M) and re.search(r"^later +\S+unisrec", plan, re.M)
    assert re.search(r"^later +\S+scratch", plan, re.M) and not re.search(r"^new +\S+(scratch|unisrec)", plan, re.M)
    run_report(config_path, out, only=["unisrec", "scratch"], results_dir=results, pretrain_only=True)
    assert (out / "pretrain" / "other-pt" / "seed-7" / "metrics.json").exists()
    assert sorted(p.name for p in results.glob("*-seed-*.json")) == ["pretrain-other-pt-seed-7.json"]
    assert not (out / "data" / "target").exists()  # the fine-tunings' dataset waits for them
    pre_trained: list[str] = []
    real_pretrain = importlib.import_module("unisrec.pretrain").pretrain

    def spy(data_dirs: object, out_dir: object, **kwargs: object) -> object:
        pre_trained.append(str(out_dir))
        return real_pretrain(data_dirs, out_dir, **kwargs)

    monkeypatch.setattr("unisrec.pretrain.pretrain", spy)
    run_report(config_path, out, only=["unisrec", "scratch"], results_dir=results)
    assert pre_trained == []  # the rerun goes on with the fine-tunings from the finished pre-training
    assert sorted(p.name for p in results.glob("*-seed-*.json")) == [
        "finetune-scratch-seed-1.json", "finetune-unisrec-seed-1.json", "pretrain-other-pt-seed-7.json"]
    with pytest.raises(UnisrecError, match="--pretrain-only runs pre-trainings"):
        run_report(config_path, None, results_dir=results, report_only=True, pretrain_only=True)


def test_a_run_records_the_commit_it_started_from(tmp_path: Path, tiny_lm_dir: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A commit made while a long run trains is not the code that run ran: the run reads the commit before it
    trains (a pre-training of 2026-12-04 named a commit made 25 minutes into it)."""
    from conftest import prepare_synthetic

    import unisrec.train
    from unisrec.finetune import finetune
    from unisrec.pretrain import pretrain

    events: list[str] = []

    def commit() -> dict[str, str | bool]:
        events.append("commit")
        return {"commit": "made-later" if "train" in events else "at-start", "dirty": False}

    def fit(*args: object, **kwargs: object) -> object:
        events.append("train")
        return unisrec.train.fit(*args, **kwargs)  # type: ignore[arg-type]

    for module in ("unisrec.pretrain", "unisrec.finetune"):
        monkeypatch.setattr(f"{module}.git_commit", commit)
        monkeypatch.setattr(f"{module}.fit", fit)
    data = prepare_synthetic(tmp_path / "a", seed=1)
    small = [*SMALL, "train.epochs=1", f"text.model={tiny_lm_dir}"]
    pre = pretrain([data], tmp_path / "pre", overrides=[*small, "train.device=cpu"])
    assert pre["code"] == {"commit": "at-start", "dirty": False}
    assert pre["device"] == "cpu"  # a pre-training names its device, as a fine-tuning does (cost estimates read it)
    events.clear()
    tune = [o for o in small if not o.startswith("pretrain.")]  # fine-tuning refuses the settings it does not read
    assert finetune(data, "inductive", tmp_path / "ft", overrides=tune)["code"]["commit"] == "at-start"
    assert json.loads((tmp_path / "ft" / "metrics.json").read_text())["code"]["commit"] == "at-start"
    assert events[0] == "commit" and "train" in events


def test_an_interrupted_replacement_is_not_taken_for_the_old_run(tmp_path: Path, tiny_lm_dir: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A stale run is replaced beside the old folder, which keeps its metrics.json until the new run ends: a
    report stopped in between (here before the new run wrote anything, as when killed while encoding texts) must
    go on replacing it, not count the old folder as the new plan's finished run or resume it as one."""
    import unisrec.pretrain as pretrain_module

    config_path = _config(tmp_path, tiny_lm_dir, seeds=[1])
    out = tmp_path / "out"
    run_report(config_path, out, only=["zero-shot"])
    data = yaml.safe_load(config_path.read_text())
    data["pretrain"]["other-pt"]["overrides"] = ["train.epochs=2"]
    config_path.write_text(yaml.safe_dump(data))
    pretraining = next(r for r in plan_runs(load_report_config(config_path), out) if r.kind == "pretrain")
    assert pretraining.status() == "stale" and (pretraining.out / "metrics.json").exists()
    real = pretrain_module.pretrain
    calls: list[bool] = []

    def interrupted(*args: Any, **kwargs: Any) -> None:
        calls.append(kwargs["overwrite"])
        raise KeyboardInterrupt

    monkeypatch.setattr("unisrec.pretrain.pretrain", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_report(config_path, out, only=["zero-shot"])
    assert same_plan(json.loads(pretraining.spec_file.read_text()), pretraining.spec)  # the new spec is written
    assert pretraining.status() == "stale"  # ... but the folder is still the old run (1 epoch), not "cached"

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs["overwrite"])
        return real(*args, **kwargs)

    monkeypatch.setattr("unisrec.pretrain.pretrain", spy)
    run_report(config_path, out, only=["zero-shot"])
    assert calls == [True, True]
    assert pretraining.status() == "cached" and not pretraining.replacing_file.exists()
    assert json.loads((pretraining.out / "run.json").read_text())["config"]["train"]["epochs"] == 2


def test_saved_ranks_load_back_and_a_damaged_file_is_a_clear_error(tmp_path: Path) -> None:
    from unisrec.analysis import load_ranks, save_ranks

    save_ranks(tmp_path, np.array([3, 0, 41]))
    assert load_ranks(tmp_path).tolist() == [3, 0, 41]
    (tmp_path / "ranks_test.npy").write_bytes(b"not an array")
    with pytest.raises(UnisrecError, match=r"ranks_test\.npy: not a saved array of ranks"):
        load_ranks(tmp_path)
    np.save(tmp_path / "ranks_test.npy", np.zeros((2, 2)))
    with pytest.raises(UnisrecError, match="expected a 1-d integer array of ranks, got float64"):
        load_ranks(tmp_path)
    (tmp_path / "ranks_test.npy").write_bytes(b"")
    with pytest.raises(UnisrecError, match=r"not a saved array of ranks"):
        load_ranks(tmp_path)
    with open(tmp_path / "ranks_test.npy", "wb") as handle:  # an archive under the array's name
        np.savez(handle, a=np.arange(3), b=np.arange(2))
    with pytest.raises(UnisrecError, match=r"not a saved array of ranks \(an archive of several arrays\)"):
        load_ranks(tmp_path)
    with pytest.raises(UnisrecError, match=r"missing; .*eval\.test=false"):
        load_ranks(tmp_path / "none")


def test_the_report_names_the_selection_metric_the_runs_used() -> None:
    """It said "Model selection on validation ndcg@10" whatever train.select_metric the runs had."""
    from unisrec.report_writer import _selection_sentence

    def run(metric: str | None) -> dict[str, object]:
        return {"config": {"train": {} if metric is None else {"select_metric": metric}}}

    assert _selection_sentence({"a": {1: run(None)}, "b": {1: run("ndcg@10")}}) == \
        "Model selection on validation ndcg@10."
    assert _selection_sentence({"a": {1: run("recall@10"), 2: run("recall@10")}}) == \
        "Model selection on validation recall@10."
    assert _selection_sentence({"a": {1: run("recall@10")}, "b": {1: run(None)}, "c": {1: run("recall@10")}}) == \
        "Model selection on validation ndcg@10 (b); recall@10 (a, c)."


def test_a_change_between_other_seed_sets_also_says_it_on_the_seeds_both_hold() -> None:
    """A transferred seed 1 against three scratch seeds read -7.0% where seed 1 of both gave -3.0%: the mean over
    other seeds carries the seeds' own spread."""
    from unisrec.report_writer import change_between

    def runs(values: dict[int, float]) -> dict[int, dict[str, object]]:
        return {seed: {"test": {"ndcg@10": v}} for seed, v in values.items()}

    results = {"scratch": runs({1: 0.050, 2: 0.040, 3: 0.060}), "transfer": runs({1: 0.045}),
               "both": runs({1: 0.055, 2: 0.044, 3: 0.066}), "other": runs({4: 0.05})}
    assert change_between(results, "transfer", "scratch", "ndcg@10") == "-10.0% (seed 1 of both: -10.0%)"
    results["transfer"] = runs({1: 0.048, 3: 0.060})
    assert change_between(results, "transfer", "scratch", "ndcg@10") == "+8.0% (seeds 1, 3 of both: -1.8%)"
    assert change_between(results, "both", "scratch", "ndcg@10") == "+10.0%"  # the same seeds: as before
    assert change_between(results, "other", "scratch", "ndcg@10") == "+0.0% (no seed in common)"
    assert change_between(results, "missing", "scratch", "ndcg@10") == "—"


def test_the_budget_counts_what_an_interrupted_run_still_needs(tmp_path: Path, tiny_lm_dir: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """--budget-minutes compared a run's whole estimate with the time left, so a run nearly done never resumed
    under a budget that fits what it still needs (--dry-run already counted that); a dry run with a budget was
    the plan unchanged, as if no budget had been given."""
    from io import StringIO

    import unisrec.report as report_module

    config_path = _config(tmp_path, tiny_lm_dir)
    monkeypatch.setattr(report_module, "estimate_seconds", lambda *args, **kwargs: 1e9)  # the whole run: too long
    monkeypatch.setattr(report_module, "seconds_left", lambda folder, estimate: 1.0)  # what it still needs: 1 s
    log = StringIO()
    run_report(config_path, tmp_path / "out", only=["gru"], results_dir=tmp_path / "results", budget_minutes=5,
               log=log)
    assert "budget: stopping" not in log.getvalue()
    assert (tmp_path / "out" / "runs" / "gru" / "seed-2" / "metrics.json").exists()
    assert main(["report", str(config_path), "--out", str(tmp_path / "out"), "--dry-run",
                 "--budget-minutes", "5"]) == 2


def test_the_long_tail_section_pairs_seeds_and_leaves_out_records_of_other_groups(
        tmp_path: Path, tiny_lm_dir: Path) -> None:
    """Its change column compared one scratch record with three transferred seeds without a word (the main tables
    add "(seed 1 of both: ...)"), and took records of other groups (another dataset's) into the same cells."""
    from unisrec.report_writer import long_tail_section

    config = load_report_config(_config(tmp_path, tiny_lm_dir))  # long tail: sasrec then unisrec, 3 groups

    def record(dcgs: list[float], ranges: list[list[int]] | None = None) -> dict[str, Any]:
        ranges = ranges or [[0, 2], [3, 5], [6, 9]]
        return {"long_tail": [{"group": g, "frequency_range": r, "items": 4, "targets": 10, "dcg@10": d,
                               "hits@10": 1} for g, (d, r) in enumerate(zip(dcgs, ranges, strict=True))]}

    results = {"sasrec": {1: record([1.0, 2.0, 3.0])},
               "unisrec": {1: record([2.0, 2.0, 3.0]), 2: record([0.5, 1.0, 6.0]),
                           3: record([9.0, 9.0, 9.0], [[0, 1], [2, 5], [6, 9]])}}
    lines, data = long_tail_section(config, results, tmp_path, plots=False)
    rows = [line for line in lines if line.startswith("| 1 |") or line.startswith("| 3 |")]
    assert rows == ["| 1 | 0–2 | 4 | 10 | 0.1000 | 0.1250 ± 0.1061 | +25.0% (seed 1 of both: +100.0%) |",
                    "| 3 | 6–9 | 4 | 10 | 0.3000 | 0.4500 ± 0.2121 | +50.0% (seed 1 of both: +0.0%) |"]
    assert "Left out, their popularity groups being other ones (other data): unisrec seed 3." in lines
    assert data["unisrec"][0] == [0.125, pytest.approx(0.10607, abs=1e-5)]
    lines, _ = long_tail_section(config, {"sasrec": results["sasrec"]}, tmp_path, plots=False)  # none recorded yet
    assert "| 1 | 0–2 | 4 | 10 | 0.1000 | not run | — |" in lines
