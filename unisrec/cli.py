"""Command-line interface: thin subcommands over the Python API (``unisrec --help``)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from unisrec.errors import UnisrecError
from unisrec.version import __version__

if TYPE_CHECKING:
    from unisrec.config import RunConfig

Handler = Callable[[argparse.Namespace], int]


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    from unisrec.datasets import FORMATS

    p = sub.add_parser("prepare", help="turn a raw dataset into a processed dataset folder")
    p.add_argument(
        "source",
        nargs="+",
        help="input folder or file (--format movielens: ml-100k, ml-1m, ml-latest-small); with several "
        "sources, each is written to OUT/<source name>",
    )
    p.add_argument("--format", required=True, choices=FORMATS, dest="fmt")
    p.add_argument("--out", required=True, type=Path, help="processed dataset folder to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing processed dataset folder")
    p.add_argument(
        "--name",
        default=None,
        help="dataset name (unisrec/recbole: which file prefix to read; amazon2018: which category)",
    )
    p.add_argument("--interactions", type=Path, default=None, help="csv: interactions file")
    p.add_argument("--items", type=Path, default=None, help="csv: items file")
    p.add_argument("--user-column", default=None, help="csv: user column (default user_id)")
    p.add_argument("--item-column", default=None, help="csv: item column of the interactions (default item_id)")
    p.add_argument("--time-column", default=None, help="csv: time column (default timestamp)")
    p.add_argument("--items-id-column", default=None, help="csv: item column of the items file (default item_id)")
    p.add_argument("--text-columns", default=None,
                   help="csv: 'a|b': the first present; 'a,b': all, joined as 'a. b' (default title|text)")
    p.add_argument("--delimiter", default=None,
                   help="csv: the field separator of both files (default: a tab for .tsv[.gz] files, else a comma)")
    p.add_argument("--encoding", default=None, help="csv, online-retail, recbole: text encoding (default utf-8)")
    p.add_argument("--user-core", type=int, default=None, help="keep users with this many interactions (default 5)")
    p.add_argument("--item-core", type=int, default=None, help="keep items with this many interactions (default 5)")
    p.add_argument("--min-seq-len", type=int, default=None, help="shortest sequence kept (default 3)")
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="movielens: download cache (default: $UNISREC_CACHE, else ~/.cache/unisrec)",
    )
    p.set_defaults(handler=_run_prepare)


def _run_prepare(args: argparse.Namespace) -> int:
    from unisrec.datasets import CsvColumns, PrepareOptions, prepare, refuse_inapplicable_options

    flags = {"--interactions": "interactions", "--items": "items", "--user-column": "columns",
             "--item-column": "columns", "--time-column": "columns", "--items-id-column": "columns",
             "--text-columns": "columns", "--delimiter": "delimiter", "--encoding": "encoding",
             "--user-core": "filtering", "--item-core": "filtering", "--min-seq-len": "filtering",
             "--cache-dir": "cache_dir"}
    refuse_inapplicable_options(args.fmt, {flag: option for flag, option in flags.items()
                                           if getattr(args, flag[2:].replace("-", "_")) is not None})
    def given(fields: dict[str, Any]) -> dict[str, Any]:  # the flags given; the others keep their defaults
        return {field: value for field, value in fields.items() if value is not None}

    column_names = given({"user": args.user_column, "item": args.item_column, "timestamp": args.time_column,
                          "items_item": args.items_id_column, "text": args.text_columns})
    filtering = given({"user_core": args.user_core, "item_core": args.item_core, "min_seq_len": args.min_seq_len})
    columns = CsvColumns(**column_names) if column_names else None
    options = PrepareOptions(**filtering) if filtering else None
    if args.delimiter is not None and (len(args.delimiter) != 1 or args.delimiter in ('"', "\n", "\r")
                                       or not args.delimiter.isascii()):
        raise UnisrecError(f"--delimiter must be one ASCII character (not a quote or a line break), got "
                           f"{args.delimiter!r}")
    several = len(args.source) > 1
    if several and (args.interactions or args.items):
        raise UnisrecError("--interactions / --items go with a single source")
    outs = [args.out / Path(source.rstrip("/")).name if several else args.out for source in args.source]
    for index, out in enumerate(outs):  # before anything is written: two sources never share an output folder
        if out in outs[:index]:
            first = args.source[outs.index(out)]
            raise UnisrecError(f"sources {first} and {args.source[index]} would both be written to {out} (one "
                               "output folder per source name); prepare them one at a time with their own --out")
    from unisrec.datasets.processed import check_output_folder

    for out in outs:  # every output folder before the first is written: a refusal leaves nothing half done
        check_output_folder(out, overwrite=args.overwrite)
    results: list[dict[str, Any]] = []
    for source, out in zip(args.source, outs, strict=True):
        try:
            dataset = prepare(
                source,
                args.fmt,
                out,
                options=options,
                name=args.name,
                overwrite=args.overwrite,
                interactions=args.interactions,
                items=args.items,
                columns=columns,
                delimiter=args.delimiter,
                encoding=args.encoding,
                cache_dir=args.cache_dir,
            )
        except UnisrecError as exc:
            if not results:
                raise
            done = ", ".join(str(r["out"]) for r in results)
            raise UnisrecError(f"{exc} (written before it: {done}; once it is mended, prepare the rest, or all "
                               "again with --overwrite)") from None
        for step in dataset.stats.get("filtering", []):
            print(
                f"{dataset.name}: {step['step']}: removed {step['removed_interactions']} interactions, "
                f"{step['removed_users']} users, {step['removed_items']} items",
                file=sys.stderr,
            )
        summary = {k: dataset.stats[k] for k in ("users", "items", "interactions", "split")}
        results.append({"out": str(out), "name": dataset.name, **summary})
    print(json.dumps(results[0] if not several else results))
    return 0


def _add_encode(sub: argparse._SubParsersAction) -> None:
    from unisrec.config import DEFAULT_TEXT_MODEL, POOLINGS, TEXT_PRECISIONS, TextConfig
    from unisrec.text_encoder import DEFAULT_BATCH_SIZE

    default = TextConfig()
    p = sub.add_parser(
        "encode", help="encode item texts with a frozen language model into DIR/embeddings (cached)",
        description="The text settings are also accepted as dotted overrides: --text.pooling=mean --text.max_length=64",
    )
    p.add_argument("dataset", nargs="+", type=Path, help="processed dataset folder(s) (`unisrec prepare`)")
    p.add_argument(
        "--model", "--text-model",  # --text-model: the training commands' spelling of the same setting
        dest="model",
        default=None,
        help=f"language model (text.model): {DEFAULT_TEXT_MODEL} (packaged, offline; the default), a local "
        "save_pretrained folder, or a Hugging Face hub name (e.g. bert-base-uncased, the paper's)",
    )
    p.add_argument("--pooling", choices=POOLINGS, default=None, help=f"text.pooling (default {default.pooling})")
    p.add_argument("--max-length", type=int, default=None,
                   help=f"tokens per text (text.max_length, default {default.max_length})")
    p.add_argument("--precision", "--text-precision", dest="precision", choices=TEXT_PRECISIONS, default=None,
                   help="text.precision; bfloat16: ~1.7x faster on CPUs with bf16 units, vectors within cosine 0.9999")
    p.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--force", action="store_true", help="re-encode even when the stored file matches")
    p.add_argument("--word-drop", type=float, default=None, metavar="P",
                   help="also encode word-dropped views (each word dropped with probability P)")
    p.add_argument("--variants", type=int, default=3, help="--word-drop: number of views")
    p.add_argument("--seed", type=int, default=0, help="--word-drop: random seed")
    p.set_defaults(handler=_run_encode)


def _run_encode(args: argparse.Namespace) -> int:
    from unisrec.config import RunConfig
    from unisrec.text_cache import encode_dataset, encode_word_drop

    flags = (("model", args.model), ("pooling", args.pooling), ("max_length", args.max_length),
             ("precision", args.precision))
    _refuse_disagreements(_text_overrides(flags), args.overrides)
    text = RunConfig().with_overrides(_text_overrides(flags) + _only_text(args.overrides)).text
    # every setting checked before any work: a cached file reused, or the base vectors written, do not wait on it
    if args.batch_size < 1:
        raise UnisrecError(f"--batch-size must be >= 1, got {args.batch_size}")
    from unisrec.devices import resolve_device

    resolve_device(args.device)
    if args.word_drop is not None:
        from unisrec.word_drop import check_word_drop

        check_word_drop(args.word_drop, args.variants, args.seed)
    options = {"batch_size": args.batch_size, "device": args.device, "force": args.force}
    encoder = None
    results: list[dict[str, object]] = []
    for folder in args.dataset:
        base = encode_dataset(folder, text, encoder=encoder, **options)
        encoder = base.encoder or encoder
        summary: dict[str, object] = {**base.summary()}
        if args.word_drop is not None:
            view = encode_word_drop(folder, text, encoder=encoder, p=args.word_drop, variants=args.variants,
                                    seed=args.seed, **options)
            encoder = view.encoder or encoder
            summary["word_drop"] = view.summary()
        results.append(summary)
    print(json.dumps(results[0] if len(results) == 1 else results))
    return 0


def _text_overrides(flags: Sequence[tuple[str, object]]) -> list[str]:
    """(field, value or None) of the text flags -> the ``text.*`` overrides they stand for."""
    from unisrec.config import override

    return [override(f"text.{name}", value) for name, value in flags if value is not None]


def _refuse_disagreements(shortcuts: list[str], overrides: list[str]) -> None:
    """A shortcut flag (``--epochs 1``, ``--pooling cls``, as its dotted form) and a dotted override of the same
    setting (``--train.epochs=3``) with different values: refused, naming both (encode and the training commands
    had resolved such a pair in opposite ways)."""
    from unisrec.config import override_value

    given = {item.partition("=")[0]: item.partition("=")[2] for item in overrides}
    for item in shortcuts:
        key, _, raw = item.partition("=")
        if key in given and override_value(given[key]) != override_value(raw):
            raise UnisrecError(f"--{key}={given[key]} and the shortcut flag for {key} ({raw}) disagree; give one")


def _only_text(overrides: list[str]) -> list[str]:
    for item in overrides:
        if not item.startswith("text."):
            raise UnisrecError(f"--{item.partition('=')[0]}: encode takes only text settings (--text.FIELD=VALUE)")
    return overrides


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """Options shared by the training commands (finetune, pretrain)."""
    from unisrec.config import POOLINGS, TEXT_PRECISIONS

    p.add_argument("--out", required=True, type=Path, help="run folder to write (resumed if interrupted)")
    p.add_argument("--config", type=Path, default=None,
                   help="YAML run config (sections model/train/eval/pretrain/text) on the paper's defaults (pretrain: "
                   "instead of its recipe); its settings count as given, like the same dotted overrides")
    p.add_argument("--epochs", type=int, default=None, help="maximum epochs (train.epochs)")
    p.add_argument("--seed", type=int, default=None, help="random seed (train.seed)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda, cuda:N (train.device)")
    p.add_argument("--overwrite", action="store_true", help="replace a finished run or other settings")
    p.add_argument("--text-model", default=None,
                   help="language model of the item texts (text.model; default: the packaged MiniLM)")
    p.add_argument("--pooling", choices=POOLINGS, default=None, help="text.pooling")
    p.add_argument("--text-precision", choices=TEXT_PRECISIONS, default=None,
                   help="text.precision: compute precision of the language model when item texts are encoded "
                   "(other text settings: --text.max_length=N)")


def _run_config(args: argparse.Namespace, default: RunConfig | None = None, *,
                reads_pretrain: bool = True) -> tuple[RunConfig, list[str]]:
    """The base config and the dotted overrides: the --config file's settings (on ``RunConfig()``; without one
    the base is ``default``), the dotted overrides (--section.field=value), then the shortcut flags.
    ``reads_pretrain=False`` (fine-tuning): the file's ``pretrain`` section is left out (one file may serve both
    commands); a ``--pretrain.*`` flag stays, for the command to refuse."""
    from unisrec.config import RunConfig, load_config_overrides, without_pretraining

    config = RunConfig() if args.config else (default or RunConfig())
    from_file = load_config_overrides(args.config) if args.config else []
    if not reads_pretrain:
        from_file = without_pretraining(from_file)
    overrides = [*from_file, *args.overrides]
    shortcuts = [f"{key}={getattr(args, flag)}" for flag, key in (("epochs", "train.epochs"), ("seed", "train.seed"),
                                                                    ("device", "train.device"))
                 if getattr(args, flag) is not None]
    text_flags = (("model", args.text_model), ("pooling", args.pooling), ("precision", args.text_precision))
    shortcuts += _text_overrides(text_flags)
    _refuse_disagreements(shortcuts, args.overrides)  # a --config file's settings the shortcuts do override
    return config, overrides + shortcuts


def _add_finetune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "finetune",
        help="train on one dataset (from scratch, or from a pre-trained run with --init)",
        description="Dotted overrides of any config field are accepted: --model.n_layers=3 --train.lr=1e-4",
    )
    p.add_argument("data_dir", type=Path, help="processed dataset folder")
    from unisrec.config import MODES

    p.add_argument("--mode", required=True, choices=tuple(MODES),
                   help="inductive: UniSRec_t, transductive: UniSRec_t+ID; baselines: "
                   f"{', '.join(m for m in MODES if m not in ('inductive', 'transductive'))} (unisrec/baselines.py)")
    p.add_argument("--init", type=Path, default=None,
                   help="pre-trained run folder: everything fine-tunes from it (--train.freeze=encoder: the paper's "
                   "adaptor-only protocol); with --mode zesrec a zesrec run")
    p.add_argument("--replay", type=Path, nargs="+", default=[], metavar="DIR",
                   help="pre-training corpus folders replayed while fine-tuning, weighted by --train.replay=W "
                   "(every step adds W * the pre-training loss of one corpus batch)")
    _add_run_options(p)
    p.set_defaults(handler=_run_finetune)


def _first_process() -> bool:
    """False on every torchrun process but rank 0, which alone prints a training command's JSON summary."""
    return os.environ.get("RANK", "0") == "0"


