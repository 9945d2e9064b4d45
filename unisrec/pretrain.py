"""Multi-domain pre-training (paper section 2): L = l_SI + lambda * l_SS over a mixed stream of domains.

Sequences of every domain are windows of one flat item array; item ids are made global by offsetting each
domain's local ids, so item tables stay separate. A batch mixes domains (``pretrain.batch_domains=mixed``:
its in-batch negatives are mostly other domains' items) or holds one domain (``single``: in-domain
negatives). Each step builds the adapted vectors only of the items the batch touches.

Per step, for a batch of windows (B) with T target positions:
- l_SI: each position's state against the T target-item vectors of the (global) batch.
- l_SS: each window's last state against the B augmented views (item drop or word drop, drawn per window).
Under torchrun the vectors of every process are gathered (with gradient), so the negatives span the global
batch, and each process's loss is scaled so that the averaged gradients equal a one-process run.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypedDict, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from unisrec.atomic import atomic_write_json, real_folder
from unisrec.augment import item_drop
from unisrec.batches import Windows, bucketed_batches, make_train_batch, placeholder_batch, shard, training_windows
from unisrec.checkpoint import save_pretrained
from unisrec.config import RunConfig, TrainConfig, check_read_settings
from unisrec.datasets.processed import load_processed
from unisrec.devices import resolve_device
from unisrec.distributed import Distributed
from unisrec.errors import UnisrecError
from unisrec.json_io import read_json
from unisrec.locking import releases_its_locks
from unisrec.losses import contrastive
from unisrec.model import UniSRec
from unisrec.model_card import command_line, write_pretrain_card
from unisrec.precision import with_resolved_precision
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
from unisrec.text_cache import TextRecord, encode_word_drop, load_text, load_word_drop
from unisrec.train import EpochRecord, Task, clear_checkpoint, fit, peak_memory_mb, set_trainable
from unisrec.training_data import train_lengths

# The default recipe of `unisrec pretrain` (chosen on validation; README "Pre-training and transfer to
# Scientific"): on top of RunConfig's defaults. One domain per batch gave +28% zero-shot validation NDCG@10 over
# mixed batches at equal steps and the same fine-tuned validation scores with half the epochs of the first
# recipe (4 epochs, mixed); text vectors centred per domain gave +17% zero-shot validation NDCG@10 and +2.5%
# fine-tuned transductive validation NDCG@10 over the same recipe without; 4 epochs instead of 2 gave higher
# fine-tuned validation NDCG@10 in both modes, 3 seeds each with the repeat offsets (UniSRec_t 0.0967 vs 0.0948,
# UniSRec_t+ID 0.0996 vs 0.0982; Scientific report, table "Pre-training length"), 70 min of training on one
# thread. The paper's own settings are configs/pretrain-paper.yaml.
RECIPE: tuple[str, ...] = (
    "train.epochs=4", "train.batch_size=2048", "train.lr=0.001", "train.warmup_steps=200", "train.schedule=cosine",
    "train.precision=auto", "pretrain.word_drop_variants=0", "pretrain.batch_domains=single",
    "model.last_item_skip=true", "model.center_text=true",
)


def recipe_config() -> RunConfig:
    """The default pre-training configuration (``RECIPE`` over ``RunConfig()``)."""
    return RunConfig().with_overrides(list(RECIPE))


@dataclass
class Corpus:
    """Several domains as one stream: global item ids, windows, and the domain of every window."""

    names: list[str]
    items: np.ndarray  # (I,) int64 global item ids of every interaction of every domain
    windows: Windows  # training windows (rows index ``items``)
    window_domain: np.ndarray  # (W,) int64
    item_offsets: np.ndarray  # (n_domains + 1,) global id of each domain's item 0
    seq_offsets: np.ndarray  # (U + 1,) rows of ``items`` where each user's sequence starts (all domains)
    text: np.ndarray  # (N, D) float32 language-model vectors of all items
    variants: np.ndarray | None  # (V, N, D) float16 word-dropped text vectors, or None
    text_record: TextRecord  # how the text vectors were made (config.json "text_encoder")

    @property
    def n_items(self) -> int:
        return int(self.item_offsets[-1])


def load_corpus(dirs: list[Path], config: RunConfig) -> Corpus:
    """Read each processed dataset (encoding its texts with ``config.text`` if needed) into one Corpus."""
    if not dirs:
        raise UnisrecError("pretrain needs at least one dataset folder")
    pre, spec = config.pretrain, config.text
    want_variants = pre.lambda_ss > 0 and pre.word_drop > 0 and pre.word_drop_variants > 0
    names: list[str] = []
    items, windows, domains, texts, variants, starts = [], [], [], [], [], []
    item_offset, row_offset = 0, 0
    record: TextRecord = {}
    offsets = [0]
    for index, directory in enumerate(dirs):
        dataset = load_processed(directory)
        vectors = load_text(dataset, spec)
        center = vectors.matrix.mean(0) if config.model.center_text else 0.0  # (D,): each domain on its own mean
        texts.append(vectors.matrix - center)
        record = vectors.record()
        if want_variants:
            # the variants are a fixed property of the data (seed 0), shared by every training seed
            encode_word_drop(directory, spec, p=pre.word_drop, variants=pre.word_drop_variants, seed=0)
            drop = load_word_drop(directory, spec, p=pre.word_drop, variants=pre.word_drop_variants, seed=0)
            variants.append(np.asarray(np.asarray(getattr(drop, "matrix", drop), dtype=np.float32) - center,
                                       dtype=np.float16))
        lengths = train_lengths(dataset)
        part = training_windows(dataset.offsets[:-1] + row_offset, lengths, config.model.max_seq_len,
                                layout="strided" if config.train.windows == "auto" else config.train.windows)
        names.append(dataset.name)
        items.append(dataset.items.astype(np.int64) + item_offset)
        starts.append(dataset.offsets[:-1] + row_offset)
        windows.append(part)
        domains.append(np.full(len(part), index, dtype=np.int64))
        item_offset += dataset.n_items
        row_offset += dataset.n_interactions
        offsets.append(item_offset)
    dims = {t.shape[1] for t in texts}
    if len(dims) != 1:
        raise UnisrecError(f"item vectors of the datasets have different dimensions {sorted(dims)}")
    return Corpus(
        names=unique_names(names),
        items=np.concatenate(items),
        windows=Windows.concat(windows),
        window_domain=np.concatenate(domains),
        item_offsets=np.asarray(offsets, dtype=np.int64),
        seq_offsets=np.concatenate([*starts, [row_offset]]),
        text=np.concatenate(texts),
        variants=np.concatenate(variants, axis=1) if variants else None,
        text_record=record,
    )


def unique_names(names: list[str]) -> list[str]:
    """The datasets' names, each repeated one suffixed ``-2``, ``-3``... (skipping any name a dataset has):
    each domain's loss is logged under its name (``si@NAME``), and two folders may hold datasets of one name."""
    taken, out = set(names), []
    for name in names:
        unique, copy = name, 1
        while unique in out or (unique != name and unique in taken):
            copy += 1
            unique = f"{name}-{copy}"
        out.append(unique)
    return out


