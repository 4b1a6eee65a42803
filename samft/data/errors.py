"""The one exception type the data pipeline raises for bad input."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data: the message names the file, the key or value, and what was expected."""
