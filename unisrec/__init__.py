"""unisrec: text-based, transferable sequential recommendation (UniSRec, Hou et al., KDD 2022).

The DataFrame API (``Dataset``, ``fit``, ``Recommender``) is imported on first use, so that ``import unisrec``
stays light.
"""

from typing import Any

from unisrec.errors import ConfigError, DataError, UnisrecError
from unisrec.version import __version__

__all__ = ["ConfigError", "DataError", "Dataset", "Recommender", "UnisrecError", "__version__", "fit"]


def __getattr__(name: str) -> Any:
    if name in ("Dataset", "fit"):
        from unisrec import frames

        return getattr(frames, name)
    if name == "Recommender":
        from unisrec.recommend import Recommender

        return Recommender
    raise AttributeError(f"module 'unisrec' has no attribute {name!r}")
