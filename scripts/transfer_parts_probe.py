"""Which parts of a pre-trained model help a new domain: zero-shot metrics of the parts combined with fresh ones.

    python scripts/transfer_parts_probe.py PRETRAINED_RUN TARGET_DATA [--seed 0] [--exclude-seen] [--record FILE]

Scores the target zero-shot (no training on it), with the run's own text settings, four ways:
``pretrained`` (the run as it is), ``untrained`` (the same architecture freshly initialised with ``--seed``: a
random projection of the text vectors, so close to ranking by the likeness of the history's texts),
``pretrained_adaptor`` (the pre-trained text adaptor, fresh sequence encoder and input LayerNorm: where
``--train.transfer=adaptor`` starts) and ``pretrained_encoder`` (fresh adaptor, pre-trained encoder). Each
catalogue is centred on its own mean as the run's model does (``model.center_text``). ``--exclude-seen`` leaves
each history's own items out of the ranking (the paper's protocol keeps them). The last line of stdout
is one JSON object (``--record`` writes it too).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from unisrec.baselines import build_model
from unisrec.datasets.processed import load_processed
from unisrec.evaluate import emit_probe, probe_scores, zero_shot_model
from unisrec.model import SequenceModel

SEQUENCE_PARTS = ("encoder.", "input_norm.")  # the sequence encoder and the LayerNorm on its inputs


def combined(pretrained: SequenceModel, fresh: SequenceModel, from_pretrained: tuple[str, ...]) -> SequenceModel:
    """A copy of ``fresh`` whose parameters named with a prefix in ``from_pretrained`` are the pre-trained ones."""
    model = build_model(fresh.config, fresh.n_items, fresh.item_text.clone())
    state, given = fresh.state_dict(), pretrained.state_dict()
    model.load_state_dict({k: given[k] if k.startswith(from_pretrained) else v for k, v in state.items()})
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--seed", type=int, default=0, help="seed of the fresh parts")
    parser.add_argument("--exclude-seen", action="store_true", help="leave the history's items out of the ranking")
    parser.add_argument("--record", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    target = load_processed(args.target)
    pretrained = zero_shot_model(args.run, target).eval()
    torch.manual_seed(args.seed)
    fresh = build_model(pretrained.config, pretrained.n_items, pretrained.item_text.clone()).eval()
    if getattr(fresh, "text_center", None) is not None:  # the catalogue's own mean, as zero_shot_model sets it
        fresh.load_state_dict({**fresh.state_dict(), "text_center": pretrained.state_dict()["text_center"]})
    models = {
        "pretrained": pretrained,
        "untrained": fresh,
        "pretrained_adaptor": combined(pretrained, fresh, ("adaptor.",)),
        "pretrained_encoder": combined(pretrained, fresh, SEQUENCE_PARTS),
    }
    result: dict[str, object] = {
        "probe": "transfer_parts", "run": str(args.run), "target": str(args.target), "seed": args.seed,
        "command": " ".join(["python", "scripts/transfer_parts_probe.py", *sys.argv[1:]]),
        "exclude_seen": args.exclude_seen,
    }
    for name, model in models.items():
        result[name] = probe_scores(model, target, name, exclude_seen=args.exclude_seen)
    emit_probe(result, args.record)


if __name__ == "__main__":
    main()
