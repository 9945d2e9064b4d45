"""Analyses of finished runs: metrics by popularity group of the target item (the long tail).

Every run of ``finetune`` that scores its test split saves the 0-based full-ranking rank of each test target
(``ranks_test.npy``, in the order of ``dataset.target_rows("test")``; a run made with ``eval.test=false`` gets
it from ``unisrec evaluate RUN DATA --save``), so groupings can change without re-running anything.

Grouping (``popularity_groups``): an item's popularity is its number of interactions in the training split
(validation and test interactions are not counted). Items are ordered by (popularity, item index) and cut
into ``n_groups`` contiguous groups holding about the same number of test targets each: an item goes to the
group in which the midpoint of its targets falls in the cumulative target count. Group 0 holds the least
popular items (the long tail), the last group the most popular. An item never straddles two groups, so the
group sizes can differ by the targets of one item. Equal-target groups make every group's metric equally
precise; the table also shows each group's popularity range and number of items.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unisrec.atomic import atomic_write_bytes
from unisrec.datasets.processed import TRAIN, ProcessedDataset
from unisrec.errors import UnisrecError
from unisrec.metrics import ranking_metrics

RANKS_FILE = "ranks_test.npy"


def save_ranks(run_dir: str | Path, ranks: np.ndarray, name: str = RANKS_FILE) -> Path:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(ranks, dtype=np.int64))
    return atomic_write_bytes(Path(run_dir) / name, buffer.getvalue())


def load_ranks(run_dir: str | Path, name: str = RANKS_FILE) -> np.ndarray:
    path = Path(run_dir) / name
    if not path.exists():
        raise UnisrecError(f"{path}: missing; runs of this unisrec version save their test ranks there (a run made "
                           "with eval.test=false once `unisrec evaluate RUN DATA --save` scored its test split)")
    try:
        ranks = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise UnisrecError(f"{path}: not a saved array of ranks ({' '.join(str(exc).split())[:200] or 'empty'})"
                           ) from None
    if not isinstance(ranks, np.ndarray):  # an .npz archive under the .npy name
        raise UnisrecError(f"{path}: not a saved array of ranks (an archive of several arrays)")
    if ranks.ndim != 1 or ranks.dtype.kind not in "iu":
        raise UnisrecError(f"{path}: expected a 1-d integer array of ranks, got {ranks.dtype} {ranks.shape}")
    return ranks


def training_frequency(dataset: ProcessedDataset) -> np.ndarray:
    """(N,) number of training-split interactions of every item."""
    return np.bincount(dataset.items[dataset.split == TRAIN], minlength=dataset.n_items)


def split_targets(dataset: ProcessedDataset, split: str = "test") -> np.ndarray:
    """(T,) target item of every row of ``split``, in the order of saved ranks."""
    return dataset.items[dataset.target_rows(split)].astype(np.int64)


@dataclass(frozen=True)
class PopularityGroups:
    item_group: np.ndarray  # (N,) group of every item (0 = least popular)
    target_group: np.ndarray  # (T,) group of every target
    frequency_range: list[tuple[int, int]]  # (G,) min and max training frequency of the group's items
    n_items: np.ndarray  # (G,) items per group
    n_targets: np.ndarray  # (G,) targets per group


def popularity_groups(frequency: np.ndarray, targets: np.ndarray, n_groups: int = 5) -> PopularityGroups:
    """Cut items, ordered by (frequency, index), into ``n_groups`` groups of about equal target counts."""
    if n_groups < 1:
        raise ValueError(f"n_groups must be >= 1, got {n_groups}")
    n_items = len(frequency)
    if len(targets) == 0:
        raise ValueError("no targets to group")
    order = np.lexsort((np.arange(n_items), frequency))  # (N,) least popular first
    counts = np.bincount(targets, minlength=n_items)[order]  # (N,) targets of each item, in that order
    midpoint = np.cumsum(counts) - counts / 2.0
    sorted_group = np.minimum((midpoint * n_groups / len(targets)).astype(np.int64), n_groups - 1)
    item_group = np.empty(n_items, dtype=np.int64)
    item_group[order] = sorted_group
    ranges = []
    for g in range(n_groups):
        members = frequency[item_group == g]
        ranges.append((int(members.min()), int(members.max())) if len(members) else (0, 0))
    target_group = item_group[targets]
    return PopularityGroups(
        item_group=item_group,
        target_group=target_group,
        frequency_range=ranges,
        n_items=np.bincount(item_group, minlength=n_groups),
        n_targets=np.bincount(target_group, minlength=n_groups),
    )


def metrics_by_group(
    ranks: np.ndarray, groups: PopularityGroups, ks: Sequence[int] = (10, 50)
) -> list[dict[str, float] | None]:
    """(T,) ranks -> the metrics of each group's targets (None for a group without targets)."""
    if len(ranks) != len(groups.target_group):
        raise UnisrecError(f"{len(ranks)} ranks for {len(groups.target_group)} targets: runs of another dataset?")
    out: list[dict[str, float] | None] = []
    for g in range(len(groups.n_items)):
        here = ranks[groups.target_group == g]
        out.append(ranking_metrics(here, ks) if len(here) else None)
    return out


def long_tail(
    dataset: ProcessedDataset, ranks: np.ndarray, n_groups: int = 5, ks: Sequence[int] = (10, 50)
) -> list[dict[str, Any]]:
    """One row per popularity group: range, items, targets and the metrics of ``ranks`` (T,)."""
    groups = popularity_groups(training_frequency(dataset), split_targets(dataset), n_groups)
    rows = []
    for g, metrics in enumerate(metrics_by_group(ranks, groups, ks)):
        rows.append({
            "group": g,
            "frequency_range": list(groups.frequency_range[g]),
            "items": int(groups.n_items[g]),
            "targets": int(groups.n_targets[g]),
            "metrics": metrics,
        })
    return rows
