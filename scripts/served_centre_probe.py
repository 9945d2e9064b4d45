"""Zero-shot serving probe: a pre-trained run served with a new domain's items against ``unisrec evaluate``.

    python scripts/served_centre_probe.py PRETRAINED_RUN TARGET_DATA [--record FILE]

Scores the target zero-shot three ways with the run's own text settings: ``evaluate``'s zero-shot model
(``unisrec.evaluate.zero_shot_model``: the catalogue centred on its own mean with ``model.center_text``), the
model a server holds after ``Recommender.from_pretrained(RUN).add_items(...)`` of every target item, and that
served model with its text centre at zero, as serving left it before the first addition set the centre. The
last line of stdout is one JSON object (``--record`` writes it too).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from unisrec.checkpoint import read_text_config
from unisrec.config import TextConfig
from unisrec.datasets.processed import load_processed
from unisrec.evaluate import emit_probe, probe_scores, zero_shot_model
from unisrec.recommend import Recommender
from unisrec.text_cache import load_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--record", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    target = load_processed(args.target)
    text = load_text(target, read_text_config(args.run) or TextConfig())
    served = Recommender.from_pretrained(args.run)
    served.add_items(target.item_texts, [str(i) for i in target.item_ids], vectors=text.matrix)
    centre = getattr(served.model, "text_center", None)
    result: dict[str, object] = {
        "probe": "served_centre", "run": str(args.run), "target": str(args.target),
        "center_text": centre is not None,
        "command": " ".join(["python", "scripts/served_centre_probe.py", *sys.argv[1:]]),
        "evaluate_zero_shot": probe_scores(zero_shot_model(args.run, target), target, "evaluate_zero_shot"),
        "served": probe_scores(served.model, target, "served"),
    }
    if centre is not None:
        with torch.no_grad():
            centre.zero_()
        result["served_uncentred"] = probe_scores(served.model, target, "served_uncentred")
    emit_probe(result, args.record)


if __name__ == "__main__":
    main()
