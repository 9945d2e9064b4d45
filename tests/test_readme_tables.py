"""Result tables of README.md and docs/*.md generated from committed records: each table that follows a
``<!-- table: python scripts/seed_table.py ... -->`` comment must equal that command's output today
(``python scripts/readme_tables.py`` rewrites them, ``--check`` only compares)."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "readme_tables.py"


def tables(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True)


def test_readme_tables_equal_their_commands_output() -> None:
    done = tables("--check")
    assert done.returncode == 0, done.stderr


def test_a_stale_table_is_found_and_rewritten_from_its_record(tmp_path: Path) -> None:
    record = tmp_path / "run-s1.json"
    record.write_text(json.dumps({"test": {"recall@10": 0.125, "ndcg@10": 0.0625}}))
    marker = f'<!-- table: python scripts/seed_table.py --metrics recall@10,ndcg@10 "ours={record}" -->'
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\ntext before\n{marker}\n| model | stale |\n|---|---|\n\ntext after\n")

    check = tables("--check", "--readme", str(readme))
    assert check.returncode == 1
    assert "differs from its command's output" in check.stderr and str(record) in check.stderr

    assert tables("--readme", str(readme)).returncode == 0
    assert readme.read_text().splitlines() == [
        "# Title", "", "text before", marker,
        "| model | runs | recall@10 | ndcg@10 |", "|---|---|---|---|", "| ours | 1 | 0.1250 | 0.0625 |",
        "", "text after",
    ]
    assert tables("--check", "--readme", str(readme)).returncode == 0


def test_every_named_file_is_checked_and_the_stale_one_named(tmp_path: Path) -> None:
    record = tmp_path / "run-s1.json"
    record.write_text(json.dumps({"test": {"ndcg@10": 0.0625}}))
    marker = f'<!-- table: python scripts/seed_table.py --metrics ndcg@10 "ours={record}" -->'
    fresh, stale = tmp_path / "README.md", tmp_path / "detail.md"
    fresh.write_text(f"{marker}\n| model | runs | ndcg@10 |\n|---|---|---|\n| ours | 1 | 0.0625 |\n")
    stale.write_text(f"{marker}\n| model | runs | ndcg@10 |\n|---|---|---|\n| ours | 1 | 0.0600 |\n")

    for order in ([stale, fresh], [fresh, stale]):  # every file named is read, not only the first or the last
        check = tables("--check", *(f"--readme={path}" for path in order))
        assert check.returncode == 1
        assert f"{stale}: differs" in check.stderr and f"{fresh}:" not in check.stderr
    bare = tmp_path / "notes.md"
    bare.write_text("no table here\n")
    refused = tables("--readme", str(stale), "--readme", str(bare))
    assert refused.returncode == 2 and f"{bare}: no generated table" in refused.stderr
    assert "0.0600" in stale.read_text()  # nothing rewritten when a named file has no table

    assert tables("--readme", str(stale), "--readme", str(fresh)).returncode == 0
    assert stale.read_text() == fresh.read_text()


def test_the_default_check_covers_the_docs_with_tables() -> None:
    default_files = runpy.run_path(str(SCRIPT))["default_files"]
    files = [path.relative_to(ROOT).as_posix() for path in default_files()]
    assert files[0] == "README.md"
    assert {"docs/transfer.md", "docs/scientific.md"} <= set(files)
    assert "docs/ARCHITECTURE.md" not in files  # no generated table there


def test_a_table_may_only_come_from_seed_table(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("<!-- table: python -c print(1) -->\n| x |\n")
    done = tables("--check", "--readme", str(readme))
    assert done.returncode != 0
    assert "a table must come from python scripts/seed_table.py" in done.stderr


def _tail_record(path: Path, dcg: list[float], targets: list[int], ranges: list[list[int]],
                 seed: int | None = None) -> Path:
    groups = [{"group": g, "frequency_range": r, "items": 3 + g, "targets": t, "dcg@10": d, "hits@10": 1}
              for g, (d, t, r) in enumerate(zip(dcg, targets, ranges, strict=True))]
    path.write_text(json.dumps({"test": {"ndcg@10": 0.1}, "long_tail": groups, "seed": seed}))
    return path


def test_a_misplaced_table_marker_is_an_error_not_a_table_left_unchecked(tmp_path: Path) -> None:
    """A marker with a trailing space, or indented, was skipped: --check passed over a stale table."""
    command = 'python scripts/seed_table.py --metrics ndcg@10 "x=results/scientific/finetune-unisrec-t-seed-1.json"'
    for marker in (f"<!-- table: {command} --> ", f"  <!-- table: {command} -->", f"<!-- table: {command} -->x"):
        readme = tmp_path / "README.md"
        readme.write_text(f"{marker}\n| model | runs | ndcg@10 |\n|---|---|---|\n| x | 1 | 0.9999 |\n")
        done = tables("--check", "--readme", str(readme))
        if marker.startswith("<") and marker.rstrip().endswith("-->"):  # a trailing space: a marker, found stale
            assert done.returncode == 1 and "differs from its command's output" in done.stderr, done.stderr
        else:
            assert done.returncode != 0 and "line 1: a table marker must be" in done.stderr, done.stderr


def test_long_tail_and_rows_say_what_the_seeds_are(tmp_path: Path) -> None:
    """--long-tail compared means over other seeds unmarked (a sign flipped against the seeds both hold), and a
    seed recorded twice counted as two runs of a mean over seeds without a word; a pre-training record was blamed
    on eval.test=false."""
    ranges = [[0, 4], [5, 90]]
    _tail_record(tmp_path / "a-s1.json", [1.0, 6.0], [10, 20], ranges, seed=1)  # ndcg@10 0.1, 0.3
    _tail_record(tmp_path / "a-s2.json", [5.0, 2.0], [10, 20], ranges, seed=2)  # 0.5, 0.1
    _tail_record(tmp_path / "b-s1.json", [2.0, 4.0], [10, 20], ranges, seed=1)  # 0.2, 0.2
    done = seed_table("--long-tail", "ndcg@10", f"old={tmp_path}/a-s*.json", f"new={tmp_path}/b-s*.json")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[2:] == [
        "| 1 | 0–4 | 3 | 10 | 0.3000 ± 0.2828 | 0.2000 | -33.3% (seed 1 of both: +100.0%) |",
        "| 2 | 5–90 | 4 | 20 | 0.2000 ± 0.1414 | 0.2000 | +0.0% (seed 1 of both: -33.3%) |",
    ]
    _tail_record(tmp_path / "a-s1-again.json", [1.0, 6.0], [10, 20], ranges, seed=1)
    done = seed_table("--metrics", "ndcg@10", f"old={tmp_path}/a-s*.json")
    assert done.returncode == 0 and "| old | 3 |" in done.stdout
    assert done.stderr == "seed_table: note: old: seed 1 in more than one record, each counted as a run\n"
    (tmp_path / "pre.json").write_text(json.dumps({"kind": "pretrain", "valid": None, "test": None}))
    done = seed_table(f"pre={tmp_path}/pre.json")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == (f"seed_table: {tmp_path}/pre.json: a pre-training record, which holds no test "
                                   "metrics (its fine-tunings' records do)")


def seed_table(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "seed_table.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, env={"PYTHONPATH": str(ROOT), "PATH": ""})


def test_long_tail_rows_average_each_groups_metric_over_records(tmp_path: Path) -> None:
    ranges = [[0, 4], [5, 90]]
    _tail_record(tmp_path / "a-s1.json", [1.0, 6.0], [10, 20], ranges)  # ndcg@10 0.1, 0.3
    _tail_record(tmp_path / "a-s2.json", [3.0, 10.0], [10, 20], ranges)  # 0.3, 0.5
    _tail_record(tmp_path / "b-s1.json", [3.0, 8.0], [10, 20], ranges)  # 0.3, 0.4
    done = seed_table("--long-tail", "ndcg@10", f"old={tmp_path}/a-s*.json", f"new={tmp_path}/b-s*.json")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "| group | training interactions | items | test targets | old | new | new vs old |",
        "|---|---|---|---|---|---|---|",
        "| 1 | 0–4 | 3 | 10 | 0.2000 ± 0.1414 | 0.3000 | +50.0% |",
        "| 2 | 5–90 | 4 | 20 | 0.4000 ± 0.1414 | 0.4000 | +0.0% |",
    ]


def test_long_tail_refuses_records_with_other_groups_or_no_counts(tmp_path: Path) -> None:
    _tail_record(tmp_path / "a.json", [1.0, 6.0], [10, 20], [[0, 4], [5, 90]])
    other = _tail_record(tmp_path / "b.json", [1.0, 6.0], [10, 20], [[0, 3], [4, 90]])
    done = seed_table("--long-tail", "ndcg@10", f"a={tmp_path}/a.json", f"b={other}")
    assert done.returncode == 2
    assert done.stderr.strip() == f"seed_table: {other}: its popularity groups differ from those of {tmp_path}/a.json"

    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({"test": {"ndcg@10": 0.1}}))
    done = seed_table("--long-tail", "ndcg@10", f"a={bare}")
    assert done.returncode == 2 and done.stderr.strip() == f"seed_table: {bare}: no long_tail counts"

    done = seed_table("--long-tail", "auc", f"a={tmp_path}/a.json")
    assert done.returncode == 2 and "expected recall@K, ndcg@K or mrr@K" in done.stderr


def test_versus_rows_compare_the_means_and_every_run(tmp_path: Path) -> None:
    for name, value in (("a-s1", 0.10), ("a-s2", 0.20), ("b-s1", 0.25), ("b-s2", 0.20), ("c-s1", 0.30)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"test": {"ndcg@10": value}, "valid": {"ndcg@10": 0.5}}))
    done = seed_table("--versus", "ndcg@10", f"overlap={tmp_path}/a-s*.json::{tmp_path}/b-s*.json",
                      f"clear={tmp_path}/a-s*.json::{tmp_path}/c-s*.json")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "| comparison | runs | reference ndcg@10 | candidate ndcg@10 | change | every run above |",
        "|---|---|---|---|---|---|",
        "| overlap | 2 / 2 | 0.1500 ± 0.0707 | 0.2250 ± 0.0354 | +50.0% | no |",
        "| clear | 2 / 1 | 0.1500 ± 0.0707 | 0.3000 | +100.0% | yes |",
    ]
    valid = seed_table("--versus", "ndcg@10", "--split", "valid", f"x={tmp_path}/a-s1.json::{tmp_path}/c-s1.json")
    assert valid.stdout.splitlines()[-1] == "| x | 1 / 1 | 0.5000 | 0.5000 | +0.0% | no |"
    done = seed_table("--versus", "ndcg@10", f"x={tmp_path}/a-s*.json")
    assert done.returncode == 2
    assert "--versus expects LABEL=REFERENCE_GLOB::CANDIDATE_GLOB" in done.stderr
    # records naming their seeds: where the sides hold other seeds, the change over the seeds both hold too
    for name, seed, value in (("r-s1", 1, 0.050), ("r-s2", 2, 0.040), ("r-s3", 3, 0.060), ("t-s1", 1, 0.045)):
        (tmp_path / f"{name}.json").write_text(json.dumps({"seed": seed, "test": {"ndcg@10": value}}))
    done = seed_table("--versus", "ndcg@10", f"one={tmp_path}/r-s*.json::{tmp_path}/t-s*.json",
                      f"same={tmp_path}/r-s1.json::{tmp_path}/t-s1.json")
    assert done.stdout.splitlines()[2:] == [
        "| one | 3 / 1 | 0.0500 ± 0.0100 | 0.0450 | -10.0% (seed 1 of both: -10.0%) | no |",
        "| same | 1 / 1 | 0.0500 | 0.0450 | -10.0% | no |"]


def _epoch(epoch: int, ndcg: float, loss: float) -> dict[str, object]:
    return {"epoch": epoch, "train_loss": loss, "valid": {"ndcg@10": ndcg}}


def test_curve_rows_put_runs_side_by_side_by_epoch(tmp_path: Path) -> None:
    record = tmp_path / "scratch.json"
    record.write_text(json.dumps({"test": {}, "curve": [_epoch(1, 0.05, 7.0), _epoch(2, 0.07, 6.5)]}))
    run = tmp_path / "run"
    run.mkdir()
    lines = [json.dumps(_epoch(1, 0.06, 6.9)), "resuming from epoch 1 step 0", "42", json.dumps(_epoch(1, 0.061, 6.8))]
    (run / "train.log").write_text("\n".join(lines) + "\n")  # epoch 1 logged twice: the last entry counts
    done = seed_table("--curve", "ndcg@10", f"scratch={record}", f"transferred={run}")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "| epoch | scratch | transferred |",
        "|---|---|---|",
        "| 1 | 0.0500 / 7.000 | 0.0610 / 6.800 |",
        "| 2 | 0.0700 / 6.500 | - |",
    ]
    picked = seed_table("--curve", "ndcg@10", "--epochs", "2", f"scratch={record}", f"log={run / 'train.log'}")
    assert picked.stdout.splitlines()[2:] == ["| 2 | 0.0700 / 6.500 | - |"]
    (run / "train.log").write_text(json.dumps({"epoch": 3, "valid": {"ndcg@10": 0.08}}) + "\n")  # no loss logged
    assert seed_table("--curve", "ndcg@10", f"a={run}").stdout.splitlines()[2:] == ["| 3 | 0.0800 |"]


def test_curve_refuses_what_has_no_epochs(tmp_path: Path) -> None:
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({"test": {"ndcg@10": 0.1}}))
    done = seed_table("--curve", "ndcg@10", f"a={bare}")
    assert done.returncode == 2
    assert done.stderr == f"seed_table: {bare}: no curve (a record of unisrec finetune carries one)\n"
    empty = tmp_path / "empty.jsonl"
    empty.write_text("not json\n")
    done = seed_table("--curve", "ndcg@10", f"a={empty}")
    assert done.returncode == 2 and done.stderr == f"seed_table: {empty}: no epoch with validation metrics\n"
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps(_epoch(1, 0.05, 7.0)) + "\n")
    done = seed_table("--curve", "recall@10", f"a={log}")
    assert done.returncode == 2 and done.stderr == "seed_table: a: epoch 1 has no validation recall@10\n"
    done = seed_table("--epochs", "1", f"a={log}")
    assert done.returncode == 2 and done.stderr == "seed_table: --epochs goes with --curve\n"
    done = seed_table("--curve", "ndcg@10", "--epochs", "one", f"a={log}")
    assert done.returncode == 2 and "expected comma-separated epoch numbers" in done.stderr
    done = seed_table("--curve", "ndcg@10", f"a={tmp_path / 'missing'}")
    assert done.returncode == 2 and "no such record, run folder or epoch log" in done.stderr


def test_globs_skip_spec_files_and_remade_records_and_bad_arguments_are_one_line(tmp_path: Path) -> None:
    """A glob over a report's run folders also matched their spec files (seed-1.json: "no test recall@10"), one over
    records the record of a remade run kept aside (a seed counted twice); --metrics "" was an IndexError and
    --curve over a pre-training record (epochs without validation) a KeyError."""
    for seed, value in ((1, 0.1), (2, 0.3)):
        run = tmp_path / "runs" / f"seed-{seed}"
        run.mkdir(parents=True)
        (run / "metrics.json").write_text(json.dumps({"valid": {}, "test": {"ndcg@10": value}}))
        (tmp_path / "runs" / f"seed-{seed}.json").write_text(json.dumps({"kind": "finetune", "mode": "inductive"}))
    (tmp_path / "r-seed-1.json").write_text(json.dumps({"valid": {}, "test": {"ndcg@10": 0.1}}))
    (tmp_path / "r-seed-1.remade.json").write_text(json.dumps({"valid": {}, "test": {"ndcg@10": 0.9}}))
    done = seed_table("--metrics", "ndcg@10", f"runs={tmp_path}/runs/seed-*", f"records={tmp_path}/r-seed-*")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[2:] == ["| runs | 2 | 0.2000 ± 0.1414 |", "| records | 1 | 0.1000 |"]
    done = seed_table("--metrics", "", f"runs={tmp_path}/runs/seed-*")
    assert done.returncode == 2 and done.stderr == (
        "seed_table: --metrics '' names no metric: give comma-separated metrics (e.g. ndcg@10,recall@10)\n")
    pre = tmp_path / "pre.json"
    pre.write_text(json.dumps({"test": None, "curve": [{"epoch": 1, "train_loss": 7.4}]}))
    done = seed_table("--curve", "ndcg@10", f"p={pre}")
    assert done.returncode == 2 and done.stderr == f"seed_table: {pre}: no epoch with validation metrics\n"
