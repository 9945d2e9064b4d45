"""Item-text clean-up shared by the readers: HTML entities unescaped, white space folded."""

from __future__ import annotations

import html
import re
from collections.abc import Iterable

_SPACE = re.compile(r"\s+")


def clean_text(text: str) -> str:
    return _SPACE.sub(" ", html.unescape(text)).strip()


def join_fields(fields: Iterable[str], max_field_chars: int = 0) -> str:
    """Join non-empty cleaned fields as "a. b. c" (the paper's "title. categories. brand").

    Fields longer than ``max_field_chars`` (when > 0) are dropped, as the paper drops overlong fields.
    """
    parts = []
    for field in fields:
        cleaned = clean_text(field).rstrip(".").strip()
        if cleaned and (max_field_chars <= 0 or len(cleaned) <= max_field_chars):
            parts.append(cleaned)
    return ". ".join(parts)
