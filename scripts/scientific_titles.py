"""Diagnostic: a copy of the paper's Scientific files with every item text cut to its title.

    python scripts/scientific_titles.py ../shared/data/amazon-scientific OUT_FOLDER

The paper's texts are "title. categories. brand. ", the pre-training corpus's are titles only. Cutting the
target's texts to the title makes both formats alike, which tells whether the format gap limits what a
pre-trained model carries over (docs/transfer.md, "The text format gap"). Every category path of
this set starts with "Industrial & Scientific"; an item without categories has ". . " after its title; the
title ends before the first of the two (a brand or a title may itself hold ". ", so splitting on it would not
do). Every other file is copied as it is; the last line of stdout is one JSON object.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

TEXT_FILE = "Scientific.text"
MARKERS = (". Industrial & Scientific", ". . ")


def title_of(text: str) -> str:
    """The title part of one "title. categories. brand. " text (the whole text when no marker is found)."""
    cuts = [i for i in (text.find(marker) for marker in MARKERS) if i >= 0]
    return text[: min(cuts)] if cuts else text


def main() -> None:
    if len(sys.argv) != 3:
        sys.exit("usage: python scripts/scientific_titles.py SCIENTIFIC_FOLDER OUT_FOLDER")
    source, out = Path(sys.argv[1]), Path(sys.argv[2])
    text_path = source / TEXT_FILE
    if not text_path.is_file():
        print(f"{text_path}: missing (the folder of the paper's Scientific files is expected)", file=sys.stderr)
        sys.exit(2)
    out.mkdir(parents=True, exist_ok=True)
    for path in source.iterdir():
        if path.is_file() and path.name != TEXT_FILE:
            shutil.copyfile(path, out / path.name)
    header, *lines = text_path.read_text(encoding="utf-8").splitlines()
    rows, cut = [header], 0
    for number, line in enumerate(lines, start=2):
        if "\t" not in line:
            print(f"{text_path}:{number}: no tab between item id and text", file=sys.stderr)
            sys.exit(2)
        item, text = line.split("\t", 1)
        title = title_of(text)
        cut += title != text
        rows.append(f"{item}\t{title}")
    (out / TEXT_FILE).write_text("\n".join(rows) + "\n", encoding="utf-8")
    print(json.dumps({"out": str(out), "items": len(lines), "cut_to_title": cut}))


if __name__ == "__main__":
    main()
