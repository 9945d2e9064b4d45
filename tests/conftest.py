"""Shared fixtures: small synthetic datasets written by the tests themselves."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch

# Tests use tiny tensors: one thread avoids OpenMP spin-waits that dominate when the cores are shared.
torch.set_num_threads(1)


def write_csv(path: Path, header: str, rows: list[str], *, compress: bool = False) -> Path:
    text = header + "\n" + "".join(r + "\n" for r in rows)
    if compress:
        path.write_bytes(gzip.compress(text.encode("utf-8")))
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def tiny_csv_source(tmp_path: Path) -> Path:
    """A csv-format folder: 8 users x 6 interactions over 6 items (passes 5-core), one item without events."""
    folder = tmp_path / "tiny"
    folder.mkdir()
    rows = []
    for user in range(8):
        for step in range(6):
            item = (user + step) % 6
            rows.append(f"u{user},i{item},{1000 + 10 * step + user}")
    write_csv(folder / "interactions.csv", "user_id,item_id,timestamp", rows)
    items = [f'i{i},"Item {i}, &quot;quoted&quot; title"' for i in range(6)] + ["i99,Never bought"]
    write_csv(folder / "items.csv", "item_id,title", items)
    return folder


TINY_LM_WORDS = [
    *("item", "quoted", "title", "never", "bought", "red", "blue", "green", "camera", "lens", "microscope"),
    *("glass", "beaker", "tube", "lab", "kit", "set", "the", "a", "of", "and", "with", "for", "digital"),
    *("optical", "steel", "small", "large"),
]


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random BERT (hidden 32, 2 layers) with a word-level vocabulary, saved with save_pretrained."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    folder = tmp_path_factory.mktemp("lm") / "tiny-lm"
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = specials + TINY_LM_WORDS + [str(d) for d in range(10)] + list(",.&;\"'-()")
    BertTokenizer(vocab={token: i for i, token in enumerate(vocab)}).save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    BertModel(config).eval().save_pretrained(folder)
    return folder


def write_synthetic_source(folder: Path, n_users: int = 60, n_items: int = 30, seed: int = 0) -> Path:
    """A csv-format folder with learnable structure: users walk item chains i -> i+1 (mod n_items)."""
    import random

    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for user in range(n_users):
        item = rng.randrange(n_items)
        for step in range(rng.randint(5, 12)):
            rows.append(f"u{user},i{item},{100 * user + step}")
            item = (item + 1) % n_items if rng.random() < 0.8 else rng.randrange(n_items)
    write_csv(folder / "interactions.csv", "user_id,item_id,timestamp", rows)
    words = TINY_LM_WORDS
    titles = [f"i{i},{words[i % len(words)]} {words[(3 * i + 1) % len(words)]} {i}" for i in range(n_items)]
    write_csv(folder / "items.csv", "item_id,title", titles)
    return folder


def prepare_synthetic(folder: Path, seed: int = 0, n_users: int = 60, n_items: int = 30) -> Path:
    """A processed dataset folder (no k-core filtering) with chain-structured sequences."""
    from unisrec.datasets import PrepareOptions, prepare

    source = write_synthetic_source(folder.with_name(folder.name + "-src"), n_users, n_items, seed)
    prepare(source, "csv", folder, options=PrepareOptions(user_core=0, item_core=0), name=folder.name)
    return folder


@pytest.fixture
def synthetic_dataset(tmp_path: Path) -> Path:
    return prepare_synthetic(tmp_path / "synthetic")
