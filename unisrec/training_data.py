"""Which interactions a run trains on: each user's leading training rows, optionally thinned.

- ``train_lengths``: the number of leading training interactions of every user (valid/test rows come last).
- ``train.user_fraction`` (data-poor targets): only a seeded random fraction of the users contribute
  training sequences; validation and test still cover every user.
- ``train.cold_items`` (cold-item protocol): a seeded random fraction of the items is withheld from training
  entirely; their interactions are removed from training inputs and targets (each user's remaining
  training items are compacted in order). Evaluation ranks every item, cold ones included: by their text where
  the model scores by text (UniSRec_t, UniSRec_t+ID with an untrained ID row, ZESRec, text kNN); models that
  score by ID alone (SASRec, GRU4Rec, BERT4Rec, FDSA) have only untrained rows for them (chance level), which
  ``finetune`` says when it starts. Validation, which picks the epoch and the mixture, leaves out the cases of
  cold targets, and ``model.center_text`` centres on the warm items' mean.

Both selections are functions of (``train.seed``, the dataset's size) only, so a transferred run and a
from-scratch run with the same seed see exactly the same users and the same cold items.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unisrec.config import TrainConfig
from unisrec.datasets.processed import TRAIN, ProcessedDataset
from unisrec.errors import UnisrecError

_USER_SALT = 104729  # keeps the user subset independent of the cold-item draw and of the model's RNG
_ITEM_SALT = 130363


def train_lengths(dataset: ProcessedDataset) -> np.ndarray:
    """(U,) number of leading training interactions of each user (training rows must come first)."""
    train = dataset.split == TRAIN  # (I,)
    user = dataset.user_of_rows()  # (I,)
    lengths = np.bincount(user[train], minlength=dataset.n_users).astype(np.int64)  # (U,); users without rows: 0
    position = np.arange(len(train)) - dataset.offsets[user]  # (I,) row's place in its user's sequence
    misplaced = train != (position < lengths[user])  # a training row after a valid/test one, or the reverse
    if misplaced.any():
        row = int(np.flatnonzero(misplaced)[0])
        raise UnisrecError(f"{dataset.path}: user {dataset.user_ids[user[row]]!s} has training interactions after "
                           "valid/test ones; every user's training rows must come first")
    return lengths


def training_users(n_users: int, fraction: float, seed: int) -> np.ndarray:
    """(U,) bool: the users whose sequences are trained on (a seeded random ``fraction``, at least one)."""
    if fraction >= 1.0:
        return np.ones(n_users, dtype=bool)
    chosen = np.zeros(n_users, dtype=bool)
    count = max(1, round(fraction * n_users))
    chosen[np.random.default_rng([seed, _USER_SALT]).permutation(n_users)[:count]] = True
    return chosen


def cold_items(n_items: int, fraction: float, seed: int) -> np.ndarray:
    """(N,) bool: the items withheld from training (a seeded random ``fraction``; none when 0)."""
    cold = np.zeros(n_items, dtype=bool)
    if fraction > 0:
        count = max(1, round(fraction * n_items))
        cold[np.random.default_rng([seed, _ITEM_SALT]).permutation(n_items)[:count]] = True
    return cold


@dataclass(frozen=True)
class TrainingSequences:
    """The training part of every user's sequence, laid end to end in ``items``."""

    items: np.ndarray  # (I',) int64 item ids
    starts: np.ndarray  # (U,) int64 row of ``items`` where each user's training sequence starts
    lengths: np.ndarray  # (U,) int64 training items of each user (0: the user does not train)
    cold: np.ndarray  # (N,) bool items withheld from training


def training_sequences(dataset: ProcessedDataset, config: TrainConfig) -> TrainingSequences:
    """The sequences a fine-tuning run learns from, after ``user_fraction`` and ``cold_items``."""
    lengths = train_lengths(dataset)
    lengths = np.where(training_users(dataset.n_users, config.user_fraction, config.seed), lengths, 0)
    cold = cold_items(dataset.n_items, config.cold_items, config.seed)
    items = dataset.items.astype(np.int64)
    starts = dataset.offsets[:-1].astype(np.int64)
    if not cold.any():
        return TrainingSequences(items, starts, lengths, cold)
    user = dataset.user_of_rows()  # (I,)
    keep = (np.arange(len(items)) < (starts + lengths)[user]) & ~cold[items]  # training rows of warm items
    kept_per_user = np.bincount(user[keep], minlength=dataset.n_users).astype(np.int64)  # (U,)
    new_starts = np.concatenate([[0], np.cumsum(kept_per_user)[:-1]]).astype(np.int64)
    return TrainingSequences(items[keep], new_starts, kept_per_user, cold)
