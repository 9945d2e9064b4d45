"""Data-poor and cold-item training sets, learning-rate schedules and encoder learning rates."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import prepare_synthetic

from unisrec.config import ConfigError, RunConfig, TrainConfig
from unisrec.datasets.processed import load_processed
from unisrec.errors import UnisrecError
from unisrec.evaluate import cold_metrics
from unisrec.finetune import finetune
from unisrec.metrics import ranking_metrics
from unisrec.model import UniSRec
from unisrec.train import Task, fit, lr_factor, param_groups, schedule_steps, set_trainable
from unisrec.training_data import cold_items, train_lengths, training_sequences, training_users

SMALL = [
    "model.hidden_size=16", "model.inner_size=16", "model.max_seq_len=6", "model.n_experts=2",
    "train.batch_size=64", "train.lr=0.01", "train.progress=false", "train.epochs=1",
]


def test_user_fraction_keeps_a_seeded_subset_and_every_user_is_still_evaluated(tmp_path: Path) -> None:
    data = load_processed(prepare_synthetic(tmp_path / "d", n_users=200, n_items=30))
    config = TrainConfig(user_fraction=0.1, seed=5)
    seqs = training_sequences(data, config)
    full = train_lengths(data)
    trained = seqs.lengths > 0
    assert trained.sum() == 20  # 10% of 200 users
    np.testing.assert_array_equal(seqs.lengths[trained], full[trained])  # whole sequences of the chosen users
    np.testing.assert_array_equal(seqs.items, data.items)  # rows untouched, only lengths thinned
    again = training_sequences(data, TrainConfig(user_fraction=0.1, seed=5))
    np.testing.assert_array_equal(again.lengths, seqs.lengths)  # seeded
    other = training_sequences(data, TrainConfig(user_fraction=0.1, seed=6))
    assert not np.array_equal(other.lengths > 0, trained)
    assert training_users(7, 0.01, 0).sum() == 1  # never empty


def test_train_lengths_need_every_users_training_rows_first(tmp_path: Path) -> None:
    from dataclasses import replace

    from unisrec.datasets.processed import TEST, TRAIN, VALID

    data = load_processed(prepare_synthetic(tmp_path / "d", n_users=5, n_items=30))
    lengths = train_lengths(data)
    np.testing.assert_array_equal(lengths, np.diff(data.offsets) - 2)  # leave-one-out: all but the last two
    split = data.split.copy()
    first = int(data.offsets[1])  # user 1's rows: T V T ... (the reference's order is T ... T V S)
    split[first + 1], split[first + 2] = VALID, TRAIN
    with pytest.raises(UnisrecError, match=f"user {data.user_ids[1]} has training interactions after valid/test"):
        train_lengths(replace(data, split=split))
    split = data.split.copy()
    split[data.offsets[1] - 1] = TRAIN  # user 0's test row trains: its valid row is then before a training row
    with pytest.raises(UnisrecError, match=f"user {data.user_ids[0]} has training"):
        train_lengths(replace(data, split=split))
    # a last user without rows (no interaction left) has length 0
    empty = replace(data, user_ids=np.append(data.user_ids, "nobody"), offsets=np.append(data.offsets,
                                                                                         data.offsets[-1]))
    np.testing.assert_array_equal(train_lengths(empty), [*lengths, 0])
    assert (data.split[data.offsets[1:] - 1] == TEST).all()


def test_cold_items_leave_training_entirely_and_order_is_kept(tmp_path: Path) -> None:
    data = load_processed(prepare_synthetic(tmp_path / "d", n_users=60, n_items=30))
    seqs = training_sequences(data, TrainConfig(cold_items=0.2, seed=3))
    assert seqs.cold.sum() == 6
    assert not seqs.cold[seqs.items].any()  # no cold item as input or target
    full = train_lengths(data)
    for user in range(data.n_users):
        mine = data.items[data.offsets[user] : data.offsets[user] + full[user]]
        expected = mine[~seqs.cold[mine]]  # the warm training items, in their order
        got = seqs.items[seqs.starts[user] : seqs.starts[user] + seqs.lengths[user]]
        np.testing.assert_array_equal(got, expected)
    assert seqs.lengths.sum() == len(seqs.items)
    np.testing.assert_array_equal(cold_items(30, 0.2, 3), seqs.cold)
    assert not cold_items(30, 0.0, 3).any()


def test_cold_metrics_cover_only_cold_targets() -> None:
    ranks = np.array([0, 5, 20, 1])
    targets = np.array([3, 4, 3, 7])
    cold = np.zeros(10, dtype=bool)
    cold[3] = True
    out = cold_metrics(ranks, targets, cold, (10,))
    expected = ranking_metrics(np.array([0, 20]), (10,))
    assert out["cold_recall@10"] == expected["recall@10"] == 0.5
    assert out["cold_ndcg@10"] == pytest.approx(expected["ndcg@10"]) and out["cold_cases"] == 2
    # no cold target: a count of 0 and no averages (not a recall of 0.0 that reads as a model's failure)
    assert cold_metrics(ranks, targets, np.zeros(10, dtype=bool), (10,)) == {"cold_cases": 0.0}


def test_finetune_reports_cold_metrics_and_trains_without_cold_items(tmp_path: Path, tiny_lm_dir: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    data = prepare_synthetic(tmp_path / "d", n_users=60, n_items=30)
    text = [f"text.model={tiny_lm_dir}", "text.pooling=mean"]
    metrics = finetune(data, "inductive", tmp_path / "run", overrides=[*SMALL, *text, "train.cold_items=0.3"])
    test = metrics["test"]
    assert test is not None  # eval.test is true by default
    dataset = load_processed(data)
    cold = cold_items(dataset.n_items, 0.3, TrainConfig().seed)
    ranks = np.load(tmp_path / "run" / "ranks_test.npy")
    assert test["cold_cases"] == cold[dataset.items[dataset.target_rows("test")]].sum() > 0
    assert test == {**test, **cold_metrics(ranks, dataset.items[dataset.target_rows("test")], cold, (10, 20, 50))}
    plain = finetune(data, "inductive", tmp_path / "plain", overrides=[*SMALL, *text])
    assert plain["test"] is not None and "cold_cases" not in plain["test"]
    assert "cold_* metrics measure chance" not in capsys.readouterr().err
    for mode in ("bert4rec", "sasrec"):  # every model kind reports them (bert4rec trains by its own task)
        other = finetune(data, mode, tmp_path / mode, overrides=[*SMALL, *text, "train.cold_items=0.3"])
        assert other["test"] is not None and other["test"]["cold_cases"] == test["cold_cases"]
        # ... and an ID-only model is said to rank its never-trained cold rows at chance
        assert (f"train.cold_items: --mode {mode} scores items by their ID alone, and the {int(cold.sum())} cold "
                "items' rows are never trained") in capsys.readouterr().err


def test_withheld_items_steer_neither_the_text_centre_nor_the_model_selection(tmp_path: Path,
                                                                             tiny_lm_dir: Path) -> None:
    """With model.center_text the centre was the mean of every item's text, cold ones included, so their texts
    changed training; and validation, which picks the epoch and the mixture, counted the cases of cold targets.
    Both now see the warm items only; test still counts every case."""
    from unisrec.checkpoint import from_pretrained
    from unisrec.evaluate import evaluate, rank_split
    from unisrec.text_cache import load_text

    data = prepare_synthetic(tmp_path / "d", n_users=60, n_items=30)
    text = [f"text.model={tiny_lm_dir}", "text.pooling=mean"]
    overrides = [*SMALL, *text, "train.cold_items=0.3", "model.center_text=true", "train.epochs=3"]
    metrics = finetune(data, "inductive", tmp_path / "run", overrides=overrides)
    dataset = load_processed(data)
    cold = cold_items(dataset.n_items, 0.3, TrainConfig().seed)
    model, _ = from_pretrained(tmp_path / "run")
    matrix = load_text(dataset, RunConfig().with_overrides(text).text).matrix  # (N, D)
    center = model.text_center
    assert isinstance(center, torch.Tensor)
    np.testing.assert_allclose(center.numpy(), matrix[~cold].mean(0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(center.numpy(), matrix.mean(0), atol=1e-4)
    valid_targets = dataset.items[dataset.target_rows("valid")]
    assert cold[valid_targets].any() and not cold[valid_targets].all()
    ranks = rank_split(model, dataset, "valid", RunConfig().eval)  # (T,) every validation case
    warm = ranking_metrics(ranks[~cold[valid_targets]], RunConfig().eval.ks)
    assert metrics["valid"] == pytest.approx(warm) and evaluate(model, dataset, "valid", withheld=cold) == warm
    assert warm != ranking_metrics(ranks, RunConfig().eval.ks)
    epochs = [json.loads(line) for line in (tmp_path / "run" / "train.log").read_text().splitlines()
              if line.startswith("{")]
    best = max(epochs, key=lambda e: e["valid"]["ndcg@10"])  # the epoch chosen, on the warm cases
    assert metrics["best_epoch"] == best["epoch"] and best["valid"] == pytest.approx(warm)
    assert metrics["test"] is not None and metrics["test"]["cold_cases"] == cold[
        dataset.items[dataset.target_rows("test")]].sum()


@pytest.mark.parametrize("mode", ["inductive", "bert4rec"])
def test_cold_items_are_no_candidate_of_the_training_softmax(tmp_path: Path, tiny_lm_dir: Path, mode: str) -> None:
    from unisrec.baselines import build_model
    from unisrec.cloze import ClozeTask
    from unisrec.finetune import FinetuneTask, resolve_config
    from unisrec.text_cache import load_text

    data = load_processed(prepare_synthetic(tmp_path / "d", n_users=60, n_items=30))
    overrides = [*SMALL, f"text.model={tiny_lm_dir}", "text.pooling=mean", "train.cold_items=0.3"]
    config = resolve_config(RunConfig().with_overrides(overrides), mode, None, overrides)
    text = torch.from_numpy(load_text(data, config.text).matrix)
    torch.manual_seed(0)
    model = build_model(config.model, data.n_items, text).eval()
    task: Any = (ClozeTask if mode == "bert4rec" else FinetuneTask)(model, data, config, torch.device("cpu"))
    cold = cold_items(data.n_items, 0.3, config.train.seed)
    assert task.withheld is not None and task.withheld.tolist() == np.flatnonzero(cold).tolist()
    batch: Any = next(iter(task.batches(0)))
    with torch.no_grad():
        loss = float(task.loss(batch)["loss"])
        task.withheld = None  # the same batch with the cold items among the candidates
        with_cold = float(task.loss(batch)["loss"])
    assert loss < with_cold  # fewer candidates: a lower softmax loss; equal only if the cold logits were -inf already
    # and the loss is exactly the cross-entropy over the warm items alone
    batch = batch.to(torch.device("cpu"))
    inputs = batch.tokens if mode == "bert4rec" else batch.inputs
    with torch.no_grad():
        hidden, table = model(inputs)
        logits = model.logits(hidden[batch.mask], table)[:, ~torch.from_numpy(cold)]  # (T, warm)
        warm = torch.cumsum(torch.from_numpy(~cold), 0) - 1  # item id -> column among the warm items
        expected = torch.nn.functional.cross_entropy(logits, warm[batch.targets])
    assert loss == pytest.approx(float(expected), rel=1e-5)


def test_config_rejects_bad_fractions() -> None:
    for bad in ("train.user_fraction=0", "train.user_fraction=1.5", "train.cold_items=1", "train.cold_items=-0.1",
                "train.encoder_lr_scale=-1", "train.warmup_steps=-2", "train.schedule=linear"):
        with pytest.raises(ConfigError, match=bad.split("=")[0]):
            RunConfig().with_overrides([bad])


def test_lr_schedule_warms_up_then_decays_to_zero() -> None:
    config = TrainConfig(warmup_steps=10, schedule="cosine")
    factors = [lr_factor(s, 110, config) for s in range(110)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0) and factors[60] == pytest.approx(0.5)
    assert factors[109] == pytest.approx(0.5 * (1 + math.cos(math.pi * 99 / 100)))
    assert all(a >= b for a, b in itertools.pairwise(factors[10:]))
    assert lr_factor(500, 110, TrainConfig()) == 1.0  # constant, no warm-up: the paper's setting


@pytest.mark.parametrize("lengths", [(6, 7, 8), (8, 7, 6)])
def test_cosine_schedule_ends_on_the_last_step_when_epochs_differ_in_length(lengths: tuple[int, ...]) -> None:
    """Epochs of bucketed batches differ by a batch or so: the cosine falls over the steps the run really takes
    (it took epoch 0's count times the epochs, so it stopped short of 0 or sat at 0 for the last steps)."""
    model = torch.nn.Linear(1, 1)
    seen: list[float] = []  # the learning rate of every step, read from the optimiser through the loss's grad hook

    def batches(epoch: int) -> Iterator[int]:
        return iter(range(lengths[epoch]))

    def loss(_: int) -> dict[str, torch.Tensor]:
        return {"loss": model(torch.ones(1, 1)).sum()}

    config = TrainConfig(epochs=len(lengths), schedule="cosine", warmup_steps=2, lr=1.0, progress=False, log="jsonl")
    task = Task(batches, lengths[0], loss, epoch_steps=lambda epoch: lengths[epoch])
    assert schedule_steps(task, config) == sum(lengths)
    assert schedule_steps(Task(batches, lengths[0], loss), config) == 3 * lengths[0]  # no lengths told: as before
    assert schedule_steps(task, TrainConfig(epochs=3)) == 3 * lengths[0]  # constant: the total is not read
    original = torch.optim.Adam.step

    def step(self: torch.optim.Adam, *args: Any, **kwargs: Any) -> Any:
        seen.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.optim.Adam, "step", step)
        fit(model, task, config, None, device=torch.device("cpu"))
    total = sum(lengths)
    assert len(seen) == total
    assert seen == pytest.approx([lr_factor(s, total, config) for s in range(total)])
    last = 0.5 * (1 + math.cos(math.pi * (total - 3) / (total - 2)))  # step total - 1, after 2 warm-up steps
    assert 0 < seen[-1] < seen[-2] and seen[-1] == pytest.approx(last)


