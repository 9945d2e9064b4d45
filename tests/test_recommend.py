"""Recommendations: cold-start items by text, exact FAISS top-k, histories, export, CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import prepare_synthetic
from safetensors.numpy import load_file

import unisrec.recommend as recommend_module
from unisrec.baselines import build_model
from unisrec.catalogue import Catalogue
from unisrec.cli import main
from unisrec.config import MODE_ARCHITECTURE, MODES, ModelConfig
from unisrec.errors import UnisrecError
from unisrec.export import faiss_search, flat_ip_index, load_faiss_index
from unisrec.finetune import finetune
from unisrec.model import UniSRec, add_offsets
from unisrec.recommend import ItemConflictError, Recommendation, Recommender, UnknownItemError
from unisrec.topk import chunked_top_k

# no dropout, one expert, hidden 32: a text-only model learns the synthetic chains i -> i+1 in ~25 epochs
TRAIN = [
    "model.hidden_size=32", "model.inner_size=32", "model.max_seq_len=6", "model.n_experts=1",
    "model.hidden_dropout=0.0", "model.attn_dropout=0.0", "model.adaptor_dropout=0.0",
    "train.batch_size=64", "train.lr=0.01", "train.epochs=25", "train.patience=25", "train.progress=false",
]


def top(recommender: Recommender, history: list[str], k: int = 10, **options: bool) -> list[Recommendation]:
    """The ranked list of one history."""
    return recommender.recommend_lists([history], k, **options)[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_lm_dir: Path) -> tuple[Path, Path]:
    """(dataset, run) of an inductive model trained on 30 items whose texts name them."""
    root = tmp_path_factory.mktemp("trained")
    data = prepare_synthetic(root / "data")
    run = root / "run"
    metrics = finetune(data, "inductive", run, overrides=[*TRAIN, f"text.model={tiny_lm_dir}", "text.pooling=mean"])
    assert metrics["test"] is not None and metrics["test"]["recall@10"] > 0.6  # random: 10/30
    return data, run


def test_cold_start_items_are_retrieved_without_retraining(trained: tuple[Path, Path]) -> None:
    """New items (ids never seen in training) join by their text alone and are recommended."""
    _, run = trained
    recommender = Recommender.from_pretrained(run)
    model, catalogue = recommender.model, recommender.catalogue
    texts = {item: catalogue.texts[row] for row, item in enumerate(catalogue.item_ids)}
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    # twins: the exact text of item i under a new id; variants: the text with one more word
    recommender.add_items([texts[f"i{j}"] for j in range(30)], [f"twin-{j}" for j in range(30)])
    recommender.add_items([texts[f"i{j}"] + " kit" for j in range(30)], [f"variant-{j}" for j in range(30)])
    assert model.n_items == 90 and len(catalogue) == 90 and model.item_text.shape[0] == 90
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, weights[name], rtol=0, atol=0)  # no retraining

    histories = [[f"i{(j - 3) % 30}", f"i{(j - 2) % 30}", f"i{(j - 1) % 30}"] for j in range(30)]  # next: i{j}
    frame = recommender.recommend_histories(histories, k=5)
    best = frame.groupby("user_id")["item_id"].apply(list)
    twins_top3 = sum(f"twin-{j}" in best[j][:3] for j in range(30))
    variants_top5 = sum(f"variant-{j}" in best[j] for j in range(30))
    print(f"cold start: twins in top 3 for {twins_top3}/30 histories, variants in top 5 for {variants_top5}/30")
    assert twins_top3 >= 20, best  # random: 3 in 90 per history
    assert variants_top5 >= 10, best  # random: 5 in 90 per history
    for j in range(30):  # a twin's text vector is its original's, so is its score (ties are exact)
        scores = frame[frame.user_id == j].set_index("item_id").score
        if f"twin-{j}" in scores and f"i{j}" in scores:
            assert scores[f"twin-{j}"] == pytest.approx(scores[f"i{j}"], abs=1e-5)

    # histories of new items only point to the next item of the chain, too
    new_history = [f"twin-{j}" for j in (10, 11, 12)]
    ids = [r.item_id for r in top(recommender, new_history, k=4)]
    assert {"i13", "twin-13"} & set(ids), ids


def test_text_histories_equal_id_histories(trained: tuple[Path, Path]) -> None:
    _, run = trained
    recommender = Recommender.from_pretrained(run)
    catalogue = recommender.catalogue
    history = ["i4", "i5", "i6"]
    as_text = [catalogue.texts[catalogue.item_ids.index(i)] for i in history]
    by_id, by_text = top(recommender, history, k=8), top(recommender, as_text, k=8, by_text=True)
    assert [r.item_id for r in by_id] == [r.item_id for r in by_text]
    np.testing.assert_allclose([r.score for r in by_id], [r.score for r in by_text], rtol=1e-4)
    for given in (np.array(as_text), pd.Series(as_text), tuple(as_text)):  # any sequence of texts
        assert recommender.recommend_lists([given], k=8, by_text=True)[0] == by_text  # type: ignore[list-item]


def test_one_history_many_histories_and_options(trained: tuple[Path, Path]) -> None:
    _, run = trained
    recommender = Recommender.from_pretrained(run)
    one = top(recommender, ["i1", "i2"], k=30)
    assert isinstance(one, list) and len(one) == 28 and {"i1", "i2"}.isdisjoint(r.item_id for r in one)
    assert [r.score for r in one] == sorted((r.score for r in one), reverse=True)
    assert len(top(recommender, ["i1", "i2"], k=30, exclude_seen=False)) == 30
    many = recommender.recommend_histories([["i1", "i2"], ["i7"]], k=3)
    assert isinstance(many, pd.DataFrame) and list(many.columns) == ["user_id", "item_id", "score", "rank", "text"]
    assert many.user_id.tolist() == [0, 0, 0, 1, 1, 1] and many["rank"].tolist() == [1, 2, 3, 1, 2, 3]
    assert many[many.user_id == 0].item_id.tolist() == [r.item_id for r in one[:3]]
    everything = [f"i{j}" for j in range(30)]  # every item seen: nothing left to recommend, so no row
    frame = recommender.recommend_histories([["i1"], everything, ["i2"]], k=2)
    assert frame.user_id.tolist() == [0, 0, 2, 2]
    assert [len(r) for r in recommender.recommend_lists([["i1"], everything], k=2)] == [2, 0]
    # a history longer than max_seq_len (6) is cut to its last 6 items
    long = [f"i{j}" for j in range(20)]
    assert top(recommender, long, exclude_seen=False) == top(recommender, long[-6:], exclude_seen=False)
    # exclude_seen as numpy's bool or an int means the same as the bool (the text path took them already)
    for flag in (np.False_, 0, np.True_, 1):
        assert top(recommender, ["i1", "i2"], k=30, exclude_seen=flag) == top(  # type: ignore[arg-type]
            recommender, ["i1", "i2"], k=30, exclude_seen=bool(flag))
    per_history = recommender.recommend_rows([np.array([1, 2]), np.array([7])], 30, [np.True_, False])  # type: ignore[list-item]
    assert len(per_history[0]) == 28 and len(per_history[1]) == 30
    with pytest.raises(UnisrecError, match="exclude_seen: 1 flags for 2 histories"):
        recommender.recommend_rows([np.array([1, 2]), np.array([7])], 3, [True])


def test_bad_histories_are_clear_errors(trained: tuple[Path, Path]) -> None:
    recommender = Recommender.from_pretrained(trained[1])
    with pytest.raises(UnknownItemError, match=r"unknown item id\(s\) 'nope', 'gone'; every history entry"):
        recommender.recommend_lists([["i1", "nope"], ["gone"]])
    with pytest.raises(UnisrecError, match="history 1 is empty"):
        recommender.recommend_lists([["i1"], []])
    with pytest.raises(UnisrecError, match="histories must be a list of lists"):
        recommender.recommend_histories("i1")
    with pytest.raises(UnisrecError, match="unknown users: 'u9'"):
        recommender.recommend(["u9"])
    with pytest.raises(UnisrecError, match=r"unknown users: 1\.5, None \("):  # named as given
        recommender.recommend([1.5, None])  # type: ignore[list-item]
    texts = [f"text {n}" for n in range(7)]  # longer than the model's window of 6: every entry is checked
    for bad in (None, 7, ["x"]):
        with pytest.raises(UnisrecError, match="history 0 must be a non-empty list of item texts"):
            recommender.recommend_lists([[bad, *texts]], by_text=True)  # type: ignore[list-item]
    with pytest.raises(UnisrecError, match="history 0 must be a non-empty list of item texts"):
        recommender.recommend_lists(["a text, not a list"], by_text=True)
    with pytest.raises(ItemConflictError, match="item id 'i3' is already in the catalogue"):
        recommender.add_items(["x"], ["i3"])
    with pytest.raises(ItemConflictError, match="item id 'n' is given twice"):
        recommender.add_items(["x", "y"], ["n", "n"])
    # a string where a list belongs was taken one character per item (add_items("abc", "xyz") added three items)
    with pytest.raises(UnisrecError, match=r"^texts must be a list, got a string \('abc'\)$"):
        recommender.add_items("abc", "xyz")
    with pytest.raises(UnisrecError, match=r"^ids must be a list, got NoneType$"):
        recommender.add_items(["x"], None)  # type: ignore[arg-type]
    with pytest.raises(UnisrecError, match=r"^the history of user 'a' must be a list, got a string \('i1'\)$"):
        recommender.set_users({"a": "i1"})
    with pytest.raises(UnisrecError, match=r"^histories must map user ids to their histories, got list$"):
        recommender.set_users([["i1"]])  # type: ignore[arg-type]
    events = pd.DataFrame({"user_id": ["a", "a", "b"], "item_id": ["i1", "i2", "i3"]})
    recommender.set_users(events.groupby("user_id").item_id.apply(list))  # a pandas Series
    assert recommender.users == {"a": ["i1", "i2"], "b": ["i3"]}
    bad_inputs: list[tuple[object, str]] = [(None, "histories must be a list of histories"),
                                            ([None], "history 0 must be a list of item ids, got NoneType")]
    for wrong, message in bad_inputs:
        with pytest.raises(UnisrecError, match=f"^{message}"):
            recommender.recommend_lists(wrong)  # type: ignore[arg-type]
    assert recommender.model.n_items == len(recommender.catalogue) == 30  # refused additions change nothing
    # numpy arrays as histories (df.groupby(...).item_id.unique()): taken, as recommend_lists takes them
    frame = recommender.recommend_histories([np.array(["i1", "i2"])], k=3)  # type: ignore[list-item]
    assert frame.item_id.tolist() == [r.item_id for r in recommender.recommend_lists([["i1", "i2"]], k=3)[0]]


def test_bad_k_and_flags_are_clear_errors(trained: tuple[Path, Path]) -> None:
    recommender = Recommender.from_pretrained(trained[1])
    for bad in (0, -1, 2.0, "3", True, None):
        with pytest.raises(UnisrecError, match=r"k must be (a whole number )?>= 1"):
            recommender.recommend_lists([["i1"]], k=bad)  # type: ignore[arg-type]
    assert len(recommender.recommend_lists([["i1"]], k=np.int64(4))[0]) == 4  # type: ignore[arg-type]
    with pytest.raises(UnisrecError, match="history 0 is a string, not a list of item ids: 'i1'"):
        recommender.recommend_lists(["i1"])
    with pytest.raises(UnisrecError, match="histories must be a list of histories"):
        recommender.recommend_lists("i1")
    for wrong in ("no", None, 0.5, [1.0], {"a": 1}):
        with pytest.raises(UnisrecError, match="exclude_seen must be true/false, or one true/false per history"):
            recommender.recommend_rows([np.array([1, 2])], 3, wrong)  # type: ignore[arg-type]
    two = [np.array([1, 2]), np.array([7])]
    for flags in (pd.Series([True, False]), np.array([True, False]), (1, 0)):  # a column, an array, a tuple
        assert [len(r) for r in recommender.recommend_rows(two, 30, flags)] == [28, 30]  # type: ignore[arg-type]
    assert recommender.recommend_lists([], by_text=True) == [] == recommender.recommend_lists([])


def test_histories_of_new_texts_keep_their_seen_items_with_fixed_offsets(trained: tuple[Path, Path],
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """TextKNN has repeat offsets; by text, a history whose texts no catalogue item has gets none (and once
    failed on the empty set of items with an offset), one whose text an item has pushes that item down."""
    from unisrec.baselines import TextKNN

    base = Recommender.from_pretrained(trained[1])
    text = base.model.item_text
    knn = Recommender(TextKNN(ModelConfig(architecture="textknn", item_repr="text", max_seq_len=6), len(text), text),
                      base.catalogue)
    known = list(base.catalogue.texts)
    fresh = torch.randn(text.shape[1], generator=torch.Generator().manual_seed(0))

    def encode(texts: list[str]) -> np.ndarray:  # the catalogue's vectors for its texts, one new vector otherwise
        return torch.stack([text[known.index(t)] if t in known else fresh for t in texts]).float().numpy()

    monkeypatch.setattr(knn, "encode_texts", encode)
    histories = [["a text no item has"], [known[3]]]
    kept = knn.recommend_lists(histories, k=30, exclude_seen=False, by_text=True)
    left = knn.recommend_lists(histories, k=30, exclude_seen=True, by_text=True)
    assert len(kept[0]) == len(left[0]) == 30 and kept[0] == left[0]  # nothing of the new text to keep or leave out
    assert [r.item_id for r in kept[1]][-1] == "i3" and kept[1][:29] == left[1]  # kept, after every other item
    assert kept[1] != left[1]
    mixed = knn.recommend_lists(histories, k=30, exclude_seen=[True, False], by_text=True)  # one flag per history
    assert mixed == [left[0], kept[1]]
    flags = pd.Series([True, False])  # a DataFrame column of flags, as by id
    assert knn.recommend_lists(histories, k=30, exclude_seen=flags, by_text=True) == mixed


def test_changed_language_model_is_refused(trained: tuple[Path, Path]) -> None:
    recommender = Recommender.from_pretrained(trained[1])
    recommender.text_encoder_info["fingerprint"] = "0" * 64
    with pytest.raises(UnisrecError, match="differs from the one the run was trained with"):
        recommender.add_items(["new text"], ["new"])


@pytest.mark.parametrize("item_repr", ["text+id", "id"])
def test_only_inductive_models_add_items_by_text(item_repr: str) -> None:
    config = ModelConfig(item_repr=item_repr, hidden_size=8, inner_size=8, n_experts=2)  # type: ignore[arg-type]
    model = UniSRec(config, 4, torch.randn(4, 6) if item_repr != "id" else None)
    recommender = Recommender(model, Catalogue(list("abcd")))
    with pytest.raises(ItemConflictError, match="adding items needs an inductive \\(text-only\\) model"):
        recommender.add_items(["text"], ["e"], vectors=np.zeros((1, 6)))
    with pytest.raises(ValueError, match="items are added by their text to text-only models"):
        model.extend_items(torch.zeros(1, 6))
    assert model.n_items == 4 and len(recommender.catalogue) == 4


def test_faiss_top_k_equals_brute_force() -> None:
    rng = np.random.default_rng(0)
    items = rng.standard_normal((50_000, 32)).astype(np.float32)
    queries = rng.standard_normal((64, 32)).astype(np.float32)
    index = flat_ip_index(items)
    scores, rows = faiss_search(index, queries, 10)
    expected_scores, expected_rows = torch.from_numpy(queries @ items.T).topk(10, dim=1)
    assert np.array_equal(rows, expected_rows.numpy())
    np.testing.assert_allclose(scores, expected_scores.numpy(), rtol=1e-5, atol=1e-4)
    seen = [expected_rows[b, :3].numpy() for b in range(64)]  # leaving out each query's best 3
    _, rows_unseen = faiss_search(index, queries, 7, seen)
    assert np.array_equal(rows_unseen, expected_rows[:, 3:].numpy())


def test_faiss_orders_equal_scores_as_the_torch_scan() -> None:
    rng = np.random.default_rng(0)
    items = rng.standard_normal((5000, 8)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)  # unit rows: a query's own vector scores best
    copies = [17, 250, 999, 1200, 2500, 3000, 3001, 4200, 4999]  # nine items of one vector: a tie across k = 3
    items[copies] = items[100]
    queries = np.concatenate([items[100:101], rng.standard_normal((3, 8)).astype(np.float32)])
    index = flat_ip_index(items)
    for k, seen in ((3, None), (5, [np.array([17, 999]), np.zeros(0, np.int64), np.zeros(0, np.int64),
                                    np.zeros(0, np.int64)])):
        scores, rows = faiss_search(index, queries, k, seen)
        expected_scores, expected_rows = chunked_top_k(torch.from_numpy(queries), torch.from_numpy(items), k, seen)
        assert np.array_equal(rows, expected_rows.numpy()), k
        np.testing.assert_allclose(scores, expected_scores.numpy(), rtol=1e-5, atol=1e-5)
    assert faiss_search(index, queries, 3)[1][0].tolist() == [17, 100, 250]


def test_faiss_backend_recommends_like_torch(trained: tuple[Path, Path]) -> None:
    by_torch = Recommender.from_pretrained(trained[1])
    by_faiss = Recommender.from_pretrained(trained[1], backend="faiss")
    histories = [["i1", "i2", "i3"], ["i20"], ["i29", "i0"]]
    for recommender in (by_torch, by_faiss):
        recommender.add_items(["item quoted 0"], ["again"])  # FAISS indexes added items too
    a, b = by_torch.recommend_histories(histories, k=10), by_faiss.recommend_histories(histories, k=10)
    assert a.item_id.tolist() == b.item_id.tolist()
    np.testing.assert_allclose(a.score, b.score, rtol=1e-5, atol=1e-5)


def test_a_failed_faiss_addition_leaves_no_index_short_of_the_items(trained: tuple[Path, Path]) -> None:
    """An addition committed (model, catalogue, tables) and then failing to reach the FAISS index left the index
    short of the item: it is dropped and rebuilt from the table on its next use."""
    by_faiss = Recommender.from_pretrained(trained[1], backend="faiss")
    index = by_faiss.faiss_index()

    class Failing:
        ntotal = index.ntotal

        def add(self, vectors: object) -> None:
            raise RuntimeError("faiss: out of memory")

    by_faiss._faiss = Failing()  # type: ignore[assignment]
    assert by_faiss.add_items(["item quoted 0"], ["again"]) == len(by_faiss.catalogue)
    assert by_faiss.faiss_index().ntotal == len(by_faiss.catalogue)  # rebuilt with the new item
    by_torch = Recommender.from_pretrained(trained[1])
    by_torch.add_items(["item quoted 0"], ["again"])
    histories = [["i1", "i2", "i3"], ["i20"], ["i29", "i0"]]  # as test_faiss_backend_recommends_like_torch
    assert (by_faiss.recommend_histories(histories, k=10).item_id.tolist()
            == by_torch.recommend_histories(histories, k=10).item_id.tolist())


def test_scoring_table_follows_weight_updates() -> None:
    model = UniSRec(ModelConfig(hidden_size=8, inner_size=8, n_experts=2), 5, torch.randn(5, 6))
    recommender = Recommender(model, Catalogue(list("abcde")))
    before = top(recommender, ["a"], k=5, exclude_seen=False)
    with torch.no_grad():
        model.adaptor.weight.mul_(-1.0)  # type: ignore[union-attr]  # an in-place update (as an optimizer step)
    after = top(recommender, ["a"], k=5, exclude_seen=False)
    assert [r.score for r in before] != [r.score for r in after]
    fresh = model.scoring_table(recommend_module.adapted_items(model))
    torch.testing.assert_close(recommender.scoring_table(), fresh)


def test_an_item_added_alone_gets_the_vector_of_an_older_item_of_its_text_as_after_a_rebuild() -> None:
    """A few rows take other BLAS kernels than a chunk of many: an item added alone must still get exactly the
    vector of an older item with its text vector, so that it ranks the same now and after a rebuild; with one
    thread and with two (a pair of rows, the earlier remedy, rounded otherwise on an AVX2 CPU with MKL)."""
    torch.manual_seed(0)
    model = UniSRec(ModelConfig(hidden_size=32, inner_size=32, n_experts=8), 300, torch.randn(300, 384))
    threads = torch.get_num_threads()
    try:
        for count in (1, 2):
            torch.set_num_threads(count)
            full = recommend_module.adapted_items(model)  # (300, H): one chunk of more than TABLE_MIN_ROWS
            for row in range(0, 300, 7):
                alone = recommend_module.adapted_items(model, text=model.item_text[[row]])[0]
                assert torch.equal(alone, full[row]), (count, row)
            few = recommend_module.adapted_items(model, text=model.item_text[[5, 6, 7]])  # (3, H)
            assert torch.equal(few, full[5:8]), count
    finally:
        torch.set_num_threads(threads)
    recommender = Recommender(model, Catalogue([f"i{n}" for n in range(300)]))
    recommender.add_items(["twin of i3"], ["twin3"], vectors=model.item_text[[3]].clone())
    live = top(recommender, ["i5", "i7"], k=301, exclude_seen=False)
    rebuilt = top(Recommender(model, recommender.catalogue), ["i5", "i7"], k=301, exclude_seen=False)
    assert live == rebuilt
    order = [r.item_id for r in live]
    # the scoring matmul may round a column by its place (the last one here, on MKL with AVX2): the twin's score is
    # its original's within float32 rounding, next to it (on either side: an AVX-512 CPU rounded the twin up),
    # and the same live as after a rebuild (above)
    assert abs(order.index("twin3") - order.index("i3")) == 1
    assert live[order.index("twin3")].score == pytest.approx(live[order.index("i3")].score, rel=1e-6)


def test_a_centred_pretrained_model_centres_its_first_catalogue_as_the_zero_shot_evaluation_does(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A pre-trained model (no items, model.center_text) served with items added: centred on their own mean, as
    `unisrec evaluate`'s zero-shot model centres a dataset, not left uncentred; later additions keep the centre."""
    torch.manual_seed(0)
    config = ModelConfig(hidden_size=16, inner_size=16, n_experts=2, center_text=True)
    pretrained = UniSRec(config, 0, torch.zeros(0, 6))
    vectors = torch.randn(12, 6) + 3.0  # a domain whose text mean is far from 0
    zero_shot = UniSRec(config, 12, vectors)  # what evaluate builds: centred on the dataset's mean
    zero_shot.load_state_dict({k: v for k, v in pretrained.state_dict().items() if k != "text_center"},
                              strict=False)
    ids = [f"i{n}" for n in range(12)]
    recommender = Recommender(pretrained, Catalogue([]))
    recommender.add_items([f"text {n}" for n in range(12)], ids, vectors=vectors.numpy())
    torch.testing.assert_close(pretrained.text_center, vectors.mean(0))
    expected = Recommender(zero_shot, Catalogue(ids, [f"text {n}" for n in range(12)]))
    torch.testing.assert_close(recommender.scoring_table(), expected.scoring_table())
    assert top(recommender, ["i3", "i5"], k=5) == top(expected, ["i3", "i5"], k=5)
    recommender.add_items(["one more"], ["i12"], vectors=np.ones((1, 6), dtype=np.float32))
    torch.testing.assert_close(pretrained.text_center, vectors.mean(0))  # kept for later additions
    # a first addition that fails leaves the model uncentred, as it was
    fresh = UniSRec(config, 0, torch.zeros(0, 6))
    failing = Recommender(fresh, Catalogue([]))
    monkeypatch.setattr(fresh, "extend_items", lambda _: (_ for _ in ()).throw(RuntimeError("disk full")))
    with pytest.raises(RuntimeError, match="disk full"):
        failing.add_items(["a"], ["a"], vectors=vectors[:1].numpy())
    assert fresh.text_center is not None and torch.equal(fresh.text_center, torch.zeros(6)) and fresh.n_items == 0


