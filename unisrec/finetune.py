"""Fine-tuning on one domain (or training from scratch), with the paper's freeze policies.

Modes (``--mode``): inductive = UniSRec_t (text only), transductive = UniSRec_t+ID (text + a new ID table),
sasrec = the ID-only baseline. With ``init`` (a pre-trained run) every transferable parameter is copied and
everything fine-tunes, the sequence encoder (Transformer layers and position embeddings) at
``train.lr * train.encoder_lr_scale``; ``train.freeze=encoder`` is the paper's parameter-efficient protocol
(encoder frozen; only the adaptor, the input LayerNorm and the ID table train).
``train.user_fraction`` and ``train.cold_items`` thin the training data (``unisrec.training_data``); with cold
items the test metrics also hold ``cold_recall@K`` / ``cold_ndcg@K`` over the test targets that are cold.
The baselines ``gru4rec``, ``bert4rec`` (its cloze task: ``unisrec.cloze``), ``fdsa`` and ``zesrec`` are
further modes (``unisrec.baselines``); ``zesrec`` alone accepts ``init`` (another zesrec run).
With ``init`` the architecture (``model``) and the text settings (``text``) are the init run's, except the
fields the caller gave: named by an override (the command line, or a ``--config`` file) or changed from the
default in the ``config`` passed.
Every run that scores its test split saves the rank of each test target (``ranks_test.npy``, see ``unisrec.analysis``).
``replay`` (pre-training corpus folders) with ``train.replay`` > 0 adds the pre-training loss of one corpus batch
to every step (``CorpusReplay``).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict, cast

import numpy as np
import torch
from torch import Tensor

from unisrec.analysis import save_ranks
from unisrec.atomic import atomic_write_json, real_folder
from unisrec.baselines import build_model
from unisrec.batches import (
    StepIndex,
    TrainBatch,
    bucketed_batches,
    epoch_batches,
    epoch_steps,
    make_train_batch,
    placeholder_batch,
    shard,
    training_windows,
    window_items,
)
from unisrec.checkpoint import (
    load_transferable,
    read_model_config,
    read_text_config,
    read_weights,
    save_pretrained,
    save_tensors,
)
from unisrec.config import (
    MODE_ARCHITECTURE,
    MODES,
    ModelConfig,
    RunConfig,
    TrainConfig,
    check_finetune_needs,
    from_plain,
    given_fields,
    refuse_pretraining_overrides,
    with_mode_network,
)
from unisrec.datasets.processed import ProcessedDataset, load_processed
from unisrec.devices import resolve_device
from unisrec.distributed import Distributed
from unisrec.errors import UnisrecError
from unisrec.evaluate import evaluate, final_evaluation, warm_cases
from unisrec.interpolate import choose_interpolation, snapshot
from unisrec.json_io import read_json, read_json_object
from unisrec.locking import releases_its_locks
from unisrec.losses import distance_to_start, full_softmax_ce, withhold_items
from unisrec.model import SequenceModel, add_offsets
from unisrec.model_card import command_line, record_transfer, write_finetune_card
from unisrec.precision import resolve_precision, warn_if_emulated
from unisrec.pretrain import PretrainTask, StepPlan, load_corpus, recipe_config
from unisrec.records import git_commit
from unisrec.runs import (
    ADOPTED,
    adopt_finished_replacement,
    finish_run_dir,
    open_run_dir,
    recorded_fingerprint,
    run_origin,
    seed_everything,
    staging_dir,
)
from unisrec.text_cache import check_recorded_model, load_text
from unisrec.train import Task, TrainState, clear_checkpoint, fit, peak_memory_mb, set_trainable
from unisrec.training_data import cold_items, training_sequences

if TYPE_CHECKING:
    from unisrec.cloze import ClozeTask


FINETUNED_WEIGHTS = "finetuned.safetensors"


class ParameterCounts(TypedDict):
    total: int
    trainable: int


class InterpolationRecord(TypedDict):
    """``train.interpolate=auto``: the alpha kept and the validation metric of every alpha tried."""

    alpha: float  # 1: the fine-tuned weights, 0: the pre-trained ones
    metric: str
    valid: dict[str, float]  # f"{alpha:g}" -> the metric


class FinetuneMetrics(TypedDict):
    """What ``finetune`` returns and writes to RUN/metrics.json."""

    valid: dict[str, float]
    # with cold_recall@K / cold_ndcg@K / cold_cases when train.cold_items > 0; None: eval.test=false
    test: dict[str, float] | None
    best_epoch: int  # 0: the starting weights (train.select_start), no epoch beat them on validation
    valid_start: dict[str, float] | None  # validation before the first step (train.select_start), else None
    interpolation: InterpolationRecord | None  # train.interpolate=auto, else None
    epochs: int
    stopped_early: bool
    seconds_per_epoch: float
    seconds_train: float
    seconds_eval: float  # per split
    peak_memory_mb: float
    parameters: ParameterCounts
    trainable_parameters: list[str]
    transferred_parameters: list[str]
    mode: str
    seed: int
    dataset: str
    device: str
    command: str
    code: dict[str, str | bool]


def resolve_config(config: RunConfig, mode: str, init: Path | None, overrides: list[str]) -> RunConfig:
    """``config`` with the mode's network and item representation; with ``init``, on top of the init run's
    architecture and text settings (the fields the caller gave win: ``config.given_fields``)."""
    if mode not in MODES:
        raise UnisrecError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    model, text = config.model, config.text
    if init is not None:
        saved = from_plain(ModelConfig, read_model_config(init)["model"], f"{init}/config.json: model")
        model = replace(saved, **{f: getattr(config.model, f) for f in given_fields("model", config, overrides)})
        if mode == "sasrec" or MODE_ARCHITECTURE[mode] in ("gru4rec", "bert4rec", "fdsa", "textknn"):
            raise UnisrecError(f"--init transfers a text model; --mode {mode} trains from scratch")
        if model.architecture != MODE_ARCHITECTURE[mode]:
            raise UnisrecError(f"--init {init}: a {model.architecture} run cannot initialise --mode {mode}")
        recorded = read_text_config(init)
        if recorded is not None:
            text = replace(recorded, **{f: getattr(config.text, f) for f in given_fields("text", config, overrides)})
    # an init run saved before unread settings were refused may carry some: reset (ignored, as then)
    given = set(given_fields("model", config, overrides)) if init is not None else None
    return with_mode_network(replace(config, text=text), model, mode, given)


@dataclass
class ReplayStep:
    """One fine-tuning step with ``train.replay``: the target's batch and the corpus batch replayed beside it."""

    batch: TrainBatch
    plan: StepPlan


