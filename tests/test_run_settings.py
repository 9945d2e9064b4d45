"""Run settings end to end: the text settings are one typed config from the command line to the tensor and
back; a --config file and the command line count alike (also with --init); earlier run layouts still read."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from conftest import prepare_synthetic
from safetensors.numpy import load_file

from unisrec.checkpoint import MODEL_FORMAT, MODEL_FORMAT_VERSION, read_items, read_text_config
from unisrec.cli import build_parser, main, parse_overrides
from unisrec.config import ModelConfig, RunConfig, TextConfig
from unisrec.errors import UnisrecError
from unisrec.finetune import finetune
from unisrec.model_card import finetune_card
from unisrec.recommend import Recommender
from unisrec.text_encoder import TextEncoder
from unisrec.text_model import model_fingerprint

SMALL = [
    "--model.hidden_size=16", "--model.inner_size=16", "--model.max_seq_len=6", "--model.n_experts=2",
    "--model.hidden_dropout=0.1", "--model.attn_dropout=0.1", "--train.batch_size=64", "--train.lr=0.01",
    "--train.progress=false", "--train.log=jsonl",
]


def _settings(argv: list[str]) -> RunConfig:
    """The config `unisrec finetune ARGV` asks for (before --init): parsed as main() parses it."""
    from unisrec.cli import _run_config

    args, extra = build_parser().parse_known_args(["finetune", "data", "--mode", "inductive", "--out", "r", *argv])
    args.overrides = parse_overrides(extra)
    config, overrides = _run_config(args, reads_pretrain=False)
    return config.with_overrides(overrides)


def test_a_config_files_pretrain_section_is_read_by_pretraining_only(tmp_path: Path) -> None:
    """One --config file for both commands: fine-tuning leaves its pretrain section out (it reads none of it, and
    refuses --pretrain.* flags), pre-training takes it."""
    from unisrec.cli import _run_config
    from unisrec.pretrain import recipe_config

    both = tmp_path / "both.yaml"
    both.write_text("train: {lr: 0.002}\npretrain: {lambda_ss: 0.01, strided_windows: false}\n")
    tuned = _settings(["--config", str(both)])
    assert tuned.train.lr == 0.002 and tuned.pretrain == RunConfig().pretrain
    assert tuned.train.windows == "exact"  # the renamed pretrain.strided_windows is train.windows: it stays
    args, extra = build_parser().parse_known_args(["pretrain", "d", "--out", "p", "--config", str(both)])
    args.overrides = parse_overrides(extra)
    config, overrides = _run_config(args, recipe_config())
    assert config.with_overrides(overrides).pretrain.lambda_ss == 0.01


def _run_json(run: Path) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((run / "run.json").read_text())["config"]
    return config


@pytest.mark.parametrize(("alias", "dotted", "expected"), [
    (["--pooling", "mean"], ["--text.pooling=mean"], TextConfig(pooling="mean")),
    (["--text-model", "/models/my lm"], ["--text.model=/models/my lm"], TextConfig(model="/models/my lm")),
    (["--text-precision", "bfloat16"], ["--text.precision", "bfloat16"], TextConfig(precision="bfloat16")),
])
def test_text_flags_are_aliases_of_dotted_text_settings(alias: list[str], dotted: list[str],
                                                       expected: TextConfig) -> None:
    assert _settings(alias).text == _settings(dotted).text == expected
    assert _settings(alias) == _settings(dotted)  # nothing else changes
    assert _settings(["--text.max_length=16"]).text == TextConfig(max_length=16)
    tricky = "./lm: v2=final"  # YAML would read it as a mapping: the alias passes it on as this exact string
    assert _settings(["--text-model", tricky]).text.model == tricky


def test_bad_text_settings_are_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["finetune", str(tmp_path / "none"), "--mode", "inductive", "--out", str(tmp_path / "r")]
    assert main([*argv, "--text.pooling=max"]) == 2
    assert "text.pooling: expected one of ('cls', 'mean', 'cls+mean'), got 'max'" in capsys.readouterr().err
    assert main([*argv, "--text.max_length=1"]) == 2
    assert "text.max_length must be an integer >= 2" in capsys.readouterr().err
    assert main([*argv, "--text.pooler=mean"]) == 2
    assert "unknown key 'pooler' in text" in capsys.readouterr().err


def test_max_length_from_the_command_line_reaches_the_vectors_and_reads_back(tmp_path: Path,
                                                                           tiny_lm_dir: Path) -> None:
    data = prepare_synthetic(tmp_path / "d", n_users=30, n_items=12)
    run = tmp_path / "run"
    argv = ["finetune", str(data), "--mode", "inductive", "--out", str(run), "--epochs", "1", *SMALL,
            "--text-model", str(tiny_lm_dir), "--pooling", "mean", "--text.max_length=3"]
    assert main(argv) == 0
    expected = TextConfig(str(tiny_lm_dir), "mean", 3)
    assert _run_json(run)["text"] == {"model": str(tiny_lm_dir), "pooling": "mean", "max_length": 3,
                                      "precision": "float32"}
    assert read_text_config(run) == expected  # the one way back from a run folder
    saved = json.loads((run / "config.json").read_text())["text_encoder"]
    assert saved["max_length"] == 3 and saved["fingerprint"] == model_fingerprint(expected)["digest"]
    _ids, texts = read_items(run)
    stored = load_file(str(run / "items.safetensors"))["item_text"]  # (N, D): what the model's buffer holds
    np.testing.assert_allclose(stored, TextEncoder(expected).encode(texts), atol=1e-5)
    assert not np.allclose(stored, TextEncoder(replace(expected, max_length=128)).encode(texts), atol=1e-3)
    assert "max_length 3" in (run / "README.md").read_text()  # the model card names the settings

    # a run saved by an earlier version recorded no precision; serving still encodes new texts alike
    config = json.loads((run / "config.json").read_text())
    del config["text_encoder"]["precision"]
    (run / "config.json").write_text(json.dumps(config))
    recommender = Recommender.from_pretrained(run)
    assert recommender.add_items(["red lens camera"], ["new"]) == 13


def _init_run(tmp_path: Path, tiny_lm_dir: Path, data: Path) -> Path:
    src = tmp_path / "src"
    assert main(["finetune", str(data), "--mode", "inductive", "--out", str(src), "--epochs", "1", *SMALL,
                 "--text-model", str(tiny_lm_dir), "--pooling", "mean"]) == 0
    return src


def test_with_init_a_config_file_counts_like_the_command_line(tmp_path: Path, tiny_lm_dir: Path) -> None:
    data = prepare_synthetic(tmp_path / "d", n_users=30, n_items=12)
    src = _init_run(tmp_path, tiny_lm_dir, data)
    base = ["finetune", str(data), "--mode", "inductive", "--init", str(src), "--epochs", "1",
            "--train.progress=false", "--train.log=jsonl"]
    assert main([*base, "--out", str(tmp_path / "flags"), "--model.hidden_dropout=0.3", "--text.max_length=16"]) == 0
    config_file = tmp_path / "tune.yaml"
    config_file.write_text(yaml.safe_dump({"model": {"hidden_dropout": 0.3}, "text": {"max_length": 16}}))
    assert main([*base, "--out", str(tmp_path / "file"), "--config", str(config_file)]) == 0
    assert main([*base, "--out", str(tmp_path / "plain")]) == 0

    flags, file, plain = (_run_json(tmp_path / name) for name in ("flags", "file", "plain"))
    assert flags == file  # the same settings, however they were given
    for config in (flags, file, plain):
        assert config["model"]["hidden_size"] == 16  # the init run's architecture ...
    assert flags["model"]["hidden_dropout"] == 0.3  # ... except what was given
    assert plain["model"]["hidden_dropout"] == 0.1
    assert read_text_config(tmp_path / "file") == TextConfig(str(tiny_lm_dir), "mean", 16)  # init's + given
    assert read_text_config(tmp_path / "plain") == TextConfig(str(tiny_lm_dir), "mean")  # the init run's

    # the Python API: fields of the config object that differ from the defaults count as given too
    given = RunConfig(model=replace(ModelConfig(), hidden_dropout=0.3))
    finetune(data, "inductive", tmp_path / "api", config=given, init=src,
             overrides=["train.epochs=1", "train.progress=false", "train.log=jsonl"])
    api = _run_json(tmp_path / "api")
    assert api["model"]["hidden_dropout"] == 0.3 and api["model"]["hidden_size"] == 16


def test_a_transfer_keeps_the_last_item_skip_unless_told(tmp_path: Path, tiny_lm_dir: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The recipe pre-trains with the skip; a target where it costs (MovieLens-1M) switches it off at fine-tuning,
    and the skip-free model loads the same weights (the skip has no parameter). The run says what it kept."""
    data = prepare_synthetic(tmp_path / "d", n_users=30, n_items=12)
    src = tmp_path / "src"
    assert main(["finetune", str(data), "--mode", "inductive", "--out", str(src), "--epochs", "1", *SMALL,
                 "--text-model", str(tiny_lm_dir), "--pooling", "mean", "--model.last_item_skip=true"]) == 0
    assert "keeps the pre-trained model's" not in capsys.readouterr().err  # from scratch: nothing inherited
    base = ["finetune", str(data), "--mode", "transductive", "--init", str(src), "--epochs", "1",
            "--train.progress=false", "--train.log=jsonl"]
    assert main([*base, "--out", str(tmp_path / "kept")]) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "keeps the pre-trained model's" in line]
    assert len(said) == 1 and said[0].startswith(f"--init {src}: ")
    assert "model.last_item_skip=true" in said[0] and "model.hidden_size=16" in said[0]  # SMALL's, not defaults
    assert "item_repr" not in said[0] and "architecture" not in said[0]  # the mode's, not settings
    assert main([*base, "--out", str(tmp_path / "off"), "--model.last_item_skip=false", "--model.hidden_size=16"]) == 0
    said = [line for line in capsys.readouterr().err.splitlines() if "keeps the pre-trained model's" in line]
    assert len(said) == 1 and "last_item_skip" not in said[0] and "hidden_size" not in said[0]  # given: not kept
    assert "model.inner_size=16" in said[0]
    assert _run_json(src)["model"]["last_item_skip"] is True
    assert _run_json(tmp_path / "kept")["model"]["last_item_skip"] is True
    assert _run_json(tmp_path / "off")["model"]["last_item_skip"] is False
    kept, off = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("kept", "off"))
    assert _run_json(tmp_path / "off")["model"]["hidden_size"] == 16  # otherwise the init run's model
    assert any(name.startswith("encoder.") for name in off["transferred_parameters"])
    assert off["transferred_parameters"] == kept["transferred_parameters"]  # the same parameters carried over


