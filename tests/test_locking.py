"""One writer per output: a second process is refused with the holder's PID; a dead holder's lock is taken over."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import prepare_synthetic

from unisrec.cli import main
from unisrec.errors import UnisrecError
from unisrec.locking import hold_folder, release

HOLD = """
import sys, time
from pathlib import Path
from unisrec.locking import hold_folder
hold_folder(Path(sys.argv[1]))
print("held", flush=True)
time.sleep(60)
"""


def _holder(folder: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def _refused_while_held(held: Path, asked: Path) -> None:
    """Another process holds ``held``: taking ``asked`` is refused, naming ``asked`` and the holder; then the
    holder dies (kill -9)."""
    proc = _holder(held)
    try:
        with pytest.raises(UnisrecError, match=rf"{asked}: in use by process {proc.pid}$"):
            hold_folder(asked)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def test_second_writer_is_refused_then_takes_over_a_dead_holders_lock(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _refused_while_held(out, out)
    assert (tmp_path / ".run.lock").exists()  # the dead holder's file is left behind ...
    hold_folder(out)  # ... and taken over
    release(out.parent / ".run.lock")


def test_a_link_to_a_folder_in_use_is_refused_too(tmp_path: Path) -> None:
    """A link and its target are one output (written where the link points): the lock was ``.LINK.lock`` for the
    link, so `unisrec evaluate LINK DATA --save` wrote into a run that another process was replacing."""
    run = tmp_path / "runs" / "notest"
    run.mkdir(parents=True)
    link = tmp_path / "notest-link"
    link.symlink_to(run)
    _refused_while_held(run, link)
    assert not (tmp_path / ".notest-link.lock").exists()


def test_finetune_on_an_output_in_use_exits_2(tmp_path: Path, tiny_lm_dir: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    data = prepare_synthetic(tmp_path / "d", n_users=20, n_items=12)
    out = tmp_path / "busy"
    proc = _holder(out)
    try:
        code = main(["finetune", str(data), "--mode", "inductive", "--out", str(out), "--epochs", "1",
                     "--text-model", str(tiny_lm_dir), "--model.hidden_size=8", "--model.inner_size=8"])
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == [f"unisrec finetune: error: {out}: in use by process {proc.pid}"]
    assert not out.exists()  # nothing written by the refused run
    code = main(["finetune", str(data), "--mode", "inductive", "--out", str(out), "--epochs", "1",
                 "--text-model", str(tiny_lm_dir), "--model.hidden_size=8", "--model.inner_size=8",
                 "--train.progress=false"])
    assert code == 0 and (out / "metrics.json").exists()


HOLD_FILE = """
import sys, time
from pathlib import Path
from unisrec.locking import hold
hold(Path(sys.argv[1]), "vectors")
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_a_run_that_needs_vectors_being_written_waits_for_the_writer(
        tmp_path: Path, tiny_lm_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from unisrec.config import TextConfig
    from unisrec.text_cache import encode_dataset, vectors_file_name

    data = prepare_synthetic(tmp_path / "d", n_users=20, n_items=12)
    text = TextConfig(model=str(tiny_lm_dir), pooling="mean")
    path = data / "embeddings" / vectors_file_name(text)
    lock = path.parent / f".{path.name}.lock"
    proc = subprocess.Popen([sys.executable, "-c", HOLD_FILE, str(lock), "3"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    try:
        with pytest.raises(UnisrecError, match=rf"{path}: in use by process {proc.pid}$"):
            encode_dataset(data, text, force=True)  # an explicit re-encode is a second writer: refused
        result = encode_dataset(data, text)  # a run that needs the file waits, then writes it itself
        assert proc.poll() is not None  # ... only after the holder has gone
    finally:
        proc.kill()
        proc.wait()
    assert not result.reused and result.path == path and path.exists()
    assert f"waiting for process {proc.pid}, which writes {path}" in capsys.readouterr().err
    assert encode_dataset(data, text).reused


def test_a_dataset_written_in_process_leaves_its_folder_free(tmp_path: Path) -> None:
    """prepare() / Dataset.from_frames(out=...) held the dataset folder's lock for the life of the process: a
    notebook that wrote a dataset kept every other writer of it out afterwards."""
    out = prepare_synthetic(tmp_path / "data")  # written in this process
    proc = _holder(out)  # another process takes the folder at once
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    hold_folder(out)  # held by this process before a write: still held after it
    from unisrec.datasets import load_processed
    from unisrec.datasets.processed import write_processed

    write_processed(load_processed(out), out)
    code = subprocess.run([sys.executable, "-c", HOLD.replace("time.sleep(60)", ""), str(out)],
                          capture_output=True, text=True).returncode
    assert code == 1  # refused: "in use by process ..."
    release(out.parent / f".{out.name}.lock")


def test_a_run_trained_or_scored_in_process_leaves_its_folder_free(tmp_path: Path, tiny_lm_dir: Path) -> None:
    """finetune() / pretrain() / score_test() held the run folder's lock for the life of the process: a notebook
    that trained a run kept `unisrec finetune ... --overwrite` (and every other writer) out afterwards."""
    from unisrec.finetune import finetune
    from unisrec.pretrain import pretrain
    from unisrec.score_test import score_test

    data = prepare_synthetic(tmp_path / "d", n_users=20, n_items=12)
    tiny = ["model.hidden_size=8", "model.inner_size=8", "model.n_experts=1", "train.epochs=1",
            "train.progress=false", f"text.model={tiny_lm_dir}"]
    pre, run = tmp_path / "pre", tmp_path / "run"
    pretrain([data], pre, overrides=tiny)
    finetune(data, "inductive", run, overrides=[*tiny, "eval.test=false"])
    score_test(run, data)
    for folder in (pre, run):
        proc = _holder(folder)  # another process takes the folder at once
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    hold_folder(run)  # held by this process before the call: still held after it
    with pytest.raises(UnisrecError, match="run already finished"):
        finetune(data, "inductive", run, overrides=tiny)
    code = subprocess.run([sys.executable, "-c", HOLD.replace("time.sleep(60)", ""), str(run)],
                          capture_output=True, text=True).returncode
    assert code == 1  # refused: "in use by process ..."
    release(run.parent / f".{run.name}.lock")