class CorpusReplay:
    """The pre-training corpus replayed while fine-tuning: fine-tuning step g takes corpus batch g (corpus epochs
    follow each other as in pre-training, so the batches depend on (seed, g) only and a resumed run replays the
    same ones) and its pre-training loss with the recipe's settings (``unisrec.pretrain.RECIPE``'s ``pretrain``
    section: sequence-item + sequence-sequence, item drop, one domain per batch).

    Each corpus domain's text vectors are centred on their own mean as in pre-training (``model.center_text``);
    the fine-tuned model subtracts its catalogue's mean (``center``, (D,)) from every text it is given, so the
    corpus vectors are passed with that mean added back.
    """

    def __init__(self, model: torch.nn.Module, dirs: list[Path], config: RunConfig, device: torch.device,
                 dist: Distributed, text_dim: int, center: Tensor | None) -> None:
        replay_config = replace(config, pretrain=recipe_config().pretrain)
        corpus = load_corpus(dirs, replay_config)
        if corpus.text.shape[1] != text_dim:
            raise UnisrecError(f"replay: the corpus's text vectors have {corpus.text.shape[1]} dimensions, the "
                               f"target's {text_dim}")
        if center is not None:
            corpus = replace(corpus, text=corpus.text + center.detach().cpu().numpy())  # (N, D)
        self.task = PretrainTask(model, corpus, replay_config, device, dist)
        self._epoch, self._plans = -1, list[StepPlan]()  # the corpus epoch whose plans are held
        self._corpus_steps = StepIndex(self.task.epoch_steps)  # corpus epochs differ in length by a batch or so

    def plan(self, step: int) -> StepPlan:
        """The corpus batch of fine-tuning step ``step`` (counted over the whole run)."""
        epoch, index = self._corpus_steps.locate(step)
        if epoch != self._epoch:
            self._epoch, self._plans = epoch, list(self.task.batches(epoch))
        return self._plans[index]

    def loss(self, plan: StepPlan) -> Tensor:
        return self.task.loss(plan)["loss"]