def _config_json(folder: Path, text_encoder: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    config = {"format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION, "unisrec_version": "0.1.0",
              "model": {}, "n_items": 0, "text_dim": 4}
    if text_encoder is not None:
        config["text_encoder"] = text_encoder
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_earlier_run_layouts_read_back(tmp_path: Path) -> None:
    header = {"format": "unisrec-item-embeddings/1", "kind": "base", "fingerprint": "ab" * 32, "dim": "64",
              "n_items": "9", "model_path": "/somewhere"}
    # the first releases: header + model, pooling, max_length (an int); no precision yet
    first = {**header, "model": "bert-base-uncased", "pooling": "cls", "max_length": 128}
    assert read_text_config(_config_json(tmp_path / "a", first)) == TextConfig("bert-base-uncased", "cls", 128)
    # the header's own strings (max_length "64") and a precision
    strings = {**header, "model": "m", "pooling": "mean", "max_length": "64", "precision": "bfloat16"}
    assert read_text_config(_config_json(tmp_path / "b", strings)) == TextConfig("m", "mean", 64, "bfloat16")
    assert read_text_config(_config_json(tmp_path / "c", {})) is None  # ID-only runs record {}
    assert read_text_config(_config_json(tmp_path / "d", None)) is None
    with pytest.raises(UnisrecError, match=r"config\.json: .*pooling"):
        read_text_config(_config_json(tmp_path / "e", {**strings, "pooling": "max"}))

    # run.json of an earlier version: no text section in its config, the text flags given as "text_encoder"
    old_config = {k: v for k, v in RunConfig().to_dict().items() if k != "text"}
    assert RunConfig.from_dict(old_config) == RunConfig()
    settings = {"command": "finetune", "data": "/d", "mode": "inductive", "init": None,
                "text_encoder": {"pooling": "mean"}, "config": old_config}
    card = finetune_card(settings, {"valid": {}, "test": {}}, "unisrec finetune ...")
    assert "- Text encoder: pooling mean" in card


def test_a_run_interrupted_before_a_later_setting_existed_still_resumes(tmp_path: Path) -> None:
    """A run folder written by an earlier version (its config without the later settings) resumes under this one
    while those settings hold their defaults, and is refused when one of them changes."""
    from unisrec.config import LATER_SETTINGS
    from unisrec.runs import fingerprint, open_run_dir

    # what `finetune` records without --init: train.interpolate=off, as every earlier run (nothing to mix with)
    settings = {"command": "finetune", "data": "/d", "mode": "inductive", "init": None,
                "config": RunConfig().with_overrides(["train.interpolate=off"]).to_dict()}
    old = json.loads(json.dumps(settings))
    for section, name in LATER_SETTINGS:
        del old["config"][section][name]
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"fingerprint": fingerprint(old), **old}))
    (out / "train.log").write_text("")  # begun: a folder with its run.json alone is started afresh
    assert fingerprint(old) == fingerprint(settings)
    assert open_run_dir(out, settings, overwrite=False) == out
    transfer = {**settings, "init": "/pre"}  # from a pre-trained model the default (auto) is another run than before
    default_now, before = {**transfer, "config": RunConfig().to_dict()}, {**transfer, "config": old["config"]}
    assert fingerprint(default_now) != fingerprint(before)
    changed = RunConfig().with_overrides(["model.repeat_bias=true", "train.interpolate=off"]).to_dict()
    assert fingerprint({**settings, "config": changed}) != fingerprint(settings)
    with pytest.raises(UnisrecError, match="holds an unfinished run with different settings"):
        open_run_dir(out, {**settings, "config": changed}, overwrite=False)


