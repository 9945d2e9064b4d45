"""The DataFrame API: Dataset.from_frames equals `unisrec prepare`, fit returns a Recommender of DataFrames."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import write_synthetic_source

import unisrec
from unisrec.datasets import PrepareOptions, load_processed, prepare
from unisrec.errors import UnisrecError

COLUMNS = ["user_id", "item_id", "score", "rank", "text"]


@pytest.fixture
def frames(tmp_path: Path) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    source = write_synthetic_source(tmp_path / "src", n_users=40, n_items=20, seed=3)
    interactions = pd.read_csv(source / "interactions.csv", dtype={"user_id": str, "item_id": str})
    items = pd.read_csv(source / "items.csv", dtype={"item_id": str})
    return interactions, items, source


def test_from_frames_equals_prepare_of_the_same_csv(frames: tuple[pd.DataFrame, pd.DataFrame, Path],
                                                    tmp_path: Path) -> None:
    interactions, items, source = frames
    ds = unisrec.Dataset.from_frames(interactions.sample(frac=1.0, random_state=0), items, user_core=0,
                                     item_core=0, out=tmp_path / "ds")
    prepare(source, "csv", tmp_path / "cli", options=PrepareOptions(user_core=0, item_core=0))
    a, b = ds.processed, load_processed(tmp_path / "cli")
    assert sorted(a.user_ids) == sorted(b.user_ids)
    for user in b.user_ids:  # same sequences and split, whatever the row order of the input frame
        ia, ib = list(a.user_ids).index(user), list(b.user_ids).index(user)
        np.testing.assert_array_equal(a.item_ids[a.sequence(ia)], b.item_ids[b.sequence(ib)])
        np.testing.assert_array_equal(a.split[a.offsets[ia] : a.offsets[ia + 1]],
                                      b.split[b.offsets[ib] : b.offsets[ib + 1]])
    assert ds.n_items == b.n_items and ds.n_users == b.n_users
    with pytest.raises(UnisrecError, match=r"dataset folder exists; pass --overwrite \(overwrite=True\)"):
        unisrec.Dataset.from_frames(interactions.head(50), items, user_core=0, item_core=0, out=tmp_path / "ds")
    assert unisrec.Dataset(tmp_path / "ds").n_users == ds.n_users  # the earlier dataset is still there
    again = unisrec.Dataset.from_frames(interactions.head(50), items, user_core=0, item_core=0, out=tmp_path / "ds",
                                        overwrite=True)
    assert again.n_users < ds.n_users


def test_fit_recommends_dataframes_for_users_and_histories(frames: tuple[pd.DataFrame, pd.DataFrame, Path],
                                                           tiny_lm_dir: Path, tmp_path: Path) -> None:
    interactions, items, _ = frames
    interactions = interactions.assign(timestamp=pd.to_datetime(interactions["timestamp"], unit="s"))
    ds = unisrec.Dataset.from_frames(interactions, items, user_core=0, item_core=0)
    rec = unisrec.fit(ds, mode="inductive", epochs=1, seed=1, text__model=str(tiny_lm_dir),
                      train__progress=False, **{"model.hidden_size": 16, "model.inner_size": 16})
    assert isinstance(rec, unisrec.Recommender)
    top = rec.recommend(users=["u5", "u1"], k=4)
    assert list(top.columns) == COLUMNS and list(top["user_id"]) == ["u5"] * 4 + ["u1"] * 4
    assert list(top["rank"]) == [1, 2, 3, 4] * 2
    histories = ds.user_histories()
    for user, block in top.groupby("user_id", sort=False):
        assert not set(block["item_id"]) & set(histories[str(user)])  # exclude_seen=True by default
        assert block["score"].is_monotonic_decreasing
        texts = dict(zip(items["item_id"], items["title"], strict=True))
        assert list(block["text"]) == [texts[i] for i in block["item_id"]]
    kept = rec.recommend(users=["u5"], k=30, exclude_seen=False)
    assert len(kept) == ds.n_items  # nothing excluded: the whole catalogue
    adhoc = rec.recommend_histories([histories["u5"], ["i1", "i7"]], k=3)
    assert list(adhoc.columns) == COLUMNS and list(adhoc["user_id"]) == [0, 0, 0, 1, 1, 1]
    pd.testing.assert_frame_equal(adhoc[adhoc["user_id"] == 0].drop(columns="user_id").reset_index(drop=True),
                                  top[top["user_id"] == "u5"].head(3).drop(columns="user_id").reset_index(drop=True))
    with pytest.raises(UnisrecError, match=r"unknown users: 'nobody', 'u999' \(40 users known, e.g. 'u0'"):
        rec.recommend(users=["u1", "nobody", "u999"])
    assert rec.recommend(users=[], k=3).empty and list(rec.recommend(users=[], k=3).columns) == COLUMNS
    for asked in (pd.Series(["u5", "u1"]), np.array(["u5", "u1"]), ("u5", "u1")):  # any sequence of user ids
        pd.testing.assert_frame_equal(rec.recommend(users=asked, k=4), top)
    for wrong in ("u5", {"u5": 1}):
        with pytest.raises(UnisrecError, match="users must be a list of user ids"):
            rec.recommend(users=wrong)
    metrics = (rec.run_dir / "metrics.json").read_text()
    assert '"seed": 1' in metrics


def test_fit_rejects_unknown_settings_and_frames_name_bad_columns(frames: tuple[pd.DataFrame, pd.DataFrame, Path],
                                                                  tmp_path: Path) -> None:
    interactions, items, _ = frames
    with pytest.raises(UnisrecError, match="interactions: no column 'time'; the frame has: user_id, item_id, times"):
        unisrec.Dataset.from_frames(interactions, items, time_col="time")
    half = interactions.assign(timestamp=interactions["timestamp"] + 0.5)
    with pytest.raises(UnisrecError, match=r"column 'timestamp' row 0: .* not a whole number of seconds"):
        unisrec.Dataset.from_frames(half, items)
    # numeric user ids as times: read as a time column, silently, by the earlier code
    numeric = interactions.assign(user_id=pd.factorize(interactions["user_id"])[0])
    for kwargs, message in (({"time_col": "user_id"}, "time_col and user_col name the same column 'user_id'"),
                            ({"time_col": "item_id"}, "time_col and item_col name the same column 'item_id'"),
                            ({"user_col": "item_id"}, "user_col and item_col name the same column 'item_id'")):
        with pytest.raises(UnisrecError, match=f"^interactions: {message}$"):
            unisrec.Dataset.from_frames(numeric, items, **kwargs)
    twice = pd.concat([items, items.head(1)])
    with pytest.raises(UnisrecError, match="items: item id 'i0' appears twice"):
        unisrec.Dataset.from_frames(interactions, twice)
    for frame, what, column in ((interactions, "interactions", "user_id"), (interactions, "interactions", "item_id"),
                                (items, "items", "item_id")):
        for bad, problem in ((None, "a missing id"), ("  ", "an empty id")):
            broken = frame.copy()
            broken.loc[broken.index[2], column] = bad
            args = (broken, items) if what == "interactions" else (interactions, broken)
            with pytest.raises(UnisrecError, match=f"{what}: column '{column}' has {problem} at row 2"):
                unisrec.Dataset.from_frames(*args)
    blank = items.copy()
    blank.loc[blank.index[1], "title"] = " &nbsp; "
    with pytest.raises(UnisrecError, match=r"items: column 'title' has an empty text at row 1 \(item 'i1'\)"):
        unisrec.Dataset.from_frames(interactions, blank)
    # a name with a path in it wrote outside the temporary folder, left behind at exit; a core given as a string
    # and a dict of lists were tracebacks (TypeError, AttributeError)
    for name in ("../elsewhere/ds", "a/b", "..", ""):
        with pytest.raises(UnisrecError, match=r"^name must be a dataset name without path separators"):
            unisrec.Dataset.from_frames(interactions, items, name=name)
    with pytest.raises(UnisrecError, match=r"^user_core must be an integer, got '5'$"):
        unisrec.Dataset.from_frames(interactions, items, user_core="5")
    with pytest.raises(UnisrecError, match=r"^interactions must be a pandas DataFrame .*, got dict$"):
        unisrec.Dataset.from_frames(interactions.to_dict("list"), items)
    ds = unisrec.Dataset.from_frames(interactions, items, user_core=0, item_core=0)
    with pytest.raises(UnisrecError, match="unknown setting 'speed'"):
        unisrec.fit(ds, speed=3)


@pytest.mark.parametrize("unit", ["s", "ms", "us", "ns"])
def test_datetime_times_give_unix_seconds_whatever_their_unit(unit: str) -> None:
    """pandas reads CSV dates as microseconds: every unit (and a timezone) gives the same Unix seconds, so
    events a minute apart keep their order instead of sharing a 'second' and falling back to row order."""
    from unisrec.frames import _timestamps

    seconds = np.array([1_577_836_800, 1_577_836_860, 1_577_836_920, -60])  # 2020-01-01 00:00, +1 min, +2, 1969
    stamps = pd.Series(pd.to_datetime(seconds, unit="s")).dt.as_unit(unit)
    np.testing.assert_array_equal(_timestamps(stamps, "t"), seconds)
    np.testing.assert_array_equal(_timestamps(stamps.dt.tz_localize("Europe/Paris"), "t"), seconds - 3600)


def test_events_read_with_parse_dates_keep_their_time_order(frames: tuple[pd.DataFrame, pd.DataFrame, Path],
                                                           tmp_path: Path) -> None:
    interactions, items, _ = frames
    rows = interactions[interactions["user_id"] == "u0"].reset_index(drop=True)
    minutes = pd.Timestamp("2020-01-01") + pd.to_timedelta(np.arange(len(rows)), unit="min")
    newest_first = rows.assign(timestamp=minutes.astype(str)).iloc[::-1]  # listed newest first, a minute apart
    newest_first.to_csv(tmp_path / "u0.csv", index=False)
    read = pd.read_csv(tmp_path / "u0.csv", parse_dates=["timestamp"], dtype={"user_id": str, "item_id": str})
    ds = unisrec.Dataset.from_frames(read, items, user_core=0, item_core=0)
    assert ds.user_histories()["u0"] == list(rows["item_id"])  # oldest first, as the times say


def test_a_missing_time_in_a_nullable_integer_column_names_its_row(
        frames: tuple[pd.DataFrame, pd.DataFrame, Path]) -> None:
    interactions, items, _ = frames
    times = interactions["timestamp"].astype("Int64")
    times[3] = pd.NA
    with pytest.raises(UnisrecError, match="interactions: column 'timestamp' has a missing time at row 3"):
        unisrec.Dataset.from_frames(interactions.assign(timestamp=times), items)


def test_out_of_range_times_are_refused_naming_their_row(frames: tuple[pd.DataFrame, pd.DataFrame, Path]) -> None:
    interactions, items, _ = frames
    unsigned = interactions["timestamp"].astype("uint64")
    unsigned[3] = 2**63 + 5  # would wrap to a negative int64
    with pytest.raises(UnisrecError, match=r"interactions: column 'timestamp' row 3: timestamp 9223372036854775813 "
                                           r"is out of range \(64-bit integer seconds\)"):
        unisrec.Dataset.from_frames(interactions.assign(timestamp=unsigned), items)
    huge = interactions["timestamp"].astype("float64")
    huge[3] = 1e20  # would become int64's minimum
    with pytest.raises(UnisrecError, match=r"interactions: column 'timestamp' row 3: timestamp 1e\+20 is out of "
                                           r"range \(64-bit integer seconds\)"):
        unisrec.Dataset.from_frames(interactions.assign(timestamp=huge), items)


def test_datetimes_of_one_second_keep_their_time_order(tmp_path: Path) -> None:
    from unisrec.frames import Dataset

    when = pd.to_datetime(["2020-01-01 00:00:00.9", "2020-01-01 00:00:00.1", "2020-01-01 00:00:01"], format="ISO8601")
    interactions = pd.DataFrame({"user_id": ["u1"] * 3, "item_id": ["i1", "i2", "i3"], "timestamp": when})
    items = pd.DataFrame({"item_id": ["i1", "i2", "i3"], "title": ["One", "Two", "Three"]})
    data = Dataset.from_frames(interactions, items, user_core=0, item_core=0, out=tmp_path / "d")
    loaded = load_processed(tmp_path / "d")
    assert [loaded.item_ids[i] for i in loaded.items] == ["i2", "i1", "i3"] and data is not None