class FinetuneTask:
    """Batches of training windows and the full-softmax loss over the domain's items (or the sampled softmax of
    ``train.negatives``, with ``train.batch_negatives`` the step's own items among the negatives).

    Under torchrun every process takes its share of each global batch, and its loss is scaled so that
    the gradients averaged over processes equal the one-process gradient of the global batch.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        dataset: ProcessedDataset,
        config: RunConfig,
        device: torch.device,
        dist: Distributed | None = None,
        anchor: dict[str, Tensor] | None = None,
        replay: CorpusReplay | None = None,
    ):
        self.model, self.config, self.device, self.replay = model, config, device, replay
        # train.anchor: each transferred parameter that trains, beside its pre-trained value (on its device)
        core = getattr(model, "module", model)
        self.anchored = [(param, anchor[name].to(param.device)) for name, param in core.named_parameters()
                         if anchor is not None and name in anchor and param.requires_grad]
        self.dist = dist or Distributed.single()
        sequences = training_sequences(dataset, config.train)
        self.items = sequences.items
        # (M,) ids of the items withheld from training (train.cold_items): no softmax candidate either
        self.withheld = torch.from_numpy(np.flatnonzero(sequences.cold)).to(device) if sequences.cold.any() else None
        # train.negatives: the items a step may draw as negatives (every item but the withheld ones)
        self.negatives = config.train.negatives
        self.negative_pool = negative_pool(dataset, config.train)
        layout = "exact" if config.train.windows == "auto" else config.train.windows
        self.windows = training_windows(sequences.starts, sequences.lengths, config.model.max_seq_len, layout=layout)
        total = int(self.windows.n_targets.sum())
        if total == 0:
            raise UnisrecError(f"{dataset.path}: no training examples (every user needs >= 2 training items)")
        self.steps = len(bucketed_batches(self.windows, config.train.batch_size, np.random.default_rng(0)))
        # train.batch_negatives: (N,) log of how likely a step's candidates hold each item, the logQ correction
        self.log_inclusion = (torch.from_numpy(self._log_inclusion(dataset.n_items)).float().to(device)
                              if config.train.batch_negatives else None)
        # steps before each epoch; the function holds the windows, not the task: a cycle through the task would
        # keep the DistributedDataParallel model, and its process group's threads, alive past the run
        self._epoch_length = partial(epoch_steps, self.windows, config.train.batch_size, config.train.seed)
        self.run_steps = StepIndex(self._epoch_length)

    def _epoch_batches(self, epoch: int) -> list[np.ndarray]:
        return epoch_batches(self.windows, self.config.train.batch_size, self.config.train.seed, epoch)

    def _log_inclusion(self, n_items: int) -> np.ndarray:
        """(N,) log of the probability that a step's candidates hold each item under ``train.batch_negatives``:
        one of the S uniform draws out of the P drawable items, or one of the step's own items, whose chance is
        the share of epoch 0's steps that hold it (every process counts the whole steps, so all agree)."""
        held = np.zeros(n_items)  # (N,) steps holding each item
        batches = self._epoch_batches(0)
        for index in batches:
            held[window_items(self.items, self.windows.subset(index))] += 1
        drawn = self.negatives / len(self.negative_pool)
        return np.log1p(-(1.0 - drawn) * (1.0 - held / len(batches)))  # log(1 - (1 - u)(1 - b)) >= log u

    def epoch_steps(self, epoch: int) -> int:
        """The number of steps of ``epoch`` (epochs differ by a batch or so)."""
        return self._epoch_length(epoch)

    def batches(self, epoch: int) -> Iterator[TrainBatch | ReplayStep]:
        first = self.run_steps.first(epoch) if self.replay is not None else 0  # this epoch's first step in the run
        for step, index in enumerate(self._epoch_batches(epoch)):
            share = index[shard(self.windows.n_targets[index], self.dist)]  # this process's windows
            if len(share):
                batch = make_train_batch(self.items, self.windows.subset(share))
            else:  # fewer windows than processes: the first one again, without its targets
                batch = placeholder_batch(make_train_batch(self.items, self.windows.subset(index[:1])))
            if self.negatives:  # the same draw in every process (and after a resume): seeded by epoch and step
                rng = np.random.default_rng([self.config.train.seed, epoch, step, 13])
                drawn = rng.choice(self.negative_pool, size=self.negatives, replace=False)  # (S,)
                if self.log_inclusion is not None:  # and the whole step's items, whatever this process's share
                    drawn = np.union1d(drawn, window_items(self.items, self.windows.subset(index)))  # (S',) sorted
                else:
                    drawn = np.sort(drawn)  # (S,)
                batch = replace(batch, negatives=torch.from_numpy(drawn.astype(np.int64)))
            yield batch if self.replay is None else ReplayStep(batch, self.replay.plan(first + step))

    def loss(self, step: TrainBatch | ReplayStep) -> dict[str, torch.Tensor]:
        replayed: Tensor | None = None
        if isinstance(step, ReplayStep):
            assert self.replay is not None
            replayed = self.replay.loss(step.plan)
            step = step.batch
        batch = step.to(self.device)
        core = cast(SequenceModel, getattr(self.model, "module", self.model))
        if batch.negatives is not None:
            logits, labels = self._sampled_logits(batch, core)  # (T, 1 + S), (T,)
        else:
            hidden, table = self.model(batch.inputs)  # (B, L, H), (N, H): the table once per step
            logits = withhold_items(core.logits(hidden[batch.mask], table), self.withheld)  # (T, N)
            labels = batch.targets
        if core.config.repeat_bias:
            at_row, at_pos = batch.mask.nonzero(as_tuple=True)  # (T,), (T,): row-major, the order of the targets
            if self.config.train.history_negatives == "offsets":
                logits = detach_history_negatives(logits, batch.inputs[at_row], at_pos + 1, batch.targets)
            offsets = core.repeat_offsets(batch.inputs[at_row], at_pos + 1)  # each target's history: its prefix
            assert offsets is not None  # a model with repeat_bias has them
            logits = add_offsets(logits, offsets)  # (T, N)
        if not self.dist.enabled:
            loss = full_softmax_ce(logits, labels)
        else:
            total = round(self.dist.mean(float(len(batch.targets))) * self.dist.world_size)
            summed = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
            loss = summed * self.dist.world_size / total
        total_loss, terms = loss, {}
        if replayed is not None:  # already scaled for the processes by PretrainTask
            total_loss = total_loss + self.config.train.replay * replayed
            terms["replay"] = replayed.detach()
        if self.anchored:  # the same penalty in every process: DDP's mean of the gradients keeps it as it is
            penalty = distance_to_start(self.anchored)
            total_loss = total_loss + self.config.train.anchor * penalty
            terms["anchor"] = penalty.detach()
        return {"loss": total_loss, "ce": loss.detach(), **terms} if terms else {"loss": loss}


    def _sampled_logits(self, batch: TrainBatch, core: SequenceModel) -> tuple[Tensor, Tensor]:
        """``train.negatives``: each target's logit beside those of the step's S drawn items, (T, 1 + S), and the
        labels (T,) (all 0: the target comes first). The adaptor runs over the items of the step's windows,
        targets and draws only; a draw equal to a row's own target is left out of that row (-inf). With
        ``train.batch_negatives`` the draws hold the step's items too, and each negative's logit is less the log
        of its item's inclusion probability (logQ); the target's is not: it is a candidate of its row with
        probability 1 (so for the target the denominator is a Horvitz-Thompson estimate of the full one's; the
        row's own history items, also certain candidates, are corrected like the other negatives)."""
        assert batch.negatives is not None
        items = torch.unique(torch.cat([batch.inputs.flatten(), batch.targets, batch.negatives]))  # (M,) sorted
        hidden, table = self.model(torch.searchsorted(items, batch.inputs), items)  # (B, L, H), (M, H)
        target_at = torch.searchsorted(items, batch.targets)  # (T,) rows of the table
        scores = core.logits(hidden[batch.mask], table)  # (T, M)
        target = scores.gather(1, target_at[:, None])  # (T, 1): a row's target is always its candidate: as it is
        if self.log_inclusion is not None:
            scores = scores - self.log_inclusion[items][None, :]  # (T, M): logQ-corrected
        drawn = scores[:, torch.searchsorted(items, batch.negatives)]  # (T, S)
        drawn = drawn.masked_fill(batch.negatives[None, :] == batch.targets[:, None], float("-inf"))
        logits = torch.cat([target, drawn], dim=1)  # (T, 1 + S)
        return logits, torch.zeros(len(batch.targets), dtype=torch.long, device=logits.device)


