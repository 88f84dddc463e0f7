"""The package's version: a leaf module, so that any part of the package can read it."""

__version__ = "0.1.0"
