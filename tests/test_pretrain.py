"""Multi-domain pre-training on tiny data, transfer with a frozen encoder, zero-shot ranking."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import torch
from conftest import prepare_synthetic
from safetensors.torch import load_file

from unisrec.augment import item_drop
from unisrec.cli import main
from unisrec.finetune import finetune
from unisrec.precision import cpu_has_native_bfloat16

if TYPE_CHECKING:
    from unisrec.pretrain import PretrainTask

TINY = [
    "--model.hidden_size=16", "--model.inner_size=16", "--model.max_seq_len=6", "--model.n_experts=2",
    "--train.batch_size=64", "--train.lr=0.005", "--train.progress=false", "--pretrain.word_drop_variants=2",
]
TUNE = [o[2:] for o in TINY if not o.startswith("--pretrain.")]  # fine-tuning refuses pre-training settings


@pytest.fixture
def two_domains(tmp_path: Path) -> list[Path]:
    return [prepare_synthetic(tmp_path / "a", seed=1), prepare_synthetic(tmp_path / "b", seed=2, n_items=25)]


def test_item_drop_keeps_order_and_at_least_one_item() -> None:
    rng = np.random.default_rng(0)
    inputs = np.array([[1, 2, 3, 4, 5], [6, 7, 0, 0, 0], [9, 0, 0, 0, 0]])
    lengths = np.array([5, 2, 1])
    for _ in range(50):
        out, new = item_drop(inputs, lengths, 0.5, rng.random((3, 5)))
        assert (new >= 1).all() and (new <= lengths).all()
        for row in range(3):
            kept = out[row, : new[row]].tolist()
            original = inputs[row, : lengths[row]].tolist()
            it = iter(original)
            assert all(x in it for x in kept)  # a subsequence, order kept, no duplicates from collisions
    out, new = item_drop(inputs, lengths, 0.0, rng.random((3, 5)))
    assert (new == lengths).all() and (out[0] == inputs[0]).all()
    _, new = item_drop(inputs, lengths, 0.999999, rng.random((3, 5)))
    assert (new == 1).all()


def test_pretrain_then_transfer(two_domains: list[Path], tmp_path: Path, tiny_lm_dir: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "pre"
    code = main(["pretrain", *map(str, two_domains), "--out", str(run), "--epochs", "2", "--seed", "3",
                 "--text-model", str(tiny_lm_dir), *TINY])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["epochs"] == 2 and summary["steps"] > 0
    assert {"loss", "si", "ss", "si@a", "si@b"} <= set(summary["train"])
    recorded = json.loads((run / "run.json").read_text())["config"]
    assert recorded["train"]["schedule"] == "cosine"  # the recipe
    # the recipe's precision is auto: recorded as what it ran at (bfloat16 only on a CPU with bf16 arithmetic)
    assert recorded["train"]["precision"] == ("bfloat16" if cpu_has_native_bfloat16() else "float32")
    assert recorded["train"]["warmup_steps"] == 200 and recorded["train"]["batch_size"] == 64  # override kept
    assert recorded["pretrain"]["batch_domains"] == "single" and recorded["model"]["last_item_skip"] is True
    assert recorded["model"]["center_text"] is True
    config = json.loads((run / "config.json").read_text())
    assert config["kind"] == "pretrained" and config["domains"] == ["a", "b"] and config["n_items"] == 0
    weights = load_file(str(run / "model.safetensors"))
    assert not any(k.startswith("item_id") for k in weights)

    target = prepare_synthetic(tmp_path / "target", seed=9, n_items=20)
    ft = finetune(target, "inductive", tmp_path / "ft", init=run,
                  overrides=[*TUNE, "train.epochs=2", "train.freeze=encoder"])
    assert set(ft["trainable_parameters"]) == {
        "adaptor.weight", "adaptor.bias", "adaptor.gate", "adaptor.gate_noise", "input_norm.weight", "input_norm.bias"}
    tuned = load_file(str(tmp_path / "ft" / "model.safetensors"))
    for name, value in weights.items():
        if name.startswith("encoder."):
            torch.testing.assert_close(tuned[name], value, rtol=0, atol=0)  # the encoder stayed frozen
    assert json.loads((tmp_path / "ft" / "config.json").read_text())["text_encoder"]["model"] == str(tiny_lm_dir)

    # the default protocol fine-tunes everything from the pre-trained weights; the run is added to the model card
    full = finetune(target, "inductive", tmp_path / "ft-all", init=run,
                    overrides=[*TUNE, "train.epochs=2"])
    parameters = set(weights) - {"text_center"}  # the mean text vector is the catalogue's own (a buffer)
    assert set(full["trainable_parameters"]) == parameters
    assert full["transferred_parameters"] == sorted(parameters)
    moved = load_file(str(tmp_path / "ft-all" / "model.safetensors"))
    assert any(not torch.equal(moved[n], v) for n, v in weights.items() if n.startswith("encoder."))
    fresh = finetune(target, "inductive", tmp_path / "ft-adaptor", init=run,
                     overrides=[*TUNE, "train.epochs=1", "train.transfer=adaptor"])
    assert fresh["transferred_parameters"] == sorted(k for k in weights if k.startswith("adaptor."))
    assert set(fresh["trainable_parameters"]) == parameters  # the fresh encoder trains too
    sequence = finetune(target, "inductive", tmp_path / "ft-encoder", init=run, card=False,  # as report --verify
                        overrides=[*TUNE, "train.epochs=1", "train.transfer=encoder"])
    assert sequence["transferred_parameters"] == sorted(k for k in weights if k.startswith(("encoder.", "input_norm.")))
    assert set(sequence["trainable_parameters"]) == parameters  # the fresh adaptor trains too

    # train.anchor (L2-SP): the same fine-tuning with a strong pull toward the pre-trained weights ends nearer them
    def distance(folder: str) -> float:
        tuned = load_file(str(tmp_path / folder / "model.safetensors"))
        return sum(float((tuned[n] - v).pow(2).sum()) for n, v in weights.items() if n in parameters)

    anchored = finetune(target, "inductive", tmp_path / "ft-anchor", init=run,
                        overrides=[*TUNE, "train.epochs=2", "train.anchor=100"])
    assert anchored["epochs"] == full["epochs"] == 2
    assert distance("ft-anchor") < 0.5 * distance("ft-all")
    log = [json.loads(line) for line in (tmp_path / "ft-anchor" / "train.log").read_text().splitlines()]
    first = log[0]
    assert first["train_anchor"] > 0  # logged beside the cross-entropy; the loss is their weighted sum
    assert first["train_loss"] == pytest.approx(first["train_ce"] + 100 * first["train_anchor"], rel=1e-4)
    assert main(["finetune", str(target), "--mode", "inductive", "--out", str(tmp_path / "no-init"),
                 "--train.anchor=1", *(f"--{o}" for o in TUNE)]) == 2
    assert "train.anchor=1 pulls toward pre-trained weights: it needs --init" in capsys.readouterr().err
    half = finetune(target, "inductive", tmp_path / "ft-half", init=run,
                    overrides=[*TUNE, "train.epochs=1", "train.user_fraction=0.5"])
    card = (run / "README.md").read_text()
    assert "2 domains: a, b" in card and str((tmp_path / "ft-all").resolve()) in card
    assert str((tmp_path / "ft").resolve()) in card  # every transfer is listed, with what it trained on
    assert str((tmp_path / "ft-encoder").resolve()) not in card  # but one made with card=False
    rows = {line.split("`")[-2]: line for line in card.splitlines() if line.startswith("| ") and line.count("`") == 2}
    assert rows[str((tmp_path / "ft-all").resolve())].startswith("| target | inductive | all users | ")
    assert rows[str((tmp_path / "ft-half").resolve())].startswith(
        f"| target | inductive | 50% of users | {half['seed']} | ")
    assert "# unisrec inductive model of" in (tmp_path / "ft-all" / "README.md").read_text()

    code = main(["evaluate", str(run), str(target), "--split", "test"])
    assert code == 0
    zero_shot = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 <= zero_shot["ndcg@10"] <= zero_shot["recall@10"] <= 1.0


def test_kill_9_then_restart_reaches_the_same_weights(two_domains: list[Path], tmp_path: Path,
                                                     tiny_lm_dir: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    args = [sys.executable, "-m", "unisrec", "pretrain", *map(str, two_domains), "--text-model", str(tiny_lm_dir),
            "--epochs", "12", *TINY, "--pretrain.checkpoint_every=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*args, "--out", str(tmp_path / "straight")], check=True, env=env, capture_output=True)

    run = tmp_path / "killed"
    process = subprocess.Popen([*args, "--out", str(run)], env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    state = run / "checkpoint" / "state.json"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        try:  # the checkpoint folder is swapped in whole: between two reads it may be gone for an instant
            if json.loads(state.read_text())["state"]["global_step"] >= 5:
                break
        except (FileNotFoundError, json.JSONDecodeError):
            pass
        time.sleep(0.005)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (run / "metrics.json").exists(), "the run finished before it could be killed"
    # restarted with settings that change only what it shows (and eval.*, which pre-training never reads): it
    # resumed (the folder opened, then its checkpoint was refused as "a run with different settings")
    done = subprocess.run([*args, "--out", str(run), "--train.progress=true", "--eval.batch_size=7"], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming from epoch" in done.stderr
    a = load_file(str(tmp_path / "straight" / "model.safetensors"))
    b = load_file(str(run / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=0, msg=name)
    leftovers = [p.name for p in run.iterdir() if p.name.startswith(".")]
    assert leftovers == []


@pytest.mark.parametrize("mode", ["mixed", "single"])
def test_batch_domains_cover_every_window_once(two_domains: list[Path], tiny_lm_dir: Path, mode: str) -> None:
    from unisrec.config import RunConfig
    from unisrec.distributed import Distributed
    from unisrec.model import UniSRec
    from unisrec.pretrain import PretrainTask, load_corpus

    config = RunConfig().with_overrides([o[2:] for o in TINY] + ["train.batch_size=16",
                                                                 f"pretrain.batch_domains={mode}",
                                                                 f"text.model={tiny_lm_dir}"])
    corpus = load_corpus(two_domains, config)
    model = UniSRec.without_catalogue(config.model, corpus.text.shape[1])
    task = PretrainTask(model, corpus, config, torch.device("cpu"), Distributed.from_env("cpu"))
    batches = task._batches(0)
    seen = np.sort(np.concatenate(batches))
    np.testing.assert_array_equal(seen, np.arange(len(corpus.windows)))  # every window once per epoch
    domains_per_batch = [len(np.unique(corpus.window_domain[b])) for b in batches]
    if mode == "single":
        assert max(domains_per_batch) == 1
        firsts = [int(corpus.window_domain[b[0]]) for b in batches]
        assert firsts != sorted(firsts)  # the domains' batches are interleaved, not one domain after the other
    else:
        assert max(domains_per_batch) == 2  # mixed batches hold both domains
    np.testing.assert_array_equal(np.concatenate(task._batches(0)), np.concatenate(batches))  # seeded
    assert not np.array_equal(np.concatenate(task._batches(1)), np.concatenate(batches))  # a new order per epoch


@pytest.mark.parametrize("single", [True, False])
def test_logq_is_each_items_share_of_the_training_targets(two_domains: list[Path], tiny_lm_dir: Path,
                                                          single: bool) -> None:
    from unisrec.batches import make_train_batch
    from unisrec.config import RunConfig
    from unisrec.pretrain import load_corpus, target_log_share

    config = RunConfig().with_overrides([o[2:] for o in TINY] + [f"text.model={tiny_lm_dir}"])
    corpus = load_corpus(two_domains, config)
    targets = make_train_batch(corpus.items, corpus.windows).targets.numpy()  # every training target once
    counts = np.maximum(np.bincount(targets, minlength=corpus.n_items), 1).astype(np.float64)
    got = np.exp(target_log_share(corpus, per_domain=single).astype(np.float64))
    bounds = corpus.item_offsets
    if single:
        for lo, hi in itertools.pairwise(bounds):
            np.testing.assert_allclose(got[lo:hi], counts[lo:hi] / counts[lo:hi].sum(), rtol=1e-5)
    else:
        np.testing.assert_allclose(got, counts / counts.sum(), rtol=1e-5)
    assert got.max() > 3 * got.min()  # popularity differs: the correction has something to correct


def _first_step_terms(two_domains: list[Path], overrides: list[str]) -> tuple[dict[str, float], PretrainTask]:
    """The loss terms of the first pre-training step on the two tiny domains (fixed seeds), and the task."""
    from unisrec.config import RunConfig
    from unisrec.distributed import Distributed
    from unisrec.model import UniSRec
    from unisrec.pretrain import PretrainTask, load_corpus

    config = RunConfig().with_overrides([o[2:] for o in TINY] + ["pretrain.batch_domains=single", *overrides])
    corpus = load_corpus(two_domains, config)
    torch.manual_seed(0)
    model = UniSRec.without_catalogue(config.model, corpus.text.shape[1])
    task = PretrainTask(model, corpus, config, torch.device("cpu"), Distributed.from_env("cpu"))
    plan = next(task.batches(0))
    torch.manual_seed(1)
    return {k: float(v.detach()) for k, v in task.loss(plan).items()}, task


def test_logq_correction_changes_the_sequence_item_loss_only(two_domains: list[Path], tiny_lm_dir: Path) -> None:
    from unisrec.config import ConfigError, RunConfig
    from unisrec.pretrain import target_log_share

    terms = {}
    for mode in ("none", "logq"):
        terms[mode], task = _first_step_terms(
            two_domains, [f"text.model={tiny_lm_dir}", f"pretrain.popularity_correction={mode}"])
    assert terms["logq"]["ss"] == pytest.approx(terms["none"]["ss"], rel=1e-6)  # sequence-sequence: untouched
    assert abs(terms["logq"]["si"] - terms["none"]["si"]) > 1e-3
    assert task.neg_log_q is not None
    torch.testing.assert_close(task.neg_log_q,
                               torch.from_numpy(-target_log_share(task.corpus, per_domain=True)))
    with pytest.raises(ConfigError, match=r"pretrain\.popularity_correction"):
        RunConfig().with_overrides(["pretrain.popularity_correction=sampled"])


def test_history_negative_mask_takes_each_querys_seen_items_once_and_never_a_candidate() -> None:
    from unisrec.pretrain import history_negative_mask

    inputs = np.array([[5, 6, 5, 7, 8],    # item 5 twice; targets 6, 5, 7, 8, 9 at positions 0-4 (strided: all)
                       [3, 4, 3, 3, 3]])   # a short window padded with its first item; predicts at 0 and 1
    mask = np.array([[True, True, True, True, False],
                     [True, True, False, False, False]])
    targets = np.array([6, 5, 7, 8, 4, 9])  # (T,) in mask order: row 0 positions 0-3, row 1 positions 0-1
    got = history_negative_mask(inputs, mask, targets, candidate_ids=np.array([4, 5, 6, 7, 8, 9]))
    expected = np.zeros((6, 5), dtype=bool)
    # row 0: items 5, 6, 7, 8 are all in-batch candidates, so no history negative at all
    # row 1, position 0 (target 4): sees item 3 at l=0; position 1 (target 9): sees 3 (l=0) and 4 (a candidate)
    expected[4, 0] = True
    expected[5, 0] = True
    np.testing.assert_array_equal(got, expected)

    got = history_negative_mask(inputs, mask, targets, candidate_ids=np.array([9]))  # only 9 is a candidate
    expected = np.zeros((6, 5), dtype=bool)
    expected[0, 0] = True                    # (0, 0) target 6: sees 5
    expected[1, [1]] = True                  # (0, 1) target 5: sees 5 (its target) and 6
    expected[2, [0, 1]] = True               # (0, 2) target 7: 5, 6, and the second 5 counts once (no l=2)
    expected[3, [0, 1, 3]] = True            # (0, 3) target 8: 5, 6, (5 again: no), 7
    expected[4, 0] = True                    # (1, 0) target 4: sees 3
    expected[5, [0, 1]] = True               # (1, 1) target 9: sees 3 and 4
    np.testing.assert_array_equal(got, expected)


def test_history_negatives_change_the_sequence_item_loss_only(two_domains: list[Path], tiny_lm_dir: Path) -> None:
    # batches of 8 targets: most history items of a window are not among the batch's candidates
    terms = {flag: _first_step_terms(two_domains, [f"text.model={tiny_lm_dir}", "train.batch_size=8",
                                                   f"pretrain.history_negatives={flag}"])[0]
             for flag in ("false", "true")}
    assert terms["true"]["ss"] == pytest.approx(terms["false"]["ss"], rel=1e-6)  # sequence-sequence: untouched
    assert terms["true"]["si"] > terms["false"]["si"] + 1e-3  # more negatives in the denominators: a larger loss


def test_center_text_centres_each_domain_then_each_catalogue_on_its_own_mean(
        two_domains: list[Path], tmp_path: Path, tiny_lm_dir: Path) -> None:
    from unisrec.config import RunConfig, TextConfig
    from unisrec.datasets.processed import load_processed
    from unisrec.evaluate import zero_shot_model
    from unisrec.model import UniSRec
    from unisrec.pretrain import load_corpus
    from unisrec.recommend import Recommender
    from unisrec.text_cache import load_text, load_word_drop

    text = TextConfig(model=str(tiny_lm_dir))
    overrides = [o[2:] for o in TINY] + [f"text.model={tiny_lm_dir}", "model.center_text=true"]
    corpus = load_corpus(two_domains, RunConfig().with_overrides(overrides))
    raw = [load_text(load_processed(d), text).matrix for d in two_domains]
    for index, matrix in enumerate(raw):  # each domain on its own mean, variants by the same shift
        part = slice(corpus.item_offsets[index], corpus.item_offsets[index + 1])
        np.testing.assert_allclose(corpus.text[part], matrix - matrix.mean(0), atol=1e-6)
        assert np.abs(corpus.text[part].mean(0)).max() < 1e-5
    assert corpus.variants is not None
    for index, (directory, matrix) in enumerate(zip(two_domains, raw, strict=True)):  # word-drop views: same shift
        part = slice(corpus.item_offsets[index], corpus.item_offsets[index + 1])
        views = load_word_drop(directory, text, p=0.2, variants=2, seed=0).matrix.astype(np.float32)  # (V, N, D)
        np.testing.assert_allclose(corpus.variants[:, part].astype(np.float32), views - matrix.mean(0), atol=2e-3)
        assert np.abs(matrix.mean(0)).max() > 0.05  # a shift this test can see

    run = tmp_path / "pre"
    assert main(["pretrain", *map(str, two_domains), "--out", str(run), "--epochs", "1", "--seed", "3",
                 "--text-model", str(tiny_lm_dir), "--model.center_text=true", *TINY]) == 0
    weights = load_file(str(run / "model.safetensors"))
    assert torch.equal(weights["text_center"], torch.zeros_like(weights["text_center"]))  # domains centred instead

    target = prepare_synthetic(tmp_path / "target", seed=9, n_items=20)
    dataset = load_processed(target)
    target_text = torch.from_numpy(load_text(dataset, text).matrix)
    model = zero_shot_model(run, dataset).eval()
    assert isinstance(model, UniSRec)
    torch.testing.assert_close(model.text_center, target_text.mean(0))  # the new catalogue's own mean
    assert model.adaptor is not None
    with torch.no_grad():
        torch.testing.assert_close(model.item_table(), model.adaptor(target_text - target_text.mean(0)))

    ft = finetune(target, "inductive", tmp_path / "ft", init=run, overrides=[*TUNE, "train.epochs=1"])
    assert "text_center" not in ft["transferred_parameters"]
    saved = load_file(str(tmp_path / "ft" / "model.safetensors"))
    torch.testing.assert_close(saved["text_center"], target_text.mean(0))
    # items added later are centred on the same mean, which survives save and load
    recommender = Recommender.from_pretrained(tmp_path / "ft")
    recommender.add_items(["a brand new item"], ["new-1"])
    recommender.save_pretrained(tmp_path / "ft2")
    again = Recommender.from_pretrained(tmp_path / "ft2")
    torch.testing.assert_close(again.model.text_center, target_text.mean(0))


def test_replay_adds_the_pretraining_loss_of_one_corpus_batch_per_step(two_domains: list[Path], tmp_path: Path,
                                                                       tiny_lm_dir: Path) -> None:
    from dataclasses import replace

    from unisrec.config import RunConfig
    from unisrec.datasets.processed import load_processed
    from unisrec.distributed import Distributed
    from unisrec.finetune import CorpusReplay
    from unisrec.model import UniSRec
    from unisrec.pretrain import PretrainTask, load_corpus, recipe_config
    from unisrec.text_cache import load_text

    overrides = [o[2:] for o in TINY] + [f"text.model={tiny_lm_dir}", "model.center_text=true"]
    config = RunConfig().with_overrides(overrides)
    target = prepare_synthetic(tmp_path / "target", seed=9, n_items=20)
    text = torch.from_numpy(load_text(load_processed(target), config.text).matrix)  # (20, D)
    torch.manual_seed(0)
    model = UniSRec(config.model, 20, text).eval()  # eval: no dropout nor gate noise, so both sides compare
    assert model.text_center is not None and float(model.text_center.norm()) > 0
    replay = CorpusReplay(model, two_domains, config, torch.device("cpu"), Distributed.single(), text.shape[1],
                          model.text_center)
    # the same weights without a catalogue, on the corpus as pre-training reads it (each domain on its own mean)
    plain = UniSRec.without_catalogue(config.model, text.shape[1]).eval()
    missing = plain.load_state_dict({k: v for k, v in model.state_dict().items() if k != "text_center"}, strict=False)
    assert missing.missing_keys == ["text_center"] and not missing.unexpected_keys
    recipe = replace(config, pretrain=recipe_config().pretrain)  # what replay trains: the recipe's losses
    pretrain = PretrainTask(plain, load_corpus(two_domains, recipe), recipe, torch.device("cpu"), Distributed.single())
    # corpus epochs follow each other: fine-tuning step g replays the g-th batch of the corpus epochs in a row
    in_a_row = [plan for epoch in range(3) for plan in pretrain.batches(epoch)]
    assert len(in_a_row) >= 6
    for step in (len(in_a_row) - 1, 0, 1, pretrain.epoch_steps(0), pretrain.epoch_steps(0) + 1):  # any order
        plan, expected = replay.plan(step), in_a_row[step]
        assert (plan.epoch, plan.step) == (expected.epoch, expected.step)
        np.testing.assert_array_equal(plan.windows, expected.windows)
        torch.testing.assert_close(replay.loss(plan), pretrain.loss(expected)["loss"], rtol=1e-5, atol=1e-5)

    # a whole run: train_loss = ce + replay weight * replay (per-step terms, averaged per epoch), settings recorded
    tune = [o for o in overrides if not o.startswith("pretrain.")]  # replay reads the recipe's pretrain settings
    ft = finetune(target, "inductive", tmp_path / "ft", replay=two_domains,
                  overrides=[*tune, "train.epochs=2", "train.replay=0.5"])
    assert ft["epochs"] == 2
    lines = [json.loads(line) for line in (tmp_path / "ft" / "train.log").read_text().splitlines()
             if line.startswith('{"epoch"')]
    for line in lines:
        assert line["train_replay"] > 1.0  # an InfoNCE over in-batch candidates, not a zero term
        assert line["train_loss"] == pytest.approx(line["train_ce"] + 0.5 * line["train_replay"], rel=1e-5)
    settings = json.loads((tmp_path / "ft" / "run.json").read_text())
    assert settings["replay"] == [str(d.resolve()) for d in two_domains]
    assert settings["config"]["train"]["replay"] == 0.5
    from unisrec.records import data_fingerprint, run_record

    record = run_record(tmp_path / "ft")
    assert record["replay"] == [{"name": d.name, "fingerprint": data_fingerprint(d)} for d in two_domains]


def test_replay_needs_its_folders_and_its_weight(two_domains: list[Path], tmp_path: Path, tiny_lm_dir: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from unisrec.errors import UnisrecError

    target = prepare_synthetic(tmp_path / "target", seed=9, n_items=20)
    overrides = [*TUNE, f"text.model={tiny_lm_dir}", "train.epochs=1"]
    with pytest.raises(UnisrecError, match=r"replay needs both .* got 2 folder\(s\), train.replay=0"):
        finetune(target, "inductive", tmp_path / "a", replay=two_domains, overrides=overrides)
    with pytest.raises(UnisrecError, match=r"got 0 folder\(s\), train.replay=0.5"):
        finetune(target, "inductive", tmp_path / "b", overrides=[*overrides, "train.replay=0.5"])
    for mode in ("sasrec", "transductive"):  # the corpus's items have no ID in the target's table
        with pytest.raises(UnisrecError, match=rf"text-only model \(--mode inductive\), not --mode {mode}"):
            finetune(target, mode, tmp_path / "c", replay=two_domains, overrides=[*overrides, "train.replay=0.5"])
    capsys.readouterr()
    code = main(["finetune", str(target), "--mode", "inductive", "--out", str(tmp_path / "d"), "--replay",
                 str(tmp_path / "missing"), "--train.replay=0.5", *(f"--{o}" for o in TUNE),
                 f"--text.model={tiny_lm_dir}"])
    err = capsys.readouterr().err
    assert code == 2 and "missing" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("setting", ["train.freeze=encoder", "train.transfer=adaptor", "train.anchor=0.1",
                                     "train.replay=0.5", "train.user_fraction=0.5", "train.cold_items=0.2"])
def test_pretrain_refuses_the_settings_only_finetuning_reads(two_domains: list[Path], tmp_path: Path,
                                                             setting: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A pre-training read none of them and ran as if they were not given (train.freeze=encoder trained the
    encoder anyway; train.user_fraction=0.5 trained on every user)."""
    code = main(["pretrain", *map(str, two_domains), "--out", str(tmp_path / "run"), *TINY, f"--{setting}"])
    err = capsys.readouterr().err
    name, value = setting.split("=")
    assert code == 2 and f"{name}={value} is a fine-tuning setting" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()  # refused before anything is written


