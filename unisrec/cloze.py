"""BERT4Rec's training task (cloze): mask random items of each training sequence, predict them bidirectionally.

A training sequence is a strided window of a user's training items (``batches.training_windows``): its
max_seq_len inputs plus their next item, i.e. up to max_seq_len + 1 tokens, all of them maskable. Each token
is replaced by [MASK] with probability ``model.mask_prob``; a sequence with no masked token gets its last
token masked (which is also the inference situation: [MASK] after the history). The loss is the full-softmax
cross-entropy of the masked positions over all items. ``train.batch_size`` counts tokens (masked or not).
Masks are drawn from a generator seeded by (train.seed, epoch), so an interrupted run resumes exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import cast

import numpy as np
import torch

from unisrec.baselines import BERT4Rec
from unisrec.batches import Windows, bucketed_batches, epoch_batches, epoch_steps, training_windows
from unisrec.config import RunConfig
from unisrec.datasets.processed import ProcessedDataset
from unisrec.distributed import Distributed
from unisrec.errors import UnisrecError
from unisrec.losses import full_softmax_ce, withhold_items
from unisrec.training_data import training_sequences


@dataclass
class ClozeBatch:
    tokens: torch.Tensor  # (B, L) long: items, [MASK] (= N) at masked positions, padding (= N + 1)
    mask: torch.Tensor  # (B, L) bool: masked positions
    targets: torch.Tensor  # (T,) long: the original item of each masked position (row-major order)

    def to(self, device: torch.device | str) -> ClozeBatch:
        return ClozeBatch(self.tokens.to(device), self.mask.to(device), self.targets.to(device))


def make_cloze_batch(
    items: np.ndarray, sequences: Windows, n_items: int, mask_prob: float, rng: np.random.Generator
) -> ClozeBatch:
    """Sequences ``items[start : start + length]`` (here ``length`` counts tokens) -> masked batch."""
    width = int(sequences.length.max())
    offsets = np.arange(width)[None, :]  # (1, L)
    real = offsets < sequences.length[:, None]  # (B, L)
    tokens = np.where(real, items[np.where(real, sequences.start[:, None] + offsets, 0)], n_items + 1)
    masked = (rng.random(real.shape) < mask_prob) & real  # (B, L)
    none = ~masked.any(axis=1)
    masked[np.flatnonzero(none), sequences.length[none] - 1] = True  # at least one per sequence: the last
    targets = tokens[masked]
    tokens = np.where(masked, n_items, tokens)
    return ClozeBatch(torch.from_numpy(tokens.astype(np.int64)), torch.from_numpy(masked),
                      torch.from_numpy(targets.astype(np.int64)))


class ClozeTask:
    """Batches of masked training sequences and the masked-item loss (one process; no torchrun)."""

    def __init__(
        self,
        model: torch.nn.Module,
        dataset: ProcessedDataset,
        config: RunConfig,
        device: torch.device,
        dist: Distributed | None = None,
    ):
        if dist is not None and dist.enabled:
            raise UnisrecError("bert4rec trains in one process; run it without torchrun")
        self.model, self.config, self.device = model, config, device
        sequences = training_sequences(dataset, config.train)
        self.items = sequences.items
        # (M,) ids of the items withheld from training (train.cold_items): no softmax candidate either
        self.withheld = torch.from_numpy(np.flatnonzero(sequences.cold)).to(device) if sequences.cold.any() else None
        self.n_items = dataset.n_items
        windows = training_windows(sequences.starts, sequences.lengths, config.model.max_seq_len, layout="strided")
        # inputs + next item as one token sequence; n_targets = tokens, so batch_size counts tokens
        self.sequences = Windows(windows.start, windows.length + 1, np.zeros_like(windows.length))
        if len(self.sequences) == 0:
            raise UnisrecError(f"{dataset.path}: no training examples (every user needs >= 2 training items)")
        self.steps = len(bucketed_batches(self.sequences, config.train.batch_size, np.random.default_rng(0)))

    def epoch_steps(self, epoch: int) -> int:
        """The number of steps of ``epoch`` (epochs differ by a batch or so)."""
        return epoch_steps(self.sequences, self.config.train.batch_size, self.config.train.seed, epoch)

    def batches(self, epoch: int) -> Iterator[ClozeBatch]:
        mask_rng = np.random.default_rng([self.config.train.seed, epoch, 1])
        for index in epoch_batches(self.sequences, self.config.train.batch_size, self.config.train.seed, epoch):
            yield make_cloze_batch(self.items, self.sequences.subset(index), self.n_items,
                                   self.config.model.mask_prob, mask_rng)

    def loss(self, batch: ClozeBatch) -> dict[str, torch.Tensor]:
        batch = batch.to(self.device)
        hidden, table = self.model(batch.tokens)  # (B, L, H), (N, H)
        core = cast(BERT4Rec, getattr(self.model, "module", self.model))
        logits = withhold_items(core.logits(hidden[batch.mask], table), self.withheld)  # (T, N)
        return {"loss": full_softmax_ce(logits, batch.targets)}
