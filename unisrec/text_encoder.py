"""A frozen language model that turns item texts into (N, D) float32 vectors (``TextConfig``: model, pooling,
max length, precision).

UniSRec (Hou et al., KDD 2022) represents an item by a frozen pre-trained language model applied to its text,
once, ahead of training. Texts are tokenised, batched longest first (little padding), run through the model
(optionally under bfloat16 autocast) and pooled (``pool``). torch and transformers are imported on first use,
so ``unisrec --help`` and the other subcommands stay fast.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from unisrec.config import TextConfig
from unisrec.errors import UnisrecError
from unisrec.text_model import model_fingerprint, one_line, resolve_model_dir

if TYPE_CHECKING:
    import torch

DEFAULT_BATCH_SIZE = 64


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' own 'Loading weights' progress bar while a model loads."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _check_device(device: str) -> torch.device:
    from unisrec.devices import resolve_device  # torch is imported lazily here

    return resolve_device(device)


class TextEncoder:
    """A frozen language model that turns texts into (N, D) float32 vectors; see ``TextConfig``."""

    def __init__(self, config: TextConfig, device: str = "cpu", batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        if batch_size < 1:
            raise UnisrecError(f"batch size must be >= 1, got {batch_size}")
        self.config = config
        self.batch_size = batch_size
        self.device = _check_device(device)
        from unisrec.precision import warn_if_emulated  # torch is imported lazily here

        warn_if_emulated("text.precision", config.precision, self.device)  # once per encoder, not per batch
        self.path = resolve_model_dir(config.model)
        self.tokenizer, self.model = self._load()
        # padded positions are masked out, so any valid id will do for models without a pad token
        self.pad_id = int(self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0)
        max_positions = getattr(self.model.config, "max_position_embeddings", None)
        # RoBERTa-style embeddings (RoBERTa, MPNet, ...) number positions from padding_idx + 1: fewer tokens fit
        offset = getattr(getattr(self.model, "embeddings", None), "padding_idx", None)
        if isinstance(max_positions, int):
            usable = max_positions - (offset + 1 if isinstance(offset, int) else 0)
            if config.max_length > usable:
                raise UnisrecError(f"max_length {config.max_length} exceeds the {usable} tokens that language model "
                                   f"'{config.model}' can take ({max_positions} positions)")
        self._fingerprint: dict[str, str] | None = None

    def _load(self) -> tuple[Any, Any]:
        import torch
        from transformers import AutoModel, AutoTokenizer

        try:
            with _quiet_transformers():
                tokenizer = AutoTokenizer.from_pretrained(self.path)
                model = AutoModel.from_pretrained(self.path, dtype=torch.float32)
        except Exception as exc:  # transformers raises OSError, ValueError, KeyError... for unusable folders
            raise UnisrecError(
                f"could not load language model '{self.config.model}': {one_line(exc)}; give a local path "
                "(a folder written by save_pretrained)"
            ) from None
        if getattr(model.config, "is_encoder_decoder", False):
            model = model.get_encoder()
        return tokenizer, model.to(self.device).eval()

    @property
    def dim(self) -> int:
        width = int(self.model.config.hidden_size)
        return 2 * width if self.config.pooling == "cls+mean" else width

    def fingerprint(self) -> dict[str, str]:
        """Identifies the model files, pooling and max length (see ``model_fingerprint``)."""
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.config, path=self.path)
        return dict(self._fingerprint)

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of every text, special tokens added, cut to ``max_length``."""
        for number, text in enumerate(texts):
            if not isinstance(text, str):
                raise UnisrecError(f"text encoder: text {number} is not a string: {text!r}")
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:  # a lone surrogate: the tokenizer raised a TypeError
                raise UnisrecError(f"text encoder: text {number} ({text[:80]!r}) is not valid Unicode (a lone "
                                   f"surrogate at character {exc.start + 1}: bytes that were not UTF-8?)") from None
        encoded = self.tokenizer(
            list(texts),
            truncation=True,
            max_length=self.config.max_length,
            return_attention_mask=False,
            return_token_type_ids=False,
        )
        return list(encoded["input_ids"])

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """(N, D) float32 vectors of ``texts``, in input order.

        Texts are batched longest first, so a batch holds texts of similar length and little padding.
        """
        if len(texts) == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        ids = self.tokenize(texts)
        empty = [i for i, x in enumerate(ids) if not x]
        if empty:  # only a tokenizer that adds no special token gets here: the model would attend to nothing
            raise UnisrecError(f"text encoder: text {empty[0]} ({texts[empty[0]][:80]!r}) gives no token "
                               f"({len(empty)} of {len(ids)} texts do): nothing to encode; give every item a text "
                               "the tokenizer keeps")
        order = np.argsort([-len(x) for x in ids], kind="stable")  # (N,) longest first
        out = np.empty((len(ids), self.dim), dtype=np.float32)  # (N, D)
        import torch

        # disable=None: drawn on a terminal only (a log file got the bar's every redraw)
        bar = tqdm(total=len(ids), unit="item", desc="encode", file=sys.stderr, disable=None if progress else True)
        with bar, torch.inference_mode():
            for start in range(0, len(ids), self.batch_size):
                rows = order[start : start + self.batch_size]  # (B,)
                out[rows] = self._encode_batch([ids[i] for i in rows])
                bar.update(len(rows))
        broken = np.flatnonzero(~np.isfinite(out).all(axis=1))  # (K,) rows with NaN / inf
        if len(broken):  # never cached nor handed to a model: training would fail later, blaming its lr
            first = int(broken[0])
            hint = " in bfloat16: try text.precision=float32" if self.config.precision == "bfloat16" else ""
            raise UnisrecError(f"text encoder: the vector of text {first} ({texts[first][:80]!r}) is not finite "
                               f"(NaN or inf; {len(broken)} of {len(out)} texts): the language model overflows on "
                               f"them{hint}")
        return out

    def _encode_batch(self, batch: list[list[int]]) -> np.ndarray:
        input_ids, mask = _pad(batch, self.pad_id)  # (B, L), (B, L)
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        import torch

        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.config.precision == "bfloat16"):
            hidden = self.model(input_ids=input_ids, attention_mask=mask).last_hidden_state  # (B, L, D)
        return pool(hidden, mask, self.config.pooling).float().cpu().numpy()  # (B, D)


def _pad(batch: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists into (B, L) int64 ids and a (B, L) attention mask (1 = real token)."""
    import torch

    width = max(len(ids) for ids in batch)
    input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)  # (B, L)
    mask = torch.zeros((len(batch), width), dtype=torch.long)  # (B, L)
    for row, ids in enumerate(batch):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        mask[row, : len(ids)] = 1
    return input_ids, mask


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """(B, L, D) last hidden states, (B, L) mask -> (B, D): first token (cls), mean over real tokens, or
    both concatenated (cls+mean, (B, 2D))."""
    import torch

    if pooling == "cls":
        return hidden[:, 0]
    weights = mask.unsqueeze(-1).to(hidden.dtype)  # (B, L, 1)
    mean = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)  # (B, D)
    return torch.cat([hidden[:, 0], mean], dim=-1) if pooling == "cls+mean" else mean