def test_pretrain_says_the_validation_settings_do_nothing_there(capsys: pytest.CaptureFixture[str]) -> None:
    """--train.patience and the like were taken without a word by a pre-training, which never validates."""
    from unisrec.pretrain import pretrain_settings, recipe_config

    given = ["train.patience=1", "train.select_metric=recall@10", "train.epochs=2"]
    _, settings = pretrain_settings(["/a"], recipe_config(), given)
    assert capsys.readouterr().err == ("note: train.patience, train.select_metric do nothing in pre-training (it "
                                       "never validates nor mixes weights); read by fine-tuning only\n")
    assert settings["config"]["train"]["patience"] == 1  # recorded as given: the fingerprint is unchanged
    pretrain_settings(["/a"], recipe_config(), ["train.epochs=2", "train.patience=10"])  # the default: nothing said
    assert capsys.readouterr().err == ""


def test_pretrain_says_which_view_settings_make_no_view(capsys: pytest.CaptureFixture[str]) -> None:
    """The recipe makes no word-drop views (pretrain.word_drop_variants=0): --pretrain.word_drop=0.5 changed the
    run's fingerprint and nothing else, without a word; without the sequence-sequence loss no view is made."""
    from unisrec.pretrain import pretrain_settings, recipe_config

    pretrain_settings(["/a"], recipe_config(), ["pretrain.word_drop=0.5"])
    assert capsys.readouterr().err == ("note: pretrain.word_drop does nothing here (pretrain.word_drop=0.5, "
                                       "pretrain.word_drop_variants=0: word-drop views need both above 0)\n")
    pretrain_settings(["/a"], recipe_config(), ["pretrain.lambda_ss=0", "pretrain.item_drop=0.3",
                                                "pretrain.word_drop_variants=2"])
    assert capsys.readouterr().err == ("note: pretrain.item_drop, pretrain.word_drop_variants do nothing here "
                                       "(pretrain.lambda_ss=0: no sequence-sequence loss, whose views they make)\n")
    for read in (["pretrain.word_drop=0.5", "pretrain.word_drop_variants=3"], ["pretrain.item_drop=0.3"]):
        pretrain_settings(["/a"], recipe_config(), read)  # views made with them: nothing said
        assert capsys.readouterr().err == ""


