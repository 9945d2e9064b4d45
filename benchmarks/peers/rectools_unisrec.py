"""Peer: RecTools 0.19 ``UniSRecModel`` on a unisrec processed dataset, under unisrec's evaluation protocol.

Runs in its own virtual environment (RecTools 0.19 pins numpy < 2)::

    bash benchmarks/peers/setup_rectools.sh
    OMP_NUM_THREADS=1 nice -n 19 benchmarks/peers/.venv-rectools/bin/python \
        benchmarks/peers/rectools_unisrec.py /work/data/sci --epochs 20

It imports nothing from unisrec: the dataset folder is read directly (``interactions.parquet``: user, item,
timestamp, split with 0 = train, 1 = valid, 2 = test, rows sorted by user then time; ``embeddings/*.safetensors``:
the cached (N, D) float32 item text vectors, read with a few lines of numpy), so the peer sees exactly the data
and the text vectors the unisrec runs of that folder used.

Protocol (the same as ``unisrec finetune``):

- leave-one-out: the model is fitted on the training interactions only (split 0); a valid target is a split-1
  row and a test target a split-2 row that has at least one earlier item; its history is every earlier item of
  the user (train, and valid for test), cut to the last ``--max-len`` (50, unisrec's ``model.max_seq_len``).
- full ranking over every item of the catalogue (items never seen in training included: the model is
  text-only, so they get vectors from their text like every other item); history NOT masked.
- rank = the number of OTHER items scored >= the target (ties count against it), and recall / ndcg / mrr @K
  averaged over targets, computed here exactly as ``unisrec/metrics.py`` does.
- model selection as unisrec does it: validation ndcg@10 after every epoch, the best epoch's weights are
  tested, training stops after ``--patience`` epochs without improvement or at ``--epochs``.
- seconds per epoch: the median over epochs of the training time of an epoch (validation excluded), as
  unisrec's ``seconds_per_epoch``; ``cpu_seconds_per_epoch`` is the same in process CPU time, which a busy
  machine (or a paused process) does not inflate.

How the defaults were chosen: every model and optimisation setting is RecTools 0.19's own default for
``UniSRecModel`` (n_factors 256, projection_hidden 512, 2 blocks, 1 head, dropout 0.1, adaptor_dropout 0.2,
PCA adaptor with FFN, AdamW lr 1e-4 with its per-group multipliers, weight decay 0.01, grad clip 1.0, full
softmax loss, batch 128 sequences), i.e. the library authors' recipe, untuned by us. Two settings are not
model choices but the protocol, and follow unisrec: ``session_max_len`` = 50 (unisrec's history cut; RecTools'
default 200 only adds padding on this data, whose longest sequence has 80 items) and the early stopping on
validation ndcg@10 with patience 10 (RecTools' own ``patience`` watches the training loss). ``--epochs`` is a
time budget, not a tuned value. RecTools trains one window per user (the last ``max_len + 1`` training
items); unisrec's windows cover every target of long sequences, which differs only for users with more than
51 training items.

The last line of stdout is one JSON object: settings, valid and test metrics of the best epoch, epochs run,
best epoch, seconds per epoch, the per-epoch curve. ``--budget-minutes`` stops training after the epoch
that leaves too little time for another one, or within an epoch when the time is up (that epoch's curve
point then has fewer ``steps`` than the others; ``stopped_by`` says what ended training).
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import struct
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

TRAIN, VALID, TEST = 0, 1, 2
KS = (10, 20, 50)
SAFETENSORS_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64}


# ----------------------------------------------------------------------------------------------------------
# The dataset folder


def read_interactions(data_dir: Path) -> pd.DataFrame:
    frame = pd.read_parquet(data_dir / "interactions.parquet", columns=["user", "item", "timestamp", "split"])
    users = frame["user"].to_numpy()
    if len(users) and np.any(np.diff(users) < 0):
        raise SystemExit(f"{data_dir}: interactions are not sorted by user")
    return frame


def read_safetensors_matrix(path: Path, key: str = "embeddings") -> np.ndarray:
    """One tensor of a safetensors file: 8-byte little-endian header size, JSON header, raw little-endian data."""
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + size])
    entry = header[key]
    begin, end = entry["data_offsets"]
    dtype = np.dtype(SAFETENSORS_DTYPES[entry["dtype"]]).newbyteorder("<")
    data = np.frombuffer(raw[8 + size + begin : 8 + size + end], dtype=dtype)
    return data.reshape(entry["shape"]).astype(np.float32)


def text_vectors_file(data_dir: Path, name: str | None) -> Path:
    folder = data_dir / "embeddings"
    if name is not None:
        return folder / name
    files = sorted(p for p in folder.glob("*.safetensors") if ".worddrop-" not in p.name and p.name[0] != ".")
    if len(files) != 1:
        raise SystemExit(f"{folder}: {len(files)} vector files ({[p.name for p in files]}); pass --vectors NAME")
    return files[0]


def targets_and_histories(frame: pd.DataFrame, split: int, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """(T,) target items and (T, max_len) left-padded histories of ``split``'s targets, items as ``item + 1``.

    A target is a row of ``split`` that is not its user's first row; its history is every earlier row of the
    user (the rows are sorted by user, then time), cut to the last ``max_len``.
    """
    users = frame["user"].to_numpy()
    items = frame["item"].to_numpy().astype(np.int64)
    codes = frame["split"].to_numpy()
    starts = np.r_[0, np.flatnonzero(np.diff(users)) + 1]
    first_row = np.repeat(starts, np.diff(np.r_[starts, len(users)]))
    rows = np.flatnonzero((codes == split) & (np.arange(len(users)) > first_row))
    history = np.zeros((len(rows), max_len), dtype=np.int64)
    for i, row in enumerate(rows):
        earlier = items[max(first_row[row], row - max_len) : row] + 1
        history[i, max_len - len(earlier) :] = earlier
    return items[rows], history


# ----------------------------------------------------------------------------------------------------------
# Metrics (as unisrec/metrics.py: 0-based ranks, ties against the target, one relevant item per target)


def _unisrec_metrics() -> Any:
    """unisrec/metrics.py loaded by file path: numpy only, so the peer's environment needs no unisrec install."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "unisrec" / "metrics.py"
    spec = importlib.util.spec_from_file_location("unisrec_metrics_for_peer", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_METRICS = _unisrec_metrics()


def ranking_metrics(ranks: np.ndarray, ks: tuple[int, ...] = KS) -> dict[str, float]:
    """unisrec's own ``ranking_metrics`` (the same definitions on both sides of the comparison)."""
    return dict(_METRICS.ranking_metrics(ranks, ks))


@torch.no_grad()
def full_ranks(net: Any, all_vectors: torch.Tensor, targets: np.ndarray, history: np.ndarray,
               batch_size: int = 1024) -> np.ndarray:
    """0-based rank of every target among ALL items (nothing masked): items scored >= it, itself excluded.

    The network's frozen text table holds only the items of the training data; for ranking it is swapped for
    the table of every item (row 0 padding, row i + 1 = item i), the order in which histories are written.
    """
    trained_table = net.frozen_emb
    was_training = net.training
    net.eval()
    net.frozen_emb = all_vectors
    try:
        item_vectors = net.project_all()[1:]  # (N, d)
        ranks = np.empty(len(targets), dtype=np.int64)
        for start in range(0, len(targets), batch_size):
            x = torch.from_numpy(history[start : start + batch_size])
            scores = net.encode_last(x) @ item_vectors.T  # (B, N)
            t = torch.from_numpy(targets[start : start + batch_size])
            target_scores = scores.gather(1, t[:, None])
            ranks[start : start + len(t)] = ((scores >= target_scores).sum(dim=1) - 1).numpy()
    finally:
        net.frozen_emb = trained_table
        net.train(was_training)
    return ranks


# ----------------------------------------------------------------------------------------------------------
# Training with per-epoch validation


def build_model(vectors: np.ndarray, args: argparse.Namespace) -> Any:
    import pytorch_lightning as pl
    from rectools.fast_transformers.unisrec import UniSRecModel

    class ValidationCallback(pl.Callback):
        """Times every training epoch, validates after it, keeps the best weights and stops on patience."""

        def __init__(self, evaluate: Any, patience: int, budget_seconds: float | None) -> None:
            self.evaluate = evaluate
            self.patience = patience
            self.budget_seconds = budget_seconds
            self.began = time.perf_counter()
            self.stopped_by = "epochs"
            self.steps = 0
            self.curve: list[dict[str, Any]] = []
            self.best: tuple[float, int, dict[str, torch.Tensor]] | None = None
            self.started = self.started_cpu = 0.0

        def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            self.started, self.started_cpu = time.perf_counter(), time.process_time()

        def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any,
                               batch: Any, batch_idx: int) -> None:
            self.steps = batch_idx + 1
            if self.budget_seconds is not None and time.perf_counter() - self.began > self.budget_seconds:
                trainer.should_stop, self.stopped_by = True, "time budget, within an epoch"

        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
            seconds, cpu = time.perf_counter() - self.started, time.process_time() - self.started_cpu
            net = pl_module.net  # type: ignore[attr-defined]
            began = time.perf_counter()
            valid = self.evaluate(net)
            point: dict[str, Any] = {"epoch": len(self.curve) + 1, "seconds": round(seconds, 3),
                                     "cpu_seconds": round(cpu, 3), "steps": self.steps,
                                     "steps_per_epoch": int(trainer.num_training_batches),
                                     "seconds_valid": round(time.perf_counter() - began, 3), "valid": valid}
            loss = trainer.callback_metrics.get("train_loss")
            if loss is not None:
                point["train_loss"] = float(loss)
            self.curve.append(point)
            print(json.dumps(point), file=sys.stderr, flush=True)
            if self.best is None or valid["ndcg@10"] > self.best[0]:
                state = {k: v.detach().clone() for k, v in net.state_dict().items()}
                self.best = (valid["ndcg@10"], point["epoch"], state)
            elif point["epoch"] - self.best[1] >= self.patience:
                trainer.should_stop, self.stopped_by = True, "patience"
            spent = time.perf_counter() - self.began
            if self.budget_seconds is not None and spent + seconds + point["seconds_valid"] > self.budget_seconds \
                    and not trainer.should_stop:
                trainer.should_stop, self.stopped_by = True, "time budget"  # another epoch would not fit

    class SelectedUniSRec(UniSRecModel):  # type: ignore[misc]
        """RecTools' model with unisrec's model selection added to its trainer (nothing else changed)."""

        callback: ValidationCallback

        def _make_trainer(self, max_epochs: int, val_dl: Any = None) -> pl.Trainer:
            trainer = super()._make_trainer(max_epochs, val_dl)
            trainer.callbacks.append(self.callback)
            return trainer

    table = np.zeros((len(vectors) + 1, vectors.shape[1]), dtype=np.float32)
    table[1:] = vectors  # external item id = unisrec item + 1; row 0 = padding
    return SelectedUniSRec(torch.from_numpy(table), session_max_len=args.max_len, epochs=args.epochs,
                           verbose=0), ValidationCallback


