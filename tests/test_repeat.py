"""Repeat offsets (model.repeat_bias): the same logits in training, evaluation and serving, learned, not transferred."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import prepare_synthetic
from safetensors.torch import load_file

from unisrec.catalogue import Catalogue
from unisrec.checkpoint import from_pretrained, load_transferable, save_pretrained
from unisrec.config import ModelConfig, TrainConfig
from unisrec.errors import ConfigError, UnisrecError
from unisrec.evaluate import count_ranks
from unisrec.finetune import finetune
from unisrec.model import UniSRec, add_offsets, history_offsets
from unisrec.pretrain import pretrain
from unisrec.recommend import Recommender
from unisrec.train import param_groups


def dense(offsets: tuple[torch.Tensor, torch.Tensor, torch.Tensor], q: int, n: int) -> torch.Tensor:
    return add_offsets(torch.zeros(q, n), offsets)


def test_history_offsets_count_each_distinct_item_once_and_the_last_item_again() -> None:
    weight = torch.tensor([-2.0, -0.5], requires_grad=True)  # [w_last, w_hist]
    history = torch.tensor([[3, 5, 3, 7], [2, 9, 9, 9]])  # row 1 is padding after its first item
    offsets = history_offsets(weight, history, torch.tensor([4, 1]))
    expected = torch.zeros(2, 10)
    expected[0, [3, 5]] = -0.5
    expected[0, 7] = -2.5
    expected[1, 2] = -2.5
    torch.testing.assert_close(dense(offsets, 2, 10), expected)
    torch.testing.assert_close(add_offsets(torch.zeros(2, 4), offsets, lo=4), expected[:, 4:8])  # one chunk
    dense(offsets, 2, 10).sum().backward()
    assert weight.grad is not None
    assert weight.grad.tolist() == [2.0, 4.0]  # 2 last items, 4 distinct history items in all


@pytest.mark.parametrize("chunk", [3, 100])
def test_count_ranks_with_offsets_equals_a_dense_ranking(chunk: int) -> None:
    gen = torch.Generator().manual_seed(0)
    queries, table = torch.randn(6, 4, generator=gen), torch.randn(11, 4, generator=gen)
    history = torch.randint(0, 11, (6, 5), generator=gen)
    lengths = torch.tensor([5, 1, 3, 5, 2, 4])
    targets = history[torch.arange(6), lengths - 1].clone()
    targets[::2] = torch.tensor([0, 4, 10])  # some targets are the last item, some are not
    offsets = history_offsets(torch.tensor([3.0, -1.5]), history, lengths)
    scores = queries @ table.T + dense(offsets, 6, 11)
    expected = (scores >= scores[torch.arange(6), targets][:, None]).sum(1) - 1
    assert torch.equal(count_ranks(queries, table, targets, chunk, offsets=offsets), expected)
    plain = (queries @ table.T >= (queries @ table.T)[torch.arange(6), targets][:, None]).sum(1) - 1
    assert not torch.equal(expected, plain)  # the offsets change the ranking here


def test_recommendations_add_the_offsets_exactly_unless_seen_items_are_left_out() -> None:
    torch.manual_seed(0)
    model = UniSRec(ModelConfig(hidden_size=8, inner_size=8, n_experts=2, repeat_bias=True), 40, torch.randn(40, 6))
    ids = [f"i{n}" for n in range(40)]
    recommender = Recommender(model, Catalogue(ids))
    history = ["i3", "i7", "i3", "i12"]
    for weight in ([4.0, -1.0], [-30.0, -30.0], [0.0, 2.5]):
        with torch.no_grad():
            model.repeat_weight.copy_(torch.tensor(weight))  # type: ignore[union-attr]
        got = recommender.recommend_lists([history], k=6, exclude_seen=False)[0]
        rows = recommender.catalogue.lookup(history)
        query = recommender.queries_of_rows([np.asarray(rows)])  # (1, H)
        offsets = model.repeat_offsets(torch.from_numpy(np.asarray(rows)[None]), torch.tensor([len(rows)]))
        assert offsets is not None
        scores = (query @ recommender.scoring_table().T + dense(offsets, 1, 40))[0]  # (N,)
        best = scores.topk(6)
        assert [r.item_id for r in got] == [ids[int(i)] for i in best.indices]
        np.testing.assert_allclose([r.score for r in got], best.values.detach().numpy(), rtol=1e-5, atol=1e-5)
        unseen = recommender.recommend_lists([history], k=6)[0]
        plain = (query @ recommender.scoring_table().T)[0]
        plain[[3, 7, 12]] = float("-inf")
        assert [r.item_id for r in unseen] == [ids[int(i)] for i in plain.topk(6).indices]
    assert {"i3", "i7", "i12"} & {r.item_id for r in got}  # w_hist = 2.5 lifts the history


def test_equal_scores_with_offsets_keep_the_lower_row_first_whatever_the_history_order() -> None:
    torch.manual_seed(0)
    text = torch.randn(40, 6)
    text[20] = text[3]  # items 3 and 20 share a text vector: equal scores, and equal offsets in the history below
    model = UniSRec(ModelConfig(hidden_size=8, inner_size=8, n_experts=2, repeat_bias=True), 40, text)
    with torch.no_grad():
        model.repeat_weight.copy_(torch.tensor([0.0, 50.0]))  # type: ignore[union-attr]  # lifts the history
    recommender = Recommender(model, Catalogue([f"i{n}" for n in range(40)]))
    for history in (["i20", "i3", "i7"], ["i3", "i20", "i7"]):
        got = recommender.recommend_lists([history], k=3, exclude_seen=False)[0]
        twins = [r for r in got if r.item_id in ("i3", "i20")]
        assert len(twins) == 2 and twins[0].score == twins[1].score
        assert [r.item_id for r in twins] == ["i3", "i20"]  # the lower row first, as without offsets


def test_text_histories_get_the_offsets_of_the_same_items_given_by_id(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    text = torch.randn(40, 6)
    model = UniSRec(ModelConfig(hidden_size=8, inner_size=8, n_experts=2, repeat_bias=True), 40, text)
    ids, texts = [f"i{n}" for n in range(40)], [f"item {n}" for n in range(40)]
    texts[30] = texts[12]  # two catalogue items share a text: both take that text's offsets
    recommender = Recommender(model, Catalogue(ids, texts))
    by_row = {t: n for n, t in reversed(list(enumerate(texts)))}  # a text -> its (first) item's stored vector
    monkeypatch.setattr(recommender, "encode_texts", lambda batch: text[[by_row[t] for t in batch]].numpy())
    history = ["i3", "i7", "i3", "i12"]
    as_texts = [texts[int(i[1:])] for i in history]
    for weight in ([4.0, -1.0], [-30.0, -30.0], [0.0, 2.5]):
        with torch.no_grad():
            model.repeat_weight.copy_(torch.tensor(weight))  # type: ignore[union-attr]
        got = recommender.recommend_lists([as_texts], k=8, exclude_seen=False, by_text=True)[0]
        rows = np.asarray(recommender.catalogue.lookup(history))
        query = recommender.queries_of_rows([rows])  # (1, H): the same query as by text
        offsets = model.repeat_offsets(torch.from_numpy(rows[None]), torch.tensor([len(rows)]))
        assert offsets is not None
        scores = (query @ recommender.scoring_table().T + dense(offsets, 1, 40))[0]  # (N,)
        scores[30] += weight[0] + weight[1]  # item 30 has item 12's text, the last one
        best = scores.topk(8)
        assert [r.item_id for r in got] == [ids[int(i)] for i in best.indices]
        np.testing.assert_allclose([r.score for r in got], best.values.detach().numpy(), rtol=1e-5, atol=1e-5)
        plain = (query @ recommender.scoring_table().T)[0].topk(8).indices
        assert [r.item_id for r in got] != [ids[int(i)] for i in plain]  # the offsets change every ranking here


def test_finetuning_learns_that_the_last_item_does_not_come_again(tmp_path: Path, tiny_lm_dir: Path) -> None:
    data = prepare_synthetic(tmp_path / "data")  # chains i -> i+1: the next item is almost never the last one
    settings = ["model.hidden_size=16", "model.inner_size=16", "model.max_seq_len=6", "model.n_experts=1",
                "model.last_item_skip=true", "train.batch_size=64", "train.lr=0.01", "train.epochs=8",
                "train.patience=8", "train.progress=false", f"text.model={tiny_lm_dir}", "text.pooling=mean"]
    finetune(data, "inductive", tmp_path / "run", overrides=[*settings, "model.repeat_bias=true"])
    w_last, w_hist = load_file(str(tmp_path / "run" / "model.safetensors"))["repeat_weight"].tolist()
    # both start at 0; the data (no repeats) pushes both down: about lr per Adam step, 18 steps to the best epoch
    assert w_last < -0.1 and w_hist < -0.1


def test_repeat_weights_are_not_transferred(tmp_path: Path) -> None:
    source = UniSRec(ModelConfig(hidden_size=8, inner_size=8, n_experts=2), 5, torch.randn(5, 6))
    save_pretrained(source, tmp_path / "source")
    target = UniSRec(ModelConfig(hidden_size=8, inner_size=8, n_experts=2, repeat_bias=True), 7, torch.randn(7, 6))
    copied = load_transferable(target, tmp_path / "source")
    assert "repeat_weight" not in copied and "adaptor.weight" in copied
    assert target.repeat_weight is not None and target.repeat_weight.tolist() == [0.0, 0.0]
    torch.testing.assert_close(target.adaptor.weight, source.adaptor.weight)  # type: ignore[union-attr]


def test_repeat_bias_needs_the_unisrec_architecture() -> None:
    with pytest.raises(ConfigError, match=r"model\.repeat_bias=true is implemented for the unisrec architecture"):
        ModelConfig(architecture="gru4rec", item_repr="id", repeat_bias=True)


def test_models_saved_before_the_setting_existed_still_load(tmp_path: Path) -> None:
    model = UniSRec(ModelConfig(hidden_size=8, inner_size=8, n_experts=2), 5, torch.randn(5, 6))
    save_pretrained(model, tmp_path / "old", item_ids=list("abcde"), item_texts=list("abcde"))
    path = tmp_path / "old" / "config.json"
    saved = json.loads(path.read_text())
    del saved["model"]["repeat_bias"]  # what an earlier version wrote
    path.write_text(json.dumps(saved))
    loaded, _ = from_pretrained(tmp_path / "old")
    assert loaded.config.repeat_bias is False
    torch.testing.assert_close(loaded.state_dict()["adaptor.weight"], model.state_dict()["adaptor.weight"])
    del saved["model"]["n_experts"]  # a setting that every version writes is still required
    path.write_text(json.dumps(saved))
    with pytest.raises(UnisrecError, match="missing model setting\\(s\\) n_experts"):
        from_pretrained(tmp_path / "old")


def test_pretraining_refuses_the_repeat_offsets(tmp_path: Path) -> None:
    with pytest.raises(UnisrecError, match=r"model\.repeat_bias is a fine-tuning setting"):
        pretrain([tmp_path / "any"], tmp_path / "out", overrides=["model.repeat_bias=true"])


def test_repeat_lr_scale_gives_the_offsets_their_own_learning_rate() -> None:
    model = UniSRec(ModelConfig(hidden_size=8, inner_size=8, n_experts=2, repeat_bias=True), 5, torch.randn(5, 6))
    assert model.repeat_weight is not None
    groups = param_groups(model, TrainConfig(lr=0.01, repeat_lr_scale=20.0))
    assert [g["base_lr"] for g in groups] == [0.01, 0.01, pytest.approx(0.2)]
    assert [id(p) for p in groups[2]["params"]] == [id(model.repeat_weight)]
    default = param_groups(model, TrainConfig(lr=0.01))  # scale 1: in the first group (checkpoint layout as before)
    assert len(default) == 2 and any(p is model.repeat_weight for p in default[0]["params"])
    with pytest.raises(ConfigError, match=r"train\.repeat_lr_scale must be a number >= 0"):
        TrainConfig(repeat_lr_scale=-1.0)


def test_a_faster_offset_learning_rate_moves_the_offsets_further(tmp_path: Path, tiny_lm_dir: Path) -> None:
    data = prepare_synthetic(tmp_path / "data")
    settings = ["model.hidden_size=16", "model.inner_size=16", "model.max_seq_len=6", "model.n_experts=1",
                "model.repeat_bias=true", "train.batch_size=64", "train.lr=0.01", "train.epochs=3",
                "train.patience=3", "train.progress=false", f"text.model={tiny_lm_dir}", "text.pooling=mean"]
    learned = {}
    for scale in (1.0, 10.0):
        out = tmp_path / f"run-{scale}"
        finetune(data, "inductive", out, overrides=[*settings, f"train.repeat_lr_scale={scale}"])
        learned[scale] = load_file(str(out / "model.safetensors"))["repeat_weight"]
    # Adam moves each scalar by about its learning rate per step: ten times the rate, several times the distance
    assert bool((learned[10.0] < 3 * learned[1.0]).all()) and bool((learned[1.0] < 0).all())


def test_detached_history_negatives_pass_no_gradient_but_keep_their_values() -> None:
    from unisrec.finetune import detach_history_negatives

    logits = torch.randn(2, 6, requires_grad=True)
    history = torch.tensor([[1, 2, 0], [3, 3, 4]])  # row 0 holds 2 items (then padding), row 1 three
    out = detach_history_negatives(logits, history, torch.tensor([2, 3]), torch.tensor([2, 5]))
    torch.testing.assert_close(out, logits, rtol=0, atol=0)  # the same forward values
    weights = torch.randn(2, 6)
    (out * weights).sum().backward()
    assert logits.grad is not None
    expected = weights.clone()
    expected[0, 1] = 0.0  # row 0: item 1 is a history negative; item 2 is its target; item 0 is padding
    expected[1, [3, 4]] = 0.0
    torch.testing.assert_close(logits.grad, expected, rtol=0, atol=0)


def test_history_negatives_train_only_the_offsets(tmp_path: Path, tiny_lm_dir: Path) -> None:
    from unisrec.config import RunConfig
    from unisrec.datasets import load_processed
    from unisrec.finetune import FinetuneTask
    from unisrec.text_cache import load_text

    data = prepare_synthetic(tmp_path / "data")
    settings = ["model.hidden_size=16", "model.inner_size=16", "model.max_seq_len=6", "model.n_experts=1",
                "model.repeat_bias=true", "train.batch_size=64", f"text.model={tiny_lm_dir}", "text.pooling=mean",
                "model.hidden_dropout=0", "model.attn_dropout=0", "model.adaptor_dropout=0", "model.noisy_gating=false"]
    dataset = load_processed(data)
    grads = {}
    for mode in ("full", "offsets"):
        config = RunConfig().with_overrides([*settings, f"train.history_negatives={mode}"])
        vectors = torch.from_numpy(load_text(dataset, config.text).matrix)
        torch.manual_seed(0)
        model = UniSRec(config.model, dataset.n_items, vectors)
        with torch.no_grad():
            model.repeat_weight.fill_(-0.5)  # type: ignore[union-attr]
        task = FinetuneTask(model, dataset, config, torch.device("cpu"))
        loss = task.loss(next(iter(task.batches(0))))["loss"]
        loss.backward()
        grads[mode] = (float(loss.detach()),
                       {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    (full_loss, full), (off_loss, off) = grads["full"], grads["offsets"]
    assert off_loss == pytest.approx(full_loss, abs=1e-6)  # the same softmax ...
    torch.testing.assert_close(off["repeat_weight"], full["repeat_weight"])  # ... so the same pull on the offsets
    assert not torch.allclose(off["adaptor.weight"], full["adaptor.weight"])  # but not on the item vectors


def test_history_negatives_need_the_offsets(tmp_path: Path) -> None:
    data = prepare_synthetic(tmp_path / "data")
    with pytest.raises(UnisrecError, match=r"train\.history_negatives=offsets .* needs model\.repeat_bias=true"):
        finetune(data, "inductive", tmp_path / "run", overrides=["train.history_negatives=offsets"])
    with pytest.raises(ConfigError, match=r"train\.history_negatives must be one of full, offsets"):
        TrainConfig(history_negatives="none")  # type: ignore[arg-type]