def negative_pool(dataset: ProcessedDataset, train: TrainConfig) -> np.ndarray:
    """(P,) the items ``train.negatives`` may draw from: every item but those ``train.cold_items`` withholds; more
    negatives than that is an error (checked by ``finetune`` before the run folder is written)."""
    if not train.negatives:
        return np.zeros(0, dtype=np.int64)
    pool = np.flatnonzero(~cold_items(dataset.n_items, train.cold_items, train.seed))
    if train.negatives > len(pool):
        raise UnisrecError(f"train.negatives={train.negatives}: {dataset.path} has {len(pool)} items to draw from; "
                           "use fewer, or 0 for the full softmax")
    return pool


def detach_history_negatives(logits: Tensor, history: Tensor, lengths: Tensor, targets: Tensor) -> Tensor:
    """(T, N) logits, (T, L) right-padded history windows, (T,) lengths, (T,) targets -> the logits with those of
    each history's items other than its target detached (``train.history_negatives=offsets``): they stay in the
    softmax, so the repeat offsets added after learn from them, but pass no gradient to the query or the items."""
    position = torch.arange(history.shape[1], device=history.device)
    negative = (position[None, :] < lengths[:, None]) & (history != targets[:, None])  # (T, L)
    rows, cols = negative.nonzero(as_tuple=True)  # (S,), (S,)
    items = history[rows, cols]  # (S,): an item repeated in a history is set twice to the same value
    return logits.index_put((rows, items), logits[rows, items].detach())


