"""A README.md model card written into every run folder: what was trained, on what, how, and how well.

Built from the run's own records (``run.json`` settings and ``metrics.json``), so it never disagrees with
them. ``unisrec pretrain`` cards also list the transfer results recorded later beside the run (``card.json``
"transfers", written by ``record_transfer`` when a fine-tuning run from it finishes: target, mode, what it trained
on, seed, test metrics).
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from unisrec.atomic import atomic_write_json, atomic_write_text
from unisrec.config import TrainConfig
from unisrec.errors import UnisrecError
from unisrec.json_io import read_json
from unisrec.locking import waiting_for

_METRIC_ORDER = ("recall@10", "ndcg@10", "recall@50", "ndcg@50")


def command_line() -> str:
    """The command that started this process, as a shell line."""
    return " ".join(shlex.quote(a) for a in ["unisrec", *sys.argv[1:]]) if sys.argv else "unisrec"


def transfer_defaults(train: TrainConfig | None = None) -> str:
    """What ``finetune --init`` does with ``train`` (the default settings if None), in words."""
    train = train or TrainConfig()
    parts = ["the sequence encoder frozen (the paper's protocol)" if train.freeze == "encoder"
             else "everything fine-tunes"]
    if train.freeze != "encoder" and train.encoder_lr_scale != 1.0:
        parts.append(f"the encoder at {train.encoder_lr_scale:g}x the learning rate")
    if train.interpolate == "auto":
        parts.append("then the weights are mixed with these as validation prefers, `train.interpolate=auto`")
    return "; ".join(parts)


def _metrics_row(metrics: dict[str, float]) -> str:
    cells = [f"{metrics[k]:.4f}" if k in metrics else "-" for k in _METRIC_ORDER]
    return "| " + " | ".join(cells) + " |"


def _cold_line(test: Mapping[str, float]) -> str:
    """The model card's sentence on the cold-item metrics of ``train.cold_items`` (those the run computed)."""
    cases = int(test["cold_cases"])
    if cases == 0:
        return "Cold items (never trained on): no test target is a cold item, so there are no cold metrics"
    scored = ", ".join(f"{k} {v:.4f}" for k, v in test.items() if k.startswith(("cold_recall@", "cold_ndcg@")))
    return f"Cold items (never trained on): {cases} test cases, {scored}"


def _text_encoder_line(settings: Mapping[str, Any]) -> str:
    # run.json of this version: the config's text section; of earlier ones: "text_encoder", the text settings
    # given on the command line (null: the defaults)
    text = (settings.get("config") or {}).get("text") or settings.get("text_encoder")
    if not text:
        return "the default (packaged all-MiniLM-L6-v2, cls+mean pooling)"
    keys = ("model", "pooling", "max_length", "precision")
    return ", ".join(f"{k} {text[k]}" for k in keys if k in text)


def _config_lines(config: Mapping[str, Any]) -> list[str]:
    lines = []
    for section in ("model", "train", "pretrain", "eval"):
        values = config.get(section) or {}
        lines.append(f"- `{section}`: " + ", ".join(f"{k}={v}" for k, v in values.items()))
    return lines


def finetune_card(settings: Mapping[str, Any], metrics: Mapping[str, Any], command: str) -> str:
    """The card of a fine-tuning (or from-scratch) run."""
    test, valid = metrics.get("test") or {}, metrics.get("valid") or {}
    init = settings.get("init")
    lines = [
        f"# unisrec {metrics.get('mode', settings.get('mode'))} model of {metrics.get('dataset', '?')}",
        "",
        f"- Data: `{settings.get('data')}`",
        f"- Start: {'pre-trained run `' + str(init) + '`' if init else 'from scratch (no pre-training)'}",
        f"- Text encoder: {_text_encoder_line(settings)}",
        f"- Best epoch {metrics.get('best_epoch')} of {metrics.get('epochs')} (selected on valid "
        f"{settings.get('config', {}).get('train', {}).get('select_metric', 'ndcg@10')}), "
        f"{metrics.get('seconds_train', 0):.0f} s training, peak memory {metrics.get('peak_memory_mb', 0):.0f} MB",
        f"- Trainable parameters: {metrics.get('parameters', {}).get('trainable', '?')} of "
        f"{metrics.get('parameters', {}).get('total', '?')}",
        "",
        "Full ranking over all items, leave-one-out:",
        "",
        "| split | recall@10 | ndcg@10 | recall@50 | ndcg@50 |",
        "|---|---|---|---|---|",
        "| valid " + _metrics_row(valid),
        "| test " + (_metrics_row(test) if metrics.get("test") is not None
                     else "| not scored (`eval.test=false`: the run chose on validation) | | | |"),
    ]
    mixed = metrics.get("interpolation")
    if mixed:
        tried = ", ".join(f"{alpha} {value:.4f}" for alpha, value in mixed["valid"].items())
        lines += ["", f"Weights: pre-trained + {mixed['alpha']:g} x (fine-tuned - pre-trained), chosen on valid "
                  f"{mixed['metric']} (`train.interpolate=auto`; alpha and valid: {tried}); the fine-tuned weights "
                  "are in `finetuned.safetensors`"]
    if "cold_cases" in test:
        lines += ["", _cold_line(test)]
    lines += ["", "## Command", "", "```bash", command, "```", "", "## Settings", "",
              *_config_lines(settings.get("config", {})), ""]
    return "\n".join(lines)


