"""Run folders: what a run was asked to do (``run.json``), and whether to start, resume or refuse."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from unisrec.atomic import atomic_write_json
from unisrec.errors import UnisrecError
from unisrec.json_io import read_json
from unisrec.locking import hold_folder


def fingerprint(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]


def open_run_dir(out: Path, settings: dict[str, Any], *, overwrite: bool, create: bool = True) -> bool:
    """Create ``out`` for a new run (True: an interrupted run with the same settings is resumed instead).

    A finished run, or a folder holding something else, is never replaced without ``overwrite``.
    """
    hold_folder(out)  # a second writer of ``out`` stops here: "... in use by process PID"
    run_file = out / "run.json"
    if out.exists() and overwrite:
        if any(out.iterdir()) and not run_file.exists():
            raise UnisrecError(f"{out}: not a unisrec run folder; refusing to overwrite it")
        shutil.rmtree(out)
    if out.exists() and any(out.iterdir()):
        if not run_file.exists():
            raise UnisrecError(f"{out}: folder exists and is not a unisrec run; choose another --out")
        previous = read_json(run_file, "pass --overwrite to start the run again")
        if (out / "metrics.json").exists():
            raise UnisrecError(f"{out}: run already finished; pass --overwrite to train it again")
        if previous.get("fingerprint") != fingerprint(settings):
            raise UnisrecError(
                f"{out}: holds an unfinished run with different settings; pass --overwrite or choose another --out"
            )
        return (out / "checkpoint" / "state.json").exists()
    if create:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(run_file, {"fingerprint": fingerprint(settings), **settings})
    return False


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
