"""Baselines (GRU4Rec, BERT4Rec, FDSA, ZESRec-style) on the shared loop and evaluation; ablation flags."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import prepare_synthetic

from unisrec.analysis import load_ranks
from unisrec.baselines import FDSA, BERT4Rec, ZESRec, build_model
from unisrec.batches import Windows
from unisrec.checkpoint import from_pretrained
from unisrec.cli import main
from unisrec.cloze import make_cloze_batch
from unisrec.config import MODE_ARCHITECTURE, EvalConfig, ModelConfig, RunConfig, TextConfig
from unisrec.datasets import load_processed
from unisrec.errors import ConfigError, UnisrecError
from unisrec.evaluate import evaluate, evaluate_run, zero_shot_model
from unisrec.finetune import finetune
from unisrec.metrics import ranking_metrics
from unisrec.model import SequenceModel
from unisrec.pretrain import pretrain
from unisrec.report_config import load_report_config

SMALL = [
    "model.hidden_size=16", "model.inner_size=16", "model.max_seq_len=6", "model.n_experts=2",
    "model.hidden_dropout=0.1", "model.attn_dropout=0.1", "train.batch_size=64", "train.lr=0.01",
    "train.progress=false",
]
TINY = ModelConfig(hidden_size=8, n_heads=2, inner_size=8, max_seq_len=5, hidden_dropout=0.0, attn_dropout=0.0,
                   adaptor_dropout=0.0)


def tiny(architecture: str, item_repr: str, n_items: int = 12, text_dim: int = 6) -> SequenceModel:
    torch.manual_seed(0)
    config = ModelConfig(**{**TINY.__dict__, "architecture": architecture, "item_repr": item_repr})
    text = torch.randn(n_items, text_dim) if item_repr != "id" else None
    return build_model(config, n_items, text).eval()


@pytest.mark.parametrize(
    ("mode", "threshold"), [("gru4rec", 0.6), ("bert4rec", 0.45), ("fdsa", 0.6), ("zesrec", 0.4)]
)
def test_each_baseline_beats_random_on_chains(
    mode: str, threshold: float, synthetic_dataset: Path, tmp_path: Path, tiny_lm_dir: Path
) -> None:
    out = tmp_path / mode
    text = [f"text.model={tiny_lm_dir}", "text.pooling=mean"]
    metrics = finetune(synthetic_dataset, mode, out, overrides=[*SMALL, *text, "train.epochs=20", "train.patience=5"])
    test = metrics["test"]
    assert test is not None  # eval.test is true by default
    assert test["recall@10"] > threshold  # random: 10 / 30
    assert test["ndcg@10"] > 0.2  # random: about 0.15
    saved = json.loads((out / "config.json").read_text())["model"]
    assert saved["architecture"] == mode
    ranks = load_ranks(out)
    assert ranking_metrics(ranks, (10,))["recall@10"] == pytest.approx(test["recall@10"])
    reloaded = evaluate_run(out, synthetic_dataset, "test", ks=(10,), device="cpu")  # from_pretrained dispatches
    assert reloaded["ndcg@10"] == pytest.approx(test["ndcg@10"], abs=1e-6)
    for split in ("train", "TEST"):  # the CLI's --split choices: a bare KeyError, or train targets, before
        with pytest.raises(UnisrecError, match=f"split must be 'valid' or 'test', got '{split}'"):
            evaluate_run(out, synthetic_dataset, split, device="cpu")


def test_cloze_batch_masks_real_tokens_and_keeps_targets() -> None:
    items = np.arange(100, dtype=np.int64) % 20  # 20 items
    sequences = Windows(np.array([0, 10, 40]), np.array([6, 3, 1]), np.zeros(3, dtype=np.int64))
    rng = np.random.default_rng(0)
    for _ in range(20):
        batch = make_cloze_batch(items, sequences, 20, 0.3, rng)
        assert batch.tokens.shape == (3, 6) and batch.mask.shape == (3, 6)
        assert batch.mask.any(dim=1).all()  # at least one masked token per sequence
        assert (batch.tokens[batch.mask] == 20).all()  # [MASK] = N
        assert batch.tokens[1, 3:].eq(21).all() and batch.tokens[2, 1:].eq(21).all()  # padding = N + 1
        assert not batch.mask[1, 3:].any() and not batch.mask[2, 1:].any()
        original = np.array([items[0:6], [*items[10:13], 21, 21, 21], [items[40], *[21] * 5]])
        assert batch.targets.tolist() == original[batch.mask.numpy()].tolist()
        assert (batch.tokens[~batch.mask].numpy() == original[~batch.mask.numpy()]).all()
    single = make_cloze_batch(items, sequences.subset(np.array([2])), 20, 0.01, rng)
    assert single.mask.tolist() == [[True]]  # nothing drawn: the last token is masked


def test_bert4rec_inference_appends_a_mask_and_ignores_padding() -> None:
    model = tiny("bert4rec", "id")
    assert isinstance(model, BERT4Rec)
    table = model.item_table()  # (12, 8)
    seqs = torch.tensor([[1, 2, 3, 0, 0], [4, 5, 6, 7, 8]])
    lengths = torch.tensor([3, 5])
    vectors = model.sequence_vectors(seqs, lengths, table)  # (2, 8)
    assert vectors.shape == (2, 8)
    tokens = torch.tensor([[1, 2, 3, 12, 13, 13], [4, 5, 6, 7, 8, 12]])  # [MASK] = 12, padding = 13
    torch.testing.assert_close(vectors, model.encode(tokens, table)[torch.arange(2), lengths])
    other_padding = model.sequence_vectors(torch.tensor([[1, 2, 3, 9, 9]]), torch.tensor([3]), table)
    torch.testing.assert_close(other_padding[0], vectors[0])
    # bidirectional: an earlier state depends on a later token
    changed = tokens.clone()
    changed[0, 2] = 7
    assert not torch.allclose(model.encode(tokens, table)[0, 0], model.encode(changed, table)[0, 0])
    scores = model.query_vectors(vectors) @ model.scoring_table(table).T
    torch.testing.assert_close(scores, model.logits(vectors, table))  # the bias rides in the extra column


@pytest.mark.parametrize(("architecture", "item_repr"), [("gru4rec", "id"), ("fdsa", "text+id"), ("zesrec", "text")])
def test_causal_baselines_ignore_right_padding(architecture: str, item_repr: str) -> None:
    model = tiny(architecture, item_repr)
    table = model.item_table()
    a = model.sequence_vectors(torch.tensor([[1, 2, 3, 0, 0]]), torch.tensor([3]), table)
    b = model.sequence_vectors(torch.tensor([[1, 2, 3, 7, 9]]), torch.tensor([3]), table)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(model.query_vectors(a) @ model.scoring_table(table).T, model.logits(a, table))


def test_fdsa_uses_both_streams() -> None:
    model = tiny("fdsa", "text+id")
    assert isinstance(model, FDSA)
    seqs, lengths = torch.tensor([[1, 2, 3]]), torch.tensor([3])
    base = model.sequence_vectors(seqs, lengths, model.item_table())
    text = model.item_text.clone()
    with torch.no_grad():
        model.item_text[2] = torch.randn(6)  # another text for item 2: the feature stream sees it
    by_text = model.sequence_vectors(seqs, lengths, model.item_table())
    with torch.no_grad():
        model.item_text.copy_(text)
        model.item_id.weight[2] = torch.randn(8)  # another ID embedding: the item stream sees it
    by_id = model.sequence_vectors(seqs, lengths, model.item_table())
    assert not torch.equal(base, by_text) and not torch.equal(base, by_id)
    model.train()
    hidden, table = model(seqs)
    model.logits(hidden[0], table).sum().backward()
    for name in ("item_id.weight", "feature.1.weight", "item_encoder.layers.0.qkv.weight",
                 "feature_encoder.layers.0.qkv.weight", "fuse.weight"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_architecture_and_item_repr_must_agree() -> None:
    with pytest.raises(ConfigError, match="architecture=gru4rec needs item_repr"):
        ModelConfig(architecture="gru4rec", item_repr="text")
    with pytest.raises(ConfigError, match="mask_prob"):
        ModelConfig(mask_prob=0.0)


def test_cli_baseline_mode_and_init_rules(synthetic_dataset: Path, tmp_path: Path, tiny_lm_dir: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--epochs", "1", "--text-model", str(tiny_lm_dir), *[f"--{o}" for o in SMALL]]
    assert main(["finetune", str(synthetic_dataset), "--mode", "gru4rec", "--out", str(tmp_path / "g"), *args]) == 0
    assert set(json.loads(capsys.readouterr().out)["test"]) >= {"recall@10", "ndcg@50"}
    code = main(["finetune", str(synthetic_dataset), "--mode", "fdsa", "--init", str(tmp_path / "g"),
                 "--out", str(tmp_path / "f"), *args])
    assert code == 2 and "--mode fdsa trains from scratch" in capsys.readouterr().err


def test_a_setting_the_mode_s_network_does_not_read_is_refused(synthetic_dataset: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """A baseline would record a UniSRec-only setting (text centring, temperature, ...) in its run and ignore it;
    a baseline's own setting likewise for UniSRec; bert4rec trains on strided windows whatever train.windows says."""
    from unisrec.finetune import resolve_config

    refused = [("zesrec", "model.center_text=true", "model.center_text=true is implemented for the unisrec "
                "architecture (--mode inductive, transductive, sasrec), not zesrec, which would ignore it"),
               ("fdsa", "model.center_text=true", "not fdsa, which would ignore it"),
               ("textknn", "model.last_item_skip=true", "not textknn"),
               ("inductive", "model.mask_prob=0.4", "model.mask_prob=0.4 is implemented for the bert4rec "
                "architecture (--mode bert4rec), not unisrec"),
               ("bert4rec", "model.gru_layers=2", "for the gru4rec architecture"),
               ("bert4rec", "train.windows=exact", "train.windows=exact is not read by bert4rec"),
               # freezing and the learning-rate scales act on parts found by name: trained as if not given before
               ("gru4rec", "train.freeze=encoder", "train.freeze=encoder acts on the sequence encoder of UniSRec, "
                "SASRec and ZESRec only (--mode inductive, transductive, sasrec, zesrec): gru4rec would train as if "
                "it were not given"),
               ("bert4rec", "train.encoder_lr_scale=0.1", "bert4rec would train as if"),
               ("fdsa", "train.encoder_lr_scale=0", "fdsa would train as if"),
               ("zesrec", "train.adaptor_lr_scale=0", "train.adaptor_lr_scale=0 acts on UniSRec's text adaptor only "
                "(--mode inductive, transductive): zesrec would train as if it were not given"),
               ("sasrec", "train.adaptor_lr_scale=0.5", "sasrec would train as if")]
    for mode, override, message in refused:
        with pytest.raises(ConfigError, match=re.escape(message)):
            resolve_config(RunConfig().with_overrides([override]), mode, None, [override])
    for mode, override in (("bert4rec", "model.mask_prob=0.4"), ("gru4rec", "model.gru_layers=2"),
                           ("bert4rec", "train.windows=strided"), ("zesrec", "model.center_text=false"),
                           ("inductive", "model.center_text=true"), ("zesrec", "model.n_experts=2"),
                           ("zesrec", "train.freeze=encoder"), ("sasrec", "train.encoder_lr_scale=0.1"),
                           ("transductive", "train.adaptor_lr_scale=0.5")):
        resolved = resolve_config(RunConfig().with_overrides([override]), mode, None, [override])
        assert resolved.model.architecture == MODE_ARCHITECTURE[mode]
    code = main(["finetune", str(synthetic_dataset), "--mode", "zesrec", "--out", str(tmp_path / "z"),
                 "--model.center_text=true"])
    assert code == 2 and "not zesrec, which would ignore it" in capsys.readouterr().err
    assert not (tmp_path / "z").exists()
    with pytest.raises(ConfigError, match=r"model\.center_text=true centres item text vectors; --mode sasrec has"):
        resolve_config(RunConfig().with_overrides(["model.center_text=true"]), "sasrec", None, [])
    # a zesrec run saved before such settings were refused may carry one: as --init it is reset (it was ignored)
    (tmp_path / "old-zesrec").mkdir()
    from unisrec.checkpoint import MODEL_FORMAT, MODEL_FORMAT_VERSION

    saved = {"format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION,
             "model": {**ModelConfig(architecture="zesrec", item_repr="text").__dict__, "center_text": True}}
    (tmp_path / "old-zesrec" / "config.json").write_text(json.dumps(saved))
    inherited = resolve_config(RunConfig(), "zesrec", tmp_path / "old-zesrec", [])
    assert inherited.model.architecture == "zesrec" and inherited.model.center_text is False
    with pytest.raises(ConfigError, match="not zesrec, which would ignore it"):  # given by the caller: refused
        resolve_config(RunConfig().with_overrides(["model.center_text=true"]), "zesrec", tmp_path / "old-zesrec",
                       ["model.center_text=true"])
    report = tmp_path / "report.yaml"  # a report refuses such an experiment when it is planned
    report.write_text("seeds: [1]\ndatasets:\n  d: {path: data}\nexperiments:\n"
                      "  - {name: z, dataset: d, mode: zesrec, overrides: [model.center_text=true]}\n")
    with pytest.raises(ConfigError, match=r"experiment.*z.*not zesrec, which would ignore it"):
        load_report_config(report)
    report.write_text("seeds: [1]\ndatasets:\n  d: {path: data}\npretrain:\n  p: {datasets: [d]}\nexperiments:\n"
                      "  - {name: t, dataset: d, mode: inductive, init: p, overrides: [model.mask_prob=0.4]}\n")
    with pytest.raises(ConfigError, match=r"experiment 't'.*mask_prob=0.4 is implemented for the bert4rec"):
        load_report_config(report)  # with init too: what the experiment gives is checked


