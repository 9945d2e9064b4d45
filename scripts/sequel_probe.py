"""The series / near-duplicate probe: new items added by text, a history of two of them, is the third found?

    python scripts/sequel_probe.py RUN_DIR [--k 20] [--include-seen] [--record results/NAME/PROBE.json]

Adds three games never seen in training by their titles alone (``add_items``), asks for the top k of the
history [part 1, part 2] and prints the top k and the rank of every added item among all items (by the model's
logits: with ``model.repeat_bias`` the repeat offsets of parts 1 and 2 included). Exit status 0 when part 3 is in the
top 10, 1 otherwise (so it can gate a real-data test).
"""

from __future__ import annotations

import argparse
import json
import sys

SERIES = [
    ("new-gp1", "Galactic Pirates: Space Trading Simulator Deluxe"),
    ("new-gp2", "Galactic Pirates 2: Space Trading Simulator"),
    ("new-gp3", "Galactic Pirates 3: Space Trading Simulator"),
]


def probe(run_dir: str, k: int, include_seen: bool) -> dict[str, object]:
    import torch

    from unisrec.model import add_offsets
    from unisrec.recommend import Recommender

    recommender = Recommender.from_pretrained(run_dir)
    recommender.add_items([t for _, t in SERIES], [i for i, _ in SERIES])
    history = [SERIES[0][0], SERIES[1][0]]
    ranked = recommender.recommend_lists([history], k=max(k, 10), exclude_seen=not include_seen)[0]
    ids = [r.item_id for r in ranked]
    rows = recommender.catalogue.lookup([i for i, _ in SERIES])
    history_rows = recommender.catalogue.lookup(history)  # (2,)
    with torch.no_grad():
        query = recommender.queries_of_rows([history_rows])[0]  # (H,) unit query
        table = recommender.scoring_table()  # (N, H) scaled so that query @ table.T = logits
        scores = table @ query  # (N,)
        offsets = recommender.repeat_offsets_of_rows([history_rows])
        if offsets is not None:  # model.repeat_bias: the model's own logits of the history's items
            scores = add_offsets(scores[None], offsets)[0]
    order = torch.argsort(scores, descending=True)
    position = {int(r): int((order == r).nonzero()[0, 0]) for r in rows}
    return {
        "top": [{"rank": n + 1, "item_id": r.item_id, "text": r.text, "score": round(r.score, 4)}
                for n, r in enumerate(ranked[:k])],
        "added_item_rank_all_items": {i: position[int(r)] + 1 for (i, _), r in zip(SERIES, rows, strict=True)},
        "part3_in_top10": SERIES[2][0] in ids[:10],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--include-seen", action="store_true")
    parser.add_argument("--record", help="also write the result (top k included) with its command to this JSON file")
    args = parser.parse_args()
    result = probe(args.run_dir, args.k, args.include_seen)
    if args.record:
        from unisrec.atomic import atomic_write_json

        command = " ".join(["python", "scripts/sequel_probe.py", *sys.argv[1:]])
        atomic_write_json(args.record, {"command": command, "run": args.run_dir, **result})
    for row in result["top"]:  # type: ignore[attr-defined]
        print(f"{row['rank']:3d}. {row['text'][:70]}  ({row['score']})")
    print(json.dumps({k: v for k, v in result.items() if k != "top"}))
    sys.exit(0 if result["part3_in_top10"] else 1)


if __name__ == "__main__":
    main()
