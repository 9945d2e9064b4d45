"""Regenerate (or check) the result tables of README.md and docs/*.md from the committed records.

    python scripts/readme_tables.py            # rewrite every generated table of README.md and docs/*.md in place
    python scripts/readme_tables.py --check    # exit 1, naming the file and table, when one differs from its command
    python scripts/readme_tables.py --readme F # only the Markdown file F (may be repeated)

A generated table is the block of ``|`` lines right after a ``<!-- table: python scripts/seed_table.py ... -->``
comment; the comment's command (run from the repository root) prints the table. tests/test_readme_tables.py
runs the check, so a README number is always the output of a command over records anyone can rerun.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MARK = "<!-- table: "
END = "-->"
ALLOWED = ["python", "scripts/seed_table.py"]  # the only command a table may name
DOCS = ROOT / "docs"


def default_files() -> list[Path]:
    """README.md and every docs/*.md that holds a generated table."""
    docs = [p for p in sorted(DOCS.glob("*.md")) if MARK in p.read_text()]
    return [README, *docs]


@dataclass(frozen=True)
class Table:
    line: int  # 0-based index of the marker line
    command: str
    rows: list[str]  # the README's table lines now


def find_tables(lines: list[str], source: str = "README.md") -> list[Table]:
    tables = []
    for index, raw in enumerate(lines):
        line = raw.rstrip()  # a trailing space is harmless; an indented marker or one followed by text was skipped
        if MARK.strip() in line and not (line.startswith(MARK) and line.endswith(END)):
            raise SystemExit(f"readme_tables: {source}, line {index + 1}: a table marker must be "
                             f"'{MARK}COMMAND{END}' on a line of its own, not indented, got {raw!r}")
        if line.startswith(MARK) and line.endswith(END):
            command = line[len(MARK) : -len(END)].strip()
            rows = []
            for row in lines[index + 1 :]:
                if not row.startswith("|"):
                    break
                rows.append(row)
            tables.append(Table(index, command, rows))
    return tables


def generate(command: str, source: str = "README.md") -> list[str]:
    """The table printed by ``command`` (a seed_table.py call) run from the repository root."""
    words = shlex.split(command)
    if words[:2] != ALLOWED:
        raise SystemExit(f"readme_tables: {source}: a table must come from {' '.join(ALLOWED)}, not {command!r}")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    done = subprocess.run([sys.executable, *words[1:]], cwd=ROOT, capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"readme_tables: {command}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout.splitlines()


def regenerated(lines: list[str], tables: list[Table], source: str = "README.md") -> tuple[list[str], list[str]]:
    """The file's lines with every table replaced by its command's output, and the commands whose table changed."""
    out: list[str] = []
    changed: list[str] = []
    done_to = 0
    for table in tables:
        new_rows = generate(table.command, source)
        if new_rows != table.rows:
            changed.append(table.command)
        out += lines[done_to : table.line + 1] + new_rows
        done_to = table.line + 1 + len(table.rows)
    return out + lines[done_to:], changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a table differs")
    parser.add_argument("--readme", type=Path, action="append",
                        help="a Markdown file (repeatable; default: README.md and docs/*.md with tables)")
    args = parser.parse_args(argv)
    files: list[Path] = args.readme or default_files()
    found = {path: find_tables(path.read_text().splitlines(), str(path)) for path in files}
    empty = [str(path) for path, tables in found.items() if not tables]
    if empty:  # before any file is rewritten
        print(f"readme_tables: {', '.join(empty)}: no generated table", file=sys.stderr)
        return 2
    differ = 0
    rewritten = 0
    for path, tables in found.items():
        lines = path.read_text().splitlines()
        new_lines, changed = regenerated(lines, tables, str(path))
        if args.check:
            for command in changed:
                print(f"readme_tables: {path}: differs from its command's output: {command}", file=sys.stderr)
            differ += len(changed)
        elif changed:
            from unisrec.atomic import atomic_write_text

            atomic_write_text(path, "\n".join(new_lines) + "\n")
            rewritten += len(changed)
    if args.check:
        return 1 if differ else 0
    print(f"readme_tables: {rewritten} table(s) rewritten")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