def test_zesrec_transfers_zero_shot_and_by_fine_tuning(tmp_path: Path, tiny_lm_dir: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    source, target = prepare_synthetic(tmp_path / "a", seed=1), prepare_synthetic(tmp_path / "b", seed=2, n_items=25)
    text = [f"text.model={tiny_lm_dir}", "text.pooling=mean"]
    finetune(source, "zesrec", tmp_path / "src", overrides=[*SMALL, *text, "train.epochs=2"])
    model = zero_shot_model(tmp_path / "src", load_processed(target))  # the target's 25 items by their text
    assert isinstance(model, ZESRec) and model.n_items == 25
    zero_shot = evaluate(model, load_processed(target), "test", EvalConfig(ks=(10,)))
    # the CLI scores it too (the README's "zero-shot on other domains" had no command): the same figures
    assert main(["evaluate", str(tmp_path / "src"), str(target), "--ks", "10", "--zero-shot"]) == 0
    printed = capsys.readouterr()
    assert json.loads(printed.out.strip().splitlines()[-1]) == pytest.approx(zero_shot, abs=1e-12)
    assert "(zero-shot: the run's weights as they are, the items by their text)" in printed.err
    assert main(["evaluate", str(tmp_path / "src"), str(target)]) == 2  # without it: its own items expected
    assert "items are not the" in capsys.readouterr().err
    metrics = finetune(target, "zesrec", tmp_path / "tuned", init=tmp_path / "src",
                       overrides=[*SMALL, "train.epochs=1", "train.freeze=encoder"])
    assert any(name.startswith("mlp.") for name in metrics["transferred_parameters"])
    assert not any(name.startswith("encoder.") for name in metrics["trainable_parameters"])  # frozen
    with pytest.raises(UnisrecError, match="a zesrec run cannot initialise --mode inductive"):
        finetune(target, "inductive", tmp_path / "bad", init=tmp_path / "src", overrides=SMALL)


# -- ablations: the paper's variants are flags; each gives the expected parameter set -----------------------


def _names(mode: str, overrides: list[str], text_dim: int = 6) -> dict[str, tuple[int, ...]]:
    config = RunConfig().with_overrides([*SMALL, *overrides]).model
    from unisrec.config import MODE_ARCHITECTURE, MODES

    config = ModelConfig(**{**config.__dict__, "item_repr": MODES[mode], "architecture": MODE_ARCHITECTURE[mode]})
    text = torch.zeros(10, text_dim) if config.uses_text else None
    return {k: tuple(v.shape) for k, v in build_model(config, 10, text).named_parameters()}


def test_ablation_flags_change_the_adaptor() -> None:
    full = _names("inductive", [])
    assert full["adaptor.weight"] == (2, 6, 16) and full["adaptor.bias"] == (2, 6)
    assert "adaptor.bias" not in _names("inductive", ["model.whitening=false"])  # plain linear experts
    one = _names("inductive", ["model.n_experts=1"])  # no MoE
    assert one["adaptor.weight"] == (1, 6, 16) and one["adaptor.gate"] == (6, 1)
    assert _names("inductive", ["model.n_experts=4"])["adaptor.weight"] == (4, 6, 16)
    assert "item_id.weight" in _names("transductive", []) and "adaptor.weight" not in _names("sasrec", [])


def test_ablations_of_transfer(tmp_path: Path, tiny_lm_dir: Path) -> None:
    domains = [prepare_synthetic(tmp_path / "a", seed=1), prepare_synthetic(tmp_path / "b", seed=2, n_items=25)]
    target = prepare_synthetic(tmp_path / "t", seed=3, n_items=20)
    text = [f"text.model={tiny_lm_dir}", "text.pooling=mean"]
    pre = [*SMALL, *text, "train.epochs=1", "pretrain.lambda_ss=0"]
    result = pretrain([*domains], tmp_path / "pre", overrides=pre)  # without the S-S loss
    train_ss = result["history"][0]["train_ss"]
    assert not isinstance(train_ss, dict) and train_ss >= 0
    assert not list(domains[0].rglob("*worddrop*"))  # no word-drop views needed
    assert list(domains[0].rglob("*.safetensors"))  # (the plain text vectors are there)
    one = [*SMALL, "train.epochs=1"]
    frozen = finetune(target, "inductive", tmp_path / "frozen", init=tmp_path / "pre",
                      overrides=[*one, "train.freeze=encoder"])  # the paper's protocol: adaptor only
    everything = finetune(target, "inductive", tmp_path / "all", init=tmp_path / "pre",
                          overrides=one)  # the default: fine-tune all parameters
    scratch = finetune(target, "inductive", tmp_path / "scratch", overrides=[*one, *text])  # no pre-training
    assert not any(n.startswith("encoder.") for n in frozen["trainable_parameters"])
    assert any(n.startswith("encoder.") for n in everything["trainable_parameters"])
    assert set(everything["trainable_parameters"]) == set(everything["transferred_parameters"])
    assert scratch["transferred_parameters"] == [] and any(n.startswith("encoder.") for n in
                                                          scratch["trainable_parameters"])
    assert frozen["parameters"]["trainable"] < everything["parameters"]["trainable"]


def test_from_pretrained_rebuilds_each_baseline(tmp_path: Path, tiny_lm_dir: Path) -> None:
    data = prepare_synthetic(tmp_path / "d", n_users=20, n_items=12)
    for mode in ("bert4rec", "fdsa"):
        text = [f"text.model={tiny_lm_dir}", "text.pooling=mean"]
        finetune(data, mode, tmp_path / mode, overrides=[*SMALL, *text, "train.epochs=1"])
        model, config = from_pretrained(tmp_path / mode)
        assert type(model).__name__ == {"bert4rec": "BERT4Rec", "fdsa": "FDSA"}[mode]
        assert config["model"]["architecture"] == mode


def test_textknn_ranks_items_by_text_similarity_to_the_last_item(tmp_path: Path, tiny_lm_dir: Path) -> None:
    data = prepare_synthetic(tmp_path / "d", n_users=30, n_items=20)
    metrics = finetune(data, "textknn", tmp_path / "knn", overrides=[*SMALL, f"text.model={tiny_lm_dir}",
                                                                      "text.pooling=mean"])
    assert metrics["trainable_parameters"] == [] and metrics["epochs"] == 0
    dataset = load_processed(data)
    from unisrec.text_cache import load_text

    text = torch.from_numpy(load_text(dataset, TextConfig(str(tiny_lm_dir), "mean")).matrix)
    unit = torch.nn.functional.normalize(text, dim=-1).numpy()  # (N, D)
    rows = dataset.target_rows("test")
    starts = dataset.offsets[:-1][dataset.user_of_rows()[rows]]
    last = dataset.items[rows - 1]  # the item just before each test target
    scores = unit[last] @ unit.T  # (T, N)
    in_history = np.zeros_like(scores, dtype=bool)
    for row, (start, end) in enumerate(zip(starts, rows, strict=True)):
        in_history[row, dataset.items[max(start, end - 6):end]] = True  # the evaluated window (max_seq_len 6)
    scores = np.where(in_history, scores - 3.0, scores)  # the history's items after every other item
    target = scores[np.arange(len(rows)), dataset.items[rows]]
    expected = (scores >= target[:, None] - 1e-6).sum(axis=1) - 1  # pessimistic ranks
    got = np.load(tmp_path / "knn" / "ranks_test.npy")
    np.testing.assert_allclose(got, expected, atol=1)  # float ties may differ by one place
    assert (got == expected).mean() > 0.9
    repeats = in_history[np.arange(len(rows)), dataset.items[rows]]  # targets the history already holds
    assert (got[repeats] >= dataset.n_items - 6).all()  # ranked below every item outside the history
    # the recommender (serving) ranks the same way: the last item is never its own first neighbour
    from unisrec.recommend import Recommender

    rec = Recommender.from_pretrained(tmp_path / "knn")
    window = dataset.items[starts[0]:rows[0]][-3:]
    history = [str(dataset.item_ids[i]) for i in window]
    kept = rec.recommend_lists([history], k=dataset.n_items, exclude_seen=False)[0]  # seen items stay ranked
    order = [r.item_id for r in kept]
    assert len(order) == dataset.n_items and set(order[-len(set(history)):]) == set(history)
    outside = [i for i in range(dataset.n_items) if i not in set(window.tolist())]
    nearest = max(outside, key=lambda i: float(unit[window[-1]] @ unit[i]))
    assert order[0] == str(dataset.item_ids[nearest])  # the last item's nearest neighbour outside the history
    with pytest.raises(UnisrecError, match="--mode textknn trains from scratch"):
        finetune(data, "textknn", tmp_path / "bad", init=tmp_path / "knn", overrides=SMALL)


def test_finetune_help_names_every_baseline(capsys: pytest.CaptureFixture[str]) -> None:
    """The help of --mode listed the baselines by hand and left out textknn, which the README and the parser have."""
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    listed = text.split("baselines: ", 1)[1].split(" (unisrec/baselines.py)")[0].split(", ")
    assert sorted(listed) == sorted(set(MODE_ARCHITECTURE) - {"inductive", "transductive"})
