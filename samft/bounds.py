"""Allowed ranges of numeric config values, checked where a config is read.

A typed config says what type a key takes; `Bounds` says which values of it make sense
(`loss.focal_weight=-1` would train a negated objective without a word). Each config
dataclass, data module or command lists its bounds by key; `check_bounds` raises one
ValueError (or the caller's subclass of it) naming the key, the value and the allowed range.
Neutral ground: `samft.data` and `samft.train` both use it, and it imports neither.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Bounds:
    """A range of numbers: `low`/`high` None for unbounded; `*_open` excludes the end."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def contains(self, value: float) -> bool:
        if isinstance(value, float) and math.isnan(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {self.high:g}"
        return (
            f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}"
            f"{')' if self.high_open else ']'}"
        )


NON_NEGATIVE = Bounds(0)
POSITIVE = Bounds(0, low_open=True)
AT_LEAST_ONE = Bounds(1)
FRACTION = Bounds(0, 1)  # [0, 1]
PROBABILITY_BELOW_ONE = Bounds(0, 1, high_open=True)  # [0, 1)


def check_bounds(
    values: Mapping[str, Any],
    bounds: Mapping[str, Bounds],
    group: str,
    error: type[ValueError] = ValueError,
) -> None:
    """`error` (ValueError or a subclass) `group.key=value: must be RANGE` for the first
    value outside its bounds, in the order of `bounds`.

    None (an unset optional key) and non-numbers are left to the type check; a list is
    checked item by item."""
    for key, allowed in bounds.items():
        value = values.get(key)
        items = value if isinstance(value, Sequence) and not isinstance(value, str) else [value]
        for item in items:
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                continue
            if not allowed.contains(item):
                name = f"{group}.{key}" if group else key
                interval = allowed.low is not None and allowed.high is not None
                raise error(f"{name}={value!r}: must be {'in ' if interval else ''}{allowed}")