def test_a_run_resumes_under_other_progress_settings_and_a_refusal_names_what_changed(tmp_path: Path) -> None:
    """A killed run rerun with --train.progress=true (or a pre-training with another eval.*, which it never reads)
    was refused as "different settings", without saying which, and --overwrite threw its checkpoints away."""
    from unisrec.runs import fingerprint, open_run_dir

    settings = {"command": "pretrain", "data": ["/a", "/b"], "config": RunConfig().to_dict()}
    out = tmp_path / "run"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"fingerprint": fingerprint(settings), **settings}))
    (out / "train.log").write_text("")  # begun: a folder with its run.json alone is started afresh
    shown = RunConfig().with_overrides(["train.progress=true", "train.log=tensorboard", "eval.batch_size=7"])
    assert open_run_dir(out, {**settings, "config": shown.to_dict()}, overwrite=False) == out  # resumed
    assert json.loads((out / "run.json").read_text())["config"] == settings["config"]  # as the run it was
    other = RunConfig().with_overrides(["train.epochs=40", "train.progress=true", "text.pooling=mean"]).to_dict()
    with pytest.raises(UnisrecError) as refused:
        open_run_dir(out, {**settings, "config": other}, overwrite=False)
    assert str(refused.value) == (
        f"{out}: holds an unfinished run with different settings (text.pooling: \"cls+mean\" -> \"mean\"; "
        f"train.epochs: {RunConfig().train.epochs} -> 40); run it with its own settings to resume it, or pass "
        "--overwrite, or choose another --out")
    evaluated = {**settings, "command": "finetune", "mode": "inductive", "init": None}  # fine-tuning validates
    out2 = tmp_path / "run2"
    out2.mkdir()
    (out2 / "run.json").write_text(json.dumps({"fingerprint": fingerprint(evaluated), **evaluated}))
    (out2 / "train.log").write_text("")
    with pytest.raises(UnisrecError, match=rf"\(eval.batch_size: {RunConfig().eval.batch_size} -> 7\)"):
        open_run_dir(out2, {**evaluated, "config": shown.to_dict()}, overwrite=False)


