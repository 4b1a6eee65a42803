"""How many pixels a compressed RLE counts string covers, without decoding its mask.

A counts string is a list of run lengths (column-major, zeros first). Each number is
little-endian 5-bit groups in characters 48..111, bit 0x20 meaning "more follows" and bit
0x10 of the last group the sign; from the fourth count on, each is stored as a difference
to the count two places before (pycocotools' `rleToString` / `rleFrString`).

pycocotools never checks that the runs add up to H*W: a truncated string decodes to
uninitialised memory, and a string that ends inside a number makes its parser read past
the end. `summarize_counts` first checks the characters (bytes.translate, C speed), then
gets the object pixels from pycocotools' `area` and the background pixels from the area of
the complement mask, whose string is the original with three counts re-encoded in front
(`_complement`): a few microseconds per string, also for SA-1B's long ones.
"""

from __future__ import annotations

from collections.abc import Sequence

from pycocotools import mask as mask_utils

_DIGITS = bytes(range(48, 112))  # the 64 characters of the encoding
_LAST = 48 + 0x20  # a number's last character is below this (no "more follows" bit)
_AREA_BATCH = 255

# (pixels covered by all runs, object pixels)
Summary = tuple[int, int]


def _read(data: bytes, count: int) -> tuple[list[int], int]:
    """The first `count` numbers of `data` as stored, and the offset after them."""
    numbers: list[int] = []
    x = k = p = 0
    while p < len(data) and len(numbers) < count:
        c = data[p] - 48
        p += 1
        x |= (c & 0x1F) << 5 * k
        k += 1
        if not c & 0x20:
            numbers.append(x - (1 << 5 * k) if c & 0x10 else x)
            x = k = 0
    return numbers, p


def _encode(x: int) -> bytes:
    """One number in the counts encoding."""
    out = bytearray()
    while True:
        c = x & 0x1F
        x >>= 5
        more = x != -1 if c & 0x10 else x != 0
        out.append((c | 0x20 if more else c) + 48)
        if not more:
            return bytes(out)


def _complement(first: list[int], data: bytes, offset: int) -> bytes:
    """Counts string of the inverted mask: runs [0, c0, c1, c2, ...]. From the fifth on,
    its stored differences are the original's from the fourth on, so only the first four
    numbers are new."""
    c0, c1, c2 = first
    return _encode(0) + _encode(c0) + _encode(c1) + _encode(c2 - c0) + data[offset:]


def summarize_counts(strings: Sequence[object]) -> list[Summary | None]:
    """A `Summary` per compressed RLE counts string; None for a non-string or an invalid
    encoding (a character out of range, a string that ends inside a number)."""
    out: list[Summary | None] = [None] * len(strings)
    chosen: list[int] = []
    masks: list[dict] = []
    complements: list[dict] = []
    for i, text in enumerate(strings):
        if not isinstance(text, str) or not text.isascii():
            continue
        data = text.encode("ascii")
        if not data:
            out[i] = (0, 0)
            continue
        if data.translate(None, _DIGITS) or data[-1] >= _LAST:
            continue
        first, offset = _read(data, 3)
        if offset == len(data):  # three numbers at most, none stored as a difference
            out[i] = (sum(first), sum(first[1::2]))
            continue
        chosen.append(i)
        masks.append({"size": [1, 1], "counts": data})  # `area` ignores the size
        complements.append({"size": [1, 1], "counts": _complement(first, data, offset)})
    ones, zeros = _areas(masks), _areas(complements)
    for i, one, zero in zip(chosen, ones, zeros, strict=True):
        out[i] = (one + zero, one)
    return out


def _areas(rles: list[dict]) -> list[int]:
    """pycocotools' `area` of each RLE, in batches of 255 (2.0.11 overflows beyond)."""
    out: list[int] = []
    for start in range(0, len(rles), _AREA_BATCH):
        out.extend(mask_utils.area(rles[start : start + _AREA_BATCH]).tolist())
    return out