def _run_finetune(args: argparse.Namespace) -> int:
    from unisrec.finetune import finetune

    config, overrides = _run_config(args, reads_pretrain=False)
    metrics = finetune(
        args.data_dir,
        args.mode,
        args.out,
        config=config,
        overrides=overrides,
        init=args.init,
        overwrite=args.overwrite,
        replay=args.replay,
    )
    if not _first_process():
        return 0
    print(json.dumps({"valid": metrics["valid"], "test": metrics["test"]}))
    return 0


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="full-ranking metrics of a run on a dataset split")
    p.add_argument("run_dir", type=Path)
    p.add_argument("data_dir", type=Path)
    p.add_argument("--split", choices=("valid", "test"), default="test")
    p.add_argument("--ks", default="10,20,50", help="comma-separated cut-offs")
    p.add_argument("--exclude-seen", action="store_true", help="drop items already in the history")
    p.add_argument("--device", default="auto")
    p.add_argument("--save", action="store_true",
                   help="with --split test: score a fine-tuning run made with --eval.test=false once, with its own "
                   "evaluation settings, and write the test metrics into its folder (metrics.json, card)")
    p.add_argument("--zero-shot", action="store_true",
                   help="score another domain's items by their text with the run's weights, as they are (a text "
                   "run: inductive, zesrec, transductive without its ID table; a pre-training is always scored so)")
    p.set_defaults(handler=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from unisrec.evaluate import evaluate_run

    if args.save and args.zero_shot:
        raise UnisrecError("--save writes a run's own test split; --zero-shot scores another domain: choose one")
    if args.save:
        from unisrec.score_test import score_test

        if args.split != "test" or args.ks != "10,20,50" or args.exclude_seen:
            raise UnisrecError("--save scores the test split with the run's own evaluation settings: give it "
                               "without --split valid, --ks or --exclude-seen")
        print(json.dumps(score_test(args.run_dir, args.data_dir, device=args.device)))
        return 0
    try:
        ks = tuple(int(k) for k in args.ks.split(","))
    except ValueError:
        raise UnisrecError(f"--ks {args.ks!r}: expected comma-separated integers") from None
    metrics = evaluate_run(
        args.run_dir, args.data_dir, args.split, ks=ks, exclude_seen=args.exclude_seen, device=args.device,
        zero_shot=args.zero_shot,
    )
    # the protocol of these figures, and where it is not the run's own (its metrics.json), which differs
    kept = "left out of" if args.exclude_seen else "kept in"
    note = f"unisrec evaluate: {args.split} split, full ranking, each history's items {kept} the ranking"
    made = args.run_dir / "run.json"
    run = json.loads(made.read_text()) if made.is_file() else {}
    own = bool(run.get("config", {}).get("eval", {}).get("exclude_seen", False))
    if args.zero_shot:
        note += " (zero-shot: the run's weights as they are, the items by their text)"
    elif run.get("command") == "finetune" and own != args.exclude_seen:
        note += (f" (the run's own figures have them {'left out' if own else 'kept'}: "
                 f"{'with' if own else 'without'} --exclude-seen)")
    print(note, file=sys.stderr)
    print(json.dumps(metrics))
    return 0


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="pre-train on several datasets (mixed in one stream); runs under torchrun too",
        description="Dotted overrides of any config field are accepted: --pretrain.lambda_ss=0.01",
    )
    p.add_argument("data_dirs", type=Path, nargs="+", help="processed dataset folders")
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many steps in all")
    _add_run_options(p)
    p.set_defaults(handler=_run_pretrain)


