"""The RecTools peer (benchmarks/peers/rectools_unisrec.py) measures what unisrec measures: the same targets and
histories, the same item vectors, the same ranks (ties against the target, nothing masked), the same metrics.

Only the script's own helpers run here (numpy, pandas, torch); RecTools itself lives in the peer's virtual
environment (benchmarks/peers/setup_rectools.sh)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
import torch
from conftest import prepare_synthetic

from unisrec.datasets.processed import load_processed
from unisrec.evaluate import count_ranks
from unisrec.metrics import ranking_metrics

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "peers" / "rectools_unisrec.py"


@pytest.fixture(scope="module")
def peer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rectools_unisrec_peer", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_metrics_are_unisrecs(peer: ModuleType) -> None:
    ranks = np.array([0, 1, 9, 10, 60])  # 0-based ranks: three hits in the top 10, four in the top 50
    got = peer.ranking_metrics(ranks, (10, 50))
    assert got == ranking_metrics(ranks, (10, 50))
    assert got["recall@10"] == pytest.approx(3 / 5) and got["recall@50"] == pytest.approx(4 / 5)
    assert got["ndcg@10"] == pytest.approx((1 + 1 / np.log2(3) + 1 / np.log2(11)) / 5)
    assert got["mrr@10"] == pytest.approx((1 + 1 / 2 + 1 / 10) / 5)


def test_targets_and_histories_are_unisrecs(peer: ModuleType, tmp_path: Path) -> None:
    folder = prepare_synthetic(tmp_path / "data", n_users=40)
    dataset = load_processed(folder)
    frame = peer.read_interactions(folder)
    max_len = 4  # shorter than most histories: the cut to the last max_len items is exercised
    for split, code in (("valid", peer.VALID), ("test", peer.TEST)):
        targets, history = peer.targets_and_histories(frame, code, max_len)
        rows = dataset.target_rows(split)
        assert targets.tolist() == dataset.items[rows].tolist()
        users = dataset.user_of_rows()[rows]
        for i, (row, user) in enumerate(zip(rows, users, strict=True)):
            earlier = dataset.items[dataset.offsets[user] : row][-max_len:]
            expected = np.zeros(max_len, dtype=np.int64)
            expected[max_len - len(earlier) :] = earlier + 1  # item + 1, left-padded with 0
            assert history[i].tolist() == expected.tolist()


def test_safetensors_reader_reads_the_cached_vectors(peer: ModuleType, tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    matrix = np.random.default_rng(1).normal(size=(7, 5)).astype(np.float32)
    path = tmp_path / "m.safetensors"
    save_file({"embeddings": matrix, "other": np.ones(3, np.float32)}, str(path), metadata={"model": "x"})
    assert np.array_equal(peer.read_safetensors_matrix(path), load_file(str(path))["embeddings"])


class _Net(torch.nn.Module):
    """The few members of RecTools' UniSRecNet that ranking uses: a frozen text table, a projection of every
    item, the last-position encoding of left-padded histories."""

    frozen_emb: torch.Tensor  # a buffer (register_buffer)

    def __init__(self, table: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("frozen_emb", table)
        self.proj = torch.nn.Linear(table.shape[-1], 3, bias=False)

    def project_all(self) -> torch.Tensor:
        return self.proj(self.frozen_emb[:, 0])

    def encode_last(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.frozen_emb[x, 0].sum(dim=1))


def test_full_ranks_count_ties_against_the_target_and_mask_nothing(peer: ModuleType) -> None:
    generator = torch.Generator().manual_seed(0)
    n_items, dim = 30, 6
    vectors = torch.randn(n_items, dim, generator=generator)
    vectors[5] = vectors[9]  # two items with the same text: always tied
    all_vectors = torch.zeros(n_items + 1, 1, dim)
    all_vectors[1:, 0] = vectors
    trained = all_vectors[:20].clone()  # the network was fitted on fewer items ...
    net = _Net(trained)
    targets = np.array([5, 9, 0, 29, 3, 5])
    history = np.array([[0, 1, 2], [0, 1, 2], [3, 4, 5], [0, 0, 30], [4, 4, 4], [0, 6, 10]])  # item + 1
    ranks = peer.full_ranks(net, all_vectors, targets, history, batch_size=4)
    assert net.frozen_emb is trained  # ... and keeps its own table afterwards
    with torch.no_grad():
        table = net.proj(vectors)
        queries = net.proj(all_vectors[torch.from_numpy(history), 0].sum(dim=1))
        expected = count_ranks(queries, table, torch.from_numpy(targets), item_chunk=7)
    assert ranks.tolist() == expected.tolist()
    scores = queries[0] @ table.T  # items 5 and 9 tie: each counts the other against itself
    assert ranks[0] == ranks[1] == int((scores > scores[5]).sum()) + 1
    scores = queries[3] @ table.T  # the target is the history's own item and stays rankable (nothing masked)
    assert history[3, -1] - 1 == targets[3] and ranks[3] == int((scores >= scores[targets[3]]).sum()) - 1