def test_a_start_that_failed_before_its_first_step_does_not_block_the_corrected_command(
        tmp_path: Path, tiny_lm_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A start that failed after writing run.json (here: a text model that is not there) left a folder that the
    corrected command refused as "an unfinished run with different settings"; nothing was trained, so it
    starts afresh. A folder where training began is still refused."""
    data = prepare_synthetic(tmp_path / "d", n_users=30, n_items=20)
    out = tmp_path / "run"
    argv = ["finetune", str(data), "--mode", "inductive", "--out", str(out), *SMALL, "--train.epochs=1",
            "--pooling", "mean"]
    assert main([*argv, "--text-model", str(tmp_path / "no-such-model")]) == 2
    assert not out.exists()  # the missing model is found before the folder is written (its files are in the origin)
    assert main([*argv, "--text-model", str(tiny_lm_dir)]) == 0
    assert json.loads((out / "run.json").read_text())["config"]["text"]["model"] == str(tiny_lm_dir)
    assert (out / "metrics.json").exists()
    failed = tmp_path / "failed"  # what a start that failed after its run.json leaves (e.g. a damaged --init)
    failed.mkdir()
    (failed / "run.json").write_text((out / "run.json").read_text())
    assert main([*argv[:5], str(failed), *argv[6:], "--text-model", str(tiny_lm_dir), "--train.lr=0.02"]) == 0
    assert json.loads((failed / "run.json").read_text())["config"]["train"]["lr"] == 0.02
    started = tmp_path / "started"
    started.mkdir()
    (started / "run.json").write_text((out / "run.json").read_text())
    (started / "train.log").write_text("")
    capsys.readouterr()
    assert main([*argv[:5], str(started), *argv[6:], "--text-model", str(tiny_lm_dir), "--train.lr=0.02"]) == 2
    assert "holds an unfinished run with different settings (train.lr: 0.01 -> 0.02)" in capsys.readouterr().err


def test_the_model_card_says_what_finetune_init_does_with_the_given_settings() -> None:
    from dataclasses import replace

    from unisrec.config import TrainConfig
    from unisrec.model_card import transfer_defaults

    default = TrainConfig()
    assert (default.freeze, default.encoder_lr_scale, default.interpolate) == ("auto", 1.0, "auto")
    assert transfer_defaults() == ("everything fine-tunes; then the weights are mixed with these as validation "
                                   "prefers, `train.interpolate=auto`")
    slow = replace(default, encoder_lr_scale=0.1, interpolate="off")
    assert transfer_defaults(slow) == "everything fine-tunes; the encoder at 0.1x the learning rate"
    frozen = replace(default, freeze="encoder", encoder_lr_scale=0.1, interpolate="off")
    assert transfer_defaults(frozen) == "the sequence encoder frozen (the paper's protocol)"


def test_model_card_says_what_a_transfer_trained_on() -> None:
    from unisrec.config import TrainConfig
    from unisrec.model_card import training_data

    assert training_data(TrainConfig()) == "all users"
    assert training_data(TrainConfig(user_fraction=0.1)) == "10% of users"
    assert training_data(TrainConfig(user_fraction=0.25, cold_items=0.2)) == "25% of users, 20% of items withheld"


@pytest.mark.parametrize("finished", [True, False])
def test_a_kill_between_the_renames_of_finish_run_dir_loses_no_run(tmp_path: Path, finished: bool) -> None:
    from unisrec.runs import finish_run_dir, open_run_dir, staging_dir

    out = tmp_path / "run"
    settings = {"kind": "finetune", "config": {"train": {"lr": 0.001}}}
    open_run_dir(out, settings, overwrite=False)
    (out / "metrics.json").write_text('{"old": true}')
    work = open_run_dir(out, settings, overwrite=True)  # the replacement trains beside the finished run
    assert work == staging_dir(out)
    if finished:
        (work / "metrics.json").write_text('{"new": true}')
    out.rename(tmp_path / ".run.replaced")  # finish_run_dir killed after its first rename: no run at ``out``
    open_run_dir(out, settings, overwrite=True)  # the next command on ``out`` puts one back first
    assert (out / "metrics.json").read_text() == ('{"new": true}' if finished else '{"old": true}')
    assert not (tmp_path / ".run.replaced").exists()
    if not finished:  # an unfinished replacement stays staged, to resume and move in when it ends
        assert (work / "run.json").exists()
        (work / "metrics.json").write_text('{"new": true}')
        finish_run_dir(work, out)
        assert (out / "metrics.json").read_text() == '{"new": true}' and not work.exists()


def test_an_unfinished_run_resumes_only_from_the_inputs_it_started_from(tmp_path: Path) -> None:
    from unisrec.runs import fingerprint, open_run_dir

    settings = {"kind": "finetune", "init": "/pre", "config": {"train": {"lr": 0.001}}}
    out = tmp_path / "run"
    open_run_dir(out, settings, overwrite=False, origin={"init_fingerprint": "aaaa"})
    made = json.loads((out / "run.json").read_text())
    assert made["origin"] == {"init_fingerprint": "aaaa"} and made["fingerprint"] == fingerprint(settings)
    assert open_run_dir(out, settings, overwrite=False, origin={"init_fingerprint": "aaaa"}) == out  # resumes
    with pytest.raises(UnisrecError, match=r"started from other inputs: the --init run \(trained again with other "
                                           r"settings\) changed since \(init_fingerprint\); its epochs so far"):
        open_run_dir(out, settings, overwrite=False, origin={"init_fingerprint": "bbbb"})
    del made["origin"]  # a run started before origins were kept: resumed as before
    (out / "run.json").write_text(json.dumps(made))
    assert open_run_dir(out, settings, overwrite=False, origin={"init_fingerprint": "bbbb"}) == out
    # --overwrite over a finished run, its replacement begun from other inputs: started again, not refused
    # (the refusal told the user to pass the --overwrite they had passed)
    (out / "metrics.json").write_text("{}")
    work = open_run_dir(out, settings, overwrite=True, origin={"init_fingerprint": "bbbb"})
    (work / "checkpoint").mkdir()
    again = open_run_dir(out, settings, overwrite=True, origin={"init_fingerprint": "cccc"})
    assert again == work and not (work / "checkpoint").exists()
    assert json.loads((work / "run.json").read_text())["origin"] == {"init_fingerprint": "cccc"}


def test_a_run_resumes_only_on_the_data_and_text_model_it_started_with(tmp_path: Path, tiny_lm_dir: Path) -> None:
    """run.json held the dataset's and the text model's paths only: a run interrupted, then resumed after `unisrec
    prepare --overwrite` of its dataset (or a changed model folder), went on silently, its epochs trained on two
    inputs and its best epoch chosen across them."""
    import shutil

    from conftest import prepare_synthetic

    from unisrec.config import TextConfig
    from unisrec.runs import open_run_dir, run_origin

    data = prepare_synthetic(tmp_path / "d", seed=1)
    text = TextConfig(model=str(tiny_lm_dir), pooling="mean")
    settings = {"command": "finetune", "data": str(data), "config": {}}
    out = tmp_path / "run"
    open_run_dir(out, settings, overwrite=False, origin=run_origin([data], text))
    (out / "train.log").write_text('{"epoch": 1}\n')  # it has trained
    assert open_run_dir(out, settings, overwrite=False, origin=run_origin([data], text)) == out  # same: resumes
    shutil.rmtree(data)
    prepare_synthetic(tmp_path / "d", seed=2)  # another dataset at the same path
    with pytest.raises(UnisrecError, match=r"the dataset's files \(prepared again\) changed since "
                                           r"\(data_fingerprint\)"):
        open_run_dir(out, settings, overwrite=False, origin=run_origin([data], text))
    shutil.rmtree(data)
    prepare_synthetic(tmp_path / "d", seed=1)  # the same data again: resumes
    assert open_run_dir(out, settings, overwrite=False, origin=run_origin([data], text)) == out
    other = tmp_path / "lm"
    shutil.copytree(tiny_lm_dir, other)
    moved = TextConfig(model=str(other), pooling="mean")  # the same files elsewhere: the same model
    assert run_origin([data], moved) == run_origin([data], text)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "layer_norm_eps": 1e-5}))
    with pytest.raises(UnisrecError, match=r"the text model's files changed since \(text_fingerprint\)"):
        open_run_dir(out, settings, overwrite=False, origin=run_origin([data], moved))


def test_a_fine_tuning_with_replay_resumes_only_on_the_corpus_it_replayed(tmp_path: Path, tiny_lm_dir: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The replayed corpora are inputs of the run too: one prepared again at the same path was taken on resume."""
    import shutil

    from conftest import prepare_synthetic

    import unisrec.finetune as finetune_module
    from unisrec.finetune import finetune

    data, corpus = prepare_synthetic(tmp_path / "d", seed=1), prepare_synthetic(tmp_path / "c", seed=2)
    tiny = ["model.hidden_size=8", "model.inner_size=8", "model.n_experts=1", "train.epochs=1", "train.replay=0.5",
            "train.progress=false", f"text.model={tiny_lm_dir}", "text.pooling=mean"]
    out = tmp_path / "run"

    def killed(*args: object) -> None:
        raise KeyboardInterrupt  # a kill once trained, before the run is marked finished

    with monkeypatch.context() as patch:
        patch.setattr(finetune_module, "write_finetune_card", killed)
        with pytest.raises(KeyboardInterrupt):
            finetune(data, "inductive", out, overrides=tiny, replay=[corpus])
    shutil.rmtree(corpus)
    prepare_synthetic(tmp_path / "c", seed=3)  # another corpus at the same path
    with pytest.raises(UnisrecError, match=r"the dataset's files \(prepared again\) changed since"):
        finetune(data, "inductive", out, overrides=tiny, replay=[corpus])


def test_the_model_card_states_cold_metrics_as_computed_and_says_when_there_are_none() -> None:
    settings: dict[str, object] = {"command": "finetune", "data": "/d", "mode": "inductive", "init": None, "config": {}}
    scored = {"recall@10": 0.1, "cold_recall@20": 0.25, "cold_ndcg@20": 0.125, "cold_cases": 8.0}
    card = finetune_card(settings, {"valid": {}, "test": scored}, "unisrec finetune ...")
    assert "Cold items (never trained on): 8 test cases, cold_recall@20 0.2500, cold_ndcg@20 0.1250" in card
    assert "cold_recall@10" not in card  # not computed (ks without 10): not printed as 0
    card = finetune_card(settings, {"valid": {}, "test": {"recall@10": 0.1, "cold_cases": 0.0}}, "unisrec ...")
    assert "no test target is a cold item, so there are no cold metrics" in card and "cold_ndcg" not in card
