"""Exact top-k: the chunked float32 scan, and the bfloat16 coarse pass with float32 rescoring."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import unisrec.topk as topk
from unisrec.config import ModelConfig
from unisrec.model import UniSRec
from unisrec.recommend import Catalogue, Recommender
from unisrec.topk import CoarseTable, chunked_top_k


def brute_force(queries: torch.Tensor, table: torch.Tensor, k: int, seen: list[np.ndarray] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
    full = queries @ table.T  # (B, N)
    for b, rows in enumerate(seen or []):
        full[b, torch.from_numpy(rows)] = float("-inf")
    return full.topk(k, dim=1)


def text_like_table(n: int, h: int, seed: int = 0) -> torch.Tensor:
    """(N, H) rows of norm 1/0.07, as the scoring table of a text model (cosine / temperature)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, h, generator=generator), dim=1) / 0.07


def test_chunked_top_k_equals_full_top_k(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    queries, table = torch.randn(7, 16), torch.randn(20_000, 16)
    monkeypatch.setattr(topk, "SCORE_BUDGET", 7 * 4096)  # 5 chunks
    seen = [np.array([3, 19_999, 5000]) if b % 2 else np.zeros(0, np.int64) for b in range(7)]
    scores, rows = chunked_top_k(queries, table, 50, seen)
    expected_scores, expected_rows = brute_force(queries, table, 50, seen)
    torch.testing.assert_close(scores, expected_scores)
    assert torch.equal(rows, expected_rows)


def lower_row_first(queries: torch.Tensor, table: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The top k of a full stable sort: best first, equal scores in row order."""
    values, rows = torch.sort(queries @ table.T, dim=1, descending=True, stable=True)
    return values[:, :k], rows[:, :k]


def test_equal_scores_come_lower_row_first_whatever_the_chunking(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    table = torch.randn(20_000, 16)
    table[[70, 5000, 12_345, 19_999]] = table[15_000].clone()  # one vector five times (one text, five ids)
    table[[3, 9000, 14_000]] = -table[15_000].clone()
    queries = torch.cat([table[15_000:15_001], -table[15_000:15_001], torch.randn(3, 16)])
    expected_rows = lower_row_first(queries, table, 3)[1]
    assert expected_rows[0].tolist() == [70, 5000, 12_345] and expected_rows[1].tolist() == [3, 9000, 14_000]
    for budget in (5 * 4096, 5 * 5000, 1 << 24):  # chunks of 4096 and 5000 items, and one chunk
        monkeypatch.setattr(topk, "SCORE_BUDGET", budget)
        for k in (1, 3, 4):  # the k-th place inside a tie of five
            scores, rows = chunked_top_k(queries, table, k)
            assert torch.equal(rows, lower_row_first(queries, table, k)[1]), (budget, k)
            torch.testing.assert_close(scores, lower_row_first(queries, table, k)[0])


def test_top_k_lower_first_orders_ties_by_column_and_takes_the_lowest_at_the_cut() -> None:
    scores = torch.tensor([[1.0, 3.0, 2.0, 3.0, 3.0, 0.0], [float("-inf")] * 6])
    values, cols = topk.top_k_lower_first(scores, 2)
    assert cols.tolist() == [[1, 3], [0, 1]] and values[0].tolist() == [3.0, 3.0]
    assert topk.top_k_lower_first(scores, 4)[1].tolist() == [[1, 3, 4, 2], [0, 1, 2, 3]]


@pytest.fixture
def bf16_native(monkeypatch: pytest.MonkeyPatch) -> None:
    """The coarse pass as on a CPU with bf16 arithmetic (its exactness does not depend on the hardware's speed)."""
    monkeypatch.setattr(topk, "native_bfloat16", lambda device: True)


def test_coarse_bound_holds_on_this_machine() -> None:
    """Every bf16 score is within c ||q|| ||t|| of the float32 score (what makes the coarse pass exact)."""
    table = text_like_table(20_000, 300)
    queries = torch.nn.functional.normalize(torch.randn(32, 300), dim=1)
    exact = queries @ table.T
    approx = (queries.bfloat16() @ table.bfloat16().T).float()
    bound = topk.error_coefficient(300) * queries.norm(dim=1, keepdim=True) * table.norm(dim=1)[None, :]
    ratio = ((approx - exact).abs() / bound).max().item()
    assert 0.01 < ratio <= 1.0  # the bound holds, and bf16 really is coarser than float32


@pytest.mark.parametrize("k", [1, 10, 100])
@pytest.mark.usefixtures("bf16_native")
def test_coarse_top_k_equals_brute_force(k: int) -> None:
    table = text_like_table(40_000, 64)
    coarse = CoarseTable.build(table)
    assert coarse is not None
    queries = torch.nn.functional.normalize(torch.randn(33, 64), dim=1)
    seen = [np.arange(b, 40_000, 997) if b % 3 else np.zeros(0, np.int64) for b in range(33)]
    scores, rows = coarse.top_k(queries, k, seen)
    expected_scores, expected_rows = brute_force(queries, table, k, seen)
    assert torch.equal(rows, expected_rows)
    torch.testing.assert_close(scores, expected_scores, rtol=1e-5, atol=1e-4)
    assert scores.dtype == torch.float32


@pytest.mark.usefixtures("bf16_native")
def test_the_coarse_pass_orders_equal_scores_as_the_exact_scan() -> None:
    table = text_like_table(40_000, 64)
    table[[7000, 15_000, 30_000]] = table[5].clone()  # four items of one text
    coarse = CoarseTable.build(table)
    assert coarse is not None
    queries = torch.cat([table[5:6] * 0.07, torch.nn.functional.normalize(torch.randn(4, 64), dim=1)])
    for k in (1, 3, 10):
        rows = coarse.top_k(queries, k)[1]
        assert torch.equal(rows, chunked_top_k(queries, table, k)[1]), k
        assert rows[0, : min(k, 4)].tolist() == [5, 7000, 15_000, 30_000][: min(k, 4)]


@pytest.mark.usefixtures("bf16_native")
def test_coarse_top_k_falls_back_when_the_pool_cannot_prove_the_top_k(monkeypatch: pytest.MonkeyPatch) -> None:
    """300 near-copies of the query's best item differ by less than bf16 resolves: the exact scan decides."""
    table = text_like_table(30_000, 64)
    best = table[0].clone()
    torch.manual_seed(0)
    table[:300] = best + 1e-4 * torch.randn(300, 64)  # scores within the coarse error of each other
    query = torch.nn.functional.normalize(best, dim=0)[None, :]  # (1, H)
    coarse = CoarseTable.build(table)
    assert coarse is not None
    exact_scans = []
    real = topk.chunked_top_k

    def spy(queries: torch.Tensor, table: torch.Tensor, k: int, seen: object = None) -> object:
        exact_scans.append(table.dtype)
        return real(queries, table, k, seen)  # type: ignore[arg-type]

    monkeypatch.setattr(topk, "chunked_top_k", spy)
    scores, rows = coarse.top_k(query, 10)
    assert exact_scans == [torch.bfloat16, torch.float32]  # the coarse pass, then the exact rescan
    # near-copies closer than float32 sums resolve (one matmul vs another): the true top 10 within that rounding
    truth = (query.double() @ table.double().T)[0]  # (N,)
    assert len(set(rows[0].tolist())) == 10
    assert bool((truth[rows[0]] >= truth.topk(10).values[-1] - 5e-5).all())
    torch.testing.assert_close(scores, brute_force(query, table, 10)[0])


def test_coarse_table_is_skipped_when_unsafe_or_useless(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(topk, "native_bfloat16", lambda device: False)
    assert CoarseTable.build(text_like_table(20_000, 16)) is None  # emulated bf16: slower than the exact scan
    monkeypatch.setattr(topk, "native_bfloat16", lambda device: True)
    assert CoarseTable.build(text_like_table(20_000, 16)) is not None
    assert CoarseTable.build(text_like_table(1000, 16)) is None  # small: the exact scan is as fast
    broken = text_like_table(20_000, 8)
    broken[5, 3] = float("nan")
    assert CoarseTable.build(broken) is None  # no bound holds for non-finite scores
    monkeypatch.setattr(topk, "error_coefficient", lambda hidden: 1e-9)  # a kernel breaking the bound
    assert CoarseTable.build(text_like_table(20_000, 16)) is None


@pytest.mark.usefixtures("bf16_native")
def test_recommender_uses_the_coarse_pass_and_stays_exact_after_adding_items() -> None:
    torch.manual_seed(0)
    n, d = 20_000, 12
    model = UniSRec(ModelConfig(hidden_size=16, inner_size=16, n_experts=2), n, torch.randn(n, d)).eval()
    recommender = Recommender(model, Catalogue([f"i{j}" for j in range(n)]))
    recommender.tables()  # built on first use
    assert recommender._coarse is not None
    recommender.add_items(["new a", "new b"], ["a", "b"], vectors=np.random.default_rng(0).normal(size=(2, d)))
    histories = [np.array([5, 7, 20_000]), np.array([19_999]), np.array([20_001, 3, 3])]
    results = recommender.recommend_rows(histories, 20)
    queries = recommender.queries_of_rows(histories)
    table = model.scoring_table(model.item_table(torch.arange(model.n_items)))  # (N + 2, H)
    _, expected = brute_force(queries, table, 20, [np.unique(h) for h in histories])
    for ranked, rows in zip(results, expected, strict=True):
        assert [r.item_id for r in ranked] == [recommender.catalogue.item_ids[int(i)] for i in rows]


def test_append_rows_writes_only_the_new_rows_and_keeps_earlier_views() -> None:
    from unisrec.growing_rows import MIN_SPARE, append_rows

    start = torch.arange(12.0).reshape(4, 3)
    store, rows = append_rows(start, torch.ones(1, 3, dtype=torch.float64), None)  # converted to float32
    assert rows.dtype == torch.float32 and store.shape[0] == 5 + MIN_SPARE
    torch.testing.assert_close(rows, torch.cat([start, torch.ones(1, 3)]), rtol=0, atol=0)
    held = rows  # a reader's view of 5 rows
    expected = rows.clone()
    for step in range(MIN_SPARE):  # while room lasts: the same store, nothing copied
        store_before = store
        store, rows = append_rows(rows, torch.full((1, 3), float(step)), store)
        assert store is store_before and rows.data_ptr() == held.data_ptr()
        expected = torch.cat([expected, torch.full((1, 3), float(step))])
    torch.testing.assert_close(rows, expected, rtol=0, atol=0)
    torch.testing.assert_close(held, expected[:5], rtol=0, atol=0)  # the early view saw no change
    grown, longer = append_rows(rows, torch.zeros(2, 3), store)  # no room left: a new store, copied once
    assert grown is not store and longer.shape == (len(expected) + 2, 3)
    torch.testing.assert_close(longer[: len(expected)], expected, rtol=0, atol=0)
    copy = rows.clone()  # not a view of the store: a new one, the store left alone
    again, after = append_rows(copy, torch.zeros(1, 3), store)
    assert again is not store and after.data_ptr() != rows.data_ptr()
    torch.testing.assert_close(rows, expected, rtol=0, atol=0)


@pytest.mark.usefixtures("bf16_native")
def test_items_added_one_by_one_give_the_tables_of_a_rebuild(monkeypatch: pytest.MonkeyPatch) -> None:
    """Additions grow the model's text vectors, the item and scoring tables and the coarse copy in place: after
    many of them (across the stores' reallocations, and the coarse table's minimum size) every table equals one
    built from scratch, and a table a reader took before an addition is unchanged."""
    monkeypatch.setattr(topk, "MIN_COARSE_ITEMS", 130)
    monkeypatch.setattr("unisrec.recommend.MIN_COARSE_ITEMS", 130)
    torch.manual_seed(0)
    n, d = 100, 12
    model = UniSRec(ModelConfig(hidden_size=16, inner_size=16, n_experts=2), n, torch.randn(n, d)).eval()
    recommender = Recommender(model, Catalogue([f"i{j}" for j in range(n)]))
    recommender.tables()
    assert recommender._coarse is None  # below the minimum
    vectors = np.random.default_rng(1).normal(size=(150, d)).astype(np.float32)
    held: list[tuple[torch.Tensor, ...]] = []  # tables readers took between additions, and copies of them then
    for j in range(0, 150, 3):  # 50 additions of 3 items (3 stores' reallocations at least)
        recommender.add_items([f"t{k}" for k in range(j, j + 3)], [f"n{k}" for k in range(j, j + 3)], vectors[j:j + 3])
        items, table = recommender.tables()
        assert items is recommender._items  # not rebuilt: the addition kept the tables current
        held.append((items, table, items.clone(), table.clone()))
        if j == 60:
            assert recommender._coarse is not None  # built when the table reached 130 rows
    for items, table, items_then, table_then in held:  # views of the stores the later additions wrote into
        torch.testing.assert_close(items, items_then, rtol=0, atol=0)
        torch.testing.assert_close(table, table_then, rtol=0, atol=0)
    assert len({t[0].data_ptr() for t in held}) < len(held)  # some additions did write into a held view's store
    torch.testing.assert_close(model.item_text[n:], torch.from_numpy(vectors), rtol=0, atol=0)
    assert model.n_items == len(model.item_text) == len(recommender.catalogue) == 250
    grown_items, grown_table = recommender.tables()
    fresh = Recommender(model, Catalogue(list(recommender.catalogue.item_ids)))
    rebuilt_items, rebuilt_table = fresh.tables()
    torch.testing.assert_close(grown_items, rebuilt_items, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grown_table, rebuilt_table, rtol=1e-6, atol=1e-6)
    coarse, rebuilt_coarse = recommender._coarse, fresh._coarse
    assert coarse is not None and rebuilt_coarse is not None
    assert torch.equal(coarse.coarse, rebuilt_coarse.coarse)
    assert coarse.max_norm == pytest.approx(rebuilt_coarse.max_norm, rel=1e-6)
    histories = [np.array([5, 120, 249]), np.array([240])]
    assert ([[r.item_id for r in ranked] for ranked in recommender.recommend_rows(histories, 20)]
            == [[r.item_id for r in ranked] for ranked in fresh.recommend_rows(histories, 20)])


def test_a_moved_model_lets_go_of_its_spare_rows() -> None:
    """The spare-row store of the model's text vectors is not kept alive once ``to`` moves or converts them."""
    model = UniSRec(ModelConfig(hidden_size=8, inner_size=8, n_experts=2), 5, torch.randn(5, 6))
    model.extend_items(torch.randn(2, 6))
    store = model._text_store
    assert store is not None and store.shape[0] > 7 and model.item_text.data_ptr() == store.data_ptr()
    model.float()  # nothing moves: the store still holds the text vectors
    assert model._text_store is store
    model.to(torch.float64)
    assert model._text_store is None and model.item_text.dtype == torch.float64 and model.n_items == 7
    model.extend_items(torch.ones(1, 6))  # a new store, of the new dtype
    assert model.item_text.shape == (8, 6) and bool((model.item_text[7] == 1).all())
    assert model._text_store is not None and model._text_store.dtype == torch.float64
