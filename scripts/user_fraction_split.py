"""Valid and test NDCG@10 of a data-poor run, split into the users it trained on and the others.

    python scripts/user_fraction_split.py RUN_DIR DATA_DIR [--fraction F] [--seed S]

A run made with ``--train.user_fraction=F --seed S`` trained on the sequences of ``training_users(n, F, S)``;
validation and test cover every user. Printing both groups shows whether a gap between validation and test
comes from the users it memorised or from all of them. F and S default to the run's own (its ``run.json``).
``RUN_DIR`` may also be a pre-trained run (zero-shot): then give both, the split of the fine-tuning to compare.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def split_metrics(run_dir: Path, data_dir: Path, fraction: float, seed: int) -> dict[str, dict[str, float]]:
    from unisrec.checkpoint import from_pretrained, read_model_config
    from unisrec.datasets import load_processed
    from unisrec.evaluate import EvalConfig, rank_split, zero_shot_model
    from unisrec.metrics import ranking_metrics
    from unisrec.training_data import training_users

    dataset = load_processed(data_dir)
    if read_model_config(run_dir)["n_items"] == 0:
        model = zero_shot_model(run_dir, dataset)
    else:
        model, _ = from_pretrained(run_dir, "cpu")
    trained = training_users(dataset.n_users, fraction, seed)  # (U,) bool
    result: dict[str, dict[str, float]] = {}
    for split in ("valid", "test"):
        ranks = rank_split(model, dataset, split, EvalConfig())  # (T,)
        in_training = trained[dataset.user_of_rows()[dataset.target_rows(split)]]  # (T,) bool
        result[split] = {
            "all": ranking_metrics(ranks, (10,))["ndcg@10"],
            "trained_users": ranking_metrics(ranks[in_training], (10,))["ndcg@10"],
            "other_users": ranking_metrics(ranks[~in_training], (10,))["ndcg@10"],
            "n_trained_users": int(in_training.sum()),
        }
    return result


def run_split_settings(run_dir: Path, fraction: float | None, seed: int | None) -> tuple[float, int]:
    """The user fraction and seed to split by: as given, else the fine-tuning run's own (``run.json``)."""
    made = run_dir / "run.json"
    saved = json.loads(made.read_text()) if made.exists() else {}
    # a pre-trained run's settings are not those of the fine-tuning whose split is asked for
    train = saved.get("config", {}).get("train", {}) if saved.get("command") != "pretrain" else {}
    fraction = fraction if fraction is not None else train.get("user_fraction")
    seed = seed if seed is not None else train.get("seed")
    if fraction is None or seed is None:
        raise SystemExit(f"{run_dir}: no fine-tuning settings to read (run.json); give --fraction and --seed")
    return float(fraction), int(seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--fraction", type=float, default=None, help="train.user_fraction (default: the run's)")
    parser.add_argument("--seed", type=int, default=None, help="train.seed (default: the run's)")
    args = parser.parse_args()
    fraction, seed = run_split_settings(args.run_dir, args.fraction, args.seed)
    import torch

    torch.set_num_threads(1)
    result = split_metrics(args.run_dir, args.data_dir, fraction, seed)
    print(json.dumps({"run": str(args.run_dir), **{s: {k: round(v, 4) for k, v in m.items()}
                                                    for s, m in result.items()}}))


if __name__ == "__main__":
    main()
