"""Command-line interface: thin subcommands over the Python API (``unisrec --help``)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from unisrec import __version__
from unisrec.errors import UnisrecError

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
    p.add_argument("--name", default=None, help="dataset name (unisrec/recbole: which file prefix to read)")
    p.add_argument("--interactions", type=Path, default=None, help="csv: interactions file")
    p.add_argument("--items", type=Path, default=None, help="csv: items file")
    p.add_argument("--user-column", default="user_id")
    p.add_argument("--item-column", default="item_id")
    p.add_argument("--time-column", default="timestamp")
    p.add_argument("--items-id-column", default="item_id")
    p.add_argument("--text-columns", default="title|text",
                   help="'a|b': the first present; 'a,b': all, joined as 'a. b'")
    p.add_argument("--delimiter", default=",")
    p.add_argument("--encoding", default="utf-8")
    p.add_argument("--user-core", type=int, default=5)
    p.add_argument("--item-core", type=int, default=5)
    p.add_argument("--min-seq-len", type=int, default=3)
    p.add_argument("--cache-dir", type=Path, default=None, help="movielens: download cache")
    p.set_defaults(handler=_run_prepare)


def _run_prepare(args: argparse.Namespace) -> int:
    from unisrec.datasets import CsvColumns, PrepareOptions, prepare

    columns = CsvColumns(
        user=args.user_column,
        item=args.item_column,
        timestamp=args.time_column,
        items_item=args.items_id_column,
        text=args.text_columns,
    )
    options = PrepareOptions(args.user_core, args.item_core, args.min_seq_len)
    several = len(args.source) > 1
    if several and (args.interactions or args.items):
        raise UnisrecError("--interactions / --items go with a single source")
    results = []
    for source in args.source:
        out = args.out / Path(source.rstrip("/")).name if several else args.out
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


COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_prepare]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unisrec", description="Text-based, transferable sequential recommendation (UniSRec)."
    )
    parser.add_argument("--version", action="version", version=f"unisrec {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args))
    except UnisrecError as exc:
        print(f"unisrec {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"unisrec {args.command}: interrupted", file=sys.stderr)
        return 130
