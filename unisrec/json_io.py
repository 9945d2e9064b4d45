"""Reading the JSON files unisrec writes (dataset.json, run.json, config.json, ...), with one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from unisrec.errors import UnisrecError


def read_json(path: Path, hint: str = "") -> Any:
    """The parsed content of ``path``; a damaged or unreadable file is an error naming it (and ``hint``)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UnisrecError(f"{path}: missing" + (f"; {hint}" if hint else "")) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "not UTF-8"
        raise UnisrecError(f"{path}: damaged, not valid JSON ({reason})" + (f"; {hint}" if hint else "")) from None


def read_json_object(path: Path, hint: str = "") -> dict[str, Any]:
    """``read_json`` of a file that must hold a JSON object (run.json, metrics.json, ...): a list or a string there
    is a damaged file, named, not an AttributeError further on."""
    content = read_json(path, hint)
    if not isinstance(content, dict):
        raise UnisrecError(f"{path}: damaged (holds a JSON {type(content).__name__}, not an object)"
                           + (f"; {hint}" if hint else ""))
    return content
