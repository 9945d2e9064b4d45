"""Word drop: the text view of an item for the sequence-sequence pre-training loss (paper section 2.2).

Each whitespace-separated word of an item text is dropped with probability ``p`` (at least one word is kept).
Pre-training encodes a few such variants per item ahead of time (``unisrec.text_cache.encode_word_drop``)
and samples one per item and step.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from unisrec.errors import UnisrecError


def drop_words(text: str, p: float, rng: np.random.Generator) -> str:
    """Drop each whitespace-separated word of ``text`` with probability ``p``, always keeping at least one."""
    words = text.split()
    if not words:
        return text
    keep = rng.random(len(words)) >= p  # (W,)
    if not keep.any():
        keep[rng.integers(len(words))] = True
    return " ".join(word for word, kept in zip(words, keep, strict=True) if kept)


def word_drop_texts(texts: Sequence[str], p: float, variants: int, seed: int) -> list[list[str]]:
    """``variants`` word-dropped copies of ``texts``; variant v depends only on (seed, v)."""
    check_word_drop(p, variants, seed)
    out = []
    for variant in range(variants):
        rng = np.random.default_rng([seed, variant])
        out.append([drop_words(text, p, rng) for text in texts])
    return out


def check_word_drop(p: float, variants: int, seed: int) -> None:
    if not 0.0 <= p < 1.0:
        raise UnisrecError(f"word-drop probability must be in [0, 1), got {p}")
    if variants < 1:
        raise UnisrecError(f"word-drop variants must be >= 1, got {variants}")
    if seed < 0:
        raise UnisrecError(f"word-drop seed must be >= 0, got {seed}")
