"""What ``train.interpolate=auto`` would have given a transfer run made with ``--train.interpolate=off``.

    python scripts/interpolation_probe.py RUN_DIR [--record FILE]

The interpolation follows training (``unisrec.interpolate``: the best epoch's weights are mixed with the
pre-trained ones, ``start + alpha * (tuned - start)`` for the transferred parameters only, alpha chosen on
validation), so applying it to the finished run's weights is exactly what the same command with
``train.interpolate=auto`` would have ended with. The dataset, ``--init`` run, ``train.transfer``,
``train.select_metric`` and evaluation settings are the run's own (its run.json). Prints the validation metric of
every alpha, the alpha chosen, and the validation and test metrics of the fine-tuned and of the interpolated
weights; the last line of stdout is one JSON object (``--record`` writes it too). Nothing in RUN_DIR changes.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from unisrec.checkpoint import from_pretrained, load_transferable
from unisrec.config import EvalConfig, from_plain
from unisrec.datasets.processed import load_processed
from unisrec.errors import UnisrecError
from unisrec.evaluate import emit_probe, evaluate
from unisrec.interpolate import choose_interpolation, snapshot
from unisrec.model import SequenceModel


def fail(message: str) -> NoReturn:
    """Bad input: one line on stderr, exit status 2."""
    print(f"interpolation_probe: {message}", file=sys.stderr)
    sys.exit(2)


def interpolate_after(model: SequenceModel, init_dir: Path, parts: str,
                      validate: Callable[[], dict[str, float]], metric: str) -> tuple[float, dict[str, float]]:
    """``model`` holds fine-tuned weights: mix its ``parts`` with those of ``init_dir`` as
    ``train.interpolate=auto`` does and leave it at the alpha ``validate`` prefers; returns (alpha, scores)."""
    tuned = {name: value.clone() for name, value in model.state_dict().items()}
    names = load_transferable(model, init_dir, parts)  # puts the pre-trained values in, to copy them out
    start = snapshot(model, names)
    model.load_state_dict(tuned, strict=True)
    return choose_interpolation(model, start, validate, metric)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a finished `unisrec finetune --init ...` run folder")
    parser.add_argument("--record", type=Path, default=None, help="also write the JSON result here")
    args = parser.parse_args()
    try:
        settings = json.loads((args.run / "run.json").read_text())
        train, init = settings["config"]["train"], settings.get("init")
        if not init:
            raise UnisrecError(f"{args.run}: made without --init, nothing to interpolate with")
        if train.get("interpolate") != "off":
            raise UnisrecError(f"{args.run}: made with train.interpolate={train.get('interpolate')}; "
                               "its metrics.json already holds the interpolation")
        eval_config = from_plain(EvalConfig, settings["config"]["eval"], f"{args.run / 'run.json'}: eval")
        model, _ = from_pretrained(args.run)
        dataset = load_processed(settings["data"])
        metric = train["select_metric"]

        def scores(split: str) -> dict[str, float]:
            return evaluate(model.eval(), dataset, split, eval_config)

        fine_tuned = {split: scores(split) for split in ("valid", "test")}
        alpha, by_alpha = interpolate_after(model, Path(init), train.get("transfer", "all"),
                                            lambda: scores("valid"), metric)
        interpolated = {split: scores(split) for split in ("valid", "test")}
    except KeyError as exc:
        fail(f"{args.run / 'run.json'}: no {exc} (not a run folder of unisrec finetune?)")
    except (UnisrecError, OSError, ValueError) as exc:
        fail(str(exc))
    emit_probe({"run": str(args.run), "init": init, "metric": metric, "alpha": alpha, "valid_by_alpha": by_alpha,
                "fine_tuned": fine_tuned, "interpolated": interpolated}, args.record)


if __name__ == "__main__":
    main()
