"""Domain-shift probe: zero-shot metrics of a pre-trained run on a target whose text vectors are shifted.

    python scripts/center_probe.py PRETRAINED_RUN TARGET_DATA CORPUS_DATA... [--record FILE]

Scores the target zero-shot twice with the run's own text settings: with its language-model vectors as they
are, and shifted by (corpus mean - target mean), i.e. moved so that their mean is the mean of the
pre-training corpus's vectors (every item of the CORPUS_DATA folders). A gain says that the model reads the
shift between the domains' texts (e.g. titles only in the corpus, title + categories + brand in the target),
which ``model.center_text`` takes out. The last line of stdout is one JSON object (``--record`` writes it too).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from unisrec.checkpoint import read_text_config
from unisrec.config import TextConfig
from unisrec.datasets.processed import load_processed
from unisrec.evaluate import emit_probe, probe_scores, zero_shot_model
from unisrec.text_cache import load_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("corpus", type=Path, nargs="+")
    parser.add_argument("--record", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    text = read_text_config(args.run) or TextConfig()
    domains = [load_text(load_processed(d), text).matrix for d in args.corpus]  # each (N_d, D)
    corpus = np.concatenate(domains)  # (N, D)
    target = load_processed(args.target)
    model = zero_shot_model(args.run, target).eval()
    original = model.item_text.clone()  # (N_target, D)
    shift = torch.from_numpy(corpus.mean(0)) - original.mean(0)  # (D,)
    result: dict[str, object] = {
        "probe": "center", "run": str(args.run), "target": str(args.target),
        "corpus": [str(d) for d in args.corpus], "shift_norm": round(float(shift.norm()), 4),
        "norm_of_corpus_mean": round(float(np.linalg.norm(corpus.mean(0))), 4),
        "norm_of_target_mean": round(float(original.mean(0).norm()), 4),
        "median_norm_of_target_vectors": round(float(original.norm(dim=1).median()), 4),
        "domain_mean_distance_to_corpus_mean": {
            d.name: round(float(np.linalg.norm(m.mean(0) - corpus.mean(0))), 4)
            for d, m in zip(args.corpus, domains, strict=True)},
        "command": " ".join(["python", "scripts/center_probe.py", *sys.argv[1:]]),
    }
    for name, offset in (("as_is", torch.zeros_like(shift)), ("shifted_to_corpus_mean", shift)):
        model.item_text = original + offset
        result[name] = probe_scores(model, target, name)
    emit_probe(result, args.record)


if __name__ == "__main__":
    main()
