"""The items a model ranks: their ids, texts and the id -> row map, and the errors about items.

A ``Catalogue`` is plain Python (no model, no tensors): row ``r`` of a catalogue is row ``r`` of the model's item
table. ``unisrec.recommend.Recommender`` joins a catalogue to a model; ``unisrec.export`` writes it beside the
exported vectors.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from unisrec.errors import UnisrecError


class UnknownItemError(UnisrecError):
    """History items that are not in the catalogue; ``positions`` = (history, position) of each."""

    def __init__(self, unknown: list[tuple[int, int, str]]) -> None:
        self.unknown = unknown
        names = ", ".join(repr(item) for _, _, item in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        super().__init__(f"unknown item id(s) {names}{more}; every history entry must be an item id of the catalogue")


class ItemConflictError(UnisrecError):
    """New items that cannot join the catalogue (duplicate ids, a model without a text-only item path)."""


class CatalogueFullError(ItemConflictError):
    """New items that would take the catalogue over ``Recommender.max_items``."""



class Catalogue:
    """The items a model ranks: ids (str), texts, and the id -> row map (row = index into the item table)."""

    def __init__(self, item_ids: Sequence[object], texts: Sequence[str] | None = None) -> None:
        ids = [str(i) for i in item_ids]
        texts = list(texts) if texts is not None else [""] * len(ids)
        if len(texts) != len(ids):
            raise UnisrecError(f"{len(ids)} item ids but {len(texts)} texts")
        self.item_ids: list[str] = []
        self.texts: list[str] = []
        self._index: dict[str, int] = {}
        self._by_text: dict[str, list[int]] | None = None
        self.append(ids, texts)

    def __len__(self) -> int:
        return len(self.item_ids)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._index

    def check_new(self, ids: Sequence[str], texts: Sequence[str]) -> None:
        """Raise naming the first problem: lengths, non-strings, empty ids, ids already known or repeated."""
        if len(ids) != len(texts):
            raise UnisrecError(f"{len(ids)} item ids but {len(texts)} texts")
        for value, what in [*((i, "item id") for i in ids), *((t, "item text") for t in texts)]:
            if not isinstance(value, str):
                raise UnisrecError(f"every {what} must be a string, got {value!r}")
        if any(not i for i in ids):
            raise UnisrecError("item ids must be non-empty strings")
        if any("\0" in i for i in ids):  # the NUL character marks what is not an id (``as_item_id``)
            raise UnisrecError("item ids must not contain the NUL character")
        existing = [i for i in ids if i in self._index]
        if existing:
            raise ItemConflictError(f"item id {existing[0]!r} is already in the catalogue")
        seen: set[str] = set()
        for item in ids:
            if item in seen:
                raise ItemConflictError(f"item id {item!r} is given twice")
            seen.add(item)

    def append(self, ids: Sequence[str], texts: Sequence[str]) -> None:
        self.check_new(ids, texts)
        start = len(self.item_ids)
        self.item_ids.extend(ids)
        self.texts.extend(texts)
        self._index.update((item, start + offset) for offset, item in enumerate(ids))
        if self._by_text is not None:
            for offset, text in enumerate(texts):
                self._by_text.setdefault(text, []).append(start + offset)

    def lookup(self, ids: Sequence[str]) -> np.ndarray:
        """(M,) int64 rows of ``ids``, -1 for ids not in the catalogue."""
        return np.asarray([self._index.get(i, -1) for i in ids], dtype=np.int64)

    def indices(self, history: Sequence[str], history_number: int = 0) -> np.ndarray:
        """(L,) int64 rows of the items of one history; unknown ids raise ``UnknownItemError``."""
        rows = [self._index.get(as_item_id(item), -1) for item in history]  # -1: unknown
        if -1 in rows:
            unknown = [(history_number, pos, str(item)) for pos, (item, row) in enumerate(zip(history, rows,
                                                                                               strict=True))
                       if row < 0]
            raise UnknownItemError(unknown)
        return np.asarray(rows, dtype=np.int64)

    def search(self, query: str, limit: int, upto: int | None = None) -> list[int]:
        """Rows of the first ``limit`` items whose text or id contains ``query`` (case-insensitive), in order,
        among the first ``upto`` rows (default all). Items are only ever appended, so a reader that took the
        length under a writer's lock may scan that many rows without it while more are added."""
        needle = query.casefold()
        rows = []
        ids, texts = self.item_ids, self.texts
        for row in range(len(ids) if upto is None else upto):
            item, text = ids[row], texts[row]
            if needle in text.casefold() or needle in item.casefold():
                rows.append(row)
                if len(rows) >= limit:
                    break
        return rows

    def rows_with_texts(self, texts: Sequence[str]) -> np.ndarray:
        """(M,) rows of the catalogue items whose text is exactly one of ``texts``.

        Builds its text index on first use and ``append`` extends it: a ``Recommender`` calls it under its lock.
        """
        if self._by_text is None:
            self._by_text = {}
            for row, text in enumerate(self.texts):
                self._by_text.setdefault(text, []).append(row)
        rows = [row for text in set(texts) for row in self._by_text.get(text, [])]
        return np.asarray(sorted(rows), dtype=np.int64)


def as_item_id(item: object) -> str:
    """Item ids are strings; integers (e.g. MovieLens ids) are accepted as their decimal string."""
    if isinstance(item, str):
        return item
    if isinstance(item, int | np.integer) and not isinstance(item, bool):
        return str(item)
    return "\0not an id"  # no catalogue id: reported as unknown