def test_progress_lines_count_each_epochs_own_steps(capsys: pytest.CaptureFixture[str]) -> None:
    """The progress line of an epoch longer than the first said "step 4/3", "step 5/3", with a negative ETA."""
    model = torch.nn.Linear(1, 1)
    lengths = (3, 5)

    def batches(epoch: int) -> Iterator[int]:
        return iter(range(lengths[epoch]))

    def loss(_: int) -> dict[str, torch.Tensor]:
        return {"loss": model(torch.ones(1, 1)).sum()}

    task = Task(batches, lengths[0], loss, epoch_steps=lambda epoch: lengths[epoch])
    fit(model, task, TrainConfig(epochs=2, progress=True, log="jsonl"), None, device=torch.device("cpu"))
    lines = [line.split(" steps/s")[0] for line in capsys.readouterr().err.splitlines() if "steps/s" in line]
    assert [line.rsplit(" ", 1)[0] for line in lines] == ["epoch 1 step 3/3", "epoch 2 step 5/5"]


def test_encoder_learning_rate_is_scaled(tmp_path: Path) -> None:
    config = RunConfig().with_overrides(["model.hidden_size=16", "model.inner_size=16", "model.n_experts=2"])
    model = UniSRec(config.model, 5, torch.randn(5, 8))
    groups = param_groups(model, TrainConfig(lr=0.01, encoder_lr_scale=0.1))
    encoder_ids = {id(p) for n, p in model.named_parameters() if n.startswith("encoder.")}
    assert [g["base_lr"] for g in groups] == [0.01, pytest.approx(0.001)]
    assert {id(p) for p in groups[1]["params"]} == encoder_ids
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(model.parameters()))
    for name, param in model.named_parameters():
        param.requires_grad = not name.startswith("encoder.")
    assert len(param_groups(model, TrainConfig())) == 1  # a frozen encoder leaves no empty group


