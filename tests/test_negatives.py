"""train.negatives: the sampled softmax of fine-tuning (each target against N items drawn at every step)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import prepare_synthetic

from unisrec.batches import TrainBatch
from unisrec.config import ConfigError, RunConfig
from unisrec.datasets import load_processed
from unisrec.errors import UnisrecError
from unisrec.finetune import FinetuneTask, finetune
from unisrec.model import MoEAdaptor, UniSRec
from unisrec.pretrain import pretrain_settings
from unisrec.text_cache import load_text

SMALL = ["model.hidden_size=16", "model.inner_size=16", "model.max_seq_len=6", "model.n_experts=2",
         "train.batch_size=64", "train.progress=false", "train.log=jsonl"]
STILL = ["model.hidden_dropout=0", "model.attn_dropout=0", "model.adaptor_dropout=0", "model.noisy_gating=false"]


def _task(data: Path, lm: Path, overrides: list[str]) -> tuple[UniSRec, FinetuneTask]:
    config = RunConfig().with_overrides([*SMALL, *STILL, f"text.model={lm}", "text.pooling=mean", *overrides])
    dataset = load_processed(data)
    vectors = torch.from_numpy(load_text(dataset, config.text).matrix)
    torch.manual_seed(0)
    model = UniSRec(config.model, dataset.n_items, vectors)
    return model, FinetuneTask(model, dataset, config, torch.device("cpu"))


def test_every_item_drawn_is_the_full_softmax(tmp_path: Path, tiny_lm_dir: Path) -> None:
    data = prepare_synthetic(tmp_path / "data")
    n_items = load_processed(data).n_items
    _, full = _task(data, tiny_lm_dir, [])
    _, sampled = _task(data, tiny_lm_dir, [f"train.negatives={n_items}"])
    drawn = next(iter(sampled.batches(0)))
    assert isinstance(drawn, TrainBatch) and drawn.negatives is not None
    assert drawn.negatives.tolist() == list(range(n_items))
    plain = next(iter(full.batches(0)))
    assert isinstance(plain, TrainBatch) and plain.negatives is None
    torch.testing.assert_close(drawn.inputs, plain.inputs)
    # each row: its target, then every other item (the draw of its own item left out): the full softmax
    sampled_loss, full_loss = sampled.loss(drawn)["loss"].detach(), full.loss(plain)["loss"].detach()
    assert float(sampled_loss) == pytest.approx(float(full_loss), abs=1e-5)


def test_a_sampled_step_by_hand(tmp_path: Path, tiny_lm_dir: Path) -> None:
    data = prepare_synthetic(tmp_path / "data", n_items=200)
    model, task = _task(data, tiny_lm_dir, ["train.negatives=60", "train.batch_size=16"])
    batch = next(iter(task.batches(0)))
    assert isinstance(batch, TrainBatch) and batch.negatives is not None
    used = torch.unique(torch.cat([batch.inputs.flatten(), batch.targets, batch.negatives]))
    assert len(used) < 200 and int(used.max()) >= len(used)  # a subset: its table rows are not the item ids
    drawn = batch.negatives
    targets = batch.targets
    assert len(drawn) == 60 and bool((drawn[1:] > drawn[:-1]).all())  # distinct items
    hidden, table = model(batch.inputs)  # (B, L, H), (N, H): the whole catalogue
    scores = model.logits(hidden[batch.mask], table)  # (T, N)
    expected = []
    for row, target in enumerate(targets.tolist()):
        others = [int(i) for i in drawn.tolist() if i != target]
        candidates = scores[row, [target, *others]]
        expected.append(-torch.log_softmax(candidates, dim=0)[0])
    loss = task.loss(batch)["loss"].detach()
    assert float(loss) == pytest.approx(float(torch.stack(expected).detach().mean()), abs=1e-5)
    assert any(t in drawn.tolist() for t in targets.tolist())  # the case of a target drawn is covered


def test_draws_are_seeded_and_never_withheld_items(tmp_path: Path, tiny_lm_dir: Path) -> None:
    data = prepare_synthetic(tmp_path / "data")
    _, task = _task(data, tiny_lm_dir, ["train.negatives=6", "train.cold_items=0.3"])
    _, again = _task(data, tiny_lm_dir, ["train.negatives=6", "train.cold_items=0.3"])
    assert task.withheld is not None
    withheld = set(task.withheld.tolist())
    epochs = [[b.negatives.tolist() for b in task.batches(e) if isinstance(b, TrainBatch) and b.negatives is not None]
              for e in (0, 1)]
    assert all(len(d) == 6 and not withheld & set(d) for draws in epochs for d in draws)
    assert epochs[0] == [b.negatives.tolist() for b in again.batches(0)  # type: ignore[union-attr]
                         if isinstance(b, TrainBatch)]  # a resumed or second process draws the same
    assert epochs[0] != epochs[1]  # a new draw every epoch and step
    assert len({tuple(d) for d in epochs[0]}) == len(epochs[0])


def test_a_sampled_run_adapts_only_the_steps_items_and_is_evaluated_on_all(
        tmp_path: Path, tiny_lm_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = prepare_synthetic(tmp_path / "data", n_items=80)
    n_items = load_processed(data).n_items
    rows: list[tuple[bool, int]] = []
    forward = MoEAdaptor.forward

    def counting(self: MoEAdaptor, x: torch.Tensor) -> torch.Tensor:
        rows.append((self.training, int(x.shape[0])))
        return forward(self, x)

    monkeypatch.setattr(MoEAdaptor, "forward", counting)
    out = tmp_path / "run"
    metrics = finetune(data, "inductive", out, overrides=[
        *SMALL, f"text.model={tiny_lm_dir}", "text.pooling=mean", "train.negatives=4", "train.epochs=2",
        "model.max_seq_len=3", "train.batch_size=8"])
    training = [n for was_training, n in rows if was_training]
    assert training and max(training) < n_items  # the step's items and draws, not the catalogue
    assert any(n == n_items for was_training, n in rows if not was_training)  # validation ranks every item
    assert metrics["test"] is not None and set(metrics["test"]) >= {"ndcg@10", "recall@10"}
    saved = json.loads((out / "run.json").read_text())
    assert saved["config"]["train"]["negatives"] == 4


def test_what_sampling_is_refused_with(tmp_path: Path, tiny_lm_dir: Path) -> None:
    data = prepare_synthetic(tmp_path / "data")
    n_items = load_processed(data).n_items
    with pytest.raises(UnisrecError, match=rf"train.negatives={n_items + 1}: .* has {n_items} items to draw from"):
        _task(data, tiny_lm_dir, [f"train.negatives={n_items + 1}"])
    withheld = ["train.cold_items=0.5", f"train.negatives={n_items - 1}", f"text.model={tiny_lm_dir}"]
    with pytest.raises(UnisrecError, match=rf"has {n_items - n_items // 2} items to draw from"):
        finetune(data, "inductive", tmp_path / "too-many", overrides=[*SMALL, *withheld])
    assert not (tmp_path / "too-many").exists()  # refused before the run folder: a retry may change anything
    with pytest.raises(ConfigError, match=r"model\.repeat_bias needs every item of the history"):
        RunConfig().with_overrides(["train.negatives=8", "model.repeat_bias=true"])
    with pytest.raises(ConfigError, match=r"train\.negatives must be >= 0"):
        RunConfig().with_overrides(["train.negatives=-1"])
    with pytest.raises(UnisrecError, match=r"train\.negatives=8 is a fine-tuning setting"):
        pretrain_settings([data], RunConfig(), ["train.negatives=8"])
    with pytest.raises(UnisrecError, match="--mode bert4rec trains its cloze task over every item"):
        finetune(data, "bert4rec", tmp_path / "cloze", overrides=[*SMALL, "train.negatives=4", "train.epochs=1"])
    assert not (tmp_path / "cloze").exists()
    assert RunConfig().train.negatives == 0  # the paper's full softmax by default


def test_batch_negatives_with_every_item_drawn_is_the_full_softmax(tmp_path: Path, tiny_lm_dir: Path) -> None:
    data = prepare_synthetic(tmp_path / "data")
    n_items = load_processed(data).n_items
    _, full = _task(data, tiny_lm_dir, [])
    _, mixed = _task(data, tiny_lm_dir, [f"train.negatives={n_items}", "train.batch_negatives=true"])
    assert mixed.log_inclusion is not None
    assert float(mixed.log_inclusion.abs().max()) == 0.0  # every item is a candidate of every step: no correction
    for drawn, plain in zip(mixed.batches(0), full.batches(0), strict=True):
        assert isinstance(drawn, TrainBatch) and isinstance(plain, TrainBatch)
        loss, expected = mixed.loss(drawn)["loss"].detach(), full.loss(plain)["loss"].detach()
        assert float(loss) == pytest.approx(float(expected), abs=1e-5)


def test_a_batch_negatives_step_by_hand(tmp_path: Path, tiny_lm_dir: Path) -> None:
    """The step's items join the uniform draws, and every negative's logit (not the target's) is less log P(a
    step's candidates hold the item):
    computed here from the batches of a plain sampled run (the same seed, so the same steps) and the catalogue."""
    data = prepare_synthetic(tmp_path / "data", n_items=200)
    settings = ["train.negatives=30", "train.batch_size=16", "train.seed=3"]
    model, task = _task(data, tiny_lm_dir, [*settings, "train.batch_negatives=true"])
    _, plain = _task(data, tiny_lm_dir, settings)
    n_items = load_processed(data).n_items
    steps = [b for b in plain.batches(0) if isinstance(b, TrainBatch)]
    held = torch.zeros(n_items)
    for step in steps:
        held[torch.unique(torch.cat([step.inputs.flatten(), step.targets]))] += 1
    inclusion = 1 - (1 - 30 / n_items) * (1 - held / len(steps))  # (N,)
    assert bool((inclusion < 1).any()) and bool((inclusion > 30 / n_items + 1e-6).any())  # a correction that varies
    first, uniform = next(iter(task.batches(0))), steps[0]
    assert isinstance(first, TrainBatch) and first.negatives is not None and uniform.negatives is not None
    own = torch.unique(torch.cat([first.inputs.flatten(), first.targets]))
    assert first.negatives.tolist() == sorted(set(uniform.negatives.tolist()) | set(own.tolist()))
    assert len(first.negatives) < n_items  # a subset of the catalogue, not all of it
    hidden, table = model(first.inputs)  # (B, L, H), (N, H)
    scores = model.logits(hidden[first.mask], table)  # (T, N)
    corrected = scores - torch.log(inclusion)[None, :]  # (T, N): the negatives' logits
    expected = []
    for row, target in enumerate(first.targets.tolist()):
        others = [i for i in first.negatives.tolist() if i != target]
        logits = torch.cat([scores[row, [target]], corrected[row, others]])  # the target's own logit as it is
        expected.append(-torch.log_softmax(logits, dim=0)[0])
        target_corrected = torch.cat([corrected[row, [target]], corrected[row, others]])
        shift = torch.log_softmax(target_corrected, dim=0)[0] - torch.log_softmax(logits, dim=0)[0]
        assert abs(float(shift.detach())) > 1e-3  # correcting the target too would change this row's loss
    loss = task.loss(first)["loss"].detach()
    assert float(loss) == pytest.approx(float(torch.stack(expected).detach().mean()), abs=1e-5)
    uncorrected = plain.loss(replace(first, negatives=first.negatives))["loss"].detach()
    assert abs(float(uncorrected) - float(loss)) > 1e-3  # the correction changes the loss


def test_batch_negatives_needs_draws(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"train\.batch_negatives .* needs train\.negatives > 0"):
        RunConfig().with_overrides(["train.batch_negatives=true"])
    assert RunConfig().train.batch_negatives is False