def _run_pretrain(args: argparse.Namespace) -> int:
    from unisrec.pretrain import pretrain, recipe_config

    config, overrides = _run_config(args, recipe_config())
    metrics = pretrain(
        args.data_dirs,
        args.out,
        config=config,
        overrides=overrides,
        max_steps=args.max_steps,
        overwrite=args.overwrite,
    )
    if not _first_process():
        return 0
    summary = {k: metrics[k] for k in ("epochs", "steps", "seconds_train", "sequences_per_second", "peak_memory_mb")}
    last = metrics["history"][-1] if metrics["history"] else {}
    print(json.dumps({**summary, "train": {k[6:]: v for k, v in last.items() if k.startswith("train_")}}))
    return 0


def _add_recommend(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("recommend", help="top-k items for histories (JSON lines out, one per history)")
    p.add_argument("run_dir", type=Path, help="run folder (`unisrec finetune`)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--history", action="append", help="item ids separated by --sep, oldest first (repeatable)")
    source.add_argument("--history-file", type=Path,
                        help='JSON lines {"history": [ids...], ...}; each is echoed with its "results"')
    p.add_argument("-k", type=int, default=10, help="recommendations per history")
    p.add_argument("--include-seen", action="store_true", help="keep the history's own items in the ranking")
    p.add_argument("--by-text", action="store_true", help="history entries are raw item texts (inductive models)")
    p.add_argument("--sep", default=",", help="--history: separator of the entries (texts with commas, as with "
                   "--by-text: give another, e.g. --sep '|'; or use --history-file)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--backend", choices=("torch", "faiss"), default="torch",
                   help="exact top-k by torch or FAISS (as `unisrec serve --backend`)")
    p.set_defaults(handler=_run_recommend)


def _run_recommend(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from unisrec.catalogue import UnknownItemError
    from unisrec.recommend import Recommender

    if args.history:
        places = [f"--history {n}" for n in range(1, len(args.history) + 1)]
        records = [{"history": _split_history(h, args.sep, place)}
                   for h, place in zip(args.history, places, strict=True)]
    else:
        records, lines = _read_history_file(args.history_file, texts=args.by_text)
        places = [f"{args.history_file}, line {n}" for n in lines]
    recommender = Recommender.from_pretrained(args.run_dir, args.device, backend=args.backend)
    if len(recommender.catalogue) == 0:
        raise UnisrecError(f"{args.run_dir}: the catalogue is empty (a pre-training run has no items of its own); "
                           "serve it and add items first, or recommend with a fine-tuned run")
    rows = None
    if not args.by_text:  # every id is resolved once, before the first result is printed
        try:
            # ids without the spaces around them, as --history and every input format read them (a catalogue's
            # ids have none); each record is echoed as it was given
            rows = recommender.resolve([[x.strip() if isinstance(x, str) else x for x in r["history"]]
                                        for r in records])
        except UnknownItemError as exc:
            number, position, item = exc.unknown[0]
            more = f" ({len(exc.unknown)} unknown ids in all)" if len(exc.unknown) > 1 else ""
            raise UnisrecError(f"{places[number]}, entry {position + 1}: unknown item id {item!r}{more}; every "
                               "history entry must be an item id of the catalogue") from None
    for lo in range(0, len(records), 256):
        part = records[lo : lo + 256]
        results = (recommender.recommend_rows(rows[lo : lo + 256], args.k, not args.include_seen) if rows is not None
                   else recommender.recommend_lists([r["history"] for r in part], args.k, not args.include_seen, True))
        for record, ranked in zip(part, results, strict=True):
            out = {**record, "results": [asdict(r) for r in ranked]}
            print(json.dumps(out, ensure_ascii=False))
    return 0


def _split_history(text: str, sep: str, place: str) -> list[str]:
    """The entries of one ``--history`` value, stripped; an empty one (``"i1,,i2"``, a trailing separator, a blank
    value) is refused with its position rather than dropped."""
    if not sep:
        raise UnisrecError("--sep is empty: give the character(s) that separate the --history entries")
    entries = [entry.strip() for entry in text.split(sep)]
    if not any(entries):
        raise UnisrecError(f"{place} is empty: give at least one item id, separated by {sep!r}")
    blank = next((n for n, entry in enumerate(entries, 1) if not entry), None)
    if blank is not None:
        raise UnisrecError(f"{place}, entry {blank} of {len(entries)} is empty ({text!r} split at {sep!r}); "
                           "give each item id once, with no separator doubled or left at an end")
    return entries


def _read_history_file(path: Path, texts: bool = False) -> tuple[list[dict[str, Any]], list[int]]:
    """The records of a JSON-lines history file and the line number of each; ``texts``: entries are item texts
    (strings only), else ids (strings, or integers as the Python API takes them)."""
    if path.is_dir():
        raise UnisrecError(f"{path}: a folder, not a JSON-lines file of histories")
    if not path.is_file():
        raise UnisrecError(f"{path}: no such file")
    records, lines = [], []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        bad_line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise UnisrecError(f"{path}, line {bad_line}: not valid UTF-8 text") from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UnisrecError(f"{path}, line {number}: not valid JSON ({exc.msg})") from None
        history = record.get("history") if isinstance(record, dict) else None
        # ids are strings, or integers as the Python API takes them (MovieLens ids), never booleans
        if not isinstance(history, list) or not history or not all(
                isinstance(x, str) or (not texts and isinstance(x, int) and not isinstance(x, bool)) for x in history):
            expected = ('{"history": ["item text", ...]} (a non-empty list of texts)' if texts else
                        '{"history": ["item id", ...]} (a non-empty list of string or integer ids)')
            raise UnisrecError(f"{path}, line {number}: expected {expected}")
        blank = next((n for n, x in enumerate(history, 1) if isinstance(x, str) and not x.strip()), None)
        if blank is not None:  # as --history refuses an empty entry
            raise UnisrecError(f"{path}, line {number}: history entry {blank} is blank")
        if "results" in record:  # each record comes back whole with the answer under "results": it would be lost
            raise UnisrecError(f"{path}, line {number}: holds a \"results\" field, the name the answer is written "
                               "under; rename it")
        records.append(record)
        lines.append(number)
    if not records:
        raise UnisrecError(f"{path}: no histories")
    return records, lines


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="item / user vectors (.npy, .safetensors) and an exact FAISS index")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--out", required=True, type=Path, help="folder to write")
    p.add_argument("--data", type=Path, default=None, help="processed dataset: also export its users' vectors")
    p.add_argument("--no-index", action="store_true", help="skip the FAISS index (needs faiss-cpu)")
    p.set_defaults(handler=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from unisrec.recommend import Recommender

    manifest = Recommender.from_pretrained(args.run_dir).export_vectors(args.out, args.data, index=not args.no_index)
    print(json.dumps({"out": str(args.out), "n_items": manifest["n_items"], "dim": manifest["dim"],
                      "files": sorted(manifest["files"])}))
    return 0


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="HTTP service: POST /recommend, POST /items, GET /health (FastAPI)")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--backend", choices=("torch", "faiss"), default="torch", help="exact top-k by torch or FAISS")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (0: torch default); one, with requests batched, wastes least on shared CPUs")
    p.add_argument("--max-batch", type=int, default=64, help="histories ranked together at most")
    p.add_argument("--token", default=None,
                   help="require 'Authorization: Bearer TOKEN' on POST /items (default: $UNISREC_TOKEN)")
    p.add_argument("--max-body-bytes", type=int, default=4 * 2**20, help="larger request bodies get 413")
    p.add_argument("--max-catalogue", type=int, default=1_000_000,
                   help="items the catalogue may grow to through POST /items (409 beyond)")
    p.add_argument("--access-log", action="store_true", help="one line per request on stderr")
    p.set_defaults(handler=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    try:
        from unisrec.serve import serve
    except ImportError as exc:
        raise UnisrecError(f"serving needs the serve extra: pip install 'unisrec[serve]' ({exc})") from None
    token = args.token if args.token is not None else (os.environ.get("UNISREC_TOKEN") or None)
    serve(str(args.run_dir), args.host, args.port, backend=args.backend, threads=args.threads,
          max_batch=args.max_batch, token=token, max_body_bytes=args.max_body_bytes, access_log=args.access_log,
          max_catalogue=args.max_catalogue)
    return 0


def _add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="run (or reuse) the experiments of a report config over its seeds and write DIR/report.md",
        description="Runs every missing run of the config (cached runs with the same settings are reused), then "
        "writes a record per run and, from the records alone, RESULTS/report.md, report.json and PNG plots. "
        "Schema: unisrec/report_config.py.",
    )
    p.add_argument("config", type=Path, help="report config YAML (e.g. configs/report/scientific.yaml)")
    p.add_argument("--out", default=None, type=Path,
                   help="folder of the runs and prepared data (not needed with --report-only)")
    p.add_argument("--data-root", default=None, help="replace the config's data_root (base of dataset sources)")
    p.add_argument("--only", default=None, help="comma-separated experiments to run (and what they need)")
    p.add_argument("--dry-run", action="store_true", help="print the planned runs and their commands; run nothing")
    p.add_argument("--report-only", action="store_true",
                   help="regenerate RESULTS/report.md (and its plots) from the records alone; run nothing")
    p.add_argument("--budget-minutes", type=float, default=None,
                   help="start no run whose estimated time exceeds what is left of this budget; rerun to go on")
    p.add_argument("--pretrain-only", action="store_true",
                   help="of the missing runs, run only the pre-trainings (and record them); a rerun without it "
                   "goes on with the rest")
    p.add_argument("--jobs", type=int, default=1,
                   help="runs at once, each in its own process with cores/JOBS torch threads (default 1: one at a "
                   "time, in this process); a run waits for the runs it reads")
    p.add_argument("--verify", metavar="RUN", default=None,
                   help="rerun the recorded run RUN (its record's name) and print the difference per metric "
                   "and per epoch's training loss")
    p.add_argument("--against", metavar="RUN_DIR", default=None, type=Path,
                   help="with --verify: compare the finished run folder RUN_DIR with the record instead of "
                   "rerunning (a rerun made elsewhere, e.g. by another session's report)")
    p.add_argument("--adopt", metavar="RUN_DIR", default=None, type=Path,
                   help="take a fine-tuning or pre-training run started by hand with the report's command "
                   "(--dry-run) into the report: its settings are checked and its spec file written; run nothing")
    p.add_argument("--results", type=Path, default=None,
                   help="folder of the per-run records and of report.md (default: results/<config file name>)")
    p.set_defaults(handler=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    from unisrec.report import run_report

    # each mode (--verify, --adopt, --report-only, or running) reads only some flags: the others would be ignored
    given = {"--only": args.only is not None, "--dry-run": args.dry_run, "--report-only": args.report_only,
             "--budget-minutes": args.budget_minutes is not None, "--pretrain-only": args.pretrain_only,
             "--jobs": args.jobs != 1, "--adopt": args.adopt is not None, "--verify": args.verify is not None}
    for mode in ("--verify", "--adopt", "--report-only"):
        if given[mode]:
            ignored = [flag for flag, on in given.items() if on and flag != mode]
            if ignored:
                raise UnisrecError(f"{mode} does not go with {', '.join(ignored)} (it would ignore them): give it "
                                   "alone")
    only = [name.strip() for name in args.only.split(",") if name.strip()] if args.only is not None else None
    if only == []:  # "--only ," would otherwise mean every run
        raise UnisrecError(f"--only {args.only!r} names no run: give comma-separated experiment names")
    if args.dry_run and args.budget_minutes is not None:
        raise UnisrecError("--budget-minutes limits a real run; --dry-run prints every planned run and the training "
                           "they still need, whatever the budget: give one")
    if args.budget_minutes is not None and not 0 < args.budget_minutes < float("inf"):
        raise UnisrecError(f"--budget-minutes must be a number > 0, got {args.budget_minutes}")
    results = args.results if args.results is not None else Path("results") / args.config.stem
    if args.verify:
        from unisrec.report import verify_run

        if args.out is None:
            raise UnisrecError("--verify needs --out (the report folder whose pre-training runs it reuses)")
        print(json.dumps(verify_run(args.config, args.out, args.verify, results, data_root=args.data_root,
                                    against=args.against)))
        return 0
    if args.against is not None:
        raise UnisrecError("--against goes with --verify RUN (the record to compare the folder with)")
    if args.adopt is not None:
        from unisrec.report import adopt_run

        if args.out is None:
            raise UnisrecError("--adopt needs --out (the report folder the run belongs to)")
        print(json.dumps(adopt_run(args.config, args.out, args.adopt, data_root=args.data_root)))
        return 0
    command = f"unisrec report {args.config.as_posix()} --report-only"
    if args.results is not None:
        command += f" --results {args.results.as_posix()}"
    counts: dict[str, int] = {}
    path = run_report(args.config, args.out, data_root=args.data_root, only=only, dry_run=args.dry_run,
                      report_only=args.report_only, budget_minutes=args.budget_minutes, results_dir=results,
                      command=command, jobs=args.jobs, pretrain_only=args.pretrain_only, plan_counts=counts)
    if args.dry_run:  # the plan went to stderr; the summary: how many planned runs have each status
        print(json.dumps({"dry_run": True, "report": str(path), "runs": sum(counts.values()), "status": counts}))
    else:
        print(json.dumps({"report": str(path)}))
    return 0


def _add_record(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("record", help="write small JSON records of finished runs (results/NAME/RUN.json)",
                       description="One record per run folder: command, settings, code commit, data and text "
                       "fingerprints, metrics, curve, time, memory, machine, long-tail counts (unisrec/records.py).")
    p.add_argument("run_dirs", type=Path, nargs="+", help="finished run folders")
    p.add_argument("--out-dir", required=True, type=Path, help="folder of the records (e.g. results/transfer)")
    p.set_defaults(handler=_run_record)


def _run_record(args: argparse.Namespace) -> int:
    from unisrec.records import write_records

    print(json.dumps({"records": [str(p) for p in write_records(args.run_dirs, args.out_dir)]}))
    return 0


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_prepare,
    _add_finetune,
    _add_evaluate,
    _add_pretrain,
]
COMMANDS.append(_add_encode)
COMMANDS += [_add_recommend, _add_export, _add_serve]
COMMANDS += [_add_report, _add_record]


class _Parser(argparse.ArgumentParser):
    """argparse's parser with its errors in one line, as every other error of the CLI: argparse printed its usage
    block first (13 lines for `unisrec prepare SRC --format foo`). The subcommands' parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="unisrec",
        description="Text-based, transferable sequential recommendation (UniSRec).",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"unisrec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


TRAINING_COMMANDS = ("finetune", "pretrain")
OVERRIDE_COMMANDS = (*TRAINING_COMMANDS, "encode")  # commands that take dotted overrides (encode: text.* only)


def parse_overrides(extra: list[str]) -> list[str]:
    """``--model.n_layers=3`` / ``--model.n_layers 3`` -> ``["model.n_layers=3"]``."""
    from unisrec.config import renamed_override

    out: list[str] = []
    i = 0
    while i < len(extra):
        token = extra[i]
        if not token.startswith("--") or "." not in token.split("=", 1)[0]:
            raise UnisrecError(f"unrecognized argument {token!r} (config overrides look like --train.lr=1e-4)")
        if "=" in token:
            out.append(token[2:])
            i += 1
        elif i + 1 < len(extra):
            out.append(f"{token[2:]}={extra[i + 1]}")
            i += 2
        else:
            raise UnisrecError(f"override {token!r} has no value")
    return [renamed_override(item) for item in out]  # an old name (--pretrain.strided_windows) as its new one


def _stdout_gone() -> bool:
    """Whether the reader of stdout has gone: what is buffered cannot be written, or the descriptor (a pipe, a
    socket) reports an error or a hang-up. Flushing alone missed it when the failed write had left nothing
    buffered (the reader gone before the first line: "error: Broken pipe", exit 2)."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        return True
    except (OSError, ValueError):
        return False
    try:
        descriptor = sys.stdout.fileno()
    except (OSError, ValueError, AttributeError):  # replaced by an object without one (tests, notebooks)
        return False
    if not hasattr(select, "poll"):
        return False
    poller = select.poll()
    poller.register(descriptor, select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poller.poll(0))


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    try:
        if extra and args.command not in OVERRIDE_COMMANDS:
            raise UnisrecError(f"unrecognized arguments: {' '.join(extra)} (see unisrec {args.command} --help)")
        args.overrides = parse_overrides(extra)
        code = int(args.handler(args))
        sys.stdout.flush()  # here, not at the interpreter's exit: a reader gone before a short output is seen below
        return code
    except UnisrecError as exc:
        print(f"unisrec {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"unisrec {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError as exc:  # the reader of stdout went (`unisrec recommend ... | head`): stop quietly, as
        if _stdout_gone():  # shell tools do; another pipe (a socket, a subprocess) is an error like any other
            with contextlib.suppress(OSError, ValueError, AttributeError):  # what is left goes to /dev/null, so
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush is quiet too
            return 141  # 128 + SIGPIPE
        print(f"unisrec {args.command}: error: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # disk full, permissions, ...: one line naming the file, no traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"unisrec {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