def test_two_servers_of_a_centred_pretrained_model_centre_as_its_restart_does(tmp_path: Path) -> None:
    """Two servers persisting to one run's catalogue folder each centred on their own first addition; a restart
    replays the files and centres on the first one's: the second server's items ranked otherwise after it."""
    from unisrec.recommend import replay_additions

    torch.manual_seed(0)
    config = ModelConfig(hidden_size=16, inner_size=16, n_experts=2, center_text=True)
    pretrained = UniSRec(config, 0, torch.zeros(0, 6))
    weights = {k: v.clone() for k, v in pretrained.state_dict().items()}
    folder = tmp_path / "run" / "catalogue"

    def server() -> Recommender:
        model = UniSRec(config, 0, torch.zeros(0, 6))
        model.load_state_dict(weights)
        recommender = Recommender(model, Catalogue([]))
        recommender.persist_dir = folder
        return recommender

    first, second = server(), server()
    first.add_items(["a0", "a1"], ["a0", "a1"], vectors=(torch.randn(2, 6) + 3.0).numpy())
    second.add_items(["b0", "b1", "b2"], ["b0", "b1", "b2"], vectors=(torch.randn(3, 6) - 3.0).numpy())
    restarted = server()
    restarted.persist_dir = None
    assert replay_additions(restarted, folder) == 5
    for model in (second.model, restarted.model):
        torch.testing.assert_close(model.text_center, first.model.text_center)
    live = top(second, ["b0"], k=3, exclude_seen=False)
    again = [r for r in top(restarted, ["b0"], k=5, exclude_seen=False) if r.item_id.startswith("b")]
    assert [r.item_id for r in live] == [r.item_id for r in again]
    assert [r.score for r in live] == pytest.approx([r.score for r in again], abs=1e-4)  # float32 rounding


