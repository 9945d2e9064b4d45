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
Every run saves the rank of each test target (``ranks_test.npy``, see ``unisrec.analysis``).
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from safetensors.torch import load_file

from unisrec.analysis import save_ranks
from unisrec.atomic import atomic_write_json
from unisrec.baselines import build_model
from unisrec.batches import TrainBatch, bucketed_batches, make_train_batch, shard, training_windows
from unisrec.checkpoint import check_state, read_model_config, save_pretrained
from unisrec.config import MODE_ARCHITECTURE, MODES, ModelConfig, RunConfig, from_plain
from unisrec.datasets.processed import ProcessedDataset, load_processed
from unisrec.distributed import Distributed
from unisrec.errors import UnisrecError
from unisrec.evaluate import evaluate, rank_split
from unisrec.losses import full_softmax_ce
from unisrec.metrics import ranking_metrics
from unisrec.model import SequenceModel
from unisrec.model_card import command_line, record_transfer, write_finetune_card
from unisrec.records import git_commit
from unisrec.runs import fingerprint, finish_run_dir, open_run_dir, run_dir_for, seed_everything
from unisrec.train import ENCODER_PREFIX, Task, TrainState, clear_checkpoint, fit, peak_memory_mb, resolve_device
from unisrec.training_data import train_lengths, training_sequences

__all__ = ["finetune", "load_text", "train_lengths", "zero_shot_model"]

if TYPE_CHECKING:
    from unisrec.cloze import ClozeTask

DOMAIN_SPECIFIC_PREFIX = "item_id."  # an ID table belongs to one catalogue: never transferred


def freeze_encoder(model: SequenceModel, frozen: bool) -> list[str]:
    """Set requires_grad by the freeze policy; returns the names of the trainable parameters."""
    for name, param in model.named_parameters():
        param.requires_grad = not (frozen and name.startswith(ENCODER_PREFIX))
    return [name for name, param in model.named_parameters() if param.requires_grad]


def load_transferable(model: SequenceModel, init_dir: Path) -> list[str]:
    """Copy every parameter of a pre-trained run except domain-specific ones; returns the names copied.

    Strict: a parameter the model has and the run lacks (other than a new ID table), or a shape that
    differs, is an error naming it.
    """
    path = init_dir / "model.safetensors"
    if not path.exists():
        raise UnisrecError(f"{path}: missing; --init expects a run folder of `unisrec pretrain` or `finetune`")
    found = {k: v for k, v in load_file(str(path)).items() if not k.startswith(DOMAIN_SPECIFIC_PREFIX)}
    expected = {k: v for k, v in model.state_dict().items() if not k.startswith(DOMAIN_SPECIFIC_PREFIX)}
    check_state(expected, found, str(path))
    model.load_state_dict(found, strict=False)  # the keys were checked above; only item_id.* is left out
    return sorted(found)


def resolve_model_config(config: RunConfig, mode: str, init: Path | None, overrides: list[str]) -> ModelConfig:
    """The mode's item representation on top of the init run's architecture (or the config's)."""
    if mode not in MODES:
        raise UnisrecError(f"unknown mode {mode!r}; expected one of {', '.join(MODES)}")
    model = config.model
    if init is not None:
        saved = read_model_config(init)
        model = from_plain(ModelConfig, saved["model"], f"{init}/config.json: model")
        keys = [o.split("=", 1)[0].lstrip("-") for o in overrides]
        fields = [key.split(".", 1)[1] for key in keys if key.startswith("model.")]
        model = replace(model, **{f: getattr(config.model, f) for f in fields})
        if mode == "sasrec" or MODE_ARCHITECTURE[mode] in ("gru4rec", "bert4rec", "fdsa", "textknn"):
            raise UnisrecError(f"--init transfers a text model; --mode {mode} trains from scratch")
        if model.architecture != MODE_ARCHITECTURE[mode]:
            raise UnisrecError(f"--init {init}: a {model.architecture} run cannot initialise --mode {mode}")
    return replace(model, item_repr=MODES[mode], architecture=MODE_ARCHITECTURE[mode])


