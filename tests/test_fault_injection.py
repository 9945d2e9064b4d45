"""kill -9 at seeded random moments, then the same command again: the output equals an uninterrupted run's."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import write_synthetic_source

from unisrec.datasets import PrepareOptions, prepare

DATA_FILES = ("interactions.parquet", "items.parquet", "users.parquet")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_prepare_killed_at_a_random_moment_then_rerun_is_identical(seed: int, tmp_path: Path) -> None:
    source = write_synthetic_source(tmp_path / "src", n_users=300, n_items=60, seed=seed)
    reference = tmp_path / "reference"
    prepare(source, "csv", reference, options=PrepareOptions(user_core=0, item_core=0))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "unisrec", "prepare", str(source), "--format", "csv", "--out", str(out),
               "--user-core", "0", "--item-core", "0", "--overwrite"]
    for attempt in range(2):  # the second kill may hit a run that already finished once: --overwrite
        delay = random.Random(seed * 10 + attempt).uniform(0.05, 3.0)
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    prepare(source, "csv", out, options=PrepareOptions(user_core=0, item_core=0), overwrite=True)
    for name in DATA_FILES:
        assert (out / name).read_bytes() == (reference / name).read_bytes(), name
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.") and not p.name.endswith(".lock")]
    assert leftovers == []
