"""Training windows reproduce the reference's example set: every prefix (last max_len items) -> next item."""

from __future__ import annotations

import numpy as np
import pytest

from unisrec.batches import (
    Windows,
    bucketed_batches,
    make_eval_batch,
    make_train_batch,
    training_windows,
    window_items,
)


def reference_examples(sequences: list[list[int]], max_len: int) -> list[tuple[tuple[int, ...], int]]:
    return sorted(
        (tuple(seq[max(0, t - max_len) : t]), seq[t]) for seq in sequences for t in range(1, len(seq))
    )


def examples_from_windows(items: np.ndarray, seq_start: np.ndarray, lengths: np.ndarray, max_len: int, layout: str):
    windows = training_windows(seq_start, lengths, max_len, layout=layout)
    batch = make_train_batch(items, windows)
    out = []
    inputs, mask = batch.inputs.numpy(), batch.mask.numpy()
    targets = iter(batch.targets.tolist())
    for row in range(len(windows)):
        n = int(windows.length[row])
        for pos in range(n):
            if mask[row, pos]:
                start = max(0, pos + 1 - max_len)
                out.append((tuple(inputs[row, start : pos + 1].tolist()), next(targets)))
    return sorted(out), windows


@pytest.mark.parametrize("layout", ["exact", "prefix"])
@pytest.mark.parametrize("max_len", [1, 3, 5])
def test_exact_windows_equal_every_prefix(max_len: int, layout: str) -> None:
    rng = np.random.default_rng(0)
    sequences = [list(rng.integers(0, 50, size=n)) for n in (1, 2, 3, 5, 8, 13)]
    items = np.concatenate(sequences).astype(np.int64)
    lengths = np.array([len(s) for s in sequences])
    seq_start = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    got, windows = examples_from_windows(items, seq_start, lengths, max_len, layout)
    assert got == reference_examples(sequences, max_len)
    assert int(windows.n_targets.sum()) == sum(len(s) - 1 for s in sequences)
    assert windows.length.max() <= max_len
    if layout == "prefix":
        assert len(windows) == int(windows.n_targets.sum())  # one window per target


def test_strided_windows_cover_each_target_once() -> None:
    sequences = [list(range(100, 112)), [7, 8, 9]]
    items = np.concatenate(sequences).astype(np.int64)
    lengths = np.array([12, 3])
    windows = training_windows(np.array([0, 12]), lengths, 4, layout="strided")
    batch = make_train_batch(items, windows)
    assert sorted(batch.targets.tolist()) == sorted([*range(101, 112), 8, 9])
    assert windows.length.tolist() == [4, 2, 4, 3]


@pytest.mark.parametrize("layout", ["exact", "strided", "prefix"])
def test_window_items_are_the_batch_ids(layout: str) -> None:
    """The step's items under train.batch_negatives: every id the batch's inputs and targets hold, no other
    (the padding repeats a window's first item, so it adds none), for any subset of windows."""
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 30, size=40)
    items = rng.integers(0, 500, size=int(lengths.sum())).astype(np.int64)
    seq_start = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    windows = training_windows(seq_start, lengths, 6, layout=layout)
    for _ in range(5):
        part = windows.subset(rng.choice(len(windows), size=rng.integers(1, len(windows) + 1), replace=False))
        batch = make_train_batch(items, part)
        expected = np.unique(np.concatenate([batch.inputs.numpy().ravel(), batch.targets.numpy()]))
        np.testing.assert_array_equal(window_items(items, part), expected)
    # a window without targets holds its inputs only, not the item after them
    lone = Windows(np.array([2]), np.array([3]), np.array([3]))
    np.testing.assert_array_equal(window_items(np.array([9, 8, 1, 2, 3, 7]), lone), [1, 2, 3])


def test_bucketed_batches_partition_windows_and_respect_size() -> None:
    rng = np.random.default_rng(3)
    lengths = rng.integers(2, 40, size=300)
    seq_start = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    windows = training_windows(seq_start, lengths, 10)
    batches = bucketed_batches(windows, 64, np.random.default_rng(1))
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(windows)))
    sizes = [int(windows.n_targets[b].sum()) for b in batches]
    assert max(sizes) <= 64 + 10 and sum(sizes) == int(windows.n_targets.sum())
    again = bucketed_batches(windows, 64, np.random.default_rng(1))
    assert all(np.array_equal(a, b) for a, b in zip(batches, again, strict=True))


def test_eval_batch_histories_and_seen_items() -> None:
    items = np.array([5, 6, 7, 8, 9, 1, 2, 3], dtype=np.int64)  # user 0: rows 0-4, user 1: rows 5-7
    batch = make_eval_batch(items, np.array([4, 7]), np.array([0, 5]), 3, with_seen=True)
    assert batch.inputs.tolist() == [[6, 7, 8], [1, 2, 1]]
    assert batch.lengths.tolist() == [3, 2]
    assert batch.targets.tolist() == [9, 3]
    pairs = sorted(zip(batch.seen_rows.tolist(), batch.seen_items.tolist(), strict=True))
    assert pairs == [(0, 5), (0, 6), (0, 7), (0, 8), (1, 1), (1, 2)]


def test_step_index_counts_steps_over_epochs_of_different_lengths() -> None:
    from unisrec.batches import StepIndex

    lengths = [3, 2, 4, 3]
    asked: list[int] = []

    def length(epoch: int) -> int:
        asked.append(epoch)
        return lengths[epoch]

    index = StepIndex(length)
    flat = [(epoch, step) for epoch, n in enumerate(lengths) for step in range(n)]  # every global step, in order
    assert index.locate(4) == flat[4] == (1, 1) and asked == [0, 1]  # only as far as needed
    assert [index.locate(g) for g in reversed(range(len(flat)))] == flat[::-1]
    assert [index.first(e) for e in range(4)] == [0, 3, 5, 9]
    assert asked == [0, 1, 2, 3]  # each epoch's length asked once
    with pytest.raises(ValueError, match="step -1"):
        index.locate(-1)
    with pytest.raises(ValueError, match="epoch 0 has 0 steps"):
        StepIndex(lambda epoch: 0).locate(0)