def pretrain_card(settings: Mapping[str, Any], metrics: Mapping[str, Any], command: str,
                  transfers: list[dict[str, Any]]) -> str:
    """The card of a pre-training run, with the transfer results recorded so far."""
    history = metrics.get("history") or []
    last = history[-1] if history else {}
    lines = [
        "# unisrec universal pre-trained model (text only)",
        "",
        f"- Corpus: {len(metrics.get('domains', []))} domains: {', '.join(metrics.get('domains', []))}",
        f"- Data folders: {', '.join('`' + d + '`' for d in settings.get('data', []))}",
        f"- Text encoder: {_text_encoder_line(settings)}",
        f"- {metrics.get('steps')} steps, {metrics.get('epochs')} epochs, "
        f"{metrics.get('seconds_train', 0) / 60:.1f} min training, "
        f"{metrics.get('sequences_per_second', 0):.0f} windows/s, peak memory "
        f"{metrics.get('peak_memory_mb', 0):.0f} MB, {metrics.get('world_size', 1)} process(es)",
        "- Last epoch's loss terms: " + ", ".join(f"{k[6:]} {v:.4f}" for k, v in last.items()
                                               if k.startswith("train_") and "@" not in k),
        "",
        "Use: `unisrec finetune DATA --mode inductive|transductive --init THIS_FOLDER --out RUN` "
        f"({transfer_defaults()}), or `unisrec evaluate THIS_FOLDER DATA` (zero-shot).",
        "",
        "## Transfer results",
        "",
    ]
    if transfers:
        lines += ["| target | mode | trained on | seed | recall@10 | ndcg@10 | recall@50 | ndcg@50 | run |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for t in transfers:  # entries written before "training" was recorded say so
            lines.append(f"| {t['dataset']} | {t['mode']} | {t.get('training', 'not recorded')} | {t['seed']} "
                         + _metrics_row(t["test"]) + f" `{t['run']}` |")
    else:
        lines.append("None recorded yet (each `unisrec finetune --init` of this model adds its test metrics here).")
    lines += ["", "## Command", "", "```bash", command, "```", "", "## Recipe", "",
              *_config_lines(settings.get("config", {})), ""]
    return "\n".join(lines)


def write_finetune_card(run_dir: Path, settings: Mapping[str, Any], metrics: Mapping[str, Any],
                        command: str | None = None) -> None:
    """(Re)write a fine-tuned run's card; ``command``: the training command (default: this process's)."""
    atomic_write_text(run_dir / "README.md", finetune_card(settings, metrics, command or command_line()))


def write_pretrain_card(run_dir: Path, settings: Mapping[str, Any], metrics: Mapping[str, Any],
                        command: str | None = None) -> None:
    """(Re)write the pre-trained run's card; the command is kept in ``card.json`` for later rewrites."""
    card_file = run_dir / "card.json"
    saved = read_json(card_file, "delete it to start the card again") if card_file.exists() else {}
    command = command or saved.get("command") or command_line()
    transfers = saved.get("transfers", [])
    atomic_write_json(card_file, {"command": command, "transfers": transfers})
    atomic_write_text(run_dir / "README.md", pretrain_card(settings, metrics, command, transfers))


def training_data(train: TrainConfig) -> str:
    """What a fine-tuning trained on, in words: "all users", "10% of users", "... , 20% of items withheld"."""
    parts = ["all users" if train.user_fraction >= 1.0 else f"{train.user_fraction:.0%} of users"]
    if train.cold_items > 0:
        parts.append(f"{train.cold_items:.0%} of items withheld")
    return ", ".join(parts)


def record_transfer(init_dir: Path, run_dir: Path, metrics: Mapping[str, Any], train: TrainConfig) -> None:
    """Add a finished transfer's test metrics to the pre-trained run's card (best effort: read-only inits skip);
    ``train``: the fine-tuning's settings (the card says what it trained on: data-poor, cold items)."""
    card_file, run_file, metrics_file = init_dir / "card.json", init_dir / "run.json", init_dir / "metrics.json"
    if not (card_file.exists() and run_file.exists() and metrics_file.exists()):
        return
    try:
        with waiting_for(init_dir / ".card.lock"):  # transfers finishing at once must not lose each other
            _add_transfer(init_dir, run_dir, metrics, training_data(train))
    except (OSError, UnisrecError):  # a damaged card of another run: this run's results stand without it
        return


def _add_transfer(init_dir: Path, run_dir: Path, metrics: Mapping[str, Any], training: str) -> None:
    card_file = init_dir / "card.json"
    saved = read_json(card_file)
    entry = {"dataset": metrics["dataset"], "mode": metrics["mode"], "training": training, "seed": metrics["seed"],
             "test": {k: metrics["test"][k] for k in _METRIC_ORDER if k in metrics["test"]},
             "run": str(run_dir.resolve())}
    transfers = [t for t in saved.get("transfers", []) if t.get("run") != entry["run"]] + [entry]
    atomic_write_json(card_file, {**saved, "transfers": transfers})
    settings = read_json(init_dir / "run.json")
    pretrained = read_json(init_dir / "metrics.json")
    atomic_write_text(init_dir / "README.md", pretrain_card(settings, pretrained, saved.get("command", ""), transfers))
