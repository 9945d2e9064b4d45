"""The quick start (``./scripts/quickstart.sh``): the whole UniSRec story on real data, on CPUs, in minutes.

1. fetch and prepare MovieLens 1M (2000) and ml-latest-small (2016 release): two platforms eras apart
2. encode every item text ("Title (year). genres") with the packaged MiniLM
3. pre-train on ml-1m (a short, stated step budget)
4. transfer to ml-latest-small: zero-shot, fine-tuned from the pre-trained run (encoder frozen, inductive),
   and the same model trained from scratch with the same epoch budget
5. print the full-ranking test metrics of each (the paper's protocol: leave-one-out, all items ranked)
6. add movies that were never in training (2019 releases, and ml-1m titles absent from ml-latest-small) by
   their text alone, and print the top 10 of a sample user

Budgets are small so that it all fits in about 15 minutes on 2 CPU cores; the table says what they were.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from unisrec.atomic import atomic_write_text

SOURCE, TARGET = "ml-1m", "ml-latest-small"
RELEASED_LATER = [  # real movies released after both datasets were collected: never in any training data
    ("2019:toy-story-4", "Toy Story 4 (2019). Adventure Animation Children Comedy Fantasy"),
    ("2019:avengers-endgame", "Avengers: Endgame (2019). Action Adventure Sci-Fi"),
    ("2019:parasite", "Parasite (2019). Comedy Drama Thriller"),
    ("2019:joker", "Joker (2019). Crime Drama Thriller"),
]
N_SOURCE_ONLY = 200  # most-rated ml-1m movies whose title is not in ml-latest-small


def _say(message: str, started: float) -> None:
    print(f"[{time.perf_counter() - started:6.0f}s] {message}", file=sys.stderr, flush=True)


def _title_key(text: str) -> str:
    """'Twelve Monkeys (a.k.a. 12 Monkeys) (1995). Sci-Fi' -> 'twelvemonkeys': title without notes or year."""
    match = re.match(r"^(.*\(\d{4}\))", text)  # up to the year (genres never hold one)
    title = re.sub(r"\([^)]*\)", "", match.group(1) if match else text)
    return re.sub(r"[^a-z0-9]", "", title.lower())


def _prepare(name: str, out: Path) -> Path:
    from unisrec.datasets import load_processed, prepare

    folder = out / "data" / name
    try:
        load_processed(folder)  # already prepared (reruns are quick)
    except Exception:
        prepare(name, "movielens", folder, overwrite=True)
    return folder


def run(out: Path, *, pretrain_steps: int, epochs: int, patience: int, hidden_size: int, seed: int,
        pretrain_lr: float = 3e-3, lr: float = 5e-3) -> dict[str, Any]:
    from unisrec.evaluate import evaluate_run
    from unisrec.finetune import finetune
    from unisrec.pretrain import pretrain
    from unisrec.text_cache import encode_dataset

    started = time.perf_counter()
    model = [f"model.hidden_size={hidden_size}", f"train.seed={seed}"]
    _say(f"1/6 fetching and preparing {SOURCE} and {TARGET}", started)
    source, target = _prepare(SOURCE, out), _prepare(TARGET, out)
    _say("2/6 encoding item texts with MiniLM (cached in DATA/embeddings)", started)
    for folder in (source, target):
        encode_dataset(folder)
    _say(f"3/6 pre-training on {SOURCE}: {pretrain_steps} steps of 2048 targets", started)
    pre = out / "runs" / "pretrained-ml-1m"
    pre_overrides = [*model, "pretrain.word_drop_variants=0", f"train.lr={pretrain_lr}"]
    pre_metrics = pretrain([source], pre, overrides=pre_overrides, max_steps=pretrain_steps, overwrite=True)
    _say(f"4/6 transfer to {TARGET}: zero-shot, fine-tuned (encoder frozen), from scratch; <= {epochs} epochs",
         started)
    # train.interpolate=off: the fine-tuned weights as measured for the README's quickstart table (made before the
    # interpolation with the pre-trained weights became the default of runs with --init)
    tune = [*model, f"train.epochs={epochs}", f"train.patience={patience}", "train.windows=strided", f"train.lr={lr}",
            "train.interpolate=off"]
    rows: list[dict[str, Any]] = []
    zero = evaluate_run(pre, target, "test", ks=(10, 50), device="cpu")
    rows.append({"model": f"UniSRec zero-shot (pre-trained on {SOURCE}, no tuning)", "test": zero,
                 "epochs": "-", "seconds": pre_metrics["seconds_train"], "trainable": "-"})
    runs = {"fine-tuned": out / "runs" / "transfer", "scratch": out / "runs" / "scratch"}
    for label, init, run_dir in (
        (f"UniSRec_t fine-tuned from {SOURCE} (encoder frozen)", pre, runs["fine-tuned"]),
        ("UniSRec_t from scratch (no pre-training)", None, runs["scratch"]),
    ):
        frozen = ["train.freeze=encoder"] if init is not None else []  # the paper's protocol, as labelled
        metrics = finetune(target, "inductive", run_dir, overrides=[*tune, *frozen], init=init, overwrite=True)
        rows.append({"model": label, "test": metrics["test"], "epochs": f"{metrics['best_epoch']}/{metrics['epochs']}",
                     "seconds": metrics["seconds_train"], "trainable": metrics["parameters"]["trainable"]})
    _say("5/6 full-ranking test metrics", started)
    table = format_table(rows, pretrain_steps, epochs, hidden_size, pretrain_lr, lr)
    print(table)
    _say("6/6 movies never seen in training join by their text; recommendations for a sample user", started)
    sample = cold_start_demo(runs["fine-tuned"], source, target)
    print(sample["text"])
    summary = {"rows": rows, "budget": {"pretrain_steps": pretrain_steps, "epochs": epochs, "patience": patience,
                                        "hidden_size": hidden_size, "seed": seed, "pretrain_lr": pretrain_lr,
                                        "lr": lr},
               "cold_start": {k: v for k, v in sample.items() if k != "text"},
               "seconds": round(time.perf_counter() - started, 1)}
    atomic_write_text(out / "quickstart.json", json.dumps(summary, indent=2) + "\n")
    _say(f"done in {summary['seconds']:.0f}s; runs in {out / 'runs'}, summary in {out / 'quickstart.json'}", started)
    return summary


def format_table(rows: list[dict[str, Any]], pretrain_steps: int, epochs: int, hidden_size: int,
                 pretrain_lr: float = 3e-3, lr: float = 5e-3) -> str:
    lines = [
        f"\nTest metrics on {TARGET} (671 users, leave-one-out, all items ranked, seen items kept as in the paper)",
        f"Budgets: pre-training {pretrain_steps} steps of 2048 targets on {SOURCE} (lr {pretrain_lr:g}, item-drop "
        f"view only); fine-tuning <= {epochs} epochs (lr {lr:g}), early stopping on valid NDCG@10, strided windows; "
        f"hidden size {hidden_size} (paper: 300); other settings as in the paper. Far from converged: a demo of the "
        "pipeline, not the paper's numbers (671 test users: differences of 0.01 are within noise).",
        "",
        "| model | recall@10 | ndcg@10 | recall@50 | ndcg@50 | best/epochs | train s | trainable params |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        t = row["test"]
        lines.append(f"| {row['model']} | {t['recall@10']:.4f} | {t['ndcg@10']:.4f} | {t['recall@50']:.4f} | "
                     f"{t['ndcg@50']:.4f} | {row['epochs']} | {row['seconds']:.0f} | {row['trainable']} |")
    return "\n".join(lines) + "\n"


def cold_start_demo(run_dir: Path, source_dir: Path, target_dir: Path) -> dict[str, Any]:
    """Add movies absent from the target catalogue by their text; show a user whose top 10 holds one of them.

    Added: 2019 releases (in no training data at all) and the most-rated ml-1m movies whose title is not in
    ml-latest-small (never in the fine-tuning data; pre-training saw them). The sample user is the first
    whose top 10 holds a 2019 release (else any added movie).
    """
    from unisrec.datasets import load_processed
    from unisrec.recommend import Recommender

    recommender = Recommender.from_pretrained(run_dir)
    source, target = load_processed(source_dir), load_processed(target_dir)
    known = {_title_key(text) for text in target.item_texts}
    popularity = np.bincount(source.items, minlength=source.n_items)
    order = np.argsort(-popularity, kind="stable")
    chosen = [i for i in order if _title_key(source.item_texts[i]) not in known][:N_SOURCE_ONLY]
    later = {item for item, _ in RELEASED_LATER}
    new_ids = [item for item, _ in RELEASED_LATER] + [f"ml-1m:{source.item_ids[i]}" for i in chosen]
    new_texts = [text for _, text in RELEASED_LATER] + [source.item_texts[i] for i in chosen]
    recommender.add_items(new_texts, new_ids)  # encoded by the run's MiniLM; no retraining
    histories = [[str(target.item_ids[i]) for i in target.sequence(u)] for u in range(target.n_users)]
    frame = recommender.recommend_histories(histories, k=10)  # user_id: the history's position
    with_later = sorted(set(frame.user_id[frame.item_id.isin(later)]))
    with_new = sorted(set(frame.user_id[frame.item_id.isin(set(new_ids))]))
    user = (with_later or with_new or [0])[0]
    catalogue = recommender.catalogue
    texts = dict(zip(catalogue.item_ids, catalogue.texts, strict=True))
    lines = [f"\nUser {target.user_ids[user]} of {TARGET} (the first user whose top 10 holds a movie added after "
             f"training); last 5 of {len(histories[user])} movies watched:"]
    lines += [f"      {texts[item]}" for item in histories[user][-5:]]
    lines.append("Top 10 recommendations (NEW* = released 2019, in no training data; NEW = ml-1m movie absent from "
                 f"{TARGET}, never in fine-tuning):")
    for _, row in frame[frame.user_id == user].iterrows():
        flag = "NEW*" if row.item_id in later else "NEW " if row.item_id in set(new_ids) else "    "
        lines.append(f"  {row['rank']:2d}. {flag} {row.text}  (score {row.score:.2f})")
    lines.append(f"Added {len(new_ids)} movies by text (catalogue {target.n_items} -> {len(catalogue)}): "
                 f"{len(with_new)} of {target.n_users} users get one in their top 10, {len(with_later)} a 2019 film.")
    return {"user": str(target.user_ids[user]), "added": len(new_ids), "users_with_added_in_top10": len(with_new),
            "users_with_2019_release_in_top10": len(with_later), "text": "\n".join(lines) + "\n"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unisrec.quickstart", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("artifacts"), help="data and runs go here")
    parser.add_argument("--pretrain-steps", type=int, default=150)
    parser.add_argument("--pretrain-lr", type=float, default=3e-3)
    parser.add_argument("--epochs", type=int, default=5, help="fine-tuning epochs at most (each run)")
    parser.add_argument("--lr", type=float, default=5e-3, help="fine-tuning learning rate")
    parser.add_argument("--patience", type=int, default=3)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=2022)
    args = parser.parse_args(argv)
    run(args.out, pretrain_steps=args.pretrain_steps, epochs=args.epochs, patience=args.patience,
        hidden_size=args.hidden_size, seed=args.seed, pretrain_lr=args.pretrain_lr, lr=args.lr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
