"""The one training loop (pre-training and fine-tuning differ only by their ``Task``).

Adam, seeded, gradient clipping, a stop on a non-finite loss, validation after every epoch with early
stopping, the best weights kept, every loss term logged, and exact resumption: the batch order of an
epoch is a pure function of (seed, epoch), and a checkpoint stores the weights, the optimizer state, the
torch RNG state and the position inside the epoch, so a run killed at any point and restarted reaches the
same weights as an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import resource
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn
from tqdm import tqdm

from unisrec.atomic import atomic_directory, atomic_write_text, clean_stale
from unisrec.batches import StepIndex
from unisrec.checkpoint import save_tensors
from unisrec.config import TrainConfig
from unisrec.distributed import Distributed
from unisrec.errors import UnisrecError
from unisrec.json_io import read_json
from unisrec.precision import resolve_precision


class TrainingError(UnisrecError):
    """Training cannot go on (e.g. a non-finite loss)."""


@dataclass
class Task:
    """What a run optimises."""

    batches: Callable[[int], Iterator[Any]]  # epoch -> its batches, deterministic given (seed, epoch)
    steps_per_epoch: int
    loss: Callable[[Any], dict[str, Tensor]]  # batch -> {"loss": total, other terms...}
    validate: Callable[[], dict[str, float]] | None = None  # metrics of the current weights
    save_best: Callable[[], None] = lambda: None  # called when validation improves (main process)
    # epoch -> its number of steps, when epochs differ in length (a batch or so): the cosine schedule then ends
    # at 0 on the run's real last step; None = every epoch has steps_per_epoch
    epoch_steps: Callable[[int], int] | None = None


# one epoch's line of train.log (and of ``TrainState.history``): epoch, steps, seconds, lr, train_<loss term>,
# partial (true when max_steps ended the epoch), valid (the validation metrics)
EpochRecord = dict[str, float | dict[str, float]]


@dataclass
class TrainState:
    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # steps of the current (unfinished) epoch already taken
    global_step: int = 0
    best_score: float = -math.inf
    best_epoch: int = -1
    bad_epochs: int = 0
    stopped_early: bool = False
    seconds: float = 0.0
    epoch_seconds: list[float] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    # the unfinished epoch's loss sums and counts per term and its seconds so far: a run resumed inside an
    # epoch logs the same epoch record (steps, mean losses) as one that was never interrupted
    epoch_sums: dict[str, float] = field(default_factory=dict)
    epoch_counts: dict[str, int] = field(default_factory=dict)
    epoch_elapsed: float = 0.0
    # the validation metrics of the weights before the first step (train.select_start), else None
    start_valid: dict[str, float] | None = None


def peak_memory_mb(device: torch.device) -> float:
    """Peak resident memory of this process (CPU) or peak allocated GPU memory, in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 if sys.platform != "darwin" else rss / 2**20


def random_states(dist: Distributed, device: torch.device) -> dict[str, Tensor]:
    """The random generators' states a checkpoint keeps: this process's (``rng/torch``, ``rng/cuda<i>``) and,
    under torchrun, every rank's own (``rng/rank<r>/torch``, and ``rng/rank<r>/cuda`` for its GPU): ranks draw
    different dropout masks (their shares of a batch differ in size), so each resumes from its own state.
    Collective under torchrun: every rank calls it, rank 0 writes what it returns (the process's own keys are
    read there only: a CPU run on a GPU host starts no CUDA context in the other ranks)."""
    tensors: dict[str, Tensor] = {}
    if dist.is_main:
        tensors["rng/torch"] = torch.get_rng_state()
        if torch.cuda.is_available():
            for i, rng in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng/cuda{i}"] = rng
    if dist.enabled:
        for rank, rng in enumerate(dist.gather_equal(torch.get_rng_state())):
            tensors[f"rng/rank{rank}/torch"] = rng
        if device.type == "cuda":
            for rank, rng in enumerate(dist.gather_equal(torch.cuda.get_rng_state(device))):
                tensors[f"rng/rank{rank}/cuda"] = rng
    return tensors