def target_log_share(corpus: Corpus, *, per_domain: bool) -> np.ndarray:
    """(N,) float32 log q_i: item i's share of the training targets, within its own domain (``per_domain``, for
    batches of one domain) or of the whole corpus; an item that is never a target counts once (q > 0)."""
    windows = corpus.windows
    n = windows.n_targets  # (W,)
    # target rows of window w: start + first_target + 1 ... start + length (the item after each target position)
    first = windows.start + windows.first_target + 1  # (W,)
    rows = np.repeat(first - np.cumsum(n) + n, n) + np.arange(int(n.sum()))  # (T,)
    counts = np.bincount(corpus.items[rows], minlength=corpus.n_items).astype(np.float64)  # (N,)
    counts = np.maximum(counts, 1.0)
    if per_domain:
        totals = np.add.reduceat(counts, corpus.item_offsets[:-1])  # (n_domains,)
        sizes = np.diff(corpus.item_offsets)
        share = counts / np.repeat(totals, sizes)
    else:
        share = counts / counts.sum()
    return np.log(share).astype(np.float32)


def history_negative_mask(inputs: np.ndarray, mask: np.ndarray, targets: np.ndarray,
                          candidate_ids: np.ndarray) -> np.ndarray:
    """Which history items each query of a training batch takes as extra negatives
    (``pretrain.history_negatives``).

    inputs (B, L) item ids of the windows, mask (B, L) the positions that predict a target, targets (T,) those
    targets in ``mask`` order, candidate_ids the ids already among the in-batch candidates (this process's
    targets). Returns (T, L): query (b, p) takes item l of its window when l <= p (what the query has seen),
    the item is not its target, not an in-batch candidate already (it would count twice), and is the first
    occurrence of that item in the window (a repeated item counts once).
    """
    positions = np.arange(inputs.shape[1])
    seen = positions[None, :] <= positions[:, None]  # (P, L): position l visible from position p
    earlier = (inputs[:, :, None] == inputs[:, None, :]) & (positions[None, None, :] < positions[None, :, None])
    first = ~earlier.any(axis=2)  # (B, L): no earlier copy of the item in the window
    usable = first & ~np.isin(inputs, candidate_ids)  # (B, L)
    allowed = (usable[:, None, :] & seen[None])[mask]  # (T, L)
    rows = np.nonzero(mask)[0]  # (T,) window of each query
    return allowed & (inputs[rows] != targets[:, None])