def test_export_vectors_and_index(trained: tuple[Path, Path], tmp_path: Path) -> None:
    data, run = trained
    recommender = Recommender.from_pretrained(run)
    manifest = recommender.export_vectors(tmp_path / "out", data_dir=data)
    assert manifest["n_items"] == 30 and manifest["metric"] == "inner_product"
    items = np.load(tmp_path / "out" / "items.npy", allow_pickle=False)
    sequences = np.load(tmp_path / "out" / "sequences.npy", allow_pickle=False)
    tensors = load_file(str(tmp_path / "out" / "vectors.safetensors"))
    assert np.array_equal(tensors["items"], items) and np.array_equal(tensors["sequences"], sequences)
    users = pd.read_parquet(tmp_path / "out" / "users.parquet").user_id.tolist()
    item_ids = pd.read_parquet(tmp_path / "out" / "items.parquet").item_id.tolist()
    assert sequences.shape == (60, 32) and len(users) == 60
    # inner products of the exported vectors rank like the model
    from unisrec.datasets import load_processed

    dataset = load_processed(data)
    history = [str(dataset.item_ids[i]) for i in dataset.sequence(dataset.user_ids.tolist().index(users[5]))]
    _, rows = faiss_search(load_faiss_index(tmp_path / "out" / "items.faiss"), sequences[5:6], 5)
    expected = top(recommender, history, k=5, exclude_seen=False)
    assert [item_ids[r] for r in rows[0]] == [r.item_id for r in expected]
    assert manifest["repeat_offsets"] is None  # no repeat_bias: the inner product is the whole logit
    # a second export replaces the first: no file of the first outlives the new manifest (beside the lock file)
    again = recommender.export_vectors(tmp_path / "out", index=False)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted([".export.lock", "manifest.json",
                                                                            *again["files"]])
    # an error (here an unknown --data) leaves the folder as it was
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    with pytest.raises(UnisrecError, match="no such dataset folder"):
        recommender.export_vectors(tmp_path / "out", data_dir=tmp_path / "nodata", index=False)
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before
    assert [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith(".export-")] == []  # no staging left
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(UnisrecError, match=r"mine: not empty and not a unisrec export \(notes\.txt\)"):
        recommender.export_vectors(tmp_path / "mine", index=False)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    (tmp_path / "empty").mkdir()
    assert recommender.export_vectors(tmp_path / "empty", index=False)["n_items"] == 30