def _restore_random_states(tensors: dict[str, Tensor], dist: Distributed, device: torch.device) -> None:
    """Set the generators from a checkpoint's states: each rank its own where the checkpoint holds one per rank
    of the same number of ranks, else (one process, or a run resumed with another number of them) the saving
    process's."""
    saved_ranks = sum(1 for key in tensors if key.startswith("rng/rank") and key.endswith("/torch"))
    if dist.enabled and saved_ranks == dist.world_size:
        torch.set_rng_state(tensors[f"rng/rank{dist.rank}/torch"])
        own_cuda = tensors.get(f"rng/rank{dist.rank}/cuda")
        if own_cuda is not None and device.type == "cuda":
            torch.cuda.set_rng_state(own_cuda, device)
        return
    torch.set_rng_state(tensors["rng/torch"])
    cuda_keys = sorted((k for k in tensors if k.startswith("rng/cuda")), key=lambda k: int(k[8:]))  # 2 < 10
    cuda_states = [tensors[k] for k in cuda_keys]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])


def _save_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainState, fingerprint: str,
    rng_states: dict[str, Tensor], schedule_steps: int, rank_terms: list[Any] | None = None,
) -> None:
    tensors = {f"model/{k}": v for k, v in model.state_dict().items()}
    optim = optimizer.state_dict()
    for index, values in optim["state"].items():
        for key, value in values.items():
            tensors[f"optim/{index}/{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    tensors.update(rng_states)
    meta = {"state": asdict(state), "param_groups": optim["param_groups"], "fingerprint": fingerprint,
            "schedule_steps": schedule_steps}
    if rank_terms is not None:  # under torchrun: every rank's loss sums of the unfinished epoch, in rank order
        meta["rank_epoch_terms"] = rank_terms
    with atomic_directory(path, replace=True) as tmp:
        save_tensors(tmp / "state.safetensors", tensors)
        (tmp / "state.json").write_text(json.dumps(meta))


def _load_checkpoint(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, fingerprint: str, dist: Distributed,
    device: torch.device, config: TrainConfig, schedule_steps: int,
) -> TrainState:
    meta = read_json(path / "state.json", "delete the checkpoint folder or pass --overwrite")
    if not isinstance(meta, dict):
        raise UnisrecError(f"{path}: damaged checkpoint (state.json holds no object); delete the checkpoint folder "
                           "or pass --overwrite")
    if meta.get("fingerprint") != fingerprint:
        raise UnisrecError(
            f"{path}: checkpoint of a run with different settings; use another --out or --overwrite"
        )
    made_for = meta.get("schedule_steps")  # absent in checkpoints made before it was kept
    if config.schedule != "constant" and isinstance(made_for, int) and made_for != schedule_steps:
        raise UnisrecError(
            f"{path}: checkpoint of a run whose {config.schedule} schedule spans {made_for} steps (max_steps sets "
            f"its end), not the {schedule_steps} planned now: continued, it would not be the run either plans; "
            "pass the same max_steps, or start afresh (another --out, or --overwrite)"
        )
    try:
        tensors = load_file(str(path / "state.safetensors"))
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model/")}, strict=True)
        optim_state: dict[int, dict[str, Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim/"):
                _, index, name = key.split("/", 2)
                optim_state.setdefault(int(index), {})[name] = value
        optimizer.load_state_dict({"state": optim_state, "param_groups": meta["param_groups"]})
        _restore_random_states(tensors, dist, device)
        state = TrainState(**meta["state"])
        # each rank's own sums of the unfinished epoch (the state holds rank 0's), where the checkpoint has one per
        # rank of the same number of ranks: the epoch's record averages every rank's mean loss
        ranks = meta.get("rank_epoch_terms")
        if dist.enabled and isinstance(ranks, list) and len(ranks) == dist.world_size:
            state.epoch_sums, state.epoch_counts = dict(ranks[dist.rank]["sums"]), dict(ranks[dist.rank]["counts"])
        return state
    except (UnisrecError, MemoryError, torch.cuda.OutOfMemoryError):
        raise  # out of memory is not a damaged file: the checkpoint must not be deleted on our word
    except Exception as exc:  # a truncated or edited file: safetensors, key, shape or field errors alike
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnisrecError(f"{path}: damaged checkpoint ({type(exc).__name__}: {first}); delete the checkpoint "
                           "folder or pass --overwrite") from exc


def trim_log(path: Path, epochs_done: int, partial: dict[str, Any] | None = None) -> None:
    """Keep the records of the ``epochs_done`` epochs a checkpoint holds (drops what a resumed run will log
    again, partial records and a torn last line), atomically; then ``partial``, the checkpoint's record of an
    epoch that ``max_steps`` ended, where the resumed run ends there too (it will not log it again)."""
    if not path.exists() and partial is None:
        return
    kept = []
    for line in path.read_text().splitlines() if path.exists() else []:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # torn by a kill mid-write
        if isinstance(record, dict) and int(record.get("epoch", 0)) <= epochs_done and not record.get("partial"):
            kept.append(line)
    if partial is not None:
        kept.append(json.dumps(partial))
    atomic_write_text(path, "".join(f"{line}\n" for line in kept))


def _log(run_dir: Path | None, record: dict[str, Any]) -> None:
    if run_dir is not None:
        with open(run_dir / "train.log", "a") as handle:
            handle.write(json.dumps(record) + "\n")


def fit(
    model: nn.Module,
    task: Task,
    config: TrainConfig,
    run_dir: Path | None,
    *,
    device: torch.device,
    fingerprint: str = "",
    checkpoint_every: int = 0,
    max_steps: int = 0,
    dist: Distributed | None = None,
    on_epoch: Callable[[TrainState], None] | None = None,
) -> TrainState:
    """Train ``model`` (its parameters with requires_grad) on ``task``; resumes from ``run_dir/checkpoint``.

    ``checkpoint_every`` > 0 also checkpoints every that many steps inside an epoch; ``max_steps`` > 0
    stops after that many steps in all, and a decaying schedule (``train.schedule=cosine``) ends there (a pilot is a
    whole short run): its checkpoint is continued only under the same end (a constant schedule under any).
    With ``dist``, gradients are averaged over processes (the model
    must then be wrapped by the caller in DistributedDataParallel) and only rank 0 writes files; every rank
    gets the same ``run_dir`` (its checkpoints gather every rank's random state).
    """
    dist = dist or Distributed.single()
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UnisrecError("no trainable parameters")
    optimizer = torch.optim.Adam(param_groups(model, config), lr=config.lr, weight_decay=config.weight_decay)
    bfloat16 = resolve_precision(config.precision, device) == "bfloat16"  # autocast of each step (auto: if native)
    total_steps = schedule_steps(task, config)
    if max_steps:
        total_steps = min(total_steps, max_steps)
    checkpoint = run_dir / "checkpoint" if run_dir is not None else None
    if run_dir is not None and dist.is_main:
        clean_stale(run_dir / "checkpoint")  # killed between a checkpoint's two renames: the previous one comes back
        remove_partial_writes(run_dir)
    dist.barrier()  # the other ranks look for the checkpoint once rank 0 has put back one that a kill left aside
    state = TrainState()
    if checkpoint is not None and (checkpoint / "state.json").exists():
        state = _load_checkpoint(checkpoint, model, optimizer, fingerprint, dist, device, config, total_steps)
        # the record of an epoch that max_steps ended: kept where this run ends there too; where the epoch goes on
        # (train.fit called with a later max_steps, or none; the CLI refuses to resume with another --max-steps),
        # dropped from the history as from the log, its seconds back in the epoch's: it is recorded whole when it ends
        ended = state.history[-1] if state.history and state.history[-1].get("partial") else None
        if ended is not None and not (max_steps and state.global_step >= max_steps):
            state.seconds -= ended["seconds"]
            state.epoch_elapsed = ended["seconds"]
            ended = None
        # (a checkpoint of the earlier code, resumed past a partial epoch, kept its record before the whole one)
        state.history = [r for r in state.history if not r.get("partial")] + ([ended] if ended else [])
        if dist.is_main:
            print(f"resuming from epoch {state.epoch} step {state.step_in_epoch}", file=sys.stderr)
            if run_dir is not None:
                trim_log(run_dir / "train.log", state.epoch, ended)
    elif run_dir is not None and dist.is_main:  # from the start: what a run killed before its first checkpoint
        trim_log(run_dir / "train.log", 0)  # logged (its first epoch) is logged again
    write = dist.is_main and run_dir is not None
    curves = CurveWriter(run_dir, config.log, enabled=write, resume_step=state.global_step)

    def save() -> None:
        if checkpoint is not None:
            rng_states = random_states(dist, device)  # every rank's, gathered on every rank
            # each rank's loss sums of the unfinished epoch: a rank resumed with rank 0's added them to its own
            rank_terms = dist.gather_json({"sums": state.epoch_sums, "counts": state.epoch_counts}) \
                if dist.enabled else None
            if write:
                _save_checkpoint(checkpoint, model, optimizer, state, fingerprint, rng_states, total_steps,
                                 rank_terms)
        dist.barrier()

    if config.select_start and task.validate is not None and state.global_step == 0:
        # epoch 0: the starting weights compete with every epoch (validation uses no random numbers, so the
        # training that follows is the same as without it); a resumed run has taken steps and kept its start_valid
        state.start_valid = task.validate()
        state.best_score, state.best_epoch = dist.main_float(state.start_valid[config.select_metric]), 0
        if dist.is_main:
            task.save_best()
            print(f"epoch 0 (before training): valid {config.select_metric}="
                  f"{state.start_valid[config.select_metric]:.4f}", file=sys.stderr)
    while state.epoch < config.epochs and not state.stopped_early:
        if max_steps and state.global_step >= max_steps:
            break
        started = time.perf_counter() - state.epoch_elapsed
        model.train()
        sums, counts = state.epoch_sums, state.epoch_counts  # the steps taken before an interruption, if any
        count = state.step_in_epoch
        epoch_total = epoch_length(task, state.epoch)  # this epoch's steps (epochs differ by a batch or so)
        bar = tqdm(
            total=epoch_total,
            initial=state.step_in_epoch,
            desc=f"epoch {state.epoch + 1}",
            disable=not (config.progress and dist.is_main and sys.stderr.isatty()),
            leave=False,
        )
        exhausted = True
        ticker = ProgressLines(
            epoch_total, state.epoch + 1,
            enabled=config.progress and dist.is_main and not sys.stderr.isatty(),
        )
        for step, batch in enumerate(task.batches(state.epoch)):
            if step < state.step_in_epoch:
                continue  # already trained before the interruption
            if max_steps and state.global_step >= max_steps:  # checked before a step: an epoch that ends right
                exhausted = False  # at max_steps is a whole epoch (validated, counted), not a partial one
                break
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bfloat16):
                terms = task.loss(batch)
            loss = terms["loss"]
            # every term read in one transfer: one device synchronisation per step, not one per term (a
            # pre-training step has a dozen: loss, si, ss and each domain's si)
            names = list(terms)
            read = torch.stack([terms[k].detach().float() for k in names]).tolist()  # (len(names),)
            values: dict[str, float] = dict(zip(names, read, strict=True))
            if not math.isfinite(values["loss"]):
                raise TrainingError(
                    f"non-finite loss at epoch {state.epoch + 1} step {step + 1}: {values}; "
                    "lower train.lr or check the input vectors"
                )
            factor = lr_factor(state.global_step, total_steps, config)
            for group in optimizer.param_groups:
                group["lr"] = group["base_lr"] * factor
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            for key, term_value in values.items():
                sums[key] = sums.get(key, 0.0) + term_value
                counts[key] = counts.get(key, 0) + 1
            count += 1
            state.step_in_epoch, state.global_step = step + 1, state.global_step + 1
            state.epoch_elapsed = time.perf_counter() - started
            bar.update(1)
            value, lr = values["loss"], optimizer.param_groups[0]["lr"]
            ticker.step(step + 1, value, lr)
            curves.step(state.global_step, value, lr)
            bar.set_postfix({k: f"{v / counts[k]:.4f}" for k, v in sums.items() if "@" not in k})
            if checkpoint_every and state.global_step % checkpoint_every == 0 and not (
                    max_steps and state.global_step >= max_steps):
                save()  # not at the last step: the partial or end-of-epoch checkpoint follows, with its record
        bar.close()
        elapsed = time.perf_counter() - started
        record: dict[str, Any] = {
            "epoch": state.epoch + 1,
            "steps": count,
            "seconds": round(elapsed, 3),
            "lr": optimizer.param_groups[0]["lr"],
            # per-domain terms ("si@name") are this process's own; the others are averaged over processes
            **{f"train_{k}": sums[k] / counts[k] if "@" in k else dist.mean(sums[k] / counts[k]) for k in sorted(sums)},
        }
        if not exhausted:  # stopped by max_steps inside the epoch
            record["partial"] = True
            state.seconds += elapsed
            state.epoch_elapsed = 0.0  # counted in state.seconds already
            state.history.append(record)
            save()
            _log(run_dir if write else None, record)
            curves.epoch(record)
            break
        state.epoch += 1
        state.step_in_epoch = 0
        state.epoch_sums, state.epoch_counts, state.epoch_elapsed = {}, {}, 0.0
        state.epoch_seconds.append(round(elapsed, 3))
        if task.validate is not None:
            metrics = task.validate()
            record["valid"] = metrics
            score = dist.main_float(metrics[config.select_metric])  # one decision for every rank
            if score > state.best_score:
                state.best_score, state.best_epoch, state.bad_epochs = score, state.epoch, 0
                if dist.is_main:
                    task.save_best()
            else:
                state.bad_epochs += 1
                state.stopped_early = state.bad_epochs >= config.patience
        else:
            state.best_epoch = state.epoch
            if dist.is_main:
                task.save_best()
        state.seconds += elapsed
        state.history.append(record)
        _log(run_dir if write else None, record)
        curves.epoch(record)
        if dist.is_main:
            _print_epoch(record, config)
        if on_epoch is not None:
            on_epoch(state)
        save()
    curves.close()
    return state


class CurveWriter:
    """TensorBoard event files in ``RUN/tensorboard`` (``train.log``): every loss term (per domain too), the
    learning rate and the validation metrics per epoch, and the loss every ``every`` steps."""

    def __init__(self, run_dir: Path | None, mode: str, enabled: bool, every: int = 20, resume_step: int = 0) -> None:
        """``resume_step``: the global step a resumed run goes on from; the events an earlier process logged
        after it (the steps a kill made it train again) are dropped, so that no step has two points."""
        self.writer: Any = None
        self.every = every
        if run_dir is None or not enabled or mode == "jsonl":
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            if mode == "tensorboard":
                raise UnisrecError("train.log=tensorboard needs the tensorboard package: "
                                   "pip install 'unisrec[tensorboard]'") from None
            return
        # purge_step: events at later steps are dropped (and epoch scalars, at steps 1..epochs <= resume_step, kept)
        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"), purge_step=resume_step + 1)

    def step(self, global_step: int, loss: float, lr: float) -> None:
        if self.writer is not None and global_step % self.every == 0:
            self.writer.add_scalar("step/loss", loss, global_step)
            self.writer.add_scalar("step/lr", lr, global_step)

    def epoch(self, record: dict[str, Any]) -> None:
        if self.writer is None:
            return
        epoch = int(record["epoch"])
        for key, value in record.items():
            if key.startswith("train_"):
                self.writer.add_scalar(f"train/{key[6:].replace('@', '/')}", value, epoch)  # si@beauty -> si/beauty
        self.writer.add_scalar("train/lr", record["lr"], epoch)
        for key, value in (record.get("valid") or {}).items():
            self.writer.add_scalar(f"valid/{key}", value, epoch)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class ProgressLines:
    """One line on stderr every ``every`` seconds (steps, steps/s, loss, lr, ETA): progress under nohup/CI,
    where no progress bar is drawn."""

    def __init__(self, total: int, epoch: int, *, enabled: bool, every: float = 60.0) -> None:
        self.total, self.epoch, self.enabled, self.every = total, epoch, enabled, every
        self.started = self.last = time.perf_counter()
        self.first: int | None = None

    def step(self, done: int, loss: float, lr: float) -> None:
        if not self.enabled:
            return
        now = time.perf_counter()
        if self.first is None:
            self.first = done - 1  # steps already taken before a resume
        if now - self.last < self.every and done < self.total:
            return
        self.last = now
        rate = (done - self.first) / max(now - self.started, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        print(f"epoch {self.epoch} step {done}/{self.total} {rate:.2f} steps/s loss {loss:.4f} lr {lr:.2e} "
              f"epoch ETA {eta:.0f}s", file=sys.stderr, flush=True)


ENCODER_PREFIX = "encoder."  # Transformer layers + position embeddings (the sequence encoder)
ADAPTOR_PREFIX = "adaptor."  # the text adaptor: parametric whitening + mixture of experts
REPEAT_PREFIX = "repeat_weight"  # the repeat offsets [w_last, w_hist] (model.repeat_bias)


def set_trainable(model: nn.Module, config: TrainConfig, *, freeze_encoder: bool = False) -> list[str]:
    """Set requires_grad by the freeze policy and the learning-rate scales, before the model is wrapped for
    DistributedDataParallel: the sequence encoder is frozen with ``freeze_encoder`` (``train.freeze=encoder``)
    or ``train.encoder_lr_scale=0``, the text adaptor with ``train.adaptor_lr_scale=0``. Returns the names of
    the trainable parameters."""
    frozen = tuple(prefix for prefix, off in ((ENCODER_PREFIX, freeze_encoder or config.encoder_lr_scale == 0),
                                               (ADAPTOR_PREFIX, config.adaptor_lr_scale == 0)) if off)
    for name, param in model.named_parameters():
        param.requires_grad = not name.startswith(frozen)
    return [name for name, param in model.named_parameters() if param.requires_grad]


def param_groups(model: nn.Module, config: TrainConfig) -> list[dict[str, Any]]:
    """Trainable parameters in Adam groups: the sequence encoder at lr * encoder_lr_scale, the text adaptor at
    lr * adaptor_lr_scale, the repeat offsets at lr * repeat_lr_scale (each of the last two in the first group
    at scale 1: the layout of checkpoints made before the option), the rest at lr; no empty group.

    Each group keeps its ``base_lr``; the schedule (``lr_factor``) scales it at every step.
    """
    scales = {"": 1.0, ENCODER_PREFIX: config.encoder_lr_scale, ADAPTOR_PREFIX: config.adaptor_lr_scale,
              REPEAT_PREFIX: config.repeat_lr_scale}
    members: dict[str, list[nn.Parameter]] = {prefix: [] for prefix in scales}
    for name, param in model.named_parameters():
        part = next((prefix for prefix in scales if prefix and name.startswith(prefix)), "")
        if part in (ADAPTOR_PREFIX, REPEAT_PREFIX) and scales[part] == 1:
            part = ""
        if param.requires_grad:
            members[part].append(param)
    groups = [{"params": members[prefix], "lr": config.lr * scale, "base_lr": config.lr * scale}
              for prefix, scale in scales.items()]
    return [g for g in groups if g["params"]]


def epoch_length(task: Task, epoch: int) -> int:
    """The steps of 0-based ``epoch``: ``task.epoch_steps`` where the task tells them, else ``steps_per_epoch``."""
    return task.epoch_steps(epoch) if task.epoch_steps is not None else task.steps_per_epoch


def schedule_steps(task: Task, config: TrainConfig) -> int:
    """The steps of all ``config.epochs`` epochs, over which the cosine schedule falls to 0: counted epoch by
    epoch where ``task.epoch_steps`` tells them (only for the cosine schedule, the one that reads the total)."""
    if task.epoch_steps is None or config.schedule != "cosine":
        return config.epochs * task.steps_per_epoch
    return StepIndex(task.epoch_steps).first(config.epochs)


def lr_factor(step: int, total_steps: int, config: TrainConfig) -> float:
    """Multiplier of the learning rate at 0-based ``step``: linear warm-up, then constant or cosine to 0."""
    if config.warmup_steps and step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return 1.0
    span = max(total_steps - config.warmup_steps, 1)
    progress = min(max(step - config.warmup_steps, 0) / span, 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def _print_epoch(record: dict[str, Any], config: TrainConfig) -> None:
    terms = " ".join(f"{k[6:]}={v:.4f}" for k, v in record.items() if k.startswith("train_") and "@" not in k)
    valid = record.get("valid")
    shown = f" valid {config.select_metric}={valid[config.select_metric]:.4f}" if valid else ""
    print(f"epoch {record['epoch']}: {terms}{shown} ({record['seconds']:.1f}s)", file=sys.stderr)


def remove_partial_writes(run_dir: Path) -> None:
    """Delete temporaries that an atomic write killed midway left behind (``.name.*.tmp`` / ``.old``)."""
    for path in run_dir.glob(".*.*"):
        if path.name.endswith((".tmp", ".old")):
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def clear_checkpoint(run_dir: Path) -> None:
    shutil.rmtree(run_dir / "checkpoint", ignore_errors=True)