@dataclass(frozen=True)
class StepPlan:
    """What one step trains on: the global batch's windows and this process's share of them."""

    epoch: int
    step: int
    windows: np.ndarray  # (Bg,) window indices of the global batch
    share: slice  # this process's rows of ``windows``


class PretrainTask:
    def __init__(
        self, model: nn.Module, corpus: Corpus, config: RunConfig, device: torch.device, dist: Distributed
    ) -> None:
        self.model, self.corpus, self.config, self.device, self.dist = model, corpus, config, device, dist
        self.text = torch.from_numpy(corpus.text)  # (N, D)
        self.variants = torch.from_numpy(corpus.variants) if corpus.variants is not None else None
        if int(corpus.windows.n_targets.sum()) == 0:
            raise UnisrecError("no training examples in the pre-training datasets")
        self.steps = len(self._batches(0))
        # (N,) -log q_i of every item as an in-batch candidate (pretrain.popularity_correction=logq), else None
        self.neg_log_q: Tensor | None = None
        if config.pretrain.popularity_correction == "logq":
            single = config.pretrain.batch_domains == "single"
            self.neg_log_q = torch.from_numpy(-target_log_share(corpus, per_domain=single)).to(device)  # once

    def _batches(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.config.train.seed, epoch])
        windows, size = self.corpus.windows, self.config.train.batch_size
        if self.config.pretrain.batch_domains == "mixed":
            return bucketed_batches(windows, size, rng)
        batches: list[np.ndarray] = []  # single: each domain's windows batched apart, then all batches shuffled
        for domain in range(len(self.corpus.names)):
            members = np.flatnonzero(self.corpus.window_domain == domain)  # (W_d,) global window indices
            if len(members):
                batches.extend(members[part] for part in bucketed_batches(windows.subset(members), size, rng))
        return [batches[i] for i in rng.permutation(len(batches))]

    def epoch_steps(self, epoch: int) -> int:
        """The number of steps (global batches) of ``epoch``: epochs differ by a batch or so."""
        return len(self._batches(epoch))

    def batches(self, epoch: int) -> Iterator[StepPlan]:
        for step, index in enumerate(self._batches(epoch)):
            yield StepPlan(epoch, step, index, shard(self.corpus.windows.n_targets[index], self.dist))

    def loss(self, plan: StepPlan) -> dict[str, Tensor]:
        pre, dist = self.config.pretrain, self.dist
        # random draws for the whole global batch, then this process's rows: the same augmentations
        # whatever the number of processes
        rng = np.random.default_rng([self.config.train.seed, plan.epoch, plan.step, 7])
        # a global batch of fewer windows than processes leaves this one none: it runs the first window with no
        # query (``placeholder_batch``), so that it still takes part in the step's gradient exchange
        placeholder = plan.share.stop == plan.share.start
        share = slice(0, 1) if placeholder else plan.share
        use_words = (rng.random(len(plan.windows)) < 0.5)[share]  # (B,) word drop, else item drop
        uniform = rng.random((len(plan.windows), self.config.model.max_seq_len))[share]  # (B, L)
        if self.variants is None:
            use_words[:] = False
        elif pre.item_drop == 0:
            use_words[:] = True
        windows = self.corpus.windows.subset(plan.windows[share])
        batch = make_train_batch(self.corpus.items, windows)
        if placeholder:
            batch = placeholder_batch(batch)
        inputs, lengths = batch.inputs.numpy(), windows.length
        last_targets = self.corpus.items[windows.start + windows.length]  # (B,) next item of each window
        aug, aug_lengths = item_drop(inputs, lengths, pre.item_drop, uniform)
        aug[use_words], aug_lengths[use_words] = inputs[use_words], lengths[use_words]

        unique = np.unique(np.concatenate([inputs.ravel(), batch.targets.numpy()]))  # (M,) global ids
        text = self.text[unique]  # (M, D)
        main_local = np.searchsorted(unique, inputs)  # (B, L)
        aug_local = np.searchsorted(unique, aug)
        if use_words.any():
            assert self.variants is not None
            choice = rng.integers(0, self.variants.shape[0], size=self.corpus.n_items)[unique]  # (M,)
            dropped = self.variants[torch.from_numpy(choice), torch.from_numpy(unique)].float()  # (M, D)
            text = torch.cat([text, dropped])  # (2M, D)
            aug_local[use_words] += len(unique)
        sequences = torch.from_numpy(np.concatenate([main_local, aug_local])).to(self.device)  # (2B, L)
        hidden, table = self.model(sequences, text=text.to(self.device))  # (2B, L, H), (M or 2M, H)

        b = len(inputs)
        mask = batch.mask.to(self.device)
        targets = batch.targets.to(self.device)
        queries = hidden[:b][mask]  # (T, H)
        candidates = table[torch.from_numpy(np.searchsorted(unique, batch.targets.numpy())).to(self.device)]
        tau = self.config.model.temperature
        history: Tensor | None = None  # (T, L) logits of each query's own history items as negatives
        if pre.history_negatives:
            target_ids = batch.targets.numpy()
            allowed = history_negative_mask(inputs, batch.mask.numpy(), target_ids, np.unique(target_ids))  # (T, L)
            query_all = F.normalize(hidden[:b], dim=-1)  # (B, L, H)
            history_items = F.normalize(table[torch.from_numpy(main_local).to(self.device)], dim=-1)  # (B, L, H)
            history = torch.einsum("bph,blh->bpl", query_all, history_items)[mask] / tau  # (T, L)
            history = history.masked_fill(~torch.from_numpy(allowed).to(self.device), float("-inf"))
        si_each = self._contrastive(queries, candidates, targets, targets, tau, self.neg_log_q, history)  # (T,)
        kept = 0 if placeholder else b  # sequences of this process in the sequence-sequence term
        rows = torch.arange(kept, device=self.device)
        seq = hidden[rows, torch.from_numpy(lengths[:kept] - 1).to(self.device)]  # (B, H)
        seq_aug = hidden[b + rows, torch.from_numpy(aug_lengths[:kept] - 1).to(self.device)]  # (B, H)
        last = torch.from_numpy(last_targets[:kept]).to(self.device)
        ss_each = self._contrastive(seq, seq_aug, last, last, tau)  # (B,)

        si = si_each.sum() * dist.world_size / self._global_count(len(si_each))
        ss = ss_each.sum() * dist.world_size / self._global_count(len(ss_each))
        terms = {"loss": si + pre.lambda_ss * ss, "si": si.detach(), "ss": ss.detach()}
        # (T,) each target's domain; presence is read on the host, so a GPU step does not wait here per domain
        domain = np.repeat(self.corpus.window_domain[plan.windows[share]], batch.mask.numpy().sum(axis=1))
        for index, name in enumerate(self.corpus.names):
            here = domain == index
            if here.any():
                terms[f"si@{name}"] = si_each.detach()[torch.from_numpy(here).to(self.device)].mean()
        return terms

    def _global_count(self, n: int) -> int:
        return round(self.dist.mean(float(n)) * self.dist.world_size)

    def _contrastive(self, queries: Tensor, candidates: Tensor, query_ids: Tensor, candidate_ids: Tensor,
                     tau: float, bias: Tensor | None = None, extra: Tensor | None = None) -> Tensor:
        """Per-query InfoNCE against the candidates of every process (local positives); ``bias`` (N,): a logit
        offset per global item id, added to each candidate (the candidates' ids are then item ids); ``extra``
        (Q, E): logits of each query's own further negatives (``history_negative_mask``)."""
        dist = self.dist
        # (C, H) and (C,): every process's candidates; this process's first row is at ``first``
        (all_candidates, all_ids), first = dist.gather_rows(candidates, candidate_ids)
        positives = first + torch.arange(len(queries), device=queries.device)
        offsets = bias[all_ids] if bias is not None else None  # (C,); bias lives on the device already
        return contrastive(queries, all_candidates, tau, query_ids=query_ids, candidate_ids=all_ids,
                           positives=positives, false_negatives=self.config.pretrain.false_negatives,
                           reduction="none", candidate_bias=offsets, extra_logits=extra)