def test_export_into_a_link_the_working_folder_or_after_a_killed_export(trained: tuple[Path, Path], tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    recommender = Recommender.from_pretrained(trained[1])
    recommender.export_vectors(tmp_path / "v1", index=False)
    (tmp_path / "current").symlink_to(tmp_path / "v1")  # current -> v1: the export goes into v1, the link stays
    (tmp_path / "v1" / ".export-killed.tmp").mkdir()  # what a kill -9 midway leaves: removed by the next export
    (tmp_path / "v1" / ".export-killed.tmp" / "items.npy").write_bytes(b"partial")
    (tmp_path / "v1" / "manifest.json").unlink()  # killed between the moves: no manifest, export files only
    manifest = recommender.export_vectors(tmp_path / "current", data_dir=trained[0], index=False)
    assert (tmp_path / "current").is_symlink()
    assert sorted(p.name for p in (tmp_path / "v1").iterdir()) == sorted([".export.lock", "manifest.json",
                                                                           *manifest["files"]])
    monkeypatch.chdir(tmp_path / "v1")
    assert recommender.export_vectors(".", index=False)["n_items"] == 30  # the working folder itself
    assert "sequences.npy" not in {p.name for p in (tmp_path / "v1").iterdir()}  # not in the new manifest: gone
    other = tmp_path / "site"
    other.mkdir()
    (other / "manifest.json").write_text('{"name": "a web app"}')
    with pytest.raises(UnisrecError, match=r"site: not empty and not a unisrec export \(a manifest\.json of another"):
        recommender.export_vectors(other, index=False)
    assert sorted(p.name for p in other.iterdir()) == ["manifest.json"]
    with pytest.raises(UnisrecError, match="no such dataset folder"):  # a new folder is not left behind
        recommender.export_vectors(tmp_path / "new", data_dir=tmp_path / "nodata", index=False)
    assert not (tmp_path / "new").exists()


def test_export_states_textknn_s_fixed_offsets(trained: tuple[Path, Path], tmp_path: Path) -> None:
    from unisrec.baselines import HISTORY_OFFSET, TextKNN

    base = Recommender.from_pretrained(trained[1])
    text = base.model.item_text
    knn = TextKNN(ModelConfig(architecture="textknn", item_repr="text", max_seq_len=6), len(text), text)
    manifest = Recommender(knn, base.catalogue).export_vectors(tmp_path / "knn", index=False)
    assert manifest["repeat_offsets"] is not None
    assert manifest["repeat_offsets"]["history"] == HISTORY_OFFSET and manifest["repeat_offsets"]["last"] == 0.0


def test_export_states_the_repeat_offsets_the_inner_product_leaves_out(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = UniSRec(ModelConfig(hidden_size=8, inner_size=8, n_experts=2, max_seq_len=4, repeat_bias=True), 12,
                    torch.randn(12, 6))
    with torch.no_grad():
        model.repeat_weight.copy_(torch.tensor([-1.5, 0.25]))  # type: ignore[union-attr]
    recommender = Recommender(model, Catalogue([f"i{n}" for n in range(12)]))
    manifest = recommender.export_vectors(tmp_path / "out", index=False)
    offsets = manifest["repeat_offsets"]
    assert offsets is not None and offsets["last"] == -1.5 and offsets["history"] == 0.25
    assert offsets["window"] == 4 and "repeat_offsets" in manifest["score"]
    # the stated rule on the exported vectors gives the model's own scores
    history = ["i3", "i7", "i3", "i9", "i1"]
    items = np.load(tmp_path / "out" / "items.npy")
    query = recommender.queries_of_rows([np.asarray(recommender.catalogue.lookup(history))]).numpy()[0]
    scores = items @ query
    window = history[-4:]
    for item in set(window):
        scores[int(item[1:])] += offsets["history"]
    scores[int(window[-1][1:])] += offsets["last"]
    got = top(recommender, history, k=12, exclude_seen=False)
    np.testing.assert_allclose([r.score for r in got], np.sort(scores)[::-1], rtol=1e-5, atol=1e-5)


def test_export_without_faiss_fails_before_writing(trained: tuple[Path, Path], tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import unisrec.export

    def missing() -> None:
        raise UnisrecError("FAISS is not installed: pip install faiss-cpu (or 'unisrec[serve]')")

    monkeypatch.setattr(unisrec.export, "faiss_module", missing)
    recommender = Recommender.from_pretrained(trained[1])
    with pytest.raises(UnisrecError, match=r"FAISS is not installed.*; or export without the index \(--no-index"):
        recommender.export_vectors(tmp_path / "out", data_dir=trained[0])
    assert not (tmp_path / "out").exists()  # nothing written, not even the folder
    manifest = recommender.export_vectors(tmp_path / "out", data_dir=trained[0], index=False)
    assert "items.faiss" not in manifest["files"] and (tmp_path / "out" / "manifest.json").exists()


def test_cli_recommend_and_export(trained: tuple[Path, Path], tmp_path: Path,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    _, run = trained
    assert main(["recommend", str(run), "--history", "i1,i2", "--history", "i5", "-k", "3"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["history"] for line in lines] == [["i1", "i2"], ["i5"]]
    assert len(lines[0]["results"]) == 3 and set(lines[0]["results"][0]) == {"item_id", "score", "text"}
    # the FAISS backend from the command line too (as `unisrec serve --backend faiss`): the same items, in order
    assert main(["recommend", str(run), "--history", "i1,i2", "--history", "i5", "-k", "3", "--backend", "faiss"]) == 0
    by_faiss = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [[r["item_id"] for r in line["results"]] for line in by_faiss] == [
        [r["item_id"] for r in line["results"]] for line in lines]
    for a, b in zip(by_faiss, lines, strict=True):
        np.testing.assert_allclose([r["score"] for r in a["results"]], [r["score"] for r in b["results"]], rtol=1e-5)
    histories = tmp_path / "h.jsonl"
    histories.write_text('{"user": "u1", "history": ["i1", "i2"]}\n\n{"user": "u2", "history": ["i9"]}\n')
    assert main(["recommend", str(run), "--history-file", str(histories), "-k", "2", "--include-seen"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["user"] for line in lines] == ["u1", "u2"] and lines[0]["results"][0]["item_id"] == "i3"
    histories.write_text('{"history": [" i1", "i2 "]}\n')  # ids read as --history reads them, echoed as given
    assert main(["recommend", str(run), "--history-file", str(histories), "-k", "2", "--include-seen"]) == 0
    line = json.loads(capsys.readouterr().out)
    assert line["history"] == [" i1", "i2 "] and line["results"][0]["item_id"] == "i3"
    for by_text in ([], ["--by-text"]):
        histories.write_text('{"history": ["i1", "  "]}\n')
        assert main(["recommend", str(run), "--history-file", str(histories), *by_text]) == 2
        assert f"{histories}, line 1: history entry 2 is blank" in capsys.readouterr().err
    assert main(["recommend", str(run), "--history", "i1", "--history", "i1,zzz"]) == 2
    assert ("unisrec recommend: error: --history 2, entry 2: unknown item id 'zzz'; every history entry"
            in capsys.readouterr().err)
    # an empty entry is refused with its place, not dropped (it was read as "i1,i2" before)
    assert main(["recommend", str(run), "--history", "i5", "--history", "i1,,i2"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "error: --history 2, entry 2 of 3 is empty ('i1,,i2' split at ',')" in err
    assert main(["recommend", str(run), "--history", "i1|i2|", "--sep", "|"]) == 2
    assert "--history 1, entry 3 of 3 is empty" in capsys.readouterr().err
    assert main(["recommend", str(run), "--history", " , "]) == 2
    assert "--history 1 is empty: give at least one item id" in capsys.readouterr().err
    assert main(["recommend", str(run), "--history", "i1", "--sep", ""]) == 2
    assert "--sep is empty" in capsys.readouterr().err
    # an unknown id far down a file: named by its line, and nothing printed before the error
    many = [json.dumps({"history": ["i1"]})] * 300
    many[280] = json.dumps({"history": ["i1", "i2", "nope"]})
    many[290] = json.dumps({"history": ["gone"]})
    histories.write_text("\n".join(many) + "\n")
    assert main(["recommend", str(run), "--history-file", str(histories)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and f"{histories}, line 281, entry 3: unknown item id 'nope' (2 unknown ids in all)" in err
    histories.write_text('{"history": ["i1", 7]}\n')  # an integer id is an id, as in the Python API
    assert main(["recommend", str(run), "--history-file", str(histories)]) == 2
    assert f"{histories}, line 1, entry 2: unknown item id '7'" in capsys.readouterr().err
    histories.write_text('{"history": ["i1", true]}\n')
    assert main(["recommend", str(run), "--history-file", str(histories)]) == 2
    assert "a non-empty list of string or integer ids" in capsys.readouterr().err
    histories.write_text('{"history": ["a text"]}\n{"history": ["a text", 7]}\n')  # texts are strings only
    assert main(["recommend", str(run), "--history-file", str(histories), "--by-text"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and f"{histories}, line 2: expected {{\"history\": [\"item text\", ...]}}" in err
    assert main(["recommend", str(run), "--history-file", str(tmp_path)]) == 2
    assert f"{tmp_path}: a folder, not a JSON-lines file" in capsys.readouterr().err
    histories.write_text('{"user": "u1"}\n')
    assert main(["recommend", str(run), "--history-file", str(histories)]) == 2
    assert f"{histories}, line 1: expected" in capsys.readouterr().err
    pretrained = tmp_path / "pre"  # a run with no items of its own
    Recommender(recommender_module_pretrained(), Catalogue([])).save_pretrained(pretrained)
    assert main(["recommend", str(pretrained), "--history", "i1"]) == 2
    assert "the catalogue is empty (a pre-training run has no items of its own)" in capsys.readouterr().err
    assert main(["export", str(run), "--out", str(tmp_path / "e")]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["n_items"] == 30 and "items.faiss" in summary["files"]


def recommender_module_pretrained() -> UniSRec:
    """A text model without items, as a pre-training run is."""
    return UniSRec(ModelConfig(hidden_size=8, inner_size=8, n_experts=2), 0, torch.zeros(0, 6))


def test_recommend_with_a_pretrained_run_and_a_tiny_catalogue(tmp_path: Path, tiny_lm_dir: Path) -> None:
    """Zero-shot: the texts of a new domain's items are all a pre-trained model needs."""
    from unisrec.pretrain import pretrain

    data = prepare_synthetic(tmp_path / "d", n_users=20, n_items=10)
    pretrain([data], tmp_path / "pre", overrides=[*TRAIN[:7], "train.epochs=1", "pretrain.word_drop_variants=0",
                                                  f"text.model={tiny_lm_dir}", "text.pooling=mean"])
    recommender = Recommender.from_pretrained(tmp_path / "pre")
    assert len(recommender.catalogue) == recommender.model.n_items == 0
    recommender.add_items(["red camera", "blue lens", "green microscope"], ["a", "b", "c"])
    assert len(top(recommender, ["a", "b"], k=5)) == 1 and recommender.model.n_items == 3


def test_quickstart_pieces(trained: tuple[Path, Path]) -> None:
    from unisrec.quickstart import _title_key, cold_start_demo, format_table

    aka = "Twelve Monkeys (a.k.a. 12 Monkeys) (1995). Sci-Fi"
    assert _title_key(aka) == _title_key("Twelve Monkeys (1995). Drama")
    assert _title_key("Dr. Strangelove (1964). Comedy War") == "drstrangelove"
    data, run = trained
    demo = cold_start_demo(run, data, data)  # every source title is known: only the 2019 releases are added
    assert demo["added"] == 4 and "Top 10 recommendations" in demo["text"]
    row = {"model": "m", "test": {"recall@10": 0.5, "ndcg@10": 0.25, "recall@50": 1.0, "ndcg@50": 0.3},
           "epochs": "1/2", "seconds": 3.0, "trainable": 10}
    assert "| m | 0.5000 | 0.2500 | 1.0000 | 0.3000 | 1/2 | 3 | 10 |" in format_table([row], 5, 2, 16)


@pytest.mark.parametrize("pack_tokens", [1, 3, 7, 256])
def test_history_queries_equal_the_padded_batch(monkeypatch: pytest.MonkeyPatch, pack_tokens: int) -> None:
    """Histories packed end to end, in packs of any size, give the padded batch's query vectors."""
    torch.manual_seed(0)
    model = UniSRec(ModelConfig(hidden_size=16, inner_size=16, n_experts=2, max_seq_len=5), 40,
                    torch.randn(40, 6)).eval()
    recommender = Recommender(model, Catalogue([f"i{j}" for j in range(40)]))
    monkeypatch.setattr(recommend_module, "PACK_TOKENS", pack_tokens)
    histories = [np.array(h) for h in ([1, 2, 3], [39], [5, 6, 7, 8, 9, 10, 11], [0, 0], [4, 8, 15, 16, 23])]
    got = recommender.queries_of_rows(histories)
    cut = [h[-5:] for h in histories]
    padded = torch.tensor([list(h) + [0] * (5 - len(h)) for h in cut])  # (B, 5)
    with torch.no_grad():
        table = model.item_table()
        expected = model.query_vectors(model.sequence_vectors(padded, torch.tensor([len(h) for h in cut]), table))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", list(MODES))
def test_every_model_kind_serves_through_the_recommender(mode: str, tmp_path: Path) -> None:
    """UniSRec (t, t+ID, SASRec) and every baseline: the Recommender's top k is the model's own top k of its
    logits on the padded batch, survives save_pretrained / from_pretrained, and only text-only models grow."""
    config = ModelConfig(item_repr=MODES[mode], architecture=MODE_ARCHITECTURE[mode], hidden_size=16, inner_size=16,
                         n_heads=2, n_experts=2, max_seq_len=5)
    n = 12
    torch.manual_seed(0)
    model = build_model(config, n, torch.randn(n, 6) if config.uses_text else None).eval()
    ids = [f"i{j}" for j in range(n)]
    recommender = Recommender(model, Catalogue(ids, [f"text {j}" for j in range(n)]))
    histories = [["i1", "i2", "i3"], ["i7"], ["i0", "i4", "i5", "i6", "i8", "i9", "i10"]]
    got = recommender.recommend_lists(histories, k=4, exclude_seen=False)

    cut = [[int(item[1:]) for item in h][-5:] for h in histories]  # the last max_seq_len items
    padded = torch.tensor([h + [0] * (5 - len(h)) for h in cut])  # (B, 5)
    with torch.no_grad():
        table = model.item_table()
        lengths = torch.tensor([len(h) for h in cut])
        expected = model.logits(model.sequence_vectors(padded, lengths, table), table)
        offsets = model.repeat_offsets(padded, lengths)  # textknn: its history's items after every other item
        assert (offsets is not None) == model.has_repeat_offsets == (mode == "textknn")
        if offsets is not None:
            expected = add_offsets(expected, offsets)
    best = expected.topk(4, dim=1)
    for b, ranked in enumerate(got):
        assert [r.item_id for r in ranked] == [ids[i] for i in best.indices[b].tolist()], (mode, b)
        np.testing.assert_allclose([r.score for r in ranked], best.values[b].numpy(), rtol=1e-4, atol=1e-4)

    recommender.save_pretrained(tmp_path / "run")
    loaded = Recommender.from_pretrained(tmp_path / "run")
    assert type(loaded.model) is type(model) and loaded.catalogue.texts == recommender.catalogue.texts
    again = loaded.recommend_lists(histories, k=4, exclude_seen=False)
    assert [[r.item_id for r in ranked] for ranked in again] == [[r.item_id for r in ranked] for ranked in got]

    twin = model.item_text[3:4].numpy() if config.uses_text else np.zeros((1, 6), np.float32)
    if not model.adds_items_by_text:
        with pytest.raises(ItemConflictError, match="needs an inductive"):
            recommender.add_items(["a twin of i3"], ["twin"], vectors=twin)
        assert model.n_items == n and len(recommender.catalogue) == n
        return
    assert recommender.add_items(["a twin of i3"], ["twin"], vectors=twin) == n + 1
    assert model.n_items == n + 1 and tuple(model.item_text.shape) == (n + 1, 6)  # the model grew its own buffer
    score_of = {r.item_id: r.score for r in top(recommender, ["i1", "i2"], k=n + 1, exclude_seen=False)}
    assert score_of["twin"] == pytest.approx(score_of["i3"], abs=1e-5)  # the same text vector scores the same
    saved = recommender.save_pretrained(tmp_path / "grown")
    assert Recommender.from_pretrained(saved).catalogue.item_ids == [*ids, "twin"]


def test_extend_items_owns_the_text_buffer() -> None:
    model = UniSRec(ModelConfig(hidden_size=8, inner_size=8, n_experts=2), 3, torch.randn(3, 6)).eval()
    new = torch.randn(2, 6)
    assert model.extend_items(new) == 5 and model.n_items == 5
    torch.testing.assert_close(model.item_text[3:], new)
    with torch.no_grad():
        torch.testing.assert_close(model.item_table(torch.tensor([3, 4])), model.item_table(text=new))
    with pytest.raises(ValueError, match=r"text vectors must be \(M, 6\)"):
        model.extend_items(torch.zeros(1, 5))


def test_readme_recommendation_example_runs(trained: tuple[Path, Path], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's "Recommendations for users" Python block, on the trained run (paths and ids swapped)."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme[readme.index("### Python API (mirrors the CLI)"):]
    start = section.index("```python\n") + len("```python\n")
    code = section[start:section.index("\n```", start)]
    data, run = trained
    for old, new in (('"runs/transfer"', repr(str(run))), ('"data/ml-latest-small"', repr(str(data))),
                     ('"2571"', '"i1"'), ('"1196"', '"i2"'), ('["1"]', '["i7"]')):
        assert old in code, old
        code = code.replace(old, new)
    monkeypatch.chdir(tmp_path)
    namespace: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), namespace)
    recommender = namespace["rec"]
    assert isinstance(recommender, Recommender) and recommender.catalogue.item_ids[-1] == "ts4"
    assert Recommender.from_pretrained(tmp_path / "runs" / "transfer-plus").catalogue.item_ids[-1] == "ts4"
    manifest = json.loads((tmp_path / "vectors" / "manifest.json").read_text())
    assert manifest["n_items"] == 31 and "sequences.npy" in manifest["files"]


def _persisting(tmp_path: Path) -> tuple[Recommender, Path]:
    """A tiny text model saved as a run, loaded back with its additions persisted (as ``unisrec serve`` does)."""
    from unisrec.recommend import ADDED_DIR

    torch.manual_seed(0)
    model = UniSRec(ModelConfig(hidden_size=8, inner_size=8, n_experts=2), 5, torch.randn(5, 6))
    Recommender(model, Catalogue([f"i{n}" for n in range(5)], [f"text {n}" for n in range(5)])).save_pretrained(
        tmp_path / "run")
    loaded = Recommender.from_pretrained(tmp_path / "run")
    loaded.persist_dir = tmp_path / "run" / ADDED_DIR
    return loaded, tmp_path / "run"


def test_adding_items_is_all_or_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    recommender, run = _persisting(tmp_path)
    with pytest.raises(UnisrecError, match=r"the text vector of item 'bad' is not finite"):
        recommender.add_items(["nan item"], ["bad"], np.full((1, 6), np.nan, dtype=np.float32))
    with pytest.raises(UnisrecError, match="must not contain the NUL character"):
        recommender.add_items(["x"], ["a\0b"], np.ones((1, 6), dtype=np.float32))

    def out_of_memory(vectors: torch.Tensor) -> int:
        raise RuntimeError("out of memory")

    monkeypatch.setattr(recommender.model, "extend_items", out_of_memory)
    with pytest.raises(RuntimeError, match="out of memory"):
        recommender.add_items(["new text"], ["n1"], np.ones((1, 6), dtype=np.float32))
    assert len(recommender.catalogue) == recommender.model.n_items == len(recommender.scoring_table()) == 5
    assert not list((run / "catalogue").glob("*.safetensors"))  # not on disk either
    assert [r.item_id for r in recommender.recommend_lists([["i1"]], k=10)[0]] != []  # still serves
    monkeypatch.undo()
    assert recommender.add_items(["new text"], ["n1"], np.ones((1, 6), dtype=np.float32)) == 6  # the retry
    again = Recommender.from_pretrained(run)
    assert again.catalogue.item_ids == [*(f"i{n}" for n in range(5)), "n1"]


def test_two_servers_of_a_run_never_persist_one_id_twice(tmp_path: Path) -> None:
    first, run = _persisting(tmp_path)
    second = Recommender.from_pretrained(run)
    second.persist_dir = first.persist_dir
    first.add_items(["a text"], ["x"], np.ones((1, 6), dtype=np.float32))
    with pytest.raises(ItemConflictError, match="'x' is already in the catalogue \\(added by another server\\)"):
        second.add_items(["another text"], ["x"], np.ones((1, 6), dtype=np.float32))
    assert len(second.catalogue) == 5 and len(list((run / "catalogue").glob("*.safetensors"))) == 1
    assert Recommender.from_pretrained(run).catalogue.item_ids[-1] == "x"  # the run restarts


def test_the_ids_on_disk_follow_the_folder_when_its_files_are_replaced(tmp_path: Path) -> None:
    from unisrec.recommend import persist_addition

    folder = tmp_path / "added"
    for n in range(3):
        persist_addition(folder, [f"a{n}"], ["t"], torch.zeros(1, 4))
    with pytest.raises(ItemConflictError, match="'a0' is already in the catalogue"):  # in the first of three files
        persist_addition(folder, ["new", "a0"], ["t", "t"], torch.zeros(2, 4))
    shutil.rmtree(folder)  # the folder cleared and written anew: 00000001 now holds other ids
    assert persist_addition(folder, ["b0"], ["t"], torch.zeros(1, 4)).name == "00000001.safetensors"
    assert persist_addition(folder, ["a0"], ["t"], torch.zeros(1, 4)).name == "00000002.safetensors"  # free again
    with pytest.raises(ItemConflictError, match="'b0' is already in the catalogue"):
        persist_addition(folder, ["b0"], ["t"], torch.zeros(1, 4))


def test_a_run_saved_with_its_added_items_loads_again(tmp_path: Path) -> None:
    recommender, run = _persisting(tmp_path)
    recommender.add_items(["new text"], ["n1"], np.ones((1, 6), dtype=np.float32))
    recommender.save_pretrained(run)  # the added item is now part of the saved catalogue, and still in catalogue/
    again = Recommender.from_pretrained(run)
    assert again.catalogue.item_ids == [*(f"i{n}" for n in range(5)), "n1"]  # once
    torch.testing.assert_close(again.scoring_table(), recommender.scoring_table())


def test_export_rows_match_while_items_are_added(tmp_path: Path) -> None:
    from unisrec.export import export_vectors

    recommender, _ = _persisting(tmp_path)

    class AddedMeanwhile:  # an item is added between reading the table and the catalogue
        catalogue, model, text_encoder_info = recommender.catalogue, recommender.model, recommender.text_encoder_info

        def scoring_table(self) -> torch.Tensor:
            table = recommender.scoring_table()
            recommender.add_items(["late text"], ["late"], np.ones((1, 6), dtype=np.float32))
            return table

        def queries_of_rows(self, histories: list[np.ndarray]) -> torch.Tensor:
            return recommender.queries_of_rows(histories)

    export_vectors(AddedMeanwhile(), tmp_path / "out", index=False)  # type: ignore[arg-type]
    rows = pd.read_parquet(tmp_path / "out" / "items.parquet").item_id.tolist()
    assert len(np.load(tmp_path / "out" / "items.npy")) == len(rows) == 5 and "late" not in rows


def test_cli_evaluate_says_its_protocol_and_where_it_is_not_the_runs(
        trained: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    data, run = trained  # evaluated by the paper's protocol when it was trained (history items kept)
    saved = json.loads((run / "metrics.json").read_text())["test"]
    assert main(["evaluate", str(run), str(data)]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["ndcg@10"] == pytest.approx(saved["ndcg@10"], abs=1e-9)
    assert err.strip() == "unisrec evaluate: test split, full ranking, each history's items kept in the ranking"
    assert main(["evaluate", str(run), str(data), "--exclude-seen", "--split", "valid"]) == 0
    assert capsys.readouterr().err.strip() == (
        "unisrec evaluate: valid split, full ranking, each history's items left out of the ranking (the run's own "
        "figures have them kept: without --exclude-seen)")