def test_adaptor_learning_rate_is_scaled_and_zero_freezes_it() -> None:
    config = RunConfig().with_overrides(["model.hidden_size=16", "model.inner_size=16", "model.n_experts=2"])
    model = UniSRec(config.model, 5, torch.randn(5, 8))
    adaptor_ids = {id(p) for n, p in model.named_parameters() if n.startswith("adaptor.")}
    groups = param_groups(model, TrainConfig(lr=0.01, adaptor_lr_scale=0.5))
    assert [g["base_lr"] for g in groups] == [0.01, 0.01, pytest.approx(0.005)]
    assert {id(p) for p in groups[2]["params"]} == adaptor_ids
    frozen_adaptor = TrainConfig(lr=0.01, adaptor_lr_scale=0.0)
    set_trainable(model, frozen_adaptor)
    groups = param_groups(model, frozen_adaptor)
    assert len(groups) == 2 and not any(id(p) in adaptor_ids for g in groups for p in g["params"])
    assert all(not p.requires_grad for n, p in model.named_parameters() if n.startswith("adaptor."))
    assert all(p.requires_grad for n, p in model.named_parameters() if not n.startswith("adaptor."))
    set_trainable(model, TrainConfig(encoder_lr_scale=0.0))  # a zero scale freezes the encoder the same way
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == {
        n for n, _ in model.named_parameters() if n.startswith("encoder.")}
    with pytest.raises(ConfigError, match=r"train\.adaptor_lr_scale must be a number >= 0"):
        TrainConfig(adaptor_lr_scale=-0.1)


