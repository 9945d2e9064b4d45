"""unisrec: text-based, transferable sequential recommendation (UniSRec, Hou et al., KDD 2022)."""

from unisrec.errors import ConfigError, DataError, UnisrecError

__version__ = "0.1.0"

__all__ = ["ConfigError", "DataError", "UnisrecError", "__version__"]
