"""Training windows and evaluation batches over flat item sequences (item ids only, never vectors).

A user's interactions are one run of a flat ``items`` array. A training *window* is a slice
``items[start : start + length + 1]``: positions 0..length-1 are the input, each predicts the next item,
and positions >= ``first_target`` count as training examples. One causal pass over a window trains all of
its prefixes at once, which is the reference's "every prefix -> next item" set without re-encoding each
prefix separately.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from unisrec.distributed import Distributed


@dataclass(frozen=True)
class Windows:
    start: np.ndarray  # (W,) int64: row of the first input item
    length: np.ndarray  # (W,) int64: number of input items (<= max_len)
    first_target: np.ndarray  # (W,) int64: first input position whose next item is a training target

    def __len__(self) -> int:
        return len(self.start)

    @property
    def n_targets(self) -> np.ndarray:
        return self.length - self.first_target

    def subset(self, index: np.ndarray) -> Windows:
        return Windows(self.start[index], self.length[index], self.first_target[index])

    @staticmethod
    def concat(parts: list[Windows]) -> Windows:
        return Windows(
            np.concatenate([p.start for p in parts]),
            np.concatenate([p.length for p in parts]),
            np.concatenate([p.first_target for p in parts]),
        )


def training_windows(seq_start: np.ndarray, train_len: np.ndarray, max_len: int, *, layout: str = "exact") -> Windows:
    """Windows covering every target t = 1..n-1 of each user's training items s_0..s_{n-1}.

    exact: target t sees exactly s[max(0, t - max_len) : t] as in the reference: one window for
    t <= max_len, then one window per later target (only its last position counts).
    strided: consecutive windows of max_len inputs; a target late in a long sequence sees fewer than
    max_len items, but each interaction is encoded about once (cheap on long sequences).
    prefix: one window per target (only its last position counts): the reference's own layout, where
    every prefix is encoded separately and so gets its own dropout noise; several times the cost.
    """
    if layout not in ("exact", "strided", "prefix"):
        raise ValueError(f"unknown window layout {layout!r}")
    seq_start, train_len = seq_start.astype(np.int64), train_len.astype(np.int64)
    users = np.flatnonzero(train_len >= 2)
    n_inputs = train_len[users] - 1  # targets per user
    if layout == "prefix":
        owner = np.repeat(np.arange(len(users)), n_inputs)
        target = 1 + np.arange(len(owner)) - np.repeat(np.cumsum(n_inputs) - n_inputs, n_inputs)  # t = 1..
        length = np.minimum(target, max_len)
        return Windows(seq_start[users][owner] + target - length, length, length - 1)
    first_len = np.minimum(n_inputs, max_len)
    parts = [Windows(seq_start[users], first_len, np.zeros_like(first_len))]
    extra = n_inputs - first_len  # targets beyond the first window
    if extra.sum() > 0:
        owner = np.repeat(np.arange(len(users)), extra)
        k = np.arange(len(owner)) - np.repeat(np.cumsum(extra) - extra, extra)  # 0.. per user
        if layout == "exact":
            target = max_len + 1 + k  # t
            start = seq_start[users][owner] + target - max_len
            length = np.full(len(owner), max_len, dtype=np.int64)
            parts.append(Windows(start, length, length - 1))
        else:
            chunk_first = k[k % max_len == 0]
            chunk_owner = owner[k % max_len == 0]
            start = seq_start[users][chunk_owner] + max_len + chunk_first
            length = np.minimum(max_len, extra[chunk_owner] - chunk_first)
            parts.append(Windows(start, length, np.zeros_like(length)))
    return Windows.concat(parts)


@dataclass
class TrainBatch:
    inputs: Tensor  # (B, L) long item ids, right-padded
    mask: Tensor  # (B, L) bool: positions that are training examples
    targets: Tensor  # (T,) long: next item of each True position of ``mask`` (row-major order)
    negatives: Tensor | None = None  # (S,) long: the step's sampled negatives (train.negatives), None = every item

    def to(self, device: torch.device | str) -> TrainBatch:
        negatives = self.negatives.to(device) if self.negatives is not None else None
        return TrainBatch(self.inputs.to(device), self.mask.to(device), self.targets.to(device), negatives)


def make_train_batch(items: np.ndarray, windows: Windows) -> TrainBatch:
    width = int(windows.length.max())
    offsets = np.arange(width)[None, :]  # (1, L)
    rows = windows.start[:, None] + offsets  # (B, L)
    real = offsets < windows.length[:, None]  # (B, L)
    inputs = items[np.where(real, rows, windows.start[:, None])]  # padding repeats the first item
    mask = real & (offsets >= windows.first_target[:, None])
    targets = items[rows[mask] + 1]
    return TrainBatch(torch.from_numpy(inputs.astype(np.int64)), torch.from_numpy(mask),
                      torch.from_numpy(targets.astype(np.int64)))


def window_items(items: np.ndarray, windows: Windows) -> np.ndarray:
    """(M,) sorted ids of the items the windows hold, their inputs and targets: the ids of
    ``make_train_batch(items, windows)`` without building it, for windows of at least one input item (as
    ``training_windows`` makes them; an empty window's padding would add its start item)."""
    ends = windows.start + windows.length + (windows.n_targets > 0)  # (W,) past each window's last item
    sizes = ends - windows.start  # (W,)
    first = np.cumsum(sizes) - sizes  # (W,) where each window's run begins in the flat index below
    rows = np.repeat(windows.start - first, sizes) + np.arange(int(sizes.sum()))  # (sum sizes,) rows of items
    return np.unique(items[rows])


def batch_slices(windows: Windows, batch_size: int, order: np.ndarray) -> list[np.ndarray]:
    """Split ``order`` (a permutation of windows) into batches of about ``batch_size`` targets each."""
    counts = np.cumsum(windows.n_targets[order])
    cuts = np.searchsorted(counts, np.arange(batch_size, counts[-1] if len(counts) else 0, batch_size), "right")
    return [part for part in np.split(order, cuts) if len(part)]


def bucketed_batches(
    windows: Windows, batch_size: int, rng: np.random.Generator, pool_batches: int = 32
) -> list[np.ndarray]:
    """Random batches of about ``batch_size`` targets whose windows have similar lengths.

    Windows are shuffled, cut into pools of about ``pool_batches`` batches, sorted by length inside a
    pool and cut into batches; the batches are shuffled again. Padding to the longest window of a batch
    then costs little, while every epoch still sees a new random grouping.
    """
    order = rng.permutation(len(windows))
    counts = np.cumsum(windows.n_targets[order])
    pool_cuts = np.searchsorted(counts, np.arange(0, counts[-1], batch_size * pool_batches)[1:], "right")
    batches: list[np.ndarray] = []
    for pool in np.split(order, pool_cuts):
        pool = pool[np.argsort(windows.length[pool], kind="stable")]
        batches.extend(batch_slices(windows, batch_size, pool))
    return [batches[i] for i in rng.permutation(len(batches))]


def epoch_batches(windows: Windows, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """The batches (window indices) of one training epoch: ``bucketed_batches`` seeded by (seed, epoch)."""
    return bucketed_batches(windows, batch_size, np.random.default_rng([seed, epoch]))


def epoch_steps(windows: Windows, batch_size: int, seed: int, epoch: int) -> int:
    """The number of batches of ``epoch_batches(windows, batch_size, seed, epoch)`` (epochs differ by one or so)."""
    return len(epoch_batches(windows, batch_size, seed, epoch))


def iterate_train_batches(
    items: np.ndarray, windows: Windows, batch_size: int, rng: np.random.Generator
) -> Iterator[TrainBatch]:
    for index in bucketed_batches(windows, batch_size, rng):
        yield make_train_batch(items, windows.subset(index))


@dataclass
class EvalBatch:
    inputs: Tensor  # (B, L) long, right-padded histories (last max_len items)
    lengths: Tensor  # (B,) long
    targets: Tensor  # (B,) long
    seen_rows: Tensor  # (S,) long: batch row of each seen (history) item
    seen_items: Tensor  # (S,) long: the seen item


def make_eval_batch(
    items: np.ndarray, rows: np.ndarray, seq_start: np.ndarray, max_len: int, *, with_seen: bool = False
) -> EvalBatch:
    """Batch for target rows ``rows`` (B,) whose users' sequences start at ``seq_start`` (B,)."""
    start = np.maximum(seq_start, rows - max_len)
    lengths = rows - start
    width = int(lengths.max())
    offsets = np.arange(width)[None, :]
    real = offsets < lengths[:, None]
    inputs = items[np.where(real, start[:, None] + offsets, start[:, None])]
    if with_seen:
        seen_len = rows - seq_start
        seen_rows = np.repeat(np.arange(len(rows)), seen_len)
        seen_items = items[np.repeat(seq_start, seen_len) + np.arange(seen_len.sum()) -
                           np.repeat(np.cumsum(seen_len) - seen_len, seen_len)]
    else:
        seen_rows = seen_items = np.zeros(0, dtype=np.int64)
    return EvalBatch(
        torch.from_numpy(inputs.astype(np.int64)),
        torch.from_numpy(lengths.astype(np.int64)),
        torch.from_numpy(items[rows].astype(np.int64)),
        torch.from_numpy(seen_rows.astype(np.int64)),
        torch.from_numpy(seen_items.astype(np.int64)),
    )


def shard(n_targets: np.ndarray, dist: Distributed) -> slice:
    """This process's contiguous share of a global batch (windows with these target counts), balanced by
    targets, at least one window for every process where the batch has as many windows as processes. A batch
    with fewer windows (the tail of a pool can hold one) leaves the last processes an empty share: they step
    with ``placeholder_batch`` so that every process still takes part in the gradient exchange."""
    n, world = len(n_targets), dist.world_size
    if not dist.enabled:
        return slice(0, n)
    if n < world:
        return slice(min(dist.rank, n), min(dist.rank + 1, n))
    cum = np.cumsum(n_targets)
    bounds = [0, *(int(b) for b in np.searchsorted(cum, cum[-1] * np.arange(1, world) / world, "right")), n]
    for r in range(1, world):  # a window that holds more than a share of the targets must not leave one empty
        bounds[r] = max(bounds[r], bounds[r - 1] + 1)
    for r in range(world - 1, 0, -1):
        bounds[r] = min(bounds[r], bounds[r + 1] - 1)
    return slice(bounds[dist.rank], bounds[dist.rank + 1])


def placeholder_batch(batch: TrainBatch) -> TrainBatch:
    """``batch`` with no training position: a process whose share of a global batch is empty runs the forward
    pass on another process's window(s) this way, so every parameter gets its (zero) gradient and the gradient
    exchange of the step happens in every process, without a target counted twice."""
    return TrainBatch(batch.inputs, torch.zeros_like(batch.mask), batch.targets[:0])


class StepIndex:
    """Steps counted over a whole run of epochs whose lengths differ (``bucketed_batches`` cuts pools of windows,
    so an epoch can have a batch more or less than another): global step <-> (epoch, step inside it).

    ``length(epoch)`` is the number of steps of an epoch; it is asked once per epoch, in order, only as far as a
    question needs (``train.replay`` maps fine-tuning step g to corpus batch g this way).
    """

    def __init__(self, length: Callable[[int], int]) -> None:
        self._length = length
        self._starts = [0]  # global step of each known epoch's first step, then the end of the last known one

    def _extend(self) -> None:
        epoch = len(self._starts) - 1
        steps = self._length(epoch)
        if steps < 1:
            raise ValueError(f"epoch {epoch} has {steps} steps")
        self._starts.append(self._starts[-1] + steps)

    def first(self, epoch: int) -> int:
        """The global step of ``epoch``'s first step: the steps of every epoch before it."""
        while len(self._starts) <= epoch:
            self._extend()
        return self._starts[epoch]

    def locate(self, step: int) -> tuple[int, int]:
        """Global ``step`` -> (epoch, its step inside that epoch)."""
        if step < 0:
            raise ValueError(f"step {step} < 0")
        while self._starts[-1] <= step:
            self._extend()
        epoch = bisect.bisect_right(self._starts, step) - 1
        return epoch, step - self._starts[epoch]

