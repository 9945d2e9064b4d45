"""The package version, in a module of its own so that every layer can read it without importing the package's
top level (whose lazy attributes reach the DataFrame API and serving)."""

__version__ = "0.1.0"
