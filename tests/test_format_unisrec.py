"""Format ``unisrec``: the UniSRec authors' processed files, kept exactly (indices and split)."""

from __future__ import annotations

from pathlib import Path

import pytest
from format_checks import check_leave_one_out, cli_error

from unisrec.datasets import PrepareOptions, ProcessedDataset, load_processed, prepare
from unisrec.errors import UnisrecError

SCIENTIFIC = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon-scientific"
HEADER = "user_id:token\titem_id_list:token_seq\titem_id:token"


def regenerate(dataset: ProcessedDataset, max_len: int) -> dict[str, list[str]]:
    """The rows of X.train/valid/test.inter rebuilt from a processed dataset: every prefix -> next item
    (a user's training prefixes longest first), history cut to the last ``max_len`` items."""
    rows: dict[str, list[str]] = {"train": [], "valid": [], "test": []}

    def row(user: int, seq: list[int], target: int) -> str:
        history = seq[max(0, target - max_len) : target]
        return f"{user}\t{' '.join(map(str, history))}\t{seq[target]}"

    for user in range(dataset.n_users):
        seq = dataset.sequence(user).tolist()
        n = len(seq)
        rows["train"] += [row(user, seq, t) for t in range(n - 3, 0, -1)]
        rows["valid"].append(row(user, seq, n - 2))
        rows["test"].append(row(user, seq, n - 1))
    return rows


def file_rows(prefix: Path) -> dict[str, list[str]]:
    rows = {}
    for split in ("train", "valid", "test"):
        lines = Path(f"{prefix}.{split}.inter").read_text().splitlines()
        assert lines[0] == HEADER
        rows[split] = lines[1:]
    return rows


SEQUENCES = {"A": [0, 1, 2, 3, 4], "B": [5, 6, 7, 8, 9, 10], "C": [2, 4, 6]}  # by item index
MAX_LEN = 3


def write_tiny(folder: Path) -> Path:
    """X.* files of three users; histories cut to the last 3 items (user B's are cut)."""
    folder.mkdir()
    users = list(SEQUENCES)
    (folder / "X.user2index").write_text("".join(f"{u}\t{i}\n" for i, u in enumerate(users)))
    (folder / "X.item2index").write_text("".join(f"asin{i}\t{i}\n" for i in range(11)))
    texts = "".join(f"asin{i}\tItem {i} &amp; co. Tools. Brand. \n" for i in range(11))
    (folder / "X.text").write_text("item_id:token\ttext:token_seq\n" + texts)
    rows: dict[str, list[str]] = {"train": [], "valid": [], "test": []}
    for u, seq in enumerate(SEQUENCES.values()):
        n = len(seq)

        def row(t: int, u: int = u, seq: list[int] = seq) -> str:
            return f"{u}\t{' '.join(map(str, seq[max(0, t - MAX_LEN) : t]))}\t{seq[t]}"

        rows["train"] += [row(t) for t in range(n - 3, 0, -1)]
        rows["valid"].append(row(n - 2))
        rows["test"].append(row(n - 1))
    for split, lines in rows.items():
        (folder / f"X.{split}.inter").write_text(HEADER + "\n" + "".join(line + "\n" for line in lines))
    return folder


def test_texts_may_hold_unicode_line_separators(tmp_path: Path) -> None:
    """Lines end at LF (or CRLF) only: str.splitlines also broke them at U+2028, U+0085 and form feeds."""
    source = write_tiny(tmp_path / "src")
    text = source / "X.text"
    lines = text.read_text().split("\n")
    lines[3] = "asin2\tpart one\u2028part two\x85three\x0cfour\r"
    text.write_text("\n".join(lines), newline="")
    prepare(source, "unisrec", tmp_path / "out")
    data = load_processed(tmp_path / "out")
    # one text (its white space made single spaces, as every text's), not an error at a line that is not one
    assert data.item_texts[list(data.item_ids).index("asin2")] == "part one part two three four"


def test_tiny_files_are_reproduced(tmp_path: Path) -> None:
    source = write_tiny(tmp_path / "src")
    prepare(source, "unisrec", tmp_path / "out")
    data = load_processed(tmp_path / "out")
    assert (data.n_users, data.n_items, data.n_interactions) == (3, 11, 14)
    assert list(data.user_ids) == ["A", "B", "C"]
    assert [data.sequence(u).tolist() for u in range(3)] == list(SEQUENCES.values())
    assert data.item_texts[0] == "Item 0 & co. Tools. Brand."
    check_leave_one_out(data)
    assert data.info["history_cut"] == MAX_LEN and data.name == "X"
    assert data.stats["filtering"] == [] and data.stats["catalogue_items_without_interactions"] == 0
    assert regenerate(data, MAX_LEN) == file_rows(source / "X")