def inherited_model_settings(model: ModelConfig, given: set[str]) -> dict[str, Any]:
    """The model settings a run from ``--init`` keeps from the pre-trained run although a run from scratch would
    not have them: fields that differ from ``ModelConfig()``'s defaults and that the caller did not set
    (``given``); the mode's ``architecture`` and ``item_repr`` are not settings. E.g. the recipe's
    ``last_item_skip`` and ``center_text``, which a target may want off (README, "The default recipe")."""
    default = ModelConfig()
    return {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
            if f.name not in ("architecture", "item_repr") and f.name not in given
            and getattr(model, f.name) != getattr(default, f.name)}


def describe_inherited(init: Path, kept: dict[str, Any]) -> str:
    """One stderr line naming the settings ``inherited_model_settings`` found, in the CLI's spelling."""
    def spelled(value: Any) -> str:
        return json.dumps(value) if not isinstance(value, str) else value

    pairs = ", ".join(f"model.{name}={spelled(value)}" for name, value in kept.items())
    return f"--init {init}: keeps the pre-trained model's {pairs} (change one with --model.NAME=VALUE)"


def finetune_settings(data_dir: str | Path, mode: str, config: RunConfig, overrides: list[str],
                      init: Path | None, replay: Sequence[str | Path] = ()) -> tuple[RunConfig, dict[str, Any]]:
    """The resolved config of a fine-tuning run and the settings its ``run.json`` holds: their fingerprint decides
    whether an interrupted run resumes, and whether ``unisrec report --adopt`` takes a run made by hand."""
    refuse_pretraining_overrides(overrides)
    config = resolve_config(config.with_overrides(overrides), mode, init, overrides)
    check_finetune_needs(config, init is not None)  # (also when a report is planned, and for --adopt)
    if init is None and config.train.interpolate != "off":  # nothing to mix with: recorded as what it does
        config = replace(config, train=replace(config.train, interpolate="off"))
    if config.train.precision == "auto":  # recorded as what it runs at on this machine's device
        precision = resolve_precision("auto", resolve_device(config.train.device))
        config = replace(config, train=replace(config.train, precision=precision))
    settings: dict[str, Any] = {
        "command": "finetune",
        "data": str(Path(data_dir).resolve()),
        "mode": mode,
        "init": str(init.resolve()) if init else None,
        "config": config.to_dict(),
    }
    if replay:  # only then, so the settings (and fingerprints) of runs without it stay as they were
        settings["replay"] = [str(Path(d).resolve()) for d in replay]
    return config, settings


