"""From raw interactions and item texts to a processed dataset: join, k-core, order, index, split.

Every input format ends here, so every format gets the same filtering, ordering and leave-one-out split,
and the same accounting of what filtering removed (``stats.json`` -> ``filtering``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from unisrec.datasets.processed import TEST, TRAIN, VALID, ProcessedDataset
from unisrec.errors import UnisrecError


@dataclass(frozen=True)
class PrepareOptions:
    """Filtering and splitting options (defaults: the paper's 5-core, leave-one-out)."""

    user_core: int = 5  # keep users with at least this many interactions (iterated with item_core)
    item_core: int = 5  # keep items with at least this many interactions
    min_seq_len: int = 3  # leave-one-out needs >= 1 training item, one valid and one test item

    def __post_init__(self) -> None:
        if self.user_core < 0 or self.item_core < 0:
            raise UnisrecError("--user-core and --item-core must be >= 0")
        if self.min_seq_len < 3:
            raise UnisrecError("--min-seq-len must be >= 3 (leave-one-out keeps train, valid and test items)")


@dataclass
class RawData:
    """Interactions (one row per event, in input order) and the item catalogue with texts."""

    user_id: pa.Array  # (E,) string
    item_id: pa.Array  # (E,) string
    timestamp: np.ndarray  # (E,) int64 whole seconds
    catalogue_id: pa.Array  # (C,) string, unique
    catalogue_text: pa.Array  # (C,) string
    pre_steps: list[dict[str, Any]] = field(default_factory=list)  # reader's own filtering, before ours
    info: dict[str, Any] = field(default_factory=dict)  # reader's notes, added to dataset.json
    # (E,) int64 nanoseconds past the whole second where the input gave fractions (None: none did): events of one
    # second are ordered by them, then by input order
    within_second: np.ndarray | None = None


def event_counts(users: pa.Array, items: pa.Array) -> tuple[int, int, int]:
    """(interactions, distinct users, distinct items) of event columns."""
    return len(users), pc.count_distinct(users).as_py(), pc.count_distinct(items).as_py()


def prefilter(
    steps: list[dict[str, Any]], name: str, keep: pa.Array | np.ndarray, columns: list[pa.Array]
) -> list[pa.Array]:
    """Keep the events where ``keep`` is true in every column (user and item first) and record the step.

    For readers that drop events before ``build_dataset`` (cancelled orders, duplicates, ...), so that
    ``stats.json`` -> ``filtering`` accounts for them too.
    """
    mask = pa.array(keep, pa.bool_()) if isinstance(keep, np.ndarray) else keep
    before = event_counts(columns[0], columns[1])
    kept = [pc.filter(column, mask) for column in columns]
    steps.append(filter_step(name, before, event_counts(kept[0], kept[1])))
    return kept


def filter_step(name: str, before: tuple[int, int, int], after: tuple[int, int, int]) -> dict[str, Any]:
    return {
        "step": name,
        "removed_interactions": before[0] - after[0],
        "removed_users": before[1] - after[1],
        "removed_items": before[2] - after[2],
        "remaining_interactions": after[0],
        "remaining_users": after[1],
        "remaining_items": after[2],
    }


def _counts(users: np.ndarray, items: np.ndarray) -> tuple[int, int, int]:
    return len(users), len(np.unique(users)), len(np.unique(items))


def k_core(
    users: np.ndarray, items: np.ndarray, user_min: int, item_min: int, n_users: int, n_items: int
) -> np.ndarray:
    """(E,) bool mask of interactions kept by iterative k-core filtering (until nothing changes)."""
    keep = np.ones(len(users), dtype=bool)
    while True:
        user_count = np.bincount(users[keep], minlength=n_users)
        item_count = np.bincount(items[keep], minlength=n_items)
        new_keep = keep & (user_count[users] >= user_min) & (item_count[items] >= item_min)
        if new_keep.sum() == keep.sum():
            return keep
        keep = new_keep


def build_dataset(
    raw: RawData, *, name: str, options: PrepareOptions, info: dict[str, Any]
) -> ProcessedDataset:
    """Filter, order, index and split ``raw`` into a ProcessedDataset with its filtering report."""
    steps: list[dict[str, Any]] = list(raw.pre_steps)
    n_events = len(raw.user_id)
    n_input = n_events + sum(step["removed_interactions"] for step in raw.pre_steps)
    user_values = pc.unique(raw.user_id)
    users = pc.index_in(raw.user_id, value_set=user_values).to_numpy(zero_copy_only=False)
    users = users.astype(np.int64)  # (E,) first-appearance order
    item_idx = pc.index_in(raw.item_id, value_set=raw.catalogue_id)
    has_text = pc.is_valid(item_idx).to_numpy(zero_copy_only=False)
    items = pc.fill_null(item_idx, -1).to_numpy(zero_copy_only=False).astype(np.int64)  # catalogue row
    order = np.arange(n_events, dtype=np.int64)  # (E,) the tie-breaker of equal seconds: input order ...
    if raw.within_second is not None:  # ... after the fractions of the second where the input has them
        rank = np.lexsort((order, raw.within_second))
        order = np.empty_like(rank)
        order[rank] = np.arange(n_events, dtype=np.int64)
    timestamps = raw.timestamp.astype(np.int64)

    if n_events == 0:
        dropped = "; ".join(f"{step['step']}: removed {step['removed_interactions']}" for step in raw.pre_steps
                            if step["removed_interactions"])
        raise UnisrecError(f"{name}: the input holds no interactions" + (f" ({n_input} read; {dropped})"
                                                                          if n_input else ""))
    if not has_text.any():
        missing = raw.item_id[int(np.flatnonzero(~has_text)[0])].as_py()
        known = ", ".join(repr(v) for v in raw.catalogue_id[:3].to_pylist()) or "none: the items file is empty"
        raise UnisrecError(f"{name}: none of the {n_events} interactions is with an item of the items file "
                           f"(e.g. item {missing!r}; the items file has {len(raw.catalogue_id)} items, e.g. {known})")
    state = event_counts(raw.user_id, raw.item_id)
    if not has_text.all():
        users, items = users[has_text], items[has_text]
        timestamps, order = timestamps[has_text], order[has_text]
    after = _counts(users, items)
    steps.append(filter_step("drop interactions whose item has no text", state, after))
    state = after
    n_rated = len(np.unique(items))  # catalogue items with an interaction in the input (before the k-core)

    user_min = max(options.user_core, options.min_seq_len)
    keep = k_core(users, items, user_min, options.item_core, len(user_values), len(raw.catalogue_id))
    users, items, timestamps, order = users[keep], items[keep], timestamps[keep], order[keep]
    after = _counts(users, items)
    steps.append(
        filter_step(
            f"iterative k-core: users >= {user_min}, items >= {options.item_core} interactions",
            state,
            after,
        )
    )
    if len(users) == 0:
        raise UnisrecError(
            f"{name}: no interactions left after the k-core filtering (users >= {user_min}, items >= "
            f"{options.item_core} interactions; before it {state[0]} interactions of {state[1]} users and "
            f"{state[2]} items); lower --user-core / --item-core"
        )

    sort = np.lexsort((order, timestamps, users))  # by user, then time, ties keep input order
    users, items, timestamps = users[sort], items[sort], timestamps[sort]
    kept_users, user_index = np.unique(users, return_inverse=True)  # codes are first-appearance order
    kept_items, item_index = np.unique(items, return_inverse=True)  # catalogue order
    counts = np.bincount(user_index, minlength=len(kept_users))
    offsets = np.zeros(len(kept_users) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])

    split = np.full(len(users), TRAIN, dtype=np.int8)
    split[offsets[1:] - 1] = TEST
    split[offsets[1:] - 2] = VALID

    catalogue_ids = raw.catalogue_id.to_numpy(zero_copy_only=False)
    texts = raw.catalogue_text.take(pa.array(kept_items)).to_pylist()
    n_catalogue = len(raw.catalogue_id)
    dataset = ProcessedDataset(
        name=name,
        user_ids=np.asarray(user_values.to_numpy(zero_copy_only=False)[kept_users], dtype=object),
        item_ids=np.asarray(catalogue_ids[kept_items], dtype=object),
        item_texts=texts,
        offsets=offsets,
        items=item_index.astype(np.int32),
        timestamps=timestamps,
        split=split,
        info={**info, **raw.info, "options": asdict(options), "split": "leave-one-out"},
    )
    dataset.stats = {
        **dataset.compute_stats(),
        "input": {"interactions": n_input, "catalogue_items": n_catalogue},
        "catalogue_items_without_interactions": n_catalogue - n_rated,  # the k-core's removals are its step's
        "filtering": steps,
    }
    return dataset
