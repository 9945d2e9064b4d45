"""Item-text clean-up shared by the readers: HTML entities unescaped, white space folded."""

from __future__ import annotations

import functools
import html
import re
from collections.abc import Iterable

_SPACE = re.compile(r"\s+")


@functools.lru_cache(maxsize=16)
def _deletions(chars: str) -> dict[int, None]:
    return dict.fromkeys(map(ord, chars))


def clean_text(text: str, remove: str = "") -> str:
    """HTML entities unescaped, the characters of ``remove`` deleted, white space folded."""
    text = html.unescape(text)
    if remove:
        text = text.translate(_deletions(remove))
    return _SPACE.sub(" ", text).strip()


def join_fields(fields: Iterable[str], max_field_chars: int = 0, remove: str = "") -> str:
    """Join non-empty cleaned fields as "a. b. c" (the paper's "title. categories. brand").

    Fields longer than ``max_field_chars`` (when > 0) are dropped, as the paper drops overlong fields;
    ``remove``: characters deleted from every field (see ``clean_text``).
    """
    parts = []
    for field in fields:
        cleaned = clean_text(field, remove).rstrip(".").strip()
        if cleaned and (max_field_chars <= 0 or len(cleaned) <= max_field_chars):
            parts.append(cleaned)
    return ". ".join(parts)