class FinetuneTask:
    """Batches of training windows and the full-softmax loss over the domain's items.

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
    ):
        self.model, self.config, self.device = model, config, device
        self.dist = dist or Distributed.single()
        sequences = training_sequences(dataset, config.train)
        self.items, self.cold = sequences.items, sequences.cold
        layout = "exact" if config.train.windows == "auto" else config.train.windows
        self.windows = training_windows(sequences.starts, sequences.lengths, config.model.max_seq_len, layout=layout)
        total = int(self.windows.n_targets.sum())
        if total == 0:
            raise UnisrecError(f"{dataset.path}: no training examples (every user needs >= 2 training items)")
        self.steps = len(bucketed_batches(self.windows, config.train.batch_size, np.random.default_rng(0)))

    def batches(self, epoch: int) -> Iterator[TrainBatch]:
        rng = np.random.default_rng([self.config.train.seed, epoch])
        for index in bucketed_batches(self.windows, self.config.train.batch_size, rng):
            share = index[shard(self.windows.n_targets[index], self.dist)]  # this process's windows
            yield make_train_batch(self.items, self.windows.subset(share))

    def loss(self, batch: TrainBatch) -> dict[str, torch.Tensor]:
        batch = batch.to(self.device)
        hidden, table = self.model(batch.inputs)  # (B, L, H), (N, H): the table once per step
        core = cast(SequenceModel, getattr(self.model, "module", self.model))
        logits = core.logits(hidden[batch.mask], table)  # (T, N)
        if not self.dist.enabled:
            return {"loss": full_softmax_ce(logits, batch.targets)}
        total = round(self.dist.mean(float(len(batch.targets))) * self.dist.world_size)
        loss = torch.nn.functional.cross_entropy(logits, batch.targets, reduction="sum") * self.dist.world_size / total
        return {"loss": loss}


def cold_metrics(ranks: np.ndarray, targets: np.ndarray, cold: np.ndarray, ks: tuple[int, ...]) -> dict[str, float]:
    """``cold_recall@K`` / ``cold_ndcg@K`` over the cases whose target is cold, and their count ``cold_cases``.

    ranks (T,) 0-based full-ranking ranks, targets (T,) item ids, cold (N,) bool.
    """
    here = cold[targets]
    if not here.any():
        return {**{f"cold_{m}@{k}": 0.0 for k in ks for m in ("recall", "ndcg")}, "cold_cases": 0.0}
    scored = ranking_metrics(ranks[here], ks)
    out: dict[str, float] = {f"cold_{m}@{k}": scored[f"{m}@{k}"] for k in ks for m in ("recall", "ndcg")}
    out["cold_cases"] = float(here.sum())
    return out


def load_text(dataset: ProcessedDataset, text_spec: dict[str, Any] | None) -> tuple[torch.Tensor, dict[str, Any]]:
    """(N, D) language-model item vectors of ``dataset`` (encoded now if not cached) and their metadata."""
    from unisrec.text import TextEncoderSpec, encode_dataset, load_item_embeddings

    spec = TextEncoderSpec(**text_spec) if text_spec else TextEncoderSpec()
    assert dataset.path is not None
    encode_dataset(dataset.path, spec)
    embeddings = load_item_embeddings(dataset.path, spec)
    meta = {**embeddings.meta, "model": spec.model, "pooling": spec.pooling, "max_length": spec.max_length,
            "precision": spec.precision}
    return torch.from_numpy(embeddings.matrix), meta


def zero_shot_model(init_dir: Path, dataset: ProcessedDataset) -> SequenceModel:
    """A pre-trained text model applied to a new domain as is (no fine-tuning): text-only item vectors.

    ``init_dir``: a pre-training run, or a fine-tuning run of a text mode (inductive, transductive without
    its ID table, zesrec).
    """
    saved = read_model_config(init_dir)
    config = from_plain(ModelConfig, saved["model"], f"{init_dir}/config.json: model")
    if config.architecture not in ("unisrec", "zesrec") or not config.uses_text:
        raise UnisrecError(f"{init_dir}: a {config.architecture} model of {config.item_repr} items cannot score "
                           "new items by their text")
    config = replace(config, item_repr="text")
    text, _meta = load_text(dataset, _init_text_spec(init_dir))
    model = build_model(config, dataset.n_items, text)
    load_transferable(model, init_dir)
    return model


def finetune(
    data_dir: str | Path,
    mode: str,
    out: str | Path,
    *,
    config: RunConfig | None = None,
    overrides: list[str] | None = None,
    init: str | Path | None = None,
    text_spec: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Train on ``data_dir`` and write the run folder ``out``; returns {"valid": ..., "test": ...}."""
    overrides = overrides or []
    config = (config or RunConfig()).with_overrides(overrides)
    init_dir = Path(init) if init is not None else None
    config = replace(config, model=resolve_model_config(config, mode, init_dir, overrides))
    out = Path(out)
    dataset = load_processed(data_dir)
    if init_dir is not None:
        text_spec = text_spec or _init_text_spec(init_dir)
    settings = {
        "command": "finetune",
        "data": str(Path(data_dir).resolve()),
        "mode": mode,
        "init": str(init_dir.resolve()) if init_dir else None,
        "text_encoder": text_spec,
        "config": config.to_dict(),
    }
    device = resolve_device(config.train.device)
    dist = Distributed.from_env(device.type)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    final = out
    out = run_dir_for(final, overwrite=overwrite)  # with --overwrite the old run stays whole until this one ends
    if dist.is_main:
        open_run_dir(final, settings, overwrite=overwrite)
    dist.barrier()
    seed_everything(config.train.seed)
    if config.train.threads:
        torch.set_num_threads(config.train.threads)

    text, text_meta = dist.main_first(lambda: load_text(dataset, text_spec)) if config.model.uses_text else (None, {})
    model = build_model(config.model, dataset.n_items, text)
    transferred = load_transferable(model, init_dir) if init_dir is not None else []
    frozen = config.train.freeze == "encoder"
    trainable = freeze_encoder(model, frozen)
    model.to(device)
    wrapped: torch.nn.Module = model
    if dist.enabled:
        device_ids = [device.index] if device.type == "cuda" else None
        wrapped = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    task: FinetuneTask | ClozeTask
    if config.model.architecture == "bert4rec":
        from unisrec.cloze import ClozeTask

        task = ClozeTask(wrapped, dataset, config, device, dist)
    else:
        task = FinetuneTask(wrapped, dataset, config, device, dist)
    extra = {"text_encoder": text_meta, "dataset": {"name": dataset.name, "path": str(dataset.path)}}

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
                validate=lambda: evaluate(model, dataset, "valid", config.eval, device),
                save_best=save_best,
            ),
            config.train,
            out,
            device=device,
            fingerprint=fingerprint(settings),
            dist=dist,
        )
    dist.barrier()
    best = load_file(str(out / "model.safetensors"))
    model.load_state_dict(best, strict=True)
    started = time.perf_counter()
    valid = evaluate(model, dataset, "valid", config.eval, device)
    test_ranks = rank_split(model, dataset, "test", config.eval, device)  # (T,)
    test = ranking_metrics(test_ranks, config.eval.ks)
    cold = getattr(task, "cold", None)
    if cold is not None and cold.any():
        test.update(cold_metrics(test_ranks, dataset.items[dataset.target_rows("test")], cold, config.eval.ks))
    eval_seconds = (time.perf_counter() - started) / 2
    n_params = sum(p.numel() for p in model.parameters())
    metrics = {
        "valid": valid,
        "test": test,
        "best_epoch": state.best_epoch,
        "epochs": state.epoch,
        "stopped_early": state.stopped_early,
        "seconds_per_epoch": float(np.median(state.epoch_seconds)) if state.epoch_seconds else 0.0,
        "seconds_train": round(state.seconds, 3),
        "seconds_eval": round(eval_seconds, 3),
        "peak_memory_mb": round(peak_memory_mb(device), 1),
        "parameters": {"total": n_params, "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad)},
        "trainable_parameters": trainable,
        "transferred_parameters": transferred,
        "mode": mode,
        "seed": config.train.seed,
        "dataset": dataset.name,
        "device": str(device),
        "command": command_line(),
        "code": git_commit(),
    }
    if dist.is_main:
        save_ranks(out, test_ranks)
        atomic_write_json(out / "metrics.json", metrics)
        write_finetune_card(out, settings, metrics)
        clear_checkpoint(out)
        finish_run_dir(out, final)
        if init_dir is not None:
            record_transfer(init_dir, final, metrics)
        print(f"best epoch {state.best_epoch}: test {json.dumps(test)}", file=sys.stderr)
    dist.barrier()
    return metrics


def _init_text_spec(init_dir: Path) -> dict[str, Any] | None:
    saved = read_model_config(init_dir).get("text_encoder") or {}
    spec = {k: saved[k] for k in ("model", "pooling", "precision") if k in saved}
    if "max_length" in saved:
        spec["max_length"] = int(saved["max_length"])
    return spec or None
