"""kill -9 of `unisrec encode`, `finetune` and `pretrain` at seeded random moments, then the same command again:
the vectors, weights, metrics and logs equal those of an uninterrupted run (exactly, not approximately).

Each case first runs the command uninterrupted (in a subprocess, as the killed runs are), timing when it got to
its real work (the vector file's lock, or the run folder, appeared) and its end. The first kill falls in the
heart of the work at a seeded point of its progress: a seeded moment of the encoding, after a seeded training
step (pretrain checkpoints every step) or inside a seeded epoch (finetune checkpoints at epoch ends). Further
kills (the slow cases) fall at seeded moments anywhere from shortly before the work to its end.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import prepare_synthetic
from safetensors import safe_open

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TINY = ["--model.hidden_size=16", "--model.inner_size=16", "--model.max_seq_len=6", "--model.n_experts=2",
        "--train.lr=0.005", "--train.progress=false", "--train.log=jsonl"]
# what may differ between two runs of the same command: timings, and provenance (the code's git state can
# change while a test runs, e.g. a commit in the working tree)
TIMING = {"seconds", "seconds_train", "seconds_eval", "seconds_per_epoch", "sequences_per_second",
          "peak_memory_mb", "command", "created", "code"}


def _unisrec(*args: str) -> list[str]:
    return [sys.executable, "-m", "unisrec", *args]


def _timed_run(command: list[str], started: Callable[[], bool]) -> tuple[float, float]:
    """Run ``command`` to the end: (seconds until ``started()`` held, seconds until it exited)."""
    begin = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    mark = None
    while proc.poll() is None:
        if mark is None and started():
            mark = time.monotonic() - begin
        time.sleep(0.002)
    end = time.monotonic() - begin
    assert proc.returncode == 0, proc.stderr.read().decode() if proc.stderr else ""
    return (mark if mark is not None else end), end


def _kill(command: list[str], ready: Callable[[], bool], delay: float, progress: Callable[[], str]) -> str:
    """Start ``command``, wait until ``ready()``, ``delay`` seconds more, then SIGKILL it; what happened."""
    begin = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    while proc.poll() is None and not ready():
        time.sleep(0.002)
    time.sleep(delay)
    if proc.poll() is not None:
        return f"finished (exit {proc.returncode}) before the kill"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return f"killed {time.monotonic() - begin:.2f}s after its start: {progress()}"


def _kill_several_times(command: list[str], first: tuple[Callable[[], bool], float], kills: int, seed: int,
                        times: tuple[float, float], finished: Callable[[], bool],
                        progress: Callable[[], str]) -> list[str]:
    """The first kill after ``first`` = (ready, delay); the others at seeded moments from 80% of the reference's
    start-up to 97% of its run time."""
    rng = random.Random(seed * 1000 + 1)
    events = [_kill(command, *first, progress)]
    for _ in range(kills - 1):
        if finished():
            break
        events.append(_kill(command, lambda: True, rng.uniform(0.8 * times[0], 0.97 * times[1]), progress))
    return events


def _state(run: Path) -> dict[str, int]:
    """The training state of ``run``'s checkpoint ({} while there is none, or while it is being replaced)."""
    try:
        return dict(json.loads((run / "checkpoint" / "state.json").read_text())["state"])
    except (OSError, ValueError, KeyError):
        return {}


def _checkpoint(run: Path) -> str:
    """Where a killed training run stood: its checkpoint (epoch, step) and the files of its folder."""
    if not run.is_dir():
        return "no run folder yet"
    saved = _state(run)
    where = (f"checkpoint after epoch {saved['epoch']} + {saved['step_in_epoch']} steps "
             f"(step {saved['global_step']})" if saved else "no checkpoint")
    return f"{where}; {sorted(p.name for p in run.iterdir())}"


def _rerun(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, env=ENV, timeout=600)
    assert done.returncode == 0, done.stderr.decode()


def _tensors(path: Path) -> dict[str, np.ndarray]:
    with safe_open(str(path), framework="np") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open has no iteration)