def _tell_init(final: Path, metrics: FinetuneMetrics, init_dir: Path | None, train: TrainConfig) -> None:
    """A finished fine-tuning's test result added to the card of the pre-trained run ``init_dir`` (None: none;
    the card lists test results only). Idempotent (one entry per run): made before ``metrics.json``, it is made
    again by a rerun after a kill in between."""
    if metrics["test"] is not None and init_dir is not None:
        record_transfer(init_dir, final, metrics, train)


def _announce_finished(metrics: FinetuneMetrics) -> None:
    """The last line of a finished fine-tuning: its best epoch and test figures, or valid ones with
    eval.test=false (a run that chooses a setting on validation)."""
    if metrics["test"] is None:
        print(f"best epoch {metrics['best_epoch']}: valid {json.dumps(metrics['valid'])} (test not scored: "
              "eval.test=false)", file=sys.stderr)
        return
    print(f"best epoch {metrics['best_epoch']}: test {json.dumps(metrics['test'])}", file=sys.stderr)


def _adopted(final: Path, settings: dict[str, Any], init_dir: Path | None, train: TrainConfig,
             dist: Distributed) -> FinetuneMetrics:
    """The metrics of a replacement run that had finished before a kill and has been moved into ``final``
    (``adopt_finished_replacement``): its card written again, and the pre-trained run's card told (``init_dir``)."""
    metrics = cast(FinetuneMetrics, read_json(final / "metrics.json"))
    if dist.is_main:
        recorded = metrics.get("command")  # the command that trained it, not this one's
        write_finetune_card(final, settings, metrics, recorded if isinstance(recorded, str) else None)
        print(f"{final}: the replacement trained by an interrupted --overwrite had finished; moved in, not trained "
              "again", file=sys.stderr)
        _tell_init(final, metrics, init_dir, train)
        _announce_finished(metrics)
    dist.barrier()
    dist.close()
    return metrics


