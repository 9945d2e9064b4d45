"""Small, committed records of finished runs: ``results/<report>/<run>.json`` (no weights, no per-user data).

A record holds what a table cell or a re-verification needs: the exact command, settings and seed, the git
commit of the code, fingerprints of the data and of the text vectors, valid and test metrics, the best
epoch and the per-epoch curve, wall time and peak memory, the machine, and the long-tail counts (hits per
popularity group of the test targets, so long-tail tables need no per-user ranks). ``unisrec report
--report-only`` rebuilds a report from these files alone (``unisrec.report_writer``).

Format versions (readers accept every one): 1 = long-tail groups with hits@10, hits@50 and dcg@10;
2 = also hits@20, dcg@20, dcg@50 and rr@K (reciprocal-rank sums, for mrr@K) for K in 10, 20, 50, and any
number of groups (``unisrec report`` asks for its config's ``long_tail.groups``).

    unisrec record RUN_DIR [RUN_DIR ...] --out-dir results/NAME       # writes results/NAME/<run folder>.json
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from unisrec.atomic import atomic_write_json
from unisrec.errors import UnisrecError
from unisrec.json_io import read_json

RECORD_FORMAT = "unisrec-run-record"
RECORD_VERSION = 2
LONG_TAIL_KS = (10, 20, 50)


SOURCE_COMMIT_VARIABLE = "UNISREC_SOURCE_COMMIT"


def git_commit(start: Path | None = None) -> dict[str, str | bool]:
    """{"commit": sha, "dirty": bool} of the repository holding the unisrec sources; outside a repository (a copy
    of the sources on another machine, e.g. a lent GPU) the commit named by ``$UNISREC_SOURCE_COMMIT``, marked
    ``"source": "environment"`` (who sets it vouches that the copy is that commit); else {}."""
    where = start or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                                capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        named = os.environ.get(SOURCE_COMMIT_VARIABLE, "").strip()
        return {"commit": named, "source": "environment"} if named else {}
    return {"commit": sha.stdout.strip(), "dirty": bool(status.stdout.strip())}


def machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                            "processor": platform.processor() or platform.machine(), "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def data_fingerprint(data_dir: Path) -> str:
    """sha256 over a processed dataset's data files (interactions, items, users)."""
    digest = hashlib.sha256()
    for name in ("interactions.parquet", "items.parquet", "users.parquet"):
        path = data_dir / name
        if path.exists():
            digest.update(name.encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def run_curve(run_dir: Path) -> list[dict[str, Any]]:
    """The per-epoch curve of a run folder (its ``train.log``): epoch, seconds, lr, the training losses and the
    validation recall / NDCG of each epoch."""
    return log_curve(run_dir / "train.log")


def log_curve(log: Path) -> list[dict[str, Any]]:
    """``run_curve`` of an epoch log file (a run's ``train.log`` or a copy of it); empty if it does not exist."""
    curve: list[dict[str, Any]] = []
    if not log.exists():
        return curve
    for line in log.read_text().splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line of a killed run, or a progress note
        if not isinstance(entry, dict):
            continue
        point = {k: v for k, v in entry.items() if k in ("epoch", "seconds", "lr") or k.startswith("train_")}
        if "valid" in entry:
            point["valid"] = {k: v for k, v in entry["valid"].items() if k.split("@")[0] in ("recall", "ndcg")}
        curve.append(point)
    return curve


def long_tail_counts(run_dir: Path, data_dir: Path, n_groups: int = 5) -> list[dict[str, Any]] | None:
    from unisrec.analysis import RANKS_FILE, popularity_groups, split_targets, training_frequency
    from unisrec.datasets.processed import load_processed

    if not (run_dir / RANKS_FILE).exists() or not data_dir.exists():
        return None
    ranks = np.load(run_dir / RANKS_FILE)
    dataset = load_processed(data_dir)
    groups = popularity_groups(training_frequency(dataset), split_targets(dataset), n_groups)
    if len(groups.target_group) != len(ranks):
        return None
    rows = []
    for g in range(len(groups.n_items)):
        here = ranks[groups.target_group == g]
        row: dict[str, Any] = {"group": g, "frequency_range": list(groups.frequency_range[g]),
                               "items": int(groups.n_items[g]), "targets": len(here)}
        for k in LONG_TAIL_KS:
            hit = here < k
            row[f"hits@{k}"] = int(hit.sum())
            row[f"dcg@{k}"] = round(float(np.where(hit, 1.0 / np.log2(here + 2.0), 0.0).sum()), 6)
            row[f"rr@{k}"] = round(float(np.where(hit, 1.0 / (here + 1.0), 0.0).sum()), 6)
        rows.append(row)
    return rows


def _card_command(run_dir: Path) -> str | None:
    card = run_dir / "card.json"  # pre-trained runs keep their command beside the model card
    return str(read_json(card).get("command")) if card.exists() else None


def run_record(run_dir: str | Path, *, long_tail_groups: int = 5, plan: dict[str, Any] | None = None
               ) -> dict[str, Any]:
    """The record of one finished run folder (fine-tuning, pre-training or zero-shot evaluation).

    ``plan``: what ``unisrec report`` planned for the run (everything its result depends on); a later report
    whose plan for the run is the same reuses the record without the run folder.
    """
    run_dir = Path(run_dir)
    metrics = read_json(run_dir / "metrics.json")
    # zero-shot evaluations (``unisrec report``) write metrics only
    settings: dict[str, Any] = (read_json(run_dir / "run.json") if (run_dir / "run.json").exists()
                                else {"command": "zeroshot", "data": metrics.get("data"), "init": metrics.get("init")})
    config_file = run_dir / "config.json"
    text = read_json(config_file).get("text_encoder") if config_file.exists() else None
    data = settings.get("data")
    record: dict[str, Any] = {
        "format": RECORD_FORMAT,
        "format_version": RECORD_VERSION,
        "run": run_dir.name,
        "kind": settings.get("command"),
        "command": metrics.get("command") or _card_command(run_dir),
        "mode": settings.get("mode"),
        "init": Path(settings["init"]).name if settings.get("init") else None,
        "seed": settings.get("config", {}).get("train", {}).get("seed", metrics.get("seed")),
        "config": settings.get("config"),
        # the commit the run read when it started; else the one at record time (marked as such)
        "code": metrics.get("code") or {**git_commit(), "as_of": "record"},
        "text_vectors": text,
        "valid": metrics.get("valid"),
        "test": metrics.get("test"),
        "best_epoch": metrics.get("best_epoch"),
        "epochs": metrics.get("epochs"),
        "steps": metrics.get("steps"),
        "seconds_train": metrics.get("seconds_train"),
        "seconds_per_epoch": metrics.get("seconds_per_epoch"),
        "peak_memory_mb": metrics.get("peak_memory_mb"),
        "parameters": metrics.get("parameters"),
        "device": metrics.get("device", "cpu"),
        "machine": machine(),
        "curve": run_curve(run_dir),
    }
    if metrics.get("interpolation"):  # train.interpolate=auto: the alpha kept and the validation of each
        record["interpolation"] = metrics["interpolation"]
    if isinstance(data, str):
        name = metrics.get("dataset") or Path(data).name
        record["data"] = {"name": name, "fingerprint": data_fingerprint(Path(data))}
        record["long_tail"] = long_tail_counts(run_dir, Path(data), long_tail_groups)
    elif isinstance(data, list):
        record["data"] = [{"name": Path(d).name, "fingerprint": data_fingerprint(Path(d))} for d in data]
    if settings.get("replay"):  # finetune --replay: the corpus replayed, as pre-training records their data
        record["replay"] = [{"name": Path(d).name, "fingerprint": data_fingerprint(Path(d))}
                            for d in settings["replay"]]
    if plan is not None:
        record["plan"] = plan
    return record


def write_record(run_dir: Path, path: Path, *, long_tail_groups: int = 5, plan: dict[str, Any] | None = None
                 ) -> Path:
    """Write the record of ``run_dir`` to ``path`` (atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_json(path, run_record(run_dir, long_tail_groups=long_tail_groups, plan=plan))


def read_record(path: Path) -> dict[str, Any] | None:
    """A record file (any format version), or None when it is missing or not a run record."""
    if not path.is_file():
        return None
    record = read_json(path)
    return record if isinstance(record, dict) and record.get("format") == RECORD_FORMAT else None


def write_records(run_dirs: list[Path], out_dir: Path) -> list[Path]:
    """Write ``out_dir/<run folder name>.json`` for each run; returns the files written. Two runs whose folders
    share a name would write one file, the first record lost: refused before anything is written."""
    names: dict[str, Path] = {}
    for run_dir in run_dirs:
        other = names.setdefault(run_dir.name, run_dir)
        if other is not run_dir:
            raise UnisrecError(f"{other} and {run_dir} would both be recorded as {out_dir / (run_dir.name + '.json')}; "
                               "record them into different --out-dir folders (or rename one run folder)")
    return [write_record(run_dir, out_dir / f"{run_dir.name}.json") for run_dir in run_dirs]
