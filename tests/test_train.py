"""The training loop: learning happens, the best epoch is kept, interrupted runs resume exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from unisrec.batches import TrainBatch
from unisrec.config import RunConfig
from unisrec.datasets import load_processed
from unisrec.errors import UnisrecError
from unisrec.finetune import FinetuneTask, finetune
from unisrec.model import UniSRec
from unisrec.train import Task, TrainingError, TrainState, fit

SMALL = [
    "model.hidden_size=16", "model.inner_size=16", "model.max_seq_len=6", "model.n_experts=2",
    "model.hidden_dropout=0.1", "model.attn_dropout=0.1", "train.batch_size=64", "train.lr=0.01",
    "train.progress=false",
]


def _fit(dataset_dir: Path, run_dir: Path | None, max_steps: int = 0, checkpoint_every: int = 0,
         schedule: str = "constant") -> UniSRec:
    config = RunConfig().with_overrides([*SMALL, "model.item_repr=id", "train.epochs=3", f"train.schedule={schedule}"])
    dataset = load_processed(dataset_dir)
    torch.manual_seed(0)
    model = UniSRec(config.model, dataset.n_items)
    task = FinetuneTask(model, dataset, config, torch.device("cpu"))
    fit(model, Task(task.batches, task.steps, task.loss), config.train, run_dir, device=torch.device("cpu"),
        max_steps=max_steps, checkpoint_every=checkpoint_every)
    return model


def test_resume_after_interruption_gives_identical_weights(synthetic_dataset: Path, tmp_path: Path) -> None:
    reference = _fit(synthetic_dataset, None)
    run = tmp_path / "run"
    run.mkdir()
    partial = _fit(synthetic_dataset, run, max_steps=4, checkpoint_every=1)  # stops mid-epoch 1 or 2
    assert (run / "checkpoint" / "state.json").exists()
    assert not all(torch.equal(a, b) for a, b in zip(partial.state_dict().values(),
                                                       reference.state_dict().values(), strict=True))
    resumed = _fit(synthetic_dataset, run)  # a new process would start exactly like this
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    epochs = [json.loads(line)["epoch"] for line in (run / "train.log").read_text().splitlines()]
    assert epochs == [1, 2, 3]  # each epoch once: the interrupted one's partial record is gone


def test_a_decaying_schedule_ended_by_max_steps_is_not_continued_under_another_end(
        synthetic_dataset: Path, tmp_path: Path) -> None:
    """max_steps ends a cosine schedule (a pilot is a whole short run): its checkpoint continued without max_steps
    would jump back up the full run's schedule and match neither run (it did, silently); the same max_steps resumes."""
    run = tmp_path / "run"
    run.mkdir()
    short = _fit(synthetic_dataset, run, max_steps=4, checkpoint_every=1, schedule="cosine")
    with pytest.raises(UnisrecError, match=r"cosine schedule spans 4 steps \(max_steps sets its end\), not the "
                                           r"\d+ planned now"):
        _fit(synthetic_dataset, run, schedule="cosine")
    again = _fit(synthetic_dataset, run, max_steps=4, schedule="cosine")  # the same run: its checkpoint, as it was
    for (name, a), b in zip(short.state_dict().items(), again.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("whole_epochs", [0, 1])
def test_a_max_steps_run_rerun_after_its_last_checkpoint_keeps_its_partial_epoch(
    synthetic_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, whole_epochs: int
) -> None:
    """Killed after the checkpoint that ends a --max-steps run inside an epoch (before metrics.json): the same
    command again resumes there and ends at once; the partial epoch's record stays in train.log and the history.
    A resumed run that goes on past it (``fit`` with a later max_steps) logs that epoch whole, once, with the
    seconds of both parts."""
    import unisrec.train as train_module

    config = RunConfig().with_overrides([*SMALL, "model.item_repr=id", "train.epochs=3"])
    dataset = load_processed(synthetic_dataset)
    saved: list[tuple[int, bool]] = []  # (global step, the history ends with a partial record) of each checkpoint
    save = train_module._save_checkpoint

    def recording_save(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: TrainState,
                       *args: object) -> None:
        saved.append((state.global_step, bool(state.history and state.history[-1].get("partial"))))
        save(path, model, optimizer, state, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(train_module, "_save_checkpoint", recording_save)

    def run(run_dir: Path, max_steps: int) -> TrainState:
        torch.manual_seed(0)
        model = UniSRec(config.model, dataset.n_items)
        task = FinetuneTask(model, dataset, config, torch.device("cpu"))
        return fit(model, Task(task.batches, task.steps, task.loss), config.train, run_dir,
                   device=torch.device("cpu"), max_steps=max_steps, checkpoint_every=2)

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    steps = whole_epochs * len(FinetuneTask(UniSRec(config.model, dataset.n_items), dataset, config,
                                            torch.device("cpu"))._epoch_batches(0)) + 4
    first = run(run_dir, steps)
    assert first.history[-1].get("partial") and first.epoch == whole_epochs  # 4 steps into the next epoch
    # the last step's checkpoint is the partial one: a kill between two checkpoints at that step cannot leave a
    # checkpoint at max_steps without the partial record
    assert [partial for step, partial in saved if step == steps] == [True]
    log = (run_dir / "train.log").read_text()
    assert len(log.splitlines()) == whole_epochs + 1
    for torn in (log, "".join(log.splitlines(keepends=True)[:-1])):  # killed after the partial line, or before it
        (run_dir / "train.log").write_text(torn)
        again = run(run_dir, steps)
        assert again.history == first.history
        assert (run_dir / "train.log").read_text() == log
    longer = run(run_dir, 0)  # the same checkpoint, trained on to the end
    assert [r["epoch"] for r in longer.history] == [1, 2, 3] and not any(r.get("partial") for r in longer.history)
    assert [json.loads(line) for line in (run_dir / "train.log").read_text().splitlines()] == longer.history
    interrupted = longer.history[whole_epochs]
    assert interrupted["seconds"] >= first.history[-1]["seconds"]  # both parts of the interrupted epoch
    assert sum(r["seconds"] for r in longer.history) == pytest.approx(longer.seconds, abs=0.002)


def test_max_steps_at_an_epochs_end_counts_the_whole_epoch(synthetic_dataset: Path) -> None:
    config = RunConfig().with_overrides([*SMALL, "model.item_repr=id", "train.epochs=3"])
    dataset = load_processed(synthetic_dataset)
    model = UniSRec(config.model, dataset.n_items)
    task = FinetuneTask(model, dataset, config, torch.device("cpu"))
    first = len(task._epoch_batches(0))
    for max_steps, epochs, partial in ((first, 1, False), (first + 1, 1, True), (first - 1, 0, True)):
        state = fit(model, Task(task.batches, task.steps, task.loss), config.train, None,
                    device=torch.device("cpu"), max_steps=max_steps)
        assert state.global_step == max_steps and state.epoch == epochs, max_steps
        assert [bool(r.get("partial")) for r in state.history] == [False] * epochs + [True] * partial, max_steps


def test_a_kill_between_a_checkpoints_renames_resumes_from_the_previous_one(
    synthetic_dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    reference_run = tmp_path / "reference"
    reference_run.mkdir()
    reference = _fit(synthetic_dataset, reference_run)
    run = tmp_path / "run"
    run.mkdir()
    _fit(synthetic_dataset, run, max_steps=4, checkpoint_every=1)
    (run / "checkpoint").rename(run / ".checkpoint.k1ll3d.old")  # renamed aside, the new one not yet in:
    (run / ".checkpoint.n3w.tmp").mkdir()  # what atomic_directory leaves when killed between its renames
    capsys.readouterr()
    resumed = _fit(synthetic_dataset, run)
    assert "resuming from epoch" in capsys.readouterr().err  # not from scratch
    for (name, a), b in zip(reference.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert [p.name for p in run.iterdir() if p.name.startswith(".")] == [] and (run / "checkpoint").is_dir()

    def records(folder: Path) -> list[dict[str, object]]:
        lines = (folder / "train.log").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]

    assert records(run) == records(reference_run)  # the interrupted epoch's steps and mean losses too


def test_select_start_keeps_the_starting_weights_when_no_epoch_beats_them(synthetic_dataset: Path) -> None:
    dataset = load_processed(synthetic_dataset)

    def run(select_start: bool, start_score: float) -> tuple[UniSRec, TrainState, list[str]]:
        config = RunConfig().with_overrides([*SMALL, "model.item_repr=id", "train.epochs=3", "train.patience=5",
                                             f"train.select_start={str(select_start).lower()}"])
        torch.manual_seed(0)
        model = UniSRec(config.model, dataset.n_items)
        task = FinetuneTask(model, dataset, config, torch.device("cpu"))
        scores = iter([start_score, 0.2, 0.3, 0.25] if select_start else [0.2, 0.3, 0.25])
        events: list[str] = []

        def validate() -> dict[str, float]:
            events.append("validate")
            return {"ndcg@10": next(scores)}

        def save_best() -> None:
            events.append("save")

        state = fit(model, Task(task.batches, task.steps, task.loss, validate=validate, save_best=save_best),
                    config.train, None, device=torch.device("cpu"))
        return model, state, events

    plain, plain_state, plain_events = run(False, 0.0)
    assert plain_state.best_epoch == 2 and plain_state.start_valid is None
    assert plain_events == ["validate", "save", "validate", "save", "validate"]
    kept, kept_state, kept_events = run(True, 0.5)  # the start beats every epoch: its weights are the ones saved
    assert kept_state.best_epoch == 0 and kept_state.start_valid == {"ndcg@10": 0.5}
    assert kept_events == ["validate", "save", "validate", "validate", "validate"]
    beaten, beaten_state, beaten_events = run(True, 0.1)  # an epoch beats the start: as without select_start
    assert beaten_state.best_epoch == 2
    assert beaten_events == ["validate", "save", "validate", "save", "validate", "save", "validate"]
    for (name, a), b, c in zip(plain.state_dict().items(), kept.state_dict().values(),
                               beaten.state_dict().values(), strict=True):  # validating first changes no step
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
        torch.testing.assert_close(a, c, rtol=0, atol=0, msg=name)


def test_non_finite_loss_stops_training(synthetic_dataset: Path) -> None:
    config = RunConfig().with_overrides([*SMALL, "model.item_repr=id"])
    dataset = load_processed(synthetic_dataset)
    model = UniSRec(config.model, dataset.n_items)
    task = FinetuneTask(model, dataset, config, torch.device("cpu"))

    def bad_loss(batch: TrainBatch) -> dict[str, torch.Tensor]:
        return {"loss": task.loss(batch)["loss"] * float("nan")}

    with pytest.raises(TrainingError, match="non-finite loss at epoch 1 step 1"):
        fit(model, Task(task.batches, task.steps, bad_loss), config.train, None, device=torch.device("cpu"))


def test_finetune_sasrec_learns_and_writes_the_run(synthetic_dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "sasrec"
    metrics = finetune(synthetic_dataset, "sasrec", out, overrides=[*SMALL, "train.epochs=30", "train.patience=5"])
    assert metrics["test"] is not None and metrics["test"]["recall@10"] > 0.5  # chains are easy: random 10/30
    for name in ("run.json", "model.safetensors", "config.json", "metrics.json", "train.log", "items.parquet"):
        assert (out / name).exists(), name
    assert not (out / "checkpoint").exists()
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["best_epoch"] >= 1 and saved["seconds_per_epoch"] > 0 and saved["peak_memory_mb"] > 0
    log = [json.loads(line) for line in (out / "train.log").read_text().splitlines()]
    assert len(log) == saved["epochs"] and "train_loss" in log[0] and "valid" in log[0]
    best = max(log, key=lambda r: r["valid"]["ndcg@10"])
    assert best["epoch"] == saved["best_epoch"]
    assert saved["valid"]["ndcg@10"] == pytest.approx(best["valid"]["ndcg@10"], abs=1e-9)
    assert np.isclose(sum(saved["parameters"].values()) > 0, True)


def test_resume_trims_the_log_to_the_checkpoint(tmp_path: Path) -> None:
    from unisrec.train import trim_log

    log = tmp_path / "train.log"
    lines = [json.dumps({"epoch": 1, "steps": 3}), json.dumps({"epoch": 2, "steps": 3}),
             json.dumps({"epoch": 3, "steps": 1, "partial": True}), json.dumps({"epoch": 3, "steps": 3}), '{"epo']
    log.write_text("\n".join(lines))  # epoch 3 logged, then killed before its checkpoint; a torn last line
    trim_log(log, 2)
    assert [json.loads(line)["epoch"] for line in log.read_text().splitlines()] == [1, 2]


def test_a_run_killed_before_its_first_checkpoint_logs_each_epoch_once(synthetic_dataset: Path,
                                                                       tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "train.log").write_text(json.dumps({"epoch": 1, "steps": 2, "train_loss": 9.0}) + '\n{"epo')  # then killed
    _fit(synthetic_dataset, run)  # no checkpoint: from the start
    assert [json.loads(line)["epoch"] for line in (run / "train.log").read_text().splitlines()] == [1, 2, 3]


def test_a_damaged_checkpoint_is_a_one_line_error(synthetic_dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    _fit(synthetic_dataset, run, max_steps=2, checkpoint_every=1)
    weights = run / "checkpoint" / "state.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated
    with pytest.raises(UnisrecError, match=r"checkpoint: damaged checkpoint \(\w+: .+\); delete the checkpoint "
                                           r"folder or pass --overwrite$"):
        _fit(synthetic_dataset, run)
    (run / "checkpoint" / "state.json").write_text("[]")
    with pytest.raises(UnisrecError, match=r"damaged checkpoint \(state.json holds no object\)"):
        _fit(synthetic_dataset, run)


def test_damaged_weights_and_run_files_are_one_line_errors(synthetic_dataset: Path, tmp_path: Path, tiny_lm_dir: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """A truncated model.safetensors (of a run to evaluate, or of an --init) raised safetensors' own error with a
    traceback, and a run.json holding a list an AttributeError."""
    from unisrec.cli import main

    run = tmp_path / "run"
    argv = [str(synthetic_dataset), "--mode", "inductive", *[f"--{o}" for o in SMALL], "--train.epochs=1",
            "--text-model", str(tiny_lm_dir), "--pooling", "mean"]
    assert main(["finetune", *argv, "--out", str(run)]) == 0
    weights = run / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    for command in (["evaluate", str(run), str(synthetic_dataset)],
                    ["finetune", *argv, "--out", str(tmp_path / "from"), "--init", str(run)]):
        capsys.readouterr()
        assert main(command) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert f"{weights}: damaged weights file (" in err and err.strip().endswith("save or train the run again")
    listed = tmp_path / "listed"
    listed.mkdir()
    (listed / "run.json").write_text("[]")
    (listed / "train.log").write_text("")
    capsys.readouterr()
    assert main(["finetune", *argv, "--out", str(listed)]) == 2
    assert capsys.readouterr().err.strip() == (f"unisrec finetune: error: {listed / 'run.json'}: damaged (holds a JSON "
                                               "list, not an object); pass --overwrite to start the run again")


def test_a_run_given_as_a_link_is_replaced_where_it_points(synthetic_dataset: Path, tmp_path: Path) -> None:
    """--overwrite through a symbolic link put the new run in place of the link and left the link, renamed,
    dangling beside it, the old run untouched at its target."""
    target = tmp_path / "store" / "run"
    finetune(synthetic_dataset, "sasrec", target, overrides=[*SMALL, "train.epochs=1"])
    link = tmp_path / "run-link"
    link.symlink_to(target)
    finetune(synthetic_dataset, "sasrec", link, overrides=[*SMALL, "train.epochs=2"], overwrite=True)
    assert link.is_symlink() and json.loads((target / "metrics.json").read_text())["epochs"] == 2
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".run-link")]  # no renamed link beside it
    assert sorted(p.name for p in (tmp_path / "store").iterdir() if not p.name.endswith(".lock")) == ["run"]


def test_a_run_left_aside_by_a_kill_is_replaced_in_staging(synthetic_dataset: Path, tmp_path: Path) -> None:
    """Killed between finish_run_dir's renames (the old run aside, nothing at --out), then run again with
    --overwrite: the old run comes back, and the new one trains beside it, not into it."""
    out = tmp_path / "run"
    finetune(synthetic_dataset, "sasrec", out, overrides=[*SMALL, "train.epochs=2"])
    out.rename(tmp_path / ".run.replaced")
    metrics = finetune(synthetic_dataset, "sasrec", out, overrides=[*SMALL, "train.epochs=2", "train.seed=2"],
                       overwrite=True)
    assert json.loads((out / "run.json").read_text())["config"]["train"]["seed"] == 2 == metrics["seed"]
    assert json.loads((out / "metrics.json").read_text())["seed"] == 2
    assert [json.loads(line)["epoch"] for line in (out / "train.log").read_text().splitlines()] == [1, 2]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".run")) == [".run.lock"]


def test_a_kill_while_run_json_was_written_does_not_block_the_folder(tmp_path: Path) -> None:
    from unisrec.runs import open_run_dir

    out = tmp_path / "run"
    out.mkdir()
    (out / ".run.json.k1ll3d.tmp").write_text('{"fingerp')  # what atomic_write leaves when killed
    assert open_run_dir(out, {"config": {"a": 1}}, overwrite=False) == out
    assert sorted(p.name for p in out.iterdir()) == ["run.json"]


def test_overwrite_keeps_the_old_run_until_the_new_one_finishes(
    synthetic_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import unisrec.finetune as finetune_module

    out = tmp_path / "run"
    finetune(synthetic_dataset, "sasrec", out, overrides=[*SMALL, "train.epochs=2"])
    old_metrics, old_weights = (out / "metrics.json").read_bytes(), (out / "model.safetensors").read_bytes()
    real_evaluate, calls = finetune_module.evaluate, []

    def dies_at_second_validation(*args: object, **kwargs: object) -> dict[str, float]:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the replacement run is interrupted after its first epoch
        return real_evaluate(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(finetune_module, "evaluate", dies_at_second_validation)
    with pytest.raises(KeyboardInterrupt):
        finetune(synthetic_dataset, "sasrec", out, overrides=[*SMALL, "train.epochs=3", "train.seed=2"],
                 overwrite=True)
    assert (out / "metrics.json").read_bytes() == old_metrics  # the old run is whole and usable
    assert (out / "model.safetensors").read_bytes() == old_weights
    staging = tmp_path / ".run.overwrite"
    assert (staging / "checkpoint" / "state.json").exists()

    monkeypatch.setattr(finetune_module, "evaluate", real_evaluate)
    metrics = finetune(synthetic_dataset, "sasrec", out, overrides=[*SMALL, "train.epochs=3", "train.seed=2"],
                       overwrite=True)  # resumes the replacement from its checkpoint, then moves it in
    assert json.loads((out / "metrics.json").read_text())["seed"] == 2 == metrics["seed"]
    epochs = [json.loads(line)["epoch"] for line in (out / "train.log").read_text().splitlines()]
    assert epochs == [1, 2, 3]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".run")) == [".run.lock"]


def test_a_replacement_killed_after_its_metrics_is_moved_in_not_trained_again(
    synthetic_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--overwrite killed after the replacement wrote metrics.json in staging but before it was moved in: the
    same command again moves the finished replacement in and returns its metrics, without training it again."""
    import unisrec.finetune as finetune_module

    out = tmp_path / "run"
    finetune(synthetic_dataset, "sasrec", out, overrides=[*SMALL, "train.epochs=2"])
    old_metrics = (out / "metrics.json").read_bytes()
    replacement = [*SMALL, "train.epochs=2", "train.seed=2"]

    def killed(work: Path, final: Path) -> None:
        raise KeyboardInterrupt  # metrics.json, the card and the ranks are written in staging; not moved in

    monkeypatch.setattr(finetune_module, "finish_run_dir", killed)
    with pytest.raises(KeyboardInterrupt):
        finetune(synthetic_dataset, "sasrec", out, overrides=replacement, overwrite=True)
    staging = tmp_path / ".run.overwrite"
    staged = json.loads((staging / "metrics.json").read_text())
    assert (out / "metrics.json").read_bytes() == old_metrics

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("trained again")

    monkeypatch.undo()
    monkeypatch.setattr(finetune_module, "fit", no_training)
    metrics = finetune(synthetic_dataset, "sasrec", out, overrides=replacement, overwrite=True)
    assert metrics == staged and metrics["seed"] == 2
    assert json.loads((out / "metrics.json").read_text()) == staged
    assert json.loads((out / "run.json").read_text())["config"]["train"]["seed"] == 2
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".run")) == [".run.lock"]
    # other settings than the staged run's: it is not theirs; they train (into staging, replacing it)
    monkeypatch.undo()
    staging.mkdir()
    (staging / "metrics.json").write_text(json.dumps(staged))
    (staging / "run.json").write_text((out / "run.json").read_text())
    metrics = finetune(synthetic_dataset, "sasrec", out, overrides=[*SMALL, "train.epochs=1", "train.seed=3"],
                       overwrite=True)
    assert metrics["seed"] == 3 and metrics["epochs"] == 1
    assert json.loads((out / "metrics.json").read_text())["seed"] == 3
    assert not staging.exists()


def test_a_replacement_killed_between_the_renames_is_adopted_not_trained_again(
    synthetic_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed inside finish_run_dir (the old run renamed aside, the finished replacement not yet in), or while the
    old run aside was being deleted: the same --overwrite command moves the replacement in without training."""
    import unisrec.finetune as finetune_module
    from unisrec.runs import finish_run_dir

    out = tmp_path / "run"
    finetune(synthetic_dataset, "sasrec", out, overrides=[*SMALL, "train.epochs=1"])
    replacement = [*SMALL, "train.epochs=1", "train.seed=2"]

    def between_renames(work: Path, final: Path) -> None:
        final.rename(final.parent / f".{final.name}.replaced")
        raise KeyboardInterrupt

    def while_deleting(work: Path, final: Path) -> None:
        aside = final.parent / f".{final.name}.replaced"
        final.rename(aside)
        work.rename(final)
        (aside / "metrics.json").unlink()  # rmtree of the old run begun, then killed
        raise KeyboardInterrupt

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("trained again")

    for killed, seed in ((between_renames, 2), (while_deleting, 3)):
        overrides = [*replacement[:-1], f"train.seed={seed}"]
        monkeypatch.setattr(finetune_module, "finish_run_dir", killed)
        with pytest.raises(KeyboardInterrupt):
            finetune(synthetic_dataset, "sasrec", out, overrides=overrides, overwrite=True)
        monkeypatch.setattr(finetune_module, "finish_run_dir", finish_run_dir)
        monkeypatch.setattr(finetune_module, "fit", no_training)
        assert finetune(synthetic_dataset, "sasrec", out, overrides=overrides, overwrite=True)["seed"] == seed
        assert json.loads((out / "metrics.json").read_text())["seed"] == seed
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".run")) == [".run.lock"]
        monkeypatch.undo()


def test_adoption_never_replaces_a_folder_that_is_not_a_run(synthetic_dataset: Path, tmp_path: Path) -> None:
    from unisrec.finetune import finetune_settings
    from unisrec.runs import adopt_finished_replacement, staging_dir

    out = tmp_path / "run"
    finetune(synthetic_dataset, "sasrec", out, overrides=[*SMALL, "train.epochs=1"])
    staged = staging_dir(out)
    out.rename(staged)  # a finished run with these settings waits in staging ...
    out.mkdir()
    (out / "notes.txt").write_text("mine")  # ... and --out now holds something else
    _, settings = finetune_settings(synthetic_dataset, "sasrec", RunConfig(), [*SMALL, "train.epochs=1"], None)
    assert not adopt_finished_replacement(out, settings)
    assert (out / "notes.txt").read_text() == "mine" and (staged / "metrics.json").exists()
    with pytest.raises(UnisrecError, match="folder exists and is not a unisrec run; refusing to overwrite it"):
        finetune(synthetic_dataset, "sasrec", out, overrides=[*SMALL, "train.epochs=1"], overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"


def test_a_finetuning_begun_with_pretraining_settings_still_resumes(
    synthetic_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs started before fine-tuning refused pre-training settings recorded them (a --config file's pretrain
    section, a report's shared pretrain.* overrides): the same command now leaves them out, and the interrupted
    run still resumes from its checkpoint (its own fingerprint), not refused as a run of other settings."""
    import unisrec.finetune as finetune_module

    out = tmp_path / "run"
    before = RunConfig().with_overrides(["pretrain.lambda_ss=0.01"])  # as `--config` passed it then
    real_evaluate, calls = finetune_module.evaluate, []

    def dies_at_second_validation(*args: object, **kwargs: object) -> dict[str, float]:
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_evaluate(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(finetune_module, "evaluate", dies_at_second_validation)
    with pytest.raises(KeyboardInterrupt):
        finetune(synthetic_dataset, "sasrec", out, config=before, overrides=[*SMALL, "train.epochs=3"])
    started = json.loads((out / "run.json").read_text())
    assert started["config"]["pretrain"]["lambda_ss"] == 0.01
    monkeypatch.setattr(finetune_module, "evaluate", real_evaluate)
    metrics = finetune(synthetic_dataset, "sasrec", out, overrides=[*SMALL, "train.epochs=3"])
    assert metrics["epochs"] == 3
    assert [json.loads(line)["epoch"] for line in (out / "train.log").read_text().splitlines()] == [1, 2, 3]
    assert json.loads((out / "run.json").read_text()) == started  # resumed as the run it was
    with pytest.raises(UnisrecError, match="run already finished"):
        finetune(synthetic_dataset, "sasrec", out, overrides=[*SMALL, "train.epochs=3"])
    other = tmp_path / "other"  # a difference outside the pretrain section still counts
    with pytest.raises(KeyboardInterrupt):
        monkeypatch.setattr(finetune_module, "evaluate", dies_at_second_validation)
        calls.clear()
        finetune(synthetic_dataset, "sasrec", other, config=before, overrides=[*SMALL, "train.epochs=3"])
    monkeypatch.setattr(finetune_module, "evaluate", real_evaluate)
    with pytest.raises(UnisrecError, match="holds an unfinished run with different settings"):
        finetune(synthetic_dataset, "sasrec", other, overrides=[*SMALL, "train.epochs=4"])
