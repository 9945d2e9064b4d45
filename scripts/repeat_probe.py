"""How much do trained models lose by ranking the items their histories already hold? (no training)

    python scripts/repeat_probe.py DATA RUN_DIR [RUN_DIR ...] [--split valid] [--record results/NAME/PROBE.json]

For each run (a fine-tuned model of DATA), NDCG@10 and Recall@10 over the split's targets (full ranking,
pessimistic ties, histories cut to the model's ``max_seq_len`` as in evaluation) three ways: the model's
scores as they are (the paper's protocol), with the history's last item left out, and with every item of the
history left out (a target that repeats one of them is then a miss); plus the share of targets that are the
last item or in the history, and the text ranker (cosine of the last item's centred text vector, the last
item itself left out). The gap between the first two is what ``model.repeat_bias`` can win back by learning.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch


def ndcg_recall(scores: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """(Q, N) scores, (Q,) targets -> ndcg@10 and recall@10 with pessimistic ties (``ranking_metrics``)."""
    from unisrec.metrics import ranking_metrics

    target = scores[torch.arange(len(targets)), targets]
    ranks = ((scores >= target[:, None]).sum(1) - 1).numpy()  # (Q,) 0-based
    metrics = ranking_metrics(ranks, (10,))
    return {name: round(metrics[name], 4) for name in ("ndcg@10", "recall@10")}


def probe(data_dir: str, runs: list[str], split: str) -> dict[str, object]:
    from unisrec.config import TextConfig
    from unisrec.datasets.processed import load_processed
    from unisrec.recommend import Recommender
    from unisrec.text_cache import load_text

    data = load_processed(data_dir)
    rows = data.target_rows(split)
    users = data.user_of_rows()[rows]
    starts = data.offsets[:-1][users]
    targets = torch.from_numpy(data.items[rows].astype(np.int64))
    last = torch.from_numpy(data.items[rows - 1].astype(np.int64))
    out: dict[str, object] = {
        "targets": len(rows),
        "target_is_last_item": round(float((targets == last).float().mean()), 4),
        "target_in_history": round(float(np.mean([data.items[r] in set(data.items[s:r].tolist())
                                                  for s, r in zip(starts, rows, strict=True)])), 4),
    }
    text = torch.from_numpy(np.asarray(load_text(data, TextConfig()).matrix, dtype=np.float32))
    text = torch.nn.functional.normalize(text - text.mean(0), dim=-1)  # (N, D) centred, unit length
    by_text = text[last] @ text.T  # (Q, N)
    by_text[torch.arange(len(last)), last] = float("-inf")
    out["text_last_item"] = ndcg_recall(by_text, targets)
    results = {}
    for run in runs:
        recommender = Recommender.from_pretrained(run)
        cut = recommender.model.config.max_seq_len
        histories = [data.items[max(s, r - cut):r] for s, r in zip(starts, rows, strict=True)]
        with torch.no_grad():
            table = recommender.scoring_table()
            scores = torch.cat([recommender.queries_of_rows(histories[i:i + 2048]) @ table.T
                                for i in range(0, len(histories), 2048)])  # (Q, N)
        no_last = scores.clone()
        no_last[torch.arange(len(last)), last] = float("-inf")
        no_history = scores.clone()
        for q, h in enumerate(histories):  # a target already in the history is then a miss
            no_history[q, torch.from_numpy(h.astype(np.int64))] = float("-inf")
        results[run] = {"as_is": ndcg_recall(scores, targets), "last_item_left_out": ndcg_recall(no_last, targets),
                        "history_left_out": ndcg_recall(no_history, targets)}
    out["runs"] = results
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data")
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--split", default="valid", choices=["valid", "test"])
    parser.add_argument("--record", help="also write the result with its command to this JSON file")
    args = parser.parse_args()
    result = probe(args.data, args.runs, args.split)
    if args.record:
        from unisrec.atomic import atomic_write_json

        atomic_write_json(args.record, {"command": " ".join(["python", "scripts/repeat_probe.py", *sys.argv[1:]]),
                                        **result})
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