class PretrainMetrics(TypedDict):
    """What ``pretrain`` returns and writes to RUN/metrics.json."""

    kind: str  # "pretrained"
    domains: list[str]
    epochs: int
    steps: int
    seconds_train: float
    sequences_per_second: float
    peak_memory_mb: float
    device: str  # "cpu", "cuda", "cuda:1" (where it trained; records and cost estimates read it)
    world_size: int
    history: list[EpochRecord]  # one record per epoch (train.log)
    seed: int
    command: str
    code: dict[str, str | bool]


def pretrain_settings(data_dirs: Sequence[str | Path], config: RunConfig, overrides: list[str],
                      max_steps: int = 0) -> tuple[RunConfig, dict[str, Any]]:
    """The resolved config of a pre-training run and the settings its ``run.json`` holds: their fingerprint
    decides whether an interrupted run resumes, and whether ``unisrec report --adopt`` takes a run made by hand.
    Settings that belong to fine-tuning are refused, naming the setting."""
    if max_steps < 0:
        raise UnisrecError(f"--max-steps must be >= 0 (0: every epoch's steps), got {max_steps}")
    config = config.with_overrides(overrides)
    config = replace(config, model=replace(config.model, item_repr="text"))
    if config.model.architecture != "unisrec":  # recorded, then no --init of any mode could load the run
        raise UnisrecError(f"model.architecture={config.model.architecture}: pre-training trains UniSRec's text model "
                           "(the baselines are fine-tuned with unisrec finetune --mode ...); pre-train without it")
    check_read_settings(config)  # a baseline's own setting (model.mask_prob, model.gru_layers) would be ignored
    if config.model.repeat_bias:
        raise UnisrecError("model.repeat_bias is a fine-tuning setting: the repeat offsets belong to one catalogue "
                           "and are not transferred; pre-train without it and fine-tune with it")
    if config.train.select_start:  # it compares with the weights a fine-tuning started from; a pre-training has none
        raise UnisrecError("train.select_start is a fine-tuning setting (it needs --init); pre-train without it")
    if config.train.history_negatives != "full":  # the repeat offsets it leaves the history to are refused above
        raise UnisrecError("train.history_negatives is a fine-tuning setting (with model.repeat_bias); "
                           "pre-train without it")
    train = config.train
    for name, value, default, what in (
            ("freeze", train.freeze, ("auto", "none"), "it freezes the encoder of a model from --init"),
            ("transfer", train.transfer, ("all",), "it chooses what a run copies from --init"),
            ("anchor", train.anchor, (0.0,), "it pulls toward the weights of --init"),
            ("replay", train.replay, (0.0,), "it replays a corpus while fine-tuning"),
            ("user_fraction", train.user_fraction, (1.0,), "it samples the users of one target"),
            ("cold_items", train.cold_items, (0.0,), "it withholds items of one target"),
            ("negatives", train.negatives, (0,), "it samples the fine-tuning softmax; pre-training's candidates "
                                                 "are the batch's targets")):
        if value not in default:  # read by fine-tuning only: a pre-training would run as if it were not given
            raise UnisrecError(f"train.{name}={value} is a fine-tuning setting ({what}); pre-train without it")
    # read only where a run validates: given to a pre-training (by hand, or a report's shared overrides) they do
    # nothing, which is said rather than refused (a report gives train.interpolate=off to every run it plans)
    given = {o.split("=", 1)[0].lstrip("-") for o in overrides}
    unread = [name for name in ("train.patience", "train.select_metric", "train.repeat_lr_scale", "train.interpolate")
              if name in given and getattr(train, name[6:]) != getattr(TrainConfig(), name[6:])]
    if unread:
        print(f"note: {', '.join(unread)} {'does' if len(unread) == 1 else 'do'} nothing in pre-training (it never "
              "validates nor mixes weights); read by fine-tuning only", file=sys.stderr)
    # the views of the sequence-sequence loss: without the loss (pretrain.lambda_ss=0) none is made, and word-drop
    # views need both a rate and variants (the recipe has none: pretrain.word_drop_variants=0)
    pre = config.pretrain
    if pre.lambda_ss == 0:
        idle = {"pretrain.item_drop", "pretrain.word_drop", "pretrain.word_drop_variants"}
        why = "pretrain.lambda_ss=0: no sequence-sequence loss, whose views they make"
    else:
        idle = ({"pretrain.word_drop"} if pre.word_drop_variants == 0 else set()) | \
            ({"pretrain.word_drop_variants"} if pre.word_drop == 0 else set())
        why = (f"pretrain.word_drop={pre.word_drop:g}, pretrain.word_drop_variants={pre.word_drop_variants}: "
               "word-drop views need both above 0")
    unread_views = sorted(idle & given)
    if unread_views:
        print(f"note: {', '.join(unread_views)} {'does' if len(unread_views) == 1 else 'do'} nothing here ({why})",
              file=sys.stderr)
    # the recipe's train.precision=auto: recorded as what it resolves to here (bfloat16 only where it is native)
    config = with_resolved_precision(config, resolve_device(config.train.device))
    settings: dict[str, Any] = {
        "command": "pretrain",
        "data": [str(Path(d).resolve()) for d in data_dirs],
        "config": config.to_dict(),
        "max_steps": max_steps,
    }
    return config, settings


