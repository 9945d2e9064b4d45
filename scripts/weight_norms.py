"""How far training moved each part of a model: Frobenius norms of its parameters beside a fresh initialisation.

    python scripts/weight_norms.py RUN [RUN ...] [--seed 0] [--record FILE]

Every RUN's ``model.safetensors`` is read as saved (a pre-training, or fine-tunings from it or from scratch);
``init`` is the first RUN's architecture freshly initialised with ``--seed`` (the library's own initialisation),
so a norm near ``init`` says that part barely moved. One row per saved tensor; a tensor a run lacks (the ID table of a
pre-training) is left out of its column.
The last line of stdout is one JSON object (``--record`` writes it too).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from unisrec.baselines import build_model
from unisrec.checkpoint import read_model_config
from unisrec.config import ModelConfig, from_plain
from unisrec.evaluate import emit_probe

SKIPPED = ("text_center", "item_text")  # buffers: the catalogue's text and mean, not trained


def tensor_norms(tensors: dict[str, torch.Tensor]) -> dict[str, float]:
    """Frobenius norm of each trained tensor, rounded to 4 decimals."""
    return {name: round(float(tensor.double().norm()), 4)
            for name, tensor in sorted(tensors.items()) if not name.startswith(SKIPPED)}


def fresh_tensors(run: Path, seed: int, shapes: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The run's architecture as initialised by the library with ``seed`` (sizes taken from the saved tensors)."""
    saved = read_model_config(run)
    config = from_plain(ModelConfig, saved["model"], f"{run}/config.json: model")
    ids = shapes.get("item_id.weight")
    n_items = int(ids.shape[0]) if ids is not None else max(int(saved.get("n_items", 0)), 1)
    text = torch.zeros(n_items, int(saved.get("text_dim", 0))) if config.uses_text else None
    torch.manual_seed(seed)
    model = build_model(config, n_items, text)
    return {name: tensor.detach() for name, tensor in model.state_dict().items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fresh initialisation")
    parser.add_argument("--record", type=Path, default=None)
    args = parser.parse_args()
    saved = {str(run): load_file(str(run / "model.safetensors")) for run in args.runs}
    first = saved[str(args.runs[0])]
    columns = {"init": tensor_norms(fresh_tensors(args.runs[0], args.seed, first))}
    columns.update({run: tensor_norms(tensors) for run, tensors in saved.items()})
    names = sorted({name for column in columns.values() for name in column})
    width = max(len(name) for name in names)
    print(f"{'tensor':{width}s} " + " ".join(f"{run[-24:]:>24s}" for run in columns))
    for name in names:
        cells = [f"{column[name]:24.2f}" if name in column else f"{'-':>24s}" for column in columns.values()]
        print(f"{name:{width}s} " + " ".join(cells))
    result: dict[str, object] = {
        "probe": "weight_norms", "seed": args.seed,
        "command": " ".join(["python", "scripts/weight_norms.py", *sys.argv[1:]]),
        "norms": columns,
    }
    emit_probe(result, args.record)


if __name__ == "__main__":
    main()
