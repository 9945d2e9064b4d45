"""Validation-only fine-tuning (``eval.test=false``) and scoring its test split once afterwards (``--save``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import prepare_synthetic

from unisrec.cli import main
from unisrec.config import ConfigError
from unisrec.records import run_record
from unisrec.report_config import load_report_config

ROOT = Path(__file__).resolve().parents[1]
SMALL = [
    "--model.hidden_size=16", "--model.inner_size=16", "--model.max_seq_len=6", "--model.n_experts=2",
    "--train.batch_size=64", "--train.lr=0.01", "--train.progress=false", "--train.epochs=2",
    "--train.cold_items=0.3", "--train.seed=5",
]


def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_validation_only_run_is_scored_once_like_a_full_run(tmp_path: Path, tiny_lm_dir: Path,
                                                            capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    data = prepare_synthetic(tmp_path / "d", n_users=60, n_items=30)
    text = ["--text-model", str(tiny_lm_dir), "--pooling", "mean"]
    full, chosen = tmp_path / "full", tmp_path / "chosen"
    code, out, err = _run(capsys, ["finetune", str(data), "--mode", "inductive", "--out", str(full), *text, *SMALL])
    assert code == 0, err
    reference = json.loads(out.splitlines()[-1])["test"]
    assert reference["cold_cases"] > 0  # the cold-item metrics are part of what --save must reproduce

    code, out, err = _run(capsys, ["finetune", str(data), "--mode", "inductive", "--out", str(chosen), *text,
                                   *SMALL, "--eval.test=false"])
    assert code == 0, err
    summary = json.loads(out.splitlines()[-1])
    assert summary["test"] is None and summary["valid"] == json.loads((full / "metrics.json").read_text())["valid"]
    assert json.loads((chosen / "metrics.json").read_text())["test"] is None
    assert not (chosen / "ranks_test.npy").exists()
    rows = [line for line in (chosen / "README.md").read_text().splitlines() if line.startswith("|")]
    assert [r.count("|") for r in rows[:4]] == [6, 6, 6, 6]  # header, rule, valid, test: five cells each
    assert rows[3].startswith("| test | not scored")
    assert rows[2] == "| valid | " + " | ".join(f"{summary['valid'][k]:.4f}" for k in
                                                ("recall@10", "ndcg@10", "recall@50", "ndcg@50")) + " |"
    record = run_record(chosen)
    assert record["test"] is None and record.get("long_tail") is None

    monkeypatch.setattr(sys, "argv", ["unisrec", "evaluate", str(chosen), str(data), "--save"])  # another process
    code, out, err = _run(capsys, ["evaluate", str(chosen), str(data), "--split", "test", "--save"])
    assert code == 0, err
    scored = json.loads(out.splitlines()[-1])
    assert scored == pytest.approx(reference, abs=1e-9)
    saved = json.loads((chosen / "metrics.json").read_text())
    assert saved["test"] == scored and saved["valid"] == summary["valid"]
    np.testing.assert_array_equal(np.load(chosen / "ranks_test.npy"), np.load(full / "ranks_test.npy"))
    test_row = next(r for r in (chosen / "README.md").read_text().splitlines() if r.startswith("| test |"))
    assert test_row == "| test | " + " | ".join(f"{scored[k]:.4f}" for k in
                                               ("recall@10", "ndcg@10", "recall@50", "ndcg@50")) + " |"
    card = (chosen / "README.md").read_text()
    command = card.split("## Command")[1].split("```bash\n")[1].split("\n```")[0]
    assert command == saved["command"]  # the card keeps the training's command, not this process's

    # read once: a second --save is refused, and the saved figures stay
    code, out, err = _run(capsys, ["evaluate", str(chosen), str(data), "--split", "test", "--save"])
    assert code == 2 and "already scored" in err and out == ""
    assert json.loads((chosen / "metrics.json").read_text()) == saved


def test_save_refuses_another_dataset_than_the_runs(tmp_path: Path, tiny_lm_dir: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A dataset with the run's item ids but other users was scored and saved, and the run's test, read once,
    could not be scored again with the right one."""
    import shutil

    data = prepare_synthetic(tmp_path / "d", n_users=60, n_items=30)
    other = prepare_synthetic(tmp_path / "other", n_users=40, n_items=30, seed=1)  # the same 30 item ids
    text = ["--text-model", str(tiny_lm_dir), "--pooling", "mean"]
    chosen = tmp_path / "chosen"
    code, _, err = _run(capsys, ["finetune", str(data), "--mode", "inductive", "--out", str(chosen), *text, *SMALL,
                                 "--eval.test=false"])
    assert code == 0, err
    code, out, err = _run(capsys, ["evaluate", str(chosen), str(other), "--save"])
    assert code == 2 and out == "" and err.strip() == (
        f"unisrec evaluate: error: {other}: not the dataset run {chosen} trained on ({data.resolve()}: other data "
        "files); give that dataset, whose test split is the run's")
    assert json.loads((chosen / "metrics.json").read_text())["test"] is None  # nothing saved
    copy = Path(shutil.copytree(data, tmp_path / "copy"))  # the same data files elsewhere: its test split
    code, out, err = _run(capsys, ["evaluate", str(chosen), str(copy), "--save"])
    assert code == 0, err


def test_save_needs_the_test_split_and_the_runs_own_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                             ) -> None:
    data = prepare_synthetic(tmp_path / "d", n_users=20, n_items=10)
    for extra in (["--split", "valid"], ["--ks", "5"], ["--exclude-seen"]):
        code, _, err = _run(capsys, ["evaluate", str(tmp_path / "run"), str(data), "--save", *extra])
        assert code == 2 and "own evaluation settings" in err, err
    code, _, err = _run(capsys, ["evaluate", str(tmp_path / "missing"), str(data), "--save"])
    assert code == 2 and "metrics.json: missing" in err, err


def test_report_configs_refuse_runs_without_test(tmp_path: Path) -> None:
    config = tmp_path / "report.yaml"
    for where in ("overrides: [eval.test=false]\n", ""):
        inner = "" if where else ", overrides: [eval.test=false]"
        config.write_text(
            "seeds: [1]\n" + where
            + "datasets:\n  d: {path: data}\n"
            + f"experiments:\n  - {{name: a, dataset: d, mode: inductive{inner}}}\n")
        with pytest.raises(ConfigError, match=r"eval\.test=false"):
            load_report_config(config)


def test_seed_table_says_a_test_less_record_was_not_scored(tmp_path: Path) -> None:
    record = tmp_path / "run.json"
    record.write_text(json.dumps({"valid": {"ndcg@10": 0.25}, "test": None}))
    script = [sys.executable, str(ROOT / "scripts" / "seed_table.py")]
    done = subprocess.run([*script, "--metrics", "ndcg@10", f"run={record}"], capture_output=True, text=True)
    assert done.returncode == 2 and "test split was not scored" in done.stderr, done.stderr
    done = subprocess.run([*script, "--split", "valid", "--metrics", "ndcg@10", f"run={record}"],
                          capture_output=True, text=True)
    assert done.returncode == 0 and "| run | 1 | 0.2500 |" in done.stdout, done.stdout + done.stderr