@releases_its_locks
def finetune(
    data_dir: str | Path,
    mode: str,
    out: str | Path,
    *,
    config: RunConfig | None = None,
    overrides: list[str] | None = None,
    init: str | Path | None = None,
    overwrite: bool = False,
    replay: Sequence[str | Path] = (),
    card: bool = True,
    command: str | None = None,
) -> FinetuneMetrics:
    """Train on ``data_dir`` and write the run folder ``out``; returns its metrics ({"valid": ..., "test": ...}).

    ``overrides``: dotted settings on top of ``config`` (``"train.lr=3e-4"``, ``"text.pooling=mean"``).
    ``replay``: pre-training corpus folders replayed with weight ``train.replay`` (``CorpusReplay``).
    ``card``: with ``init``, add the test result to the pre-trained run's card (``unisrec report --verify``
    reruns into a temporary folder without). ``command``: the command line that makes this run, for its metrics
    and card (default: this process's; ``unisrec report`` gives each run's own ``unisrec finetune ...``).
    """
    init_dir = Path(init) if init is not None else None
    base = config or RunConfig()
    config, settings = finetune_settings(data_dir, mode, base, overrides or [], init_dir, replay)
    out = real_folder(out)  # a link: the run is written where it points
    if bool(replay) != (config.train.replay > 0):
        raise UnisrecError("replay needs both the corpus folders (--replay DIR...) and its weight (train.replay > 0, "
                           f"e.g. --train.replay=0.5); got {len(replay)} folder(s), "
                           f"train.replay={config.train.replay:g}")
    if replay and (config.model.architecture != "unisrec" or config.model.item_repr != "text"):
        # the corpus's items have no ID in the target's table: only the text-only model scores them
        raise UnisrecError(f"replay trains the pre-training loss of the text-only model (--mode inductive), "
                           f"not --mode {mode}")
    for folder in map(Path, replay):  # before anything is written or encoded
        if not folder.is_dir():
            raise UnisrecError(f"{folder}: no such dataset folder to replay (create one with `unisrec prepare`)")
    if init_dir is not None and config.model.uses_text:  # the init's language model, unchanged since it trained
        check_recorded_model(config.text, read_model_config(init_dir).get("text_encoder") or {}, init_dir)
    code = git_commit()  # the code this process runs, read before training: a commit made meanwhile is not it
    dataset = load_processed(data_dir)
    if config.train.negatives:  # before the run folder is written: a retry with other settings must not be refused
        if config.model.architecture == "bert4rec":
            raise UnisrecError("train.negatives samples the next-item softmax; --mode bert4rec trains its cloze "
                               "task over every item: use train.negatives=0")
        negative_pool(dataset, config.train)
    cold = cold_items(dataset.n_items, config.train.cold_items, config.train.seed)  # (N,) items training withholds
    if cold.any():
        warm_cases(dataset, "valid", cold)  # some validation case to choose on: checked before the folder is written
    device = resolve_device(config.train.device)
    warn_if_emulated("train.precision", config.train.precision, device)
    dist = Distributed.from_env(device.type)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    final = out
    staged = 0  # with --overwrite the old run stays whole until this one ends: this one goes to staging_dir
    if dist.is_main:
        made = init_dir / "run.json" if init_dir is not None else None  # a saved model may come without one
        # the replayed corpora are inputs too (their data_fingerprint is the target's and theirs together)
        origin = run_origin([data_dir, *replay], config.text if config.model.uses_text else None)
        if made is not None and made.exists():
            origin["init_fingerprint"] = read_json_object(made).get("fingerprint")
        # the folder it chose: a run that a kill left aside is moved back first, so no one guesses it before
        if overwrite and adopt_finished_replacement(final, settings, origin):
            staged = ADOPTED
        else:
            staged = int(open_run_dir(final, settings, overwrite=overwrite, origin=origin) != final)
        if init_dir is not None and staged != ADOPTED:
            given = given_fields("model", base.with_overrides(overrides or []), overrides or [])
            kept = inherited_model_settings(config.model, given)
            if kept:
                print(describe_inherited(init_dir, kept), file=sys.stderr, flush=True)
    staged = dist.from_main(staged)
    if staged == ADOPTED:
        return _adopted(final, settings, init_dir if card else None, config.train, dist)
    out = staging_dir(final) if staged else final
    seed_everything(config.train.seed)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)

    vectors = dist.main_first(lambda: load_text(dataset, config.text)) if config.model.uses_text else None
    model = build_model(config.model, dataset.n_items, torch.from_numpy(vectors.matrix) if vectors else None)
    if cold.any() and dist.is_main and (config.model.item_repr == "id" or config.model.architecture == "fdsa"):
        print(f"train.cold_items: --mode {mode} scores items by their ID alone, and the {int(cold.sum())} cold items' "
              "rows are never trained: its cold_* metrics measure chance, not a cold-start model", file=sys.stderr)
    center = getattr(model, "text_center", None)  # (D,) with model.center_text: the catalogue's mean text vector
    if cold.any() and vectors is not None and isinstance(center, torch.Tensor):
        with torch.no_grad():  # the mean of the items training sees: the withheld texts steer nothing
            center.copy_(torch.from_numpy(vectors.matrix[~cold]).float().mean(0))  # (D,)
    transferred = load_transferable(model, init_dir, config.train.transfer) if init_dir is not None else []
    # train.interpolate=auto with --init: the transferred weights before any step, to mix with the fine-tuned ones
    start = snapshot(model, transferred) if config.train.interpolate == "auto" and transferred else {}
    # train.anchor: the same pre-trained values (one copy, shared with train.interpolate's when it has one)
    anchor = (start or snapshot(model, transferred)) if config.train.anchor > 0 and transferred else None
    trainable = set_trainable(model, config.train, freeze_encoder=config.train.freeze == "encoder")
    model.to(device)
    wrapped: torch.nn.Module = model
    if dist.enabled and trainable:  # nothing to synchronise without trainable weights (textknn): not wrapped
        device_ids = [device.index] if device.type == "cuda" else None
        wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    task: FinetuneTask | ClozeTask
    replayed: CorpusReplay | None = None
    if config.model.architecture == "bert4rec":
        from unisrec.cloze import ClozeTask

        task = ClozeTask(wrapped, dataset, config, device, dist)
    else:
        replayed = CorpusReplay(wrapped, [Path(d) for d in replay], config, device, dist, text_dim=vectors.dim,
                                center=getattr(model, "text_center", None)) if replay and vectors else None
        task = FinetuneTask(wrapped, dataset, config, device, dist, anchor=anchor, replay=replayed)
    extra = {"text_encoder": vectors.record() if vectors else {},
             "dataset": {"name": dataset.name, "path": str(dataset.path)}}

    def save_best() -> None:
        save_pretrained(model, out, item_ids=list(dataset.item_ids), item_texts=dataset.item_texts, extra=extra)

    if not trainable:  # nothing to learn (textknn): evaluated as it is
        state = TrainState(best_epoch=0)
        if dist.is_main:
            save_best()
    else:
        state = fit(
            model,
            Task(
                task.batches,
                task.steps,
                task.loss,
                validate=lambda: evaluate(model, dataset, "valid", config.eval, device, withheld=cold),
                save_best=save_best,
                epoch_steps=task.epoch_steps,
            ),
            config.train,
            out,
            device=device,
            fingerprint=recorded_fingerprint(out, settings),  # a resumed run's own (runs.same_settings)
            dist=dist,
        )
    dist.barrier()
    tuned_path = out / FINETUNED_WEIGHTS  # with train.interpolate: the fine-tuned best, kept beside the mixture
    best = read_weights(tuned_path if start and tuned_path.exists() else out / "model.safetensors")
    model.load_state_dict(best, strict=True)
    interpolation: InterpolationRecord | None = None
    if start:
        if dist.is_main and not tuned_path.exists():  # a rerun after a kill mixes from the same fine-tuned weights
            save_tensors(tuned_path, best)
        metric = config.train.select_metric
        alpha, scores = choose_interpolation(
            model, start, lambda: evaluate(model, dataset, "valid", config.eval, device, withheld=cold), metric)
        interpolation = {"alpha": alpha, "metric": metric, "valid": scores}
        if dist.is_main:
            save_best()
            print(f"interpolation: alpha {alpha:g} (valid {metric} {json.dumps(scores)})", file=sys.stderr)
        dist.barrier()
    final_eval = final_evaluation(model, dataset, config.eval, device, cold=cold)
    n_params = sum(p.numel() for p in model.parameters())
    metrics: FinetuneMetrics = {
        "valid": final_eval.valid,
        "test": final_eval.test,
        "best_epoch": state.best_epoch,
        "valid_start": state.start_valid,
        "interpolation": interpolation,
        "epochs": state.epoch,
        "stopped_early": state.stopped_early,
        "seconds_per_epoch": float(np.median(state.epoch_seconds)) if state.epoch_seconds else 0.0,
        "seconds_train": round(state.seconds, 3),
        "seconds_eval": round(final_eval.seconds, 3),
        "peak_memory_mb": round(peak_memory_mb(device), 1),
        "parameters": {"total": n_params, "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)},
        "trainable_parameters": trainable,
        "transferred_parameters": transferred,
        "mode": mode,
        "seed": config.train.seed,
        "dataset": dataset.name,
        "device": str(device),
        "command": command or command_line(),
        "code": code,
    }
    if dist.is_main:
        if final_eval.test_ranks is not None:
            save_ranks(out, final_eval.test_ranks)
        # everything else first, metrics.json last: it marks the run finished (a rerun refuses to train it again),
        # so a kill before it leaves a run that the same command completes from its last checkpoint
        write_finetune_card(out, settings, metrics, command)
        _tell_init(final, metrics, init_dir if card else None, config.train)
        atomic_write_json(out / "metrics.json", metrics)
        clear_checkpoint(out)
        finish_run_dir(out, final)
        _announce_finished(metrics)
    # DistributedDataParallel's reducer holds the process group: released here, while every rank is still alive
    # (released at the function's end instead, a rank whose peer had exited hung joining gloo's threads)
    del task, wrapped, replayed
    gc.collect()
    dist.barrier()
    dist.close()  # every rank is done: end the process group it joined
    return metrics
