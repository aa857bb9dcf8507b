"""The package's version (``cnndsl.__version__``), importable from any layer without importing the package."""

__version__ = "0.1.0"