def test_training_curves_are_written_as_tensorboard_events(tmp_path: Path, tiny_lm_dir: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = prepare_synthetic(tmp_path / "d", n_users=40, n_items=20)
    text = [f"text.model={tiny_lm_dir}", "text.pooling=mean"]
    finetune(data, "inductive", tmp_path / "run", overrides=[*SMALL, *text, "train.epochs=2"])
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "valid/ndcg@10", "valid/recall@50"} <= tags
    valid = [e.value for e in events.Scalars("valid/ndcg@10")]
    lines = (tmp_path / "run" / "train.log").read_text().splitlines()
    logged = [json.loads(line)["valid"]["ndcg@10"] for line in lines]
    assert valid == pytest.approx(logged)  # the same numbers as train.log, one per epoch
    finetune(data, "inductive", tmp_path / "plain", overrides=[*SMALL, *text, "train.log=jsonl"])
    assert not (tmp_path / "plain" / "tensorboard").exists() and (tmp_path / "plain" / "train.log").exists()


def test_a_resumed_run_logs_each_step_and_epoch_once_in_its_curves(tmp_path: Path) -> None:
    """Steps a kill made the run train again were logged twice in the event files (train.log was trimmed)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from unisrec.train import CurveWriter

    first = CurveWriter(tmp_path, "tensorboard", enabled=True, every=1)
    for step in range(1, 9):  # epoch 1 is steps 1-4; killed at step 8, its last checkpoint at step 6
        first.step(step, loss=10.0 - step, lr=1e-3)
        if step == 4:
            first.epoch({"epoch": 1, "lr": 1e-3, "train_loss": 7.0, "valid": {"ndcg@10": 0.1}})
    first.close()
    resumed = CurveWriter(tmp_path, "tensorboard", enabled=True, every=1, resume_step=6)
    for step in range(7, 9):
        resumed.step(step, loss=100.0 + step, lr=1e-3)
    resumed.epoch({"epoch": 2, "lr": 1e-3, "train_loss": 5.0, "valid": {"ndcg@10": 0.2}})
    resumed.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    steps = [(e.step, e.value) for e in events.Scalars("step/loss")]
    assert steps == [(1, 9.0), (2, 8.0), (3, 7.0), (4, 6.0), (5, 5.0), (6, 4.0), (7, 107.0), (8, 108.0)]
    assert [(e.step, round(e.value, 3)) for e in events.Scalars("valid/ndcg@10")] == [(1, 0.1), (2, 0.2)]


def test_a_validation_of_cold_targets_only_is_refused_before_training(tmp_path: Path, tiny_lm_dir: Path) -> None:
    """Validation leaves out the cases of cold targets: with every validation target cold nothing was left, and
    the run trained an epoch, then stopped on a bare ValueError."""
    from unisrec.datasets.processed import TEST, TRAIN, VALID, ProcessedDataset, write_processed

    base = load_processed(prepare_synthetic(tmp_path / "d", n_users=40, n_items=30))
    cold = cold_items(base.n_items, 0.2, TrainConfig().seed)
    target = int(np.flatnonzero(cold)[0])  # every user's validation item is this cold item
    warm = np.flatnonzero(~cold)
    items, split = [], []
    for user in range(base.n_users):
        history = [int(warm[(user + k) % len(warm)]) for k in range(4)]
        items += [*history, target, int(warm[(user + 5) % len(warm)])]
        split += [TRAIN] * 4 + [VALID, TEST]
    dataset = ProcessedDataset(
        name="cold-valid", user_ids=base.user_ids, item_ids=base.item_ids, item_texts=base.item_texts,
        offsets=np.arange(0, 6 * base.n_users + 1, 6, dtype=np.int64), items=np.array(items, dtype=np.int64),
        timestamps=np.arange(len(items), dtype=np.int64), split=np.array(split, dtype=np.int8))
    folder = write_processed(dataset, tmp_path / "cold-valid")
    text = [f"text.model={tiny_lm_dir}", "text.pooling=mean"]
    with pytest.raises(UnisrecError, match=r"^train.cold_items: every validation target is a withheld \(cold\) item"):
        finetune(folder, "inductive", tmp_path / "run", overrides=[*SMALL, *text, "train.cold_items=0.2"])
    assert not (tmp_path / "run").exists()  # refused before the run folder is written