def _assert_same_tensors(got: Path, expected: Path) -> None:
    a, b = _tensors(got), _tensors(expected)
    assert sorted(a) == sorted(b), got
    for key in a:
        assert a[key].dtype == b[key].dtype and a[key].shape == b[key].shape, key
        assert a[key].tobytes() == b[key].tobytes(), f"{got}: tensor {key} differs"


def _header(path: Path) -> dict[str, str]:
    with safe_open(str(path), framework="np") as handle:
        return {k: v for k, v in (handle.metadata() or {}).items() if k not in TIMING}


def _without_timing(value: object) -> object:
    if isinstance(value, dict):
        return {k: _without_timing(v) for k, v in value.items() if k not in TIMING}
    if isinstance(value, list):
        return [_without_timing(v) for v in value]
    return value


def _log(run: Path) -> list[object]:
    return [_without_timing(json.loads(line)) for line in (run / "train.log").read_text().splitlines()]


def _epoch_seconds(run: Path) -> float:
    """Mean seconds of a training epoch of the finished ``run`` (its train.log)."""
    records = [json.loads(line) for line in (run / "train.log").read_text().splitlines()]
    return float(np.mean([record["seconds"] for record in records]))


def _leftovers(folder: Path) -> list[str]:
    """Temporaries of interrupted writes (and checkpoints) that a finished command must not leave behind."""
    names = [p.name for p in folder.rglob("*") if p.name.endswith((".tmp", ".old")) or p.name == "checkpoint"]
    return sorted(names + [p.name for p in folder.glob(".*.overwrite")])


# -- encode ------------------------------------------------------------------------------------------------


def _encode_case(seed: int, kills: int, tmp_path: Path, lm: Path) -> list[str]:
    reference = prepare_synthetic(tmp_path / "ref" / "data", seed=seed, n_users=300, n_items=1500)
    data = prepare_synthetic(tmp_path / "killed" / "data", seed=seed, n_users=300, n_items=1500)
    args = ["--model", str(lm), "--batch-size", "8", "--word-drop", "0.3", "--variants", "2"]
    ref_emb, emb = reference / "embeddings", data / "embeddings"
    times = _timed_run(_unisrec("encode", str(reference), *args),
                       lambda: ref_emb.is_dir() and any(ref_emb.glob(".*.lock")))
    command = _unisrec("encode", str(data), *args)
    encoding = (lambda: emb.is_dir() and any(emb.glob(".*.lock")), random.Random(seed).uniform(0, times[1] - times[0]))
    events = _kill_several_times(command, encoding, kills, seed, times, lambda: False,
                                 lambda: str(sorted(p.name for p in emb.glob("*"))))
    _rerun(command)
    files = sorted(p.name for p in ref_emb.glob("*.safetensors"))
    assert len(files) == 2 and sorted(p.name for p in (data / "embeddings").glob("*.safetensors")) == files
    for name in files:
        _assert_same_tensors(data / "embeddings" / name, ref_emb / name)  # the vectors, byte for byte
        assert _header(data / "embeddings" / name) == _header(ref_emb / name)
    assert _leftovers(data) == []
    return events


def test_encode_killed_then_rerun_gives_the_same_vectors(tmp_path: Path, tiny_lm_dir: Path) -> None:
    events = _encode_case(1, 1, tmp_path, tiny_lm_dir)
    print("encode:", events)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [2, 3, 4])
def test_encode_killed_several_times(seed: int, tmp_path: Path, tiny_lm_dir: Path) -> None:
    print("encode:", _encode_case(seed, 3, tmp_path, tiny_lm_dir))


# -- finetune ----------------------------------------------------------------------------------------------


