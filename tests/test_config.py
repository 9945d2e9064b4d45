"""Typed configs: defaults, YAML round trip, strict keys, dotted overrides, every shipped config."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest

from unisrec.config import (
    POOLINGS,
    ModelConfig,
    RunConfig,
    TextConfig,
    given_fields,
    load_config,
    load_config_overrides,
    override,
    save_config,
)
from unisrec.errors import ConfigError

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_defaults_are_the_papers() -> None:
    m, t = ModelConfig(), RunConfig().train
    assert (m.n_layers, m.n_heads, m.hidden_size, m.inner_size, m.max_seq_len) == (2, 2, 300, 256, 50)
    assert (m.hidden_dropout, m.attn_dropout, m.adaptor_dropout, m.n_experts) == (0.5, 0.5, 0.2, 8)
    assert (m.temperature, m.layer_norm_eps) == (0.07, 1e-12)
    assert (t.lr, t.batch_size, t.patience) == (1e-3, 2048, 10)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads(path: Path) -> None:
    config = load_config(path)
    assert isinstance(config, RunConfig)


def test_there_are_shipped_configs() -> None:
    assert len(CONFIGS) >= 1


def test_yaml_round_trip(tmp_path: Path) -> None:
    config = RunConfig().with_overrides(["model.n_layers=3", "eval.ks=[5,10]", "train.lr=3e-4"])
    save_config(config, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == config
    assert config.model.n_layers == 3 and config.eval.ks == (5, 10) and config.train.lr == 3e-4


def test_unknown_keys_and_bad_values_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'n_layer' in model"):
        RunConfig().with_overrides(["model.n_layer=3"])
    with pytest.raises(ConfigError, match=r"config.model.n_layers: expected an integer, got 'three'"):
        RunConfig().with_overrides(["model.n_layers=three"])
    with pytest.raises(ConfigError, match=r"model\.hidden_size \(300\) must be divisible by n_heads \(7\)"):
        RunConfig().with_overrides(["model.n_heads=7"])
    with pytest.raises(ConfigError, match=r"expected section\.field=value"):
        RunConfig().with_overrides(["model.n_layers"])
    for bad, name in itertools.product(("-0.5", "nan"), ("anchor", "replay")):  # non-negative coefficients
        with pytest.raises(ConfigError, match=rf"train\.{name} must be a number >= 0"):
            RunConfig().with_overrides([f"train.{name}={bad}"])
    assert RunConfig().with_overrides(["train.anchor=0.01"]).train.anchor == 0.01
    with pytest.raises(ConfigError, match=r"value '\[10,' is not valid YAML .*'eval\.ks=\[10, 20\]'"):
        RunConfig().with_overrides(["eval.ks=[10,"])  # "--eval.ks=[10, 20]" split by the shell
    with pytest.raises(ConfigError, match=r"value '@x' is not valid YAML .*'text\.model=\"@x\"'"):
        RunConfig().with_overrides(["text.model=@x"])
    assert RunConfig().with_overrides(['text.model="@x"']).text.model == "@x"
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  hidden: 3\n")
    with pytest.raises(ConfigError, match=f"{path}.model: unknown key 'hidden'"):
        load_config(path)
    path.write_text("train:\n  lr: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_booleans_are_not_strings() -> None:
    assert RunConfig().with_overrides(["eval.exclude_seen=true"]).eval.exclude_seen is True
    with pytest.raises(ConfigError, match="expected true or false"):
        RunConfig().with_overrides(["eval.exclude_seen=1"])


def test_a_choice_spelled_like_a_yaml_boolean_reads_as_the_choice(tmp_path: Path) -> None:
    assert RunConfig().with_overrides(["train.interpolate=off"]).train.interpolate == "off"  # YAML 1.1: off = False
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  interpolate: off\n")
    assert load_config(path).train.interpolate == "off"
    with pytest.raises(ConfigError, match=r"train\.freeze: expected one of"):  # no choice spelled so: still an error
        RunConfig().with_overrides(["train.freeze=off"])


def test_later_settings_read_back_as_the_runs_made_before_them() -> None:
    from unisrec.config import with_later_absent, without_later_absent

    plain = RunConfig().to_dict()
    assert plain["train"]["interpolate"] == "auto"  # today's default ...
    old = {**plain, "train": {k: v for k, v in plain["train"].items() if k not in ("interpolate", "select_start")}}
    filled = with_later_absent(old)  # ... but a config written before the setting means "off"
    assert filled["train"]["interpolate"] == "off" and filled["train"]["select_start"] is False
    assert RunConfig.from_dict(filled).train.interpolate == "off"
    assert without_later_absent(filled) == without_later_absent(old)  # and is written back as it was
    kept = without_later_absent(plain)
    assert kept["train"]["interpolate"] == "auto" and "select_start" not in kept["train"]


def test_paper_pretraining_config_has_the_papers_settings() -> None:
    paper = load_config(Path(__file__).parent.parent / "configs" / "pretrain-paper.yaml")
    assert (paper.train.batch_size, paper.train.lr, paper.train.epochs) == (8192, 1e-3, 300)
    assert (paper.train.schedule, paper.train.precision) == ("constant", "float32")
    assert paper.pretrain.word_drop_variants == 3
    assert paper.pretrain.lambda_ss == 1e-3


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_a_config_file_as_overrides_gives_the_same_config(path: Path) -> None:
    overrides = load_config_overrides(path)
    assert RunConfig().with_overrides(overrides) == load_config(path)
    assert given_fields("model", RunConfig(), overrides) >= {"hidden_size", "n_layers"}  # named = given


@pytest.mark.parametrize("value", ["mean", "./lm: v2", "123", "yes", "null", "", " padded", "a=b", "[x", 3e-4,
                                   7, True, (5, 10)])
def test_override_sets_exactly_the_value(value: object) -> None:
    key = {str: "text.model", float: "train.lr", int: "train.epochs", bool: "eval.exclude_seen",
           tuple: "eval.ks"}[type(value)]
    if value == "":
        with pytest.raises(ConfigError, match=r"text\.model must be a model name"):
            RunConfig().with_overrides([override(key, value)])
        return
    section, name = key.split(".")
    assert getattr(getattr(RunConfig().with_overrides([override(key, value)]), section), name) == value
    assert override("text.pooling", "mean") == "text.pooling=mean"  # plain when YAML reads it back as is


def test_text_config_checks_and_reads_earlier_records() -> None:
    assert POOLINGS == ("cls", "mean", "cls+mean")
    assert RunConfig().text == TextConfig() and RunConfig().with_overrides(["text.pooling=cls"]).text.pooling == "cls"
    with pytest.raises(ConfigError, match=r"text\.precision must be one of float32, bfloat16"):
        TextConfig(precision="float16")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"text\.max_length must be an integer >= 2"):
        TextConfig(max_length=True)
    record = {"model": "m", "pooling": "mean", "max_length": "64", "fingerprint": "f", "dim": "32"}
    assert TextConfig.from_saved(record) == TextConfig("m", "mean", 64, "float32")
    with pytest.raises(ConfigError, match="max_length: expected an integer"):
        TextConfig.from_saved({**record, "max_length": "long"})
    with pytest.raises(ConfigError, match="records no text encoder"):
        TextConfig.from_saved({"pooling": "mean"})


def test_given_fields_are_named_or_changed() -> None:
    config = RunConfig(model=ModelConfig(n_layers=3))
    assert given_fields("model", config, ["model.hidden_dropout=0.3", "--train.lr=1"]) == {"hidden_dropout", "n_layers"}
    assert given_fields("text", config, ["text.pooling=cls+mean"]) == {"pooling"}  # named, though the default


def test_the_selection_metric_is_one_that_validation_computes() -> None:
    assert RunConfig().train.select_metric == "ndcg@10"
    for ks, metric in (("[5]", "mrr@5"), ("[10, 20]", "recall@20")):
        assert RunConfig().with_overrides([f"eval.ks={ks}", f"train.select_metric={metric}"]).eval.ks[-1] > 0
    for overrides, got in ((["eval.ks=[20, 50]"], "'ndcg@10'"), (["train.select_metric=hit@10"], "'hit@10'"),
                           (["train.select_metric=ndcg@ten"], "'ndcg@ten'"), (["train.select_metric=ndcg"], "'ndcg'")):
        with pytest.raises(ConfigError, match=rf"train\.select_metric must be one of the validation .*got {got}"):
            RunConfig().with_overrides(overrides)


@pytest.mark.parametrize(("override", "message"), [
    ("train.lr=.nan", r"train\.lr must be a number > 0, got nan"),
    ("train.lr=.inf", r"train\.lr must be a number > 0, got inf"),
    ("train.weight_decay=-1", r"train\.weight_decay must be a number >= 0, got -1"),
    ("train.max_grad_norm=-1", r"train\.max_grad_norm must be a number >= 0"),
    ("train.threads=-3", r"train\.threads must be >= 0, got -3"),
    ("train.seed=-1", r"train\.seed must be >= 0, got -1"),
    ("train.repeat_lr_scale=.inf", r"train\.repeat_lr_scale must be a number >= 0, got inf"),
    ("model.initializer_range=-1", r"model\.initializer_range must be a number >= 0"),
    ("model.layer_norm_eps=-1", r"model\.layer_norm_eps must be a number > 0"),
    ("model.temperature=.nan", r"model\.temperature must be a number > 0, got nan"),
    ("model.temperature=.inf", r"model\.temperature must be a number > 0, got inf"),
    ("pretrain.lambda_ss=.nan", r"pretrain\.lambda_ss must be a number >= 0, got nan"),
    ("pretrain.checkpoint_every=-5", r"pretrain\.checkpoint_every must be >= 0, got -5"),
    # looked up by its name after the first epoch: only validation's own spelling is accepted
    ("train.select_metric=ndcg@010", r"train\.select_metric must be one of .*got 'ndcg@010'"),
])
def test_out_of_range_numbers_are_refused_before_any_work(override: str, message: str) -> None:
    """Each of these was accepted and failed inside torch or numpy once the run had started (its run.json then
    refused the corrected command), or trained a broken model (an infinite temperature scores every item 0)."""
    with pytest.raises(ConfigError, match=message):
        RunConfig().with_overrides([override])


def test_a_config_file_names_itself_in_range_errors_and_missing_keys(tmp_path: Path) -> None:
    from unisrec.config import from_plain
    from unisrec.report_config import ExperimentSpec

    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochs: -1}\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(bad))}: train\.epochs must be >= 1, got -1$"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"^experiments\[0\]: missing key 'name'$"):
        from_plain(ExperimentSpec, {"dataset": "tiny", "mode": "sasrec"}, "experiments[0]")


def test_a_renamed_setting_keeps_its_old_name(tmp_path: Path) -> None:
    """pretrain.strided_windows (true: consecutive windows in pre-training; fine-tuning's were exact whatever it
    said) became train.windows: true is auto (strided for pre-training, exact for fine-tuning), false exact."""
    from unisrec.cli import parse_overrides
    from unisrec.config import load_config_overrides

    for old, new in (("true", "auto"), ("false", "exact")):
        assert RunConfig().with_overrides([f"pretrain.strided_windows={old}"]).train.windows == new
        assert parse_overrides([f"--pretrain.strided_windows={old}"]) == [f"train.windows={new}"]
        assert parse_overrides(["--pretrain.strided_windows", old]) == [f"train.windows={new}"]
        path = tmp_path / f"{old}.yaml"
        path.write_text(f"pretrain: {{strided_windows: {old}, lambda_ss: 0.01}}\n")
        assert load_config(path).train.windows == new and load_config(path).pretrain.lambda_ss == 0.01
        assert f"train.windows={new}" in load_config_overrides(path)
    with pytest.raises(ConfigError, match=r"pretrain\.strided_windows \(now train\.windows\) takes true or false"):
        RunConfig().with_overrides(["pretrain.strided_windows=sometimes"])
    saved = RunConfig.from_dict({"pretrain": {"strided_windows": False}}, source="run.json")  # a run of then
    assert saved.train.windows == "exact"
    both = tmp_path / "both.yaml"
    both.write_text("pretrain: {strided_windows: true}\ntrain: {windows: exact}\n")
    with pytest.raises(ConfigError, match=r"pretrain\.strided_windows and its new name train\.windows disagree"):
        load_config(both)


def test_pretraining_overrides_are_found_in_every_spelling() -> None:
    from unisrec.config import pretraining_overrides

    given = ["train.lr=1e-3", "--pretrain.lambda_ss=0", "pretrain={lambda_ss: 0}", " pretrain.item_drop=0.1",
             "pretrain.strided_windows=true", "model.hidden_size=64"]  # the renamed one is train.windows now
    assert pretraining_overrides(given) == ["--pretrain.lambda_ss=0", "pretrain={lambda_ss: 0}",
                                            " pretrain.item_drop=0.1"]


def test_a_date_like_value_is_a_one_line_config_error(tmp_path: Path) -> None:
    """YAML reads 2024-13-45 as a date and fails with ValueError, not YAMLError: a traceback before."""
    from unisrec.config import override_value

    with pytest.raises(ConfigError, match=r"override 'train.epochs=2024-13-45': value '2024-13-45' is not valid YAML"):
        RunConfig().with_overrides(["train.epochs=2024-13-45"])
    assert override_value("2024-13-45") == "2024-13-45" and override_value("3") == 3
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochs: 2024-13-45}\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: not valid YAML \(month must be in 1..12\)"):
        load_config(bad)