def test_domains_of_the_same_name_keep_apart_keys(tmp_path: Path, tiny_lm_dir: Path) -> None:
    """Two folders holding datasets of one name (or one folder given twice) log each domain's loss apart."""
    from unisrec.config import RunConfig
    from unisrec.datasets.processed import load_processed
    from unisrec.pretrain import load_corpus, unique_names

    first = prepare_synthetic(tmp_path / "a" / "shop", seed=1)
    second = prepare_synthetic(tmp_path / "b" / "shop", seed=2, n_items=25)
    config = RunConfig().with_overrides([o[2:] for o in TINY] + [f"text.model={tiny_lm_dir}"])
    names = [load_processed(d).name for d in (first, second)]
    assert names[0] == names[1]  # the premise: one name
    corpus = load_corpus([first, second, first], config)
    assert corpus.names == [names[0], f"{names[0]}-2", f"{names[0]}-3"]
    assert unique_names(["shop", "shop", "shop-2"]) == ["shop", "shop-3", "shop-2"]  # never another's name
    assert unique_names(["a", "b"]) == ["a", "b"]


def test_a_replacement_killed_after_its_metrics_is_moved_in_not_trained_again(
        two_domains: list[Path], tmp_path: Path, tiny_lm_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """pretrain --overwrite killed between the replacement's metrics.json and its move into place: run again,
    it is moved in (its card written) and not trained again."""
    import unisrec.pretrain as pretrain_module

    out = tmp_path / "pre"
    overrides = [flag.removeprefix("--") for flag in TINY] + ["train.epochs=1", f"text.model={tiny_lm_dir}"]
    pretrain_module.pretrain(two_domains, out, overrides=overrides)
    old_metrics = (out / "metrics.json").read_bytes()
    again = [*overrides, "train.seed=5"]

    def killed(work: Path, final: Path) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(pretrain_module, "finish_run_dir", killed)
    with pytest.raises(KeyboardInterrupt):
        pretrain_module.pretrain(two_domains, out, overrides=again, overwrite=True)
    staged = json.loads((tmp_path / ".pre.overwrite" / "metrics.json").read_text())
    card = (tmp_path / ".pre.overwrite" / "README.md").read_text()
    (tmp_path / ".pre.overwrite" / "README.md").unlink()  # as if killed before its card, too
    assert (out / "metrics.json").read_bytes() == old_metrics

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("trained again")

    monkeypatch.undo()
    monkeypatch.setattr(pretrain_module, "fit", no_training)
    assert pretrain_module.pretrain(two_domains, out, overrides=again, overwrite=True) == staged
    assert json.loads((out / "metrics.json").read_text())["seed"] == 5 == staged["seed"]
    assert (out / "README.md").read_text() == card  # written again, the same
    assert not (tmp_path / ".pre.overwrite").exists() and not (tmp_path / ".pre.replaced").exists()