def _finetune_case(seed: int, kills: int, tmp_path: Path, lm: Path) -> list[str]:
    runs = []
    for side in ("ref", "killed"):
        data = prepare_synthetic(tmp_path / side / "data", seed=seed, n_users=300, n_items=40)
        runs.append((data, tmp_path / side / "run"))
    args = ["--mode", "inductive", "--text-model", str(lm), "--epochs", "4", "--seed", str(seed),
            "--train.batch_size=128", "--train.patience=2", *TINY]
    (ref_data, ref_run), (data, run) = runs
    times = _timed_run(_unisrec("finetune", str(ref_data), "--out", str(ref_run), *args),
                       lambda: (ref_run / "run.json").exists())
    epochs = json.loads((ref_run / "metrics.json").read_text())["epochs"]
    rng = random.Random(seed)
    target = rng.randint(1, max(epochs - 1, 1))  # then a moment of the next epoch
    inside = (lambda: _state(run).get("epoch", 0) >= target, rng.uniform(0, _epoch_seconds(ref_run)))
    command = _unisrec("finetune", str(data), "--out", str(run), *args)
    events = _kill_several_times(command, inside, kills, seed, times, lambda: (run / "metrics.json").exists(),
                                 lambda: _checkpoint(run))
    if not (run / "metrics.json").exists():
        _rerun(command)
    _assert_same_tensors(run / "model.safetensors", ref_run / "model.safetensors")  # final weights, exactly
    _assert_same_tensors(run / "items.safetensors", ref_run / "items.safetensors")
    assert (run / "ranks_test.npy").read_bytes() == (ref_run / "ranks_test.npy").read_bytes()
    got, expected = (json.loads((r / "metrics.json").read_text()) for r in (run, ref_run))
    assert _without_timing(got) == _without_timing(expected)
    assert _log(run) == _log(ref_run)
    assert _leftovers(run.parent) == []
    return events


def test_finetune_killed_then_rerun_gives_the_same_run(tmp_path: Path, tiny_lm_dir: Path) -> None:
    print("finetune:", _finetune_case(1, 1, tmp_path, tiny_lm_dir))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [2, 3, 4])
def test_finetune_killed_several_times(seed: int, tmp_path: Path, tiny_lm_dir: Path) -> None:
    print("finetune:", _finetune_case(seed, 3, tmp_path, tiny_lm_dir))


# -- pretrain ----------------------------------------------------------------------------------------------


def _pretrain_case(seed: int, kills: int, tmp_path: Path, lm: Path) -> list[str]:
    runs = []
    for side in ("ref", "killed"):
        domains = [prepare_synthetic(tmp_path / side / name, seed=seed + i, n_users=100, n_items=30 + 5 * i)
                   for i, name in enumerate(("a", "b"))]
        runs.append((domains, tmp_path / side / "run"))
    args = ["--text-model", str(lm), "--epochs", "2", "--seed", str(seed), "--train.batch_size=32",
            "--train.warmup_steps=5", "--pretrain.checkpoint_every=1", "--pretrain.word_drop_variants=2", *TINY]
    (ref_domains, ref_run), (domains, run) = runs
    times = _timed_run(_unisrec("pretrain", *map(str, ref_domains), "--out", str(ref_run), *args),
                       lambda: (ref_run / "run.json").exists())
    steps = json.loads((ref_run / "metrics.json").read_text())["steps"]
    rng = random.Random(seed)
    target = rng.randint(1, steps - 1)  # then a moment of the next step (or its checkpoint)
    stepping = (lambda: _state(run).get("global_step", 0) >= target,
                rng.uniform(0, _epoch_seconds(ref_run) * len(_log(ref_run)) / steps))
    command = _unisrec("pretrain", *map(str, domains), "--out", str(run), *args)
    events = _kill_several_times(command, stepping, kills, seed, times, lambda: (run / "metrics.json").exists(),
                                 lambda: _checkpoint(run))
    if not (run / "metrics.json").exists():
        _rerun(command)
    _assert_same_tensors(run / "model.safetensors", ref_run / "model.safetensors")
    got, expected = (json.loads((r / "metrics.json").read_text()) for r in (run, ref_run))
    assert _without_timing(got) == _without_timing(expected)  # every epoch's loss terms included
    assert _log(run) == _log(ref_run)
    assert _leftovers(run.parent) == []
    return events


