"""Score the test split of a fine-tuning run that ended on validation only (``eval.test=false``), once.

Settings are chosen on validation; runs made to choose them skip the test split (``--eval.test=false``), and the
run that was chosen gets its test metrics afterwards: ``unisrec evaluate RUN DATA --split test --save`` (or
``score_test``) ranks the test targets with the run's saved weights and its own evaluation settings (cut-offs,
``exclude_seen``, the cold items of ``train.cold_items``), then writes them into the run folder as the run
would have: ``metrics.json`` (atomically), ``ranks_test.npy``, its card, and the pre-trained model's card. A run
whose test split is already scored is refused, so that the test figure of a run is read once.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

from unisrec.analysis import save_ranks
from unisrec.atomic import atomic_write_json
from unisrec.checkpoint import from_pretrained
from unisrec.config import RunConfig, from_plain, with_later_absent
from unisrec.datasets import load_processed
from unisrec.devices import resolve_device
from unisrec.errors import UnisrecError
from unisrec.evaluate import check_run_items, final_evaluation
from unisrec.json_io import read_json
from unisrec.locking import hold_folder, releases_its_locks
from unisrec.model_card import record_transfer, write_finetune_card
from unisrec.training_data import cold_items


@releases_its_locks
def score_test(run_dir: str | Path, data_dir: str | Path, *, device: str = "auto") -> dict[str, float]:
    """Test metrics of the finished fine-tuning ``run_dir`` (made with ``eval.test=false``) on ``data_dir``, its
    own dataset; writes them into the run folder and returns them."""
    run_dir = Path(run_dir)
    if not (run_dir / "metrics.json").exists():
        raise UnisrecError(f"{run_dir / 'metrics.json'}: missing; not a finished fine-tuning run")
    hold_folder(run_dir)  # one writer: a second --save of the same run is refused while this one runs
    metrics = read_json(run_dir / "metrics.json", "not a finished fine-tuning run")
    settings = read_json(run_dir / "run.json", "not a fine-tuning run folder")
    if not isinstance(metrics, dict) or not isinstance(settings, dict):
        raise UnisrecError(f"{run_dir}: metrics.json and run.json must hold JSON objects")
    if settings.get("command") != "finetune":
        raise UnisrecError(f"{run_dir}: a {settings.get('command')} run; --save scores fine-tuning runs")
    if metrics.get("test") is not None:
        raise UnisrecError(f"{run_dir}: its test split is already scored (metrics.json); a run's test is read once")
    config: RunConfig = from_plain(RunConfig, with_later_absent(settings["config"]), f"{run_dir / 'run.json'}")
    dataset = load_processed(data_dir)
    check_run_items(run_dir, dataset, data_dir)
    _check_same_dataset(run_dir, settings, metrics, Path(data_dir), dataset.name)
    torch_device = resolve_device(device)
    model, _saved = from_pretrained(run_dir, torch_device)
    train = config.train
    cold = cold_items(dataset.n_items, train.cold_items, train.seed)  # (N,) bool, as the fine-tuning withheld them
    eval_config = dataclasses.replace(config.eval, test=True)
    final = final_evaluation(model, dataset, eval_config, torch_device, cold=cold)
    assert final.test is not None and final.test_ranks is not None  # eval_config scores test
    save_ranks(run_dir, final.test_ranks)
    metrics = {**metrics, "test": final.test}
    atomic_write_json(run_dir / "metrics.json", metrics)
    write_finetune_card(run_dir, settings, metrics, str(metrics.get("command") or "(not recorded)"))
    if settings.get("init"):
        record_transfer(Path(settings["init"]), run_dir, metrics, train)
    print(f"{run_dir}: test scored once, written to metrics.json", file=sys.stderr)
    return final.test


def _check_same_dataset(run_dir: Path, settings: dict[str, object], metrics: dict[str, object], data_dir: Path,
                        name: str) -> None:
    """The test split scored must be that of the dataset the run trained on (a run's test is read once, so a
    wrong one could not be scored again): its folder, a copy of it (the same data files), or, where that folder
    is gone, a dataset of its name."""
    from unisrec.records import data_fingerprint

    trained = Path(str(settings.get("data")))
    if trained.resolve() == data_dir.resolve():
        return
    if trained.is_dir():
        if data_fingerprint(trained) != data_fingerprint(data_dir):
            raise UnisrecError(f"{data_dir}: not the dataset run {run_dir} trained on ({trained}: other data "
                               "files); give that dataset, whose test split is the run's")
        return
    if name != metrics.get("dataset"):
        raise UnisrecError(f"{data_dir}: dataset {name!r}, but run {run_dir} trained on {metrics.get('dataset')!r} "
                           f"({trained}, gone); give that dataset, whose test split is the run's")
