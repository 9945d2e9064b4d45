"""Augmented views of a batch of sequences for the sequence-sequence contrastive loss.

- item drop: each item of a sequence is dropped with probability p (at least one item is kept); the kept
  items move to the front in their original order. Every kept item gets its own new slot, so there is no
  collision (the reference code's compaction could write two items into one slot).
- word drop: the sequence is unchanged but every item is represented by one of several pre-encoded
  word-dropped versions of its text (a new variant is drawn for each item at each step).
"""

from __future__ import annotations

import numpy as np


def item_drop(
    inputs: np.ndarray, lengths: np.ndarray, p: float, uniform: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(B, L) right-padded sequences with (B,) lengths -> compacted (B, L) sequences and their lengths.

    ``uniform`` (B, >= L) holds the U(0, 1) draws: position j of row b is dropped when uniform[b, j] < p.
    """
    width = inputs.shape[1]
    real = np.arange(width)[None, :] < lengths[:, None]  # (B, L)
    keep = real & (uniform[:, :width] >= p)
    empty = ~keep.any(axis=1)
    keep[np.flatnonzero(empty), lengths[empty] - 1] = True  # never drop every item: keep the last one
    slots = np.cumsum(keep, axis=1) - 1  # (B, L) new position of each kept item
    rows = np.broadcast_to(np.arange(len(inputs))[:, None], inputs.shape)
    out = np.repeat(inputs[:, :1], width, axis=1)  # padding repeats the first item (never attended)
    out[rows[keep], slots[keep]] = inputs[keep]
    new_lengths = keep.sum(axis=1)
    return out, new_lengths