def per_epoch_seconds(curve: list[dict[str, Any]]) -> dict[str, Any]:
    """Median wall and CPU seconds of the full epochs; with none, the partial epoch's scaled to a full one."""
    full = [p for p in curve if p["steps"] == p["steps_per_epoch"]]
    points, estimated = (full, False) if full else (curve, True)
    return {key: float(np.median([p[name] * p["steps_per_epoch"] / max(p["steps"], 1) for p in points]))
            for key, name in (("seconds_per_epoch", "seconds"), ("cpu_seconds_per_epoch", "cpu_seconds"))
            } | {"per_epoch_estimated_from_a_partial_epoch": estimated}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", type=Path, help="a unisrec processed dataset folder (with cached text vectors)")
    parser.add_argument("--vectors", default=None, help="file name under DIR/embeddings (default: the only one)")
    parser.add_argument("--epochs", type=int, default=20, help="epoch budget (upper bound)")
    parser.add_argument("--budget-minutes", type=float, default=None,
                        help="start no epoch that would end after this many minutes of training")
    parser.add_argument("--patience", type=int, default=10, help="stop after this many epochs without a better "
                        "valid ndcg@10 (unisrec's train.patience)")
    parser.add_argument("--max-len", type=int, default=50, help="history cut (unisrec's model.max_seq_len)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--record", type=Path, default=None,
                        help="also write the result, with the command, to this JSON file (e.g. results/peers-NAME/)")
    args = parser.parse_args(argv)

    import pytorch_lightning as pl
    import rectools

    torch.set_num_threads(args.threads)
    pl.seed_everything(args.seed, workers=True)
    frame = read_interactions(args.data_dir)
    vectors_path = text_vectors_file(args.data_dir, args.vectors)
    vectors = read_safetensors_matrix(vectors_path)
    n_items = len(vectors)
    if int(frame["item"].max()) >= n_items:
        raise SystemExit(f"{vectors_path}: {n_items} vectors, but items go up to {int(frame['item'].max())}")
    all_vectors = torch.zeros(n_items + 1, 1, vectors.shape[1])
    all_vectors[1:, 0] = torch.from_numpy(vectors)
    valid_targets, valid_history = targets_and_histories(frame, VALID, args.max_len)
    test_targets, test_history = targets_and_histories(frame, TEST, args.max_len)

    model, callback_class = build_model(vectors, args)
    model.callback = callback_class(
        lambda net: ranking_metrics(full_ranks(net, all_vectors, valid_targets, valid_history)), args.patience,
        args.budget_minutes * 60 if args.budget_minutes is not None else None)
    train = frame[frame["split"] == TRAIN]
    began = time.perf_counter()
    # timestamps = row order: the folder's order (time, ties in input order) is kept exactly
    model.fit(torch.from_numpy(train["user"].to_numpy().astype(np.int64)),
              torch.from_numpy(train["item"].to_numpy().astype(np.int64) + 1),
              torch.from_numpy(np.arange(len(train), dtype=np.int64)))
    seconds_fit = time.perf_counter() - began
    callback = model.callback
    assert callback.best is not None
    best_valid, best_epoch, state = callback.best
    model.net.load_state_dict(state)
    valid = ranking_metrics(full_ranks(model.net, all_vectors, valid_targets, valid_history))
    test = ranking_metrics(full_ranks(model.net, all_vectors, test_targets, test_history))
    settings = {k: getattr(model, k) for k in (
        "n_factors", "projection_hidden", "n_blocks", "n_heads", "session_max_len", "dropout", "adaptor_dropout",
        "adaptor_type", "use_adaptor_ffn", "ffn_type", "ffn_expansion", "lr", "lr_head", "lr_wp", "lr_transformer",
        "optimizer", "scheduler", "grad_clip", "weight_decay", "loss", "batch_size")}
    result = {
        "peer": "rectools.fast_transformers.unisrec.UniSRecModel",
        "rectools": rectools.__version__, "torch": torch.__version__, "numpy": np.__version__,
        "dataset": str(args.data_dir), "vectors": vectors_path.name, "n_items": n_items,
        "train_interactions": len(train), "valid_targets": len(valid_targets), "test_targets": len(test_targets),
        "epoch_budget": args.epochs, "budget_minutes": args.budget_minutes, "stopped_by": callback.stopped_by,
        "patience": args.patience, "seed": args.seed, "threads": args.threads,
        "settings": settings, "epochs": len(callback.curve), "best_epoch": best_epoch,
        **per_epoch_seconds(callback.curve),
        "seconds_fit": round(seconds_fit, 3), "valid": valid, "test": test,
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine()},
        "curve": callback.curve,
    }
    assert abs(valid["ndcg@10"] - best_valid) < 1e-9  # the restored weights are the selected ones
    if args.record is not None:
        command = "OMP_NUM_THREADS=1 nice -n 19 benchmarks/peers/.venv-rectools/bin/python " + shlex.join(
            ["benchmarks/peers/rectools_unisrec.py", *(sys.argv[1:] if argv is None else argv)])
        args.record.parent.mkdir(parents=True, exist_ok=True)
        partial = args.record.with_name(args.record.name + ".partial")
        partial.write_text(json.dumps({"command": command, "setup": "bash benchmarks/peers/setup_rectools.sh",
                                       **result}, indent=2) + "\n")
        partial.replace(args.record)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