def test_pretrain_killed_then_rerun_gives_the_same_run(tmp_path: Path, tiny_lm_dir: Path) -> None:
    print("pretrain:", _pretrain_case(1, 1, tmp_path, tiny_lm_dir))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [2, 3, 4])
def test_pretrain_killed_several_times(seed: int, tmp_path: Path, tiny_lm_dir: Path) -> None:
    print("pretrain:", _pretrain_case(seed, 3, tmp_path, tiny_lm_dir))


def test_a_rerun_removes_what_a_killed_writer_left(tmp_path: Path, tiny_lm_dir: Path) -> None:
    """The temporary file of a write that kill -9 cut short (vectors of `encode`, an addition to RUN/catalogue/)
    is removed by the next writer."""
    import torch

    from unisrec.cli import main
    from unisrec.recommend import persist_addition

    data = prepare_synthetic(tmp_path / "data", n_users=20, n_items=10)
    assert main(["encode", str(data), "--model", str(tiny_lm_dir)]) == 0
    [vectors] = (data / "embeddings").glob("*.safetensors")
    stale = vectors.with_name(f".{vectors.name}.k1ll3d.tmp")
    stale.write_bytes(b"half a safetensors file")
    assert main(["encode", str(data), "--model", str(tiny_lm_dir), "--force"]) == 0  # the next writer
    assert vectors.exists() and not stale.exists()

    added = tmp_path / "run" / "catalogue"
    added.mkdir(parents=True)
    torn = added / ".00000001.safetensors.k1ll3d.tmp"
    torn.write_bytes(b"half")
    persist_addition(added, ["x"], ["red"], torch.zeros(1, 4))
    assert sorted(p.name for p in added.iterdir()) == [".lock", "00000001.safetensors"]


class _Killed(BaseException):
    """A kill at a chosen write (BaseException: no handler of the library's takes it for an error to report)."""


@pytest.mark.parametrize("at", ["card", "metrics"])
def test_a_kill_while_a_finished_run_writes_its_files_is_completed_by_the_same_command(
        at: str, tmp_path: Path, tiny_lm_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """metrics.json marks a run finished: written before the card (and the pre-trained run's list of transfers), a
    kill between them left a run that the same command refused to complete ("run already finished"), without its
    README.md and with its checkpoint. Written last, the rerun completes it from its checkpoint."""
    import unisrec.finetune as finetune_module
    import unisrec.pretrain as pretrain_module
    from unisrec.cli import main

    domains = [prepare_synthetic(tmp_path / name, seed=i, n_users=60, n_items=20) for i, name in enumerate("ab")]
    small = ["--text-model", str(tiny_lm_dir), "--epochs", "1", "--train.batch_size=64", *TINY]
    pre, run = tmp_path / "pre", tmp_path / "run"
    commands = {"pretrain": ["pretrain", *map(str, domains), "--out", str(pre), *small],
                "finetune": ["finetune", str(domains[0]), "--mode", "inductive", "--init", str(pre),
                             "--out", str(run), *small]}
    for module, writer in ((pretrain_module, "write_pretrain_card"), (finetune_module, "write_finetune_card")):
        kind = "pretrain" if module is pretrain_module else "finetune"
        real_json = module.atomic_write_json

        def card(*args: object) -> None:
            raise _Killed

        def metrics(path: Path, *args: object, real: Callable[..., None] = real_json) -> None:
            if path.name == "metrics.json":
                raise _Killed
            real(path, *args)

        with monkeypatch.context() as patch:
            if at == "card":
                patch.setattr(module, writer, card)
            else:
                patch.setattr(module, "atomic_write_json", metrics)
            with pytest.raises(_Killed):
                main(commands[kind])
        out = pre if kind == "pretrain" else run
        assert main(commands[kind]) == 0, kind  # the same command: the run completes
        assert (out / "metrics.json").exists() and (out / "README.md").exists() and not (out / "checkpoint").exists()
    card_json = json.loads((pre / "card.json").read_text())
    assert [t["run"] for t in card_json["transfers"]] == [str(run.resolve())]  # told once, after the rerun
