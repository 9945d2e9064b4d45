"""README result tables generated from committed records: each table that follows a
``<!-- table: python scripts/seed_table.py ... -->`` comment must equal that command's output today
(``python scripts/readme_tables.py`` rewrites them, ``--check`` only compares)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent
SCRIPT = ROOT / "scripts" / "readme_tables.py"


def tables(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, capture_output=True, text=True)


def test_readme_tables_equal_their_commands_output() -> None:
    done = tables("--check")
    assert done.returncode == 0, done.stderr


def test_a_stale_table_is_found_and_rewritten_from_its_record(tmp_path: Path) -> None:
    record = tmp_path / "run-s1.json"
    record.write_text(json.dumps({"test": {"recall@10": 0.125, "ndcg@10": 0.0625}}))
    marker = f'<!-- table: python scripts/seed_table.py --metrics recall@10,ndcg@10 "ours={record}" -->'
    readme = tmp_path / "README.md"
    readme.write_text(f"# Title\n\ntext before\n{marker}\n| model | stale |\n|---|---|\n\ntext after\n")

    check = tables("--check", "--readme", str(readme))
    assert check.returncode == 1
    assert "differs from its command's output" in check.stderr and str(record) in check.stderr

    assert tables("--readme", str(readme)).returncode == 0
    assert readme.read_text().splitlines() == [
        "# Title", "", "text before", marker,
        "| model | runs | recall@10 | ndcg@10 |", "|---|---|---|---|", "| ours | 1 | 0.1250 | 0.0625 |",
        "", "text after",
    ]
    assert tables("--check", "--readme", str(readme)).returncode == 0


def test_a_table_may_only_come_from_seed_table(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text("<!-- table: python -c print(1) -->\n| x |\n")
    done = tables("--check", "--readme", str(readme))
    assert done.returncode != 0
    assert "a table must come from python scripts/seed_table.py" in done.stderr
