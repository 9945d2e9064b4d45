"""Every subcommand on a table of bad inputs: exit 2, one line on stderr naming the file or field, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import prepare_synthetic, write_synthetic_source

from unisrec.cli import main

Case = Callable[[Path, Path], tuple[list[str], str]]  # (tmp_path, tiny_lm_dir) -> (argv, expected stderr text)


def _semicolons(tmp: Path, lm: Path) -> tuple[list[str], str]:
    source = write_synthetic_source(tmp / "src")
    return (["prepare", str(source), "--format", "csv", "--out", str(tmp / "o"), "--delimiter", ";;"],
            "--delimiter must be one ASCII character (not a quote or a line break), got ';;'")


def _non_ascii_delimiter(tmp: Path, lm: Path) -> tuple[list[str], str]:
    source = write_synthetic_source(tmp / "src")  # pyarrow takes ASCII only: a traceback before
    return (["prepare", str(source), "--format", "csv", "--out", str(tmp / "o"), "--delimiter", "\uff1b"],
            "--delimiter must be one ASCII character (not a quote or a line break), got '\uff1b'")


def _empty_delimiter(tmp: Path, lm: Path) -> tuple[list[str], str]:
    source = write_synthetic_source(tmp / "src")
    return (["prepare", str(source), "--format", "csv", "--out", str(tmp / "o"), "--delimiter", ""],
            "--delimiter must be one ASCII character (not a quote or a line break), got ''")


def _corrupt_dataset_json(tmp: Path, lm: Path) -> tuple[list[str], str]:
    data = prepare_synthetic(tmp / "d")
    (data / "dataset.json").write_text('{"format": "unisrec-processed", ')
    return (["finetune", str(data), "--mode", "inductive", "--out", str(tmp / "r"), "--text-model", str(lm)],
            f"{data / 'dataset.json'}: damaged, not valid JSON")


def _corrupt_run_json(tmp: Path, lm: Path) -> tuple[list[str], str]:
    data = prepare_synthetic(tmp / "d")
    run = tmp / "r"
    run.mkdir()
    (run / "run.json").write_bytes(b"\xff\xfe not json")
    return (["finetune", str(data), "--mode", "inductive", "--out", str(run), "--text-model", str(lm)],
            f"{run / 'run.json'}: damaged, not valid JSON (not UTF-8); pass --overwrite")


def _non_utf8_history(tmp: Path, lm: Path) -> tuple[list[str], str]:
    history = tmp / "h.jsonl"
    history.write_bytes(b'{"history": ["i1"]}\n{"history": ["caf\xe9"]}\n')
    run = tmp / "run"
    run.mkdir()
    return (["recommend", str(run), "--history-file", str(history)], f"{history}, line 2: not valid UTF-8 text")


def _output_under_a_file(tmp: Path, lm: Path) -> tuple[list[str], str]:
    source = write_synthetic_source(tmp / "src")
    blocker = tmp / "file"
    blocker.write_text("not a folder")
    return (["prepare", str(source), "--format", "csv", "--out", str(blocker / "o")], str(blocker))


def _missing_run(tmp: Path, lm: Path) -> tuple[list[str], str]:
    data = prepare_synthetic(tmp / "d")
    return (["evaluate", str(tmp / "nowhere"), str(data)], str(tmp / "nowhere"))


def _empty_token(tmp: Path, lm: Path) -> tuple[list[str], str]:
    return (["serve", str(tmp / "run"), "--token", ""], "--token (or UNISREC_TOKEN) must not be empty")


def _no_catalogue_room(tmp: Path, lm: Path) -> tuple[list[str], str]:
    return (["serve", str(tmp / "run"), "--max-catalogue", "0"], "--max-catalogue must be a positive integer, got 0")


def _serve_missing_run(tmp: Path, lm: Path) -> tuple[list[str], str]:
    return (["serve", str(tmp / "nowhere")], f"{tmp / 'nowhere' / 'config.json'}: missing")


def _unquoted_list_override(tmp: Path, lm: Path) -> tuple[list[str], str]:
    data = prepare_synthetic(tmp / "d")  # the shell split "--eval.ks=[10, 20]" after the comma
    return (["finetune", str(data), "--mode", "inductive", "--out", str(tmp / "r"), "--eval.ks=[10,"],
            "value '[10,' is not valid YAML")


def _select_metric_not_computed(tmp: Path, lm: Path) -> tuple[list[str], str]:
    data = prepare_synthetic(tmp / "d")
    return (["finetune", str(data), "--mode", "inductive", "--out", str(tmp / "r"), "--eval.ks=[20,50]"],
            "train.select_metric must be one of the validation metrics (ndcg@20, ndcg@50, recall@20")


def _unknown_device(tmp: Path, lm: Path) -> tuple[list[str], str]:
    data = prepare_synthetic(tmp / "d")
    return (["finetune", str(data), "--mode", "inductive", "--out", str(tmp / "r"), "--device", "gpu",
             "--text-model", str(lm)], "unknown device 'gpu' (use auto, cpu, cuda or cuda:N)")


def _recommend_unknown_device(tmp: Path, lm: Path) -> tuple[list[str], str]:
    return (["recommend", str(tmp / "run"), "--history", "i1", "--device", "gpu"], "unknown device 'gpu'")


def _negative_max_steps(tmp: Path, lm: Path) -> tuple[list[str], str]:
    data = prepare_synthetic(tmp / "d")  # trained 0 steps and ended "finished" without a model
    return (["pretrain", str(data), "--out", str(tmp / "p"), "--max-steps", "-1", "--text-model", str(lm)],
            "--max-steps must be >= 0 (0: every epoch's steps), got -1")


def _nan_learning_rate(tmp: Path, lm: Path) -> tuple[list[str], str]:
    data = prepare_synthetic(tmp / "d")  # failed inside torch after run.json was written
    return (["finetune", str(data), "--mode", "sasrec", "--out", str(tmp / "r"), "--train.lr=.nan"],
            "train.lr must be a number > 0, got nan")


def _old_name_bad_value(tmp: Path, lm: Path) -> tuple[list[str], str]:
    data = prepare_synthetic(tmp / "d")
    return (["pretrain", str(data), "--out", str(tmp / "p"), "--pretrain.strided_windows=maybe"],
            "pretrain.strided_windows (now train.windows) takes true or false")


def _only_commas(tmp: Path, lm: Path) -> tuple[list[str], str]:
    return (["report", str(tmp / "r.yaml"), "--only", " , "], "--only ' , ' names no run")  # was: every run


def _nan_budget(tmp: Path, lm: Path) -> tuple[list[str], str]:
    return (["report", str(tmp / "r.yaml"), "--budget-minutes", "nan"], "--budget-minutes must be a number > 0")


def _records_of_one_name(tmp: Path, lm: Path) -> tuple[list[str], str]:
    return (["record", str(tmp / "a" / "run"), str(tmp / "b" / "run"), "--out-dir", str(tmp / "records")],
            f"{tmp / 'a' / 'run'} and {tmp / 'b' / 'run'} would both be recorded as {tmp / 'records' / 'run.json'}")


def _history_with_results(tmp: Path, lm: Path) -> tuple[list[str], str]:
    history = tmp / "h.jsonl"
    history.write_text('{"history": ["i1"]}\n{"history": ["i1"], "results": 5}\n')  # was replaced by the answer
    run = tmp / "run"
    run.mkdir()
    return (["recommend", str(run), "--history-file", str(history)],
            f'{history}, line 2: holds a "results" field, the name the answer is written under; rename it')


def _pretrain_a_baseline(tmp: Path, lm: Path) -> tuple[list[str], str]:
    data = prepare_synthetic(tmp / "d")  # trained UniSRec and recorded zesrec: no --init could load it
    return (["pretrain", str(data), "--out", str(tmp / "p"), "--model.architecture=zesrec"],
            "model.architecture=zesrec: pre-training trains UniSRec's text model")


def _pretrain_a_baseline_setting(tmp: Path, lm: Path) -> tuple[list[str], str]:
    data = prepare_synthetic(tmp / "d")
    return (["pretrain", str(data), "--out", str(tmp / "p"), "--model.mask_prob=0.5"],
            "model.mask_prob=0.5 is implemented for the bert4rec architecture")


def _shortcut_and_dotted_disagree(tmp: Path, lm: Path) -> tuple[list[str], str]:
    data = prepare_synthetic(tmp / "d")  # the shortcut won here, the dotted form in encode
    return (["finetune", str(data), "--mode", "sasrec", "--out", str(tmp / "r"), "--epochs", "1", "--train.epochs=3"],
            "--train.epochs=3 and the shortcut flag for train.epochs (1) disagree; give one")


def _encode_flags_disagree(tmp: Path, lm: Path) -> tuple[list[str], str]:
    data = prepare_synthetic(tmp / "d")
    return (["encode", str(data), "--pooling", "cls", "--text.pooling=mean"],
            "--text.pooling=mean and the shortcut flag for text.pooling (cls) disagree; give one")


def _encode_bad_word_drop(tmp: Path, lm: Path) -> tuple[list[str], str]:
    data = prepare_synthetic(tmp / "d")  # refused only after the base vectors had been encoded and written
    return (["encode", str(data), "--text-model", str(lm), "--word-drop", "1.5"],
            "word-drop probability must be in [0, 1), got 1.5")


def _encode_bad_device_with_a_cached_file(tmp: Path, lm: Path) -> tuple[list[str], str]:
    data = prepare_synthetic(tmp / "d")
    assert main(["encode", str(data), "--text-model", str(lm)]) == 0  # cached: the next call reused it, exit 0
    return (["encode", str(data), "--text-model", str(lm), "--device", "bogus"], "unknown device 'bogus'")


def _transfer_without_init(tmp: Path, lm: Path) -> tuple[list[str], str]:
    data = prepare_synthetic(tmp / "d")  # recorded and ignored before
    return (["finetune", str(data), "--mode", "inductive", "--out", str(tmp / "r"), "--train.transfer=adaptor"],
            "train.transfer=adaptor chooses what a run copies from --init: it needs --init")


def _offsets_lr_without_offsets(tmp: Path, lm: Path) -> tuple[list[str], str]:
    data = prepare_synthetic(tmp / "d")
    return (["finetune", str(data), "--mode", "sasrec", "--out", str(tmp / "r"), "--train.repeat_lr_scale=10"],
            "train.repeat_lr_scale=10 is the learning rate of the repeat offsets: it needs model.repeat_bias=true")


def _pretraining_setting_to_finetune(tmp: Path, lm: Path) -> tuple[list[str], str]:
    data = prepare_synthetic(tmp / "d")  # recorded in the run's settings and read by nothing before
    return (["finetune", str(data), "--mode", "inductive", "--out", str(tmp / "r"), "--pretrain.lambda_ss=0"],
            "pretrain.lambda_ss=0: a pre-training setting, which fine-tuning does not read (give it to `unisrec "
            "pretrain`)")


def _verify_with_dry_run(tmp: Path, lm: Path) -> tuple[list[str], str]:
    return (["report", str(tmp / "r.yaml"), "--verify", "run-1", "--dry-run", "--only", "x"],  # it trained anyway
            "--verify does not go with --only, --dry-run (it would ignore them): give it alone")


def _report_only_with_dry_run(tmp: Path, lm: Path) -> tuple[list[str], str]:
    return (["report", str(tmp / "r.yaml"), "--report-only", "--dry-run"],  # it wrote report.md
            "--report-only does not go with --dry-run (it would ignore them): give it alone")


def _bad_yaml_config(tmp: Path, lm: Path) -> tuple[list[str], str]:
    data = prepare_synthetic(tmp / "d")
    (tmp / "c.yaml").write_text("train: [1\n")  # PyYAML's message spans 8 lines with an excerpt of the file
    return (["finetune", str(data), "--mode", "inductive", "--out", str(tmp / "r"), "--config", str(tmp / "c.yaml")],
            f"{tmp / 'c.yaml'}: not valid YAML (line 2, column 1: while parsing a flow sequence, expected ',' or ']', "
            "but got '<stream end>')")


def _bad_yaml_report(tmp: Path, lm: Path) -> tuple[list[str], str]:
    (tmp / "r.yaml").write_text("datasets:\n  a: {source: x\n  b: 1\n")
    return (["report", str(tmp / "r.yaml"), "--dry-run", "--out", str(tmp / "o")],
            f"{tmp / 'r.yaml'}: not valid YAML (line 3, column 4: while parsing a flow mapping, expected ',' or "
            "'}', but got ':')")


def _absurd_threads(tmp: Path, lm: Path) -> tuple[list[str], str]:
    data = prepare_synthetic(tmp / "d")  # torch failed with an ImportError traceback deep inside Adam
    return (["finetune", str(data), "--mode", "inductive", "--out", str(tmp / "r"), "--train.threads=99999"],
            "train.threads must be at most 1024 (0: torch's default, the machine's cores), got 99999")


CASES: dict[str, Case] = {
    "finetune: 99999 threads": _absurd_threads,
    "config file: bad YAML": _bad_yaml_config, "report config: bad YAML": _bad_yaml_report,
    "report: --verify with --dry-run": _verify_with_dry_run,
    "report: --report-only with --dry-run": _report_only_with_dry_run,
    "finetune: transfer without init": _transfer_without_init,
    "finetune: offsets' lr without offsets": _offsets_lr_without_offsets,
    "finetune: a pre-training setting": _pretraining_setting_to_finetune,
    "finetune: --epochs and --train.epochs": _shortcut_and_dotted_disagree,
    "encode: --pooling and --text.pooling": _encode_flags_disagree,
    "encode: word-drop p 1.5": _encode_bad_word_drop,
    "encode: bad device, file cached": _encode_bad_device_with_a_cached_file,
    "pretrain: a baseline's architecture": _pretrain_a_baseline,
    "pretrain: a baseline's setting": _pretrain_a_baseline_setting,
    "recommend: a record with results": _history_with_results,
    "record: two runs of one name": _records_of_one_name,
    "report: --only of commas": _only_commas, "report: NaN budget": _nan_budget,
    "pretrain: negative max steps": _negative_max_steps, "finetune: NaN lr": _nan_learning_rate,
    "renamed setting, bad value": _old_name_bad_value,
    "delimiter ;;": _semicolons, "delimiter empty": _empty_delimiter,
    "delimiter not ASCII": _non_ascii_delimiter, "corrupt dataset.json": _corrupt_dataset_json,
    "corrupt run.json": _corrupt_run_json, "non-UTF-8 history file": _non_utf8_history,
    "output below a file": _output_under_a_file, "missing run": _missing_run,
    "serve: empty token": _empty_token, "serve: catalogue cap 0": _no_catalogue_room,
    "serve: missing run": _serve_missing_run, "override: list split by the shell": _unquoted_list_override,
    "select metric not computed": _select_metric_not_computed, "finetune: unknown device": _unknown_device,
    "recommend: unknown device": _recommend_unknown_device,
}


REFUSED_BEFORE_THE_RUN_FOLDER = {"finetune: --epochs and --train.epochs", "finetune: transfer without init",
                                 "finetune: offsets' lr without offsets", "finetune: a pre-training setting",
                                 "pretrain: a baseline's architecture", "pretrain: a baseline's setting",
                                 "pretrain: negative max steps", "finetune: NaN lr", "renamed setting, bad value",
                                 "select metric not computed", "finetune: 99999 threads"}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_exits_2_with_one_line(name: str, tmp_path: Path, tiny_lm_dir: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    argv, expected = CASES[name](tmp_path, tiny_lm_dir)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert len(err) == 1 and err[0].startswith(f"unisrec {argv[0]}: error: ") and expected in err[0], err
    assert "Traceback" not in err[0]
    if name in REFUSED_BEFORE_THE_RUN_FOLDER:  # a corrected command then runs (no run.json of other settings)
        assert not (tmp_path / "r").exists() and not (tmp_path / "p").exists()


@pytest.mark.parametrize(("argv", "expected"), [
    (["prepare", "src", "--format", "foo", "--out", "o"], "unisrec prepare: error: argument --format: invalid choice: "
     "'foo' (choose from 'unisrec', 'csv', 'amazon2018', 'online-retail', 'recbole', 'movielens') (see unisrec "
     "prepare --help)"),
    (["prepare", "src", "--format", "csv", "--out", "o", "--user-core", "abc"],
     "unisrec prepare: error: argument --user-core: invalid int value: 'abc' (see unisrec prepare --help)"),
    (["serve", "run", "--bogus"], "unisrec serve: error: unrecognized arguments: --bogus (see unisrec serve --help)"),
    (["finetune"], "unisrec finetune: error: the following arguments are required: data_dir, --mode, --out (see "
     "unisrec finetune --help)"),
])
def test_a_malformed_command_line_is_one_line_too(argv: list[str], expected: str,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """argparse printed its usage block before the error (13 lines for a bad --format), and an unknown flag of
    `unisrec serve` was reported by the top-level parser ("unisrec: error: ...")."""
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code  # type: ignore[assignment]
    assert code == 2 and capsys.readouterr().err.splitlines() == [expected]


PIPED = """
import sys
import unisrec.cli as cli
def answer(args):
    sys.stdout.write("x" * int(sys.argv[1]) + "\\n")
    return 0