@releases_its_locks
def pretrain(
    data_dirs: Sequence[str | Path],
    out: str | Path,
    *,
    config: RunConfig | None = None,
    overrides: list[str] | None = None,
    max_steps: int = 0,
    overwrite: bool = False,
    command: str | None = None,
) -> PretrainMetrics:
    """Pre-train a text-only UniSRec on the datasets ``data_dirs`` and write the run folder ``out``.

    ``config`` defaults to the recipe (``recipe_config()``); ``overrides`` (``"train.epochs=2"``,
    ``"text.pooling=mean"``) apply on top. ``command``: the command line that makes this run, for its metrics and
    card (default: this process's; ``unisrec report`` gives each run's own ``unisrec pretrain ...``).
    """
    config, settings = pretrain_settings(data_dirs, config or recipe_config(), overrides or [], max_steps)
    code = git_commit()  # the code this process runs, read before training: a commit made meanwhile is not it
    out = real_folder(out)  # a link: the run is written where it points
    dirs = [Path(d) for d in data_dirs]
    device = resolve_device(config.train.device)
    dist = Distributed.from_env(device.type)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    final = out
    staged = 0  # with --overwrite the old run stays whole until this one ends: this one goes to staging_dir
    if dist.is_main:  # the folder it chose: a run that a kill left aside is moved back first
        origin = run_origin(data_dirs, config.text)  # the inputs' content: a resume from changed ones is refused
        if overwrite and adopt_finished_replacement(final, settings, origin):
            staged = ADOPTED
        else:
            staged = int(open_run_dir(final, settings, overwrite=overwrite, origin=origin) != final)
    staged = dist.from_main(staged)
    if staged == ADOPTED:  # finished before a kill stopped its move into place: moved in now, not trained again
        adopted = cast(PretrainMetrics, read_json(final / "metrics.json"))
        if dist.is_main:
            write_pretrain_card(final, settings, adopted, command)
            print(f"{final}: the replacement trained by an interrupted --overwrite had finished; moved in, not "
                  f"trained again ({adopted['steps']} steps over {len(adopted['domains'])} domains)", file=sys.stderr)
        dist.barrier()
        dist.close()
        return adopted
    out = staging_dir(final) if staged else final
    seed_everything(config.train.seed)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)

    corpus = dist.main_first(lambda: load_corpus(dirs, config))
    model = UniSRec.without_catalogue(config.model, corpus.text.shape[1]).to(device)
    set_trainable(model, config.train)  # before DistributedDataParallel sees which parameters train
    wrapped: nn.Module = model
    if dist.enabled:
        device_ids = [device.index] if device.type == "cuda" else None
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
    task = PretrainTask(wrapped, corpus, config, device, dist)
    extra = {"kind": "pretrained", "domains": corpus.names, "text_encoder": corpus.text_record}

    def save_best() -> None:
        save_pretrained(model, out, extra=extra, save_text=False)

    state = fit(
        model,
        Task(task.batches, task.steps, task.loss, save_best=save_best, epoch_steps=task.epoch_steps),
        config.train,
        out,
        device=device,
        fingerprint=recorded_fingerprint(out, settings),  # a resumed run's own (runs.same_settings)
        checkpoint_every=config.pretrain.checkpoint_every,
        max_steps=max_steps,
        dist=dist,
    )
    if max_steps and state.step_in_epoch and dist.is_main:
        save_best()  # the weights after the last step, also when it fell inside an epoch
    windows_per_step = len(corpus.windows) / max(task.steps, 1)
    seconds = state.seconds or 1e-9
    steps_timed = sum(r["steps"] for r in state.history) or state.global_step
    metrics: PretrainMetrics = {
        "kind": "pretrained",
        "domains": corpus.names,
        "epochs": state.epoch,
        "steps": state.global_step,
        "seconds_train": round(state.seconds, 3),
        "sequences_per_second": round(steps_timed * windows_per_step / seconds, 2),
        "peak_memory_mb": round(peak_memory_mb(device), 1),
        "device": str(device),
        "world_size": dist.world_size,
        "history": state.history,
        "seed": config.train.seed,
        "command": command or command_line(),
        "code": code,
    }
    if dist.is_main:
        write_pretrain_card(out, settings, metrics, command)  # before metrics.json, which marks the run finished
        atomic_write_json(out / "metrics.json", metrics)
        clear_checkpoint(out)
        finish_run_dir(out, final)
        print(f"pre-trained {state.global_step} steps over {len(corpus.names)} domains", file=sys.stderr)
    # DistributedDataParallel's reducer holds the process group: released here, while every rank is still alive
    # (released at the function's end instead, a rank whose peer had exited hung joining gloo's threads)
    del task, wrapped
    gc.collect()
    dist.barrier()
    dist.close()  # every rank is done: end the process group it joined
    return metrics
