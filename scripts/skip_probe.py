"""Last-item skip probe: zero-shot metrics of a pre-trained run on a target with the skip on and off.

    python scripts/skip_probe.py PRETRAINED_RUN TARGET_DATA [--record FILE]

Scores the target zero-shot twice with the run's own text settings: as pre-trained (the recipe's query is the
sequence state plus the last item's vector, ``model.last_item_skip``) and with the skip switched off (the
sequence state alone; the skip has no parameter, so the same weights score both). The question it answers:
does the zero-shot comparison on the target's validation predict which setting its fine-tuning prefers? The
last line of stdout is one JSON object (``--record`` writes it too).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import NoReturn

import torch

from unisrec.checkpoint import read_model_config
from unisrec.datasets.processed import ProcessedDataset, load_processed
from unisrec.errors import UnisrecError
from unisrec.evaluate import emit_probe, probe_scores, zero_shot_model
from unisrec.model import SequenceModel


def fail(message: str) -> NoReturn:
    """Bad input: one line on stderr, exit status 2."""
    print(f"skip_probe: {message}", file=sys.stderr)
    sys.exit(2)


def skip_comparison(model: SequenceModel, dataset: ProcessedDataset) -> dict[str, dict[str, dict[str, float]]]:
    """Valid and test metrics of ``model`` with its last-item skip on and off (the same weights), as
    ``{"skip_on": ..., "skip_off": ...}``; the model's own setting is put back afterwards."""
    config = model.config
    result: dict[str, dict[str, dict[str, float]]] = {}
    try:
        for name, skip in (("skip_on", True), ("skip_off", False)):
            model.config = replace(config, last_item_skip=skip)
            result[name] = probe_scores(model, dataset, name)
    finally:
        model.config = config
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a `unisrec pretrain` run folder")
    parser.add_argument("target", type=Path, help="a prepared dataset folder (`unisrec prepare`)")
    parser.add_argument("--record", type=Path, default=None, help="also write the JSON result here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    try:
        saved = read_model_config(args.run).get("model", {})
        if not saved.get("last_item_skip"):
            raise UnisrecError(f"{args.run}: was pre-trained without the last-item skip; nothing to compare")
        if saved.get("skip_gate"):
            raise UnisrecError(f"{args.run}: has a learned skip gate (model.skip_gate); "
                               "the probe compares the plain skip")
        target = load_processed(args.target)
        model = zero_shot_model(args.run, target).eval()
    except (UnisrecError, OSError, ValueError) as exc:
        fail(str(exc))
    result: dict[str, object] = {
        "probe": "last_item_skip", "run": str(args.run), "target": str(args.target),
        "command": " ".join(["python", "scripts/skip_probe.py", *sys.argv[1:]]),
        **skip_comparison(model, target),
    }
    emit_probe(result, args.record)


if __name__ == "__main__":
    main()
