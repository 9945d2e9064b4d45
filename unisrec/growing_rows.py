"""Tensors that grow by rows in place: adding M rows to N copies the M rows, not all N + M.

Items added one at a time to a served catalogue used to copy every table they extend (the model's text
vectors, the adapted items, the scoring table, its bfloat16 copy) on each addition: quadratic over many small
additions (0.373 s per item at 100k items on one thread, 0.019 s grown in place:
``benchmarks/add_items_growth.py``). ``append_rows`` writes the new rows into spare rows of
a larger store instead and returns a longer view of it; a view taken earlier keeps seeing the same rows (the
rows past its end are the only ones written), so readers holding the old tables are unaffected.
"""

from __future__ import annotations

from torch import Tensor

SPARE_SHARE = 8  # a new store holds 1/SPARE_SHARE more rows than it needs (amortised: ~SPARE_SHARE copies a row)
MIN_SPARE = 64  # and at least this many spare rows


def append_rows(current: Tensor, new: Tensor, store: Tensor | None) -> tuple[Tensor, Tensor]:
    """``current`` (N, ...) followed by ``new`` (M, ...): returns ``(store, rows)``, ``rows`` (N + M, ...) a
    view of ``store`` (C, ...), C >= N + M.

    ``store``: what an earlier call returned, if ``current`` still views its first N rows; then only rows N to
    N + M of it are written (in place, nothing copied) while room lasts. Otherwise (None, a table rebuilt or
    moved since, no room left): a new store with spare rows, ``current`` copied into it once.
    ``new`` is converted to ``current``'s device and dtype.
    """
    n, m = current.shape[0], new.shape[0]
    new = new.to(device=current.device, dtype=current.dtype)
    if store is None or not holds(store, current) or n + m > store.shape[0]:
        grown = current.new_empty((n + m + max(n // SPARE_SHARE, MIN_SPARE), *current.shape[1:]))
        grown[:n] = current
        store = grown
    store[n : n + m] = new
    return store, store[: n + m]


def holds(store: Tensor, current: Tensor) -> bool:
    """Whether ``current`` is the first rows of ``store`` (a view ``append_rows`` returned, not a copy)."""
    return (
        store.device == current.device
        and store.dtype == current.dtype
        and store.shape[1:] == current.shape[1:]
        and current.shape[0] <= store.shape[0]
        and current.is_contiguous()
        and store.data_ptr() == current.data_ptr()
    )