def test_name_picks_the_prefix(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_tiny(tmp_path / "src")
    for path in source.iterdir():
        (source / path.name.replace("X.", "Y.")).write_bytes(path.read_bytes())
    message = cli_error(capsys, [str(source), "--format", "unisrec"], tmp_path / "out")
    assert message == f"{source}: several datasets (X, Y); choose one with --name"
    assert prepare(source, "unisrec", tmp_path / "out", name="Y").name == "Y"


def test_options_it_does_not_read_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A unisrec folder is already filtered and split: --user-core and the csv options were ignored without a
    word, so a user who asked for 10-core data got the 5-core files."""
    source = write_tiny(tmp_path / "src")
    message = cli_error(capsys, [str(source), "--format", "unisrec", "--user-core", "10"], tmp_path / "out")
    assert message == ("--user-core does not apply to format unisrec (a unisrec folder is already filtered and "
                       "split); it is read by format csv, amazon2018, online-retail, recbole, movielens only")
    message = cli_error(capsys, [str(source), "--format", "unisrec", "--encoding", "latin-1"], tmp_path / "out")
    assert message.startswith("--encoding does not apply to format unisrec")
    assert message.endswith("read by format csv, online-retail, recbole only")
    message = cli_error(capsys, [str(source), "--format", "unisrec", "--text-columns", "title"], tmp_path / "out")
    assert message.startswith("--text-columns does not apply") and message.endswith("format csv only")
    with pytest.raises(UnisrecError, match=r"^options does not apply to format unisrec"):
        prepare(source, "unisrec", tmp_path / "out", options=PrepareOptions(user_core=10))
    with pytest.raises(UnisrecError, match=r"^prepare\(\) got unknown option\(s\) delimeter; expected: "):
        prepare(source, "unisrec", tmp_path / "out", delimeter=";")
    assert not (tmp_path / "out").exists()
    assert prepare(source, "unisrec", tmp_path / "out", options=PrepareOptions()).n_users == 3  # the defaults: fine


def _error(capsys: pytest.CaptureFixture[str], source: Path, out: Path) -> str:
    return cli_error(capsys, [str(source), "--format", "unisrec"], out)


def test_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_tiny(tmp_path / "src")
    out = tmp_path / "out"
    (source / "X.test.inter").rename(source / "keep")
    assert _error(capsys, source, out) == f"{source / 'X.test.inter'}: file not found"
    (source / "keep").rename(source / "X.test.inter")

    valid = source / "X.valid.inter"
    good = valid.read_text()
    valid.write_text(good.replace("\t6 7 8\t", "\t7 6 8\t"))
    assert _error(capsys, source, out) == f"{valid}, line 3: history does not match user 1's training items"
    valid.write_text(good.replace("item_id:token\n", "item:token\n", 1))
    assert _error(capsys, source, out) == (
        f"{valid}, line 1: expected the header 'user_id:token\\titem_id_list:token_seq\\titem_id:token'"
    )
    valid.write_text(good + "0\t0 1\t2\n")
    assert _error(capsys, source, out) == f"{valid}, line 5: second row for user 0 (first on line 2)"
    valid.write_text(good.replace("2\t2\t4", "2\t2\t99"))
    assert _error(capsys, source, out) == f"{valid}, line 4: empty history or item index outside 0..10"
    valid.write_text(good)

    text = source / "X.text"
    good = text.read_text()
    text.write_text(good.replace("asin3\tItem 3 &amp; co. Tools. Brand. ", "asin3\t  "))
    assert _error(capsys, source, out) == f"{text}, line 5, column 'text': empty text for item 'asin3'"
    text.write_bytes(good.replace("Item 4", "Item \udcff4").encode("utf-8", "surrogateescape"))
    assert _error(capsys, source, out) == f"{text}, line 6: not valid UTF-8 text"
    text.write_text(good)

    index = source / "X.item2index"
    index.write_text(index.read_text() + "asin11\t3\n")
    assert _error(capsys, source, out) == f"{index}, line 12: index 3 already used on line 4"


@pytest.mark.slow
def test_amazon_scientific_is_reproduced(tmp_path: Path) -> None:
    if not (SCIENTIFIC / "Scientific.train.inter").exists():
        pytest.skip(f"{SCIENTIFIC} is not here")
    prepare(SCIENTIFIC, "unisrec", tmp_path / "sci")
    data = load_processed(tmp_path / "sci")
    assert (data.n_users, data.n_items, data.n_interactions) == (8442, 4385, 59427)
    assert data.info["history_cut"] == 50
    assert data.stats["split"] == {"train": 59427 - 2 * 8442, "valid": 8442, "test": 8442}
    assert regenerate(data, 50) == file_rows(SCIENTIFIC / "Scientific")
    first = (SCIENTIFIC / "Scientific.text").read_text().splitlines()[1].split("\t")
    item = list(data.item_ids).index(first[0])
    assert data.item_texts[item] == first[1].strip()


def test_scientific_titles_script_cuts_each_text_before_its_categories(tmp_path: Path) -> None:
    import importlib.util
    import subprocess
    import sys

    path = Path(__file__).resolve().parent.parent / "scripts" / "scientific_titles.py"
    spec = importlib.util.spec_from_file_location("scientific_titles", path)
    assert spec is not None and spec.loader is not None
    titles = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(titles)
    # a brand and a title may hold ". " themselves; an item without categories has ". . " after its title
    assert titles.title_of("Mr. Heater Kit 3/8. Industrial & Scientific Fittings. Mr. Heater. ") == "Mr. Heater Kit 3/8"
    assert titles.title_of("Tape: 2 in. x 18 yds. (Red). Industrial & Scientific Tape. J.V. Conv. ") == (
        "Tape: 2 in. x 18 yds. (Red)")
    assert titles.title_of("Exhaust Fan, 120 Volt. . TPI. ") == "Exhaust Fan, 120 Volt"
    assert titles.title_of("no markers at all") == "no markers at all"
    source = tmp_path / "src"
    source.mkdir()
    header = "item_id:token\ttext:token_seq\n"
    (source / "Scientific.text").write_text(header + "A\tGlue. Industrial & Scientific Glue. G. \n")
    (source / "Scientific.train.inter").write_text("kept as it is\n")
    done = subprocess.run([sys.executable, str(path), str(source), str(tmp_path / "out")], capture_output=True,
                          text=True, check=True)
    assert '"cut_to_title": 1' in done.stdout.splitlines()[-1]
    assert (tmp_path / "out" / "Scientific.text").read_text() == header + "A\tGlue\n"
    assert (tmp_path / "out" / "Scientific.train.inter").read_text() == "kept as it is\n"
    (source / "Scientific.text").write_text(header + "no tab here\n")
    bad = subprocess.run([sys.executable, str(path), str(source), str(tmp_path / "out2")], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "Scientific.text:2: no tab" in bad.stderr and "Traceback" not in bad.stderr


def test_byte_order_marks_blank_last_lines_and_empty_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    source = write_tiny(tmp_path / "src")
    prepare(source, "unisrec", tmp_path / "plain")
    for name in ("X.item2index", "X.text", "X.user2index"):  # a BOM is not part of the first id or the header
        (source / name).write_bytes(b"\xef\xbb\xbf" + (source / name).read_bytes())
    for split in ("train", "valid", "test"):  # a blank line at the end, as editors leave them
        (source / f"X.{split}.inter").write_text((source / f"X.{split}.inter").read_text() + "\n")
    prepare(source, "unisrec", tmp_path / "bom")
    plain, bom = load_processed(tmp_path / "plain"), load_processed(tmp_path / "bom")
    assert list(bom.item_ids) == list(plain.item_ids) and list(bom.user_ids) == list(plain.user_ids)
    assert (bom.items == plain.items).all() and bom.item_texts == plain.item_texts
    index = source / "X.item2index"
    good = index.read_text()
    index.write_text(good.replace("asin0\t0", "asin0\t\u00b2"))  # a digit to isdigit(), not to int()
    assert _error(capsys, source, tmp_path / "out") == (
        f"{index}, line 1: expected 'original id<TAB>index', got 'asin0\\t²'")
    index.write_text(good)
    users = source / "X.user2index"
    users.write_text("")
    assert _error(capsys, source, tmp_path / "out") == f"{users}: no ids: the dataset is empty"