cli._run_evaluate = answer
raise SystemExit(cli.main(["evaluate", "run", "data"]))
"""


@pytest.mark.parametrize("size", [10, 1_000_000])
def test_a_reader_gone_before_the_output_ends_the_command_quietly(size: int) -> None:
    """A real pipe whose reader closed before the first byte (`unisrec ... | true`): a short output failed at the
    interpreter's exit ("Exception ignored ... BrokenPipeError", exit 120) and a long one said "error: Broken pipe"
    (exit 2; the flush that should have told stdout's pipe apart found nothing buffered)."""
    proc = subprocess.Popen([sys.executable, "-c", PIPED, str(size)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader goes at once
    err = proc.stderr.read().decode()
    assert proc.wait() == 141 and err == ""


def test_a_closed_pipe_ends_the_command_quietly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """`unisrec recommend ... | head`: the reader goes, the next write raises BrokenPipeError; that is no error
    of the command (it printed "error: Broken pipe" and exited 2)."""
    import unisrec.cli as cli

    def closed(args: object) -> int:
        raise BrokenPipeError(32, "Broken pipe")

    class ClosedStdout:
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self) -> None:
            raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "_run_evaluate", closed)
    with monkeypatch.context() as patched:
        patched.setattr(sys, "stdout", ClosedStdout())
        assert main(["evaluate", str(tmp_path / "run"), str(tmp_path / "data")]) == 141
    assert capsys.readouterr().err == ""
    # another pipe than stdout (a socket, a subprocess) is an error like any other
    assert main(["evaluate", str(tmp_path / "run"), str(tmp_path / "data")]) == 2
    assert capsys.readouterr().err.strip() == "unisrec evaluate: error: Broken pipe"
