"""Binary masks <-> run-length encodings (RLE), in the layouts pycocotools reads.

An *uncompressed* RLE is `{"size": [h, w], "counts": [n0, n1, ...]}`: the mask read column
by column (Fortran order), as alternating runs of 0s and 1s starting with 0s (so `n0` is 0
when the first pixel is set). A *COCO* (compressed) RLE holds the same runs packed into an
ASCII string by pycocotools, with `counts` decoded to `str` so that it serialises to JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from torch import Tensor

Rle = dict[str, Any]


def masks_to_rle(masks: Tensor) -> list[Rle]:
    """`K x h x w` bool masks -> K uncompressed RLEs; all runs found in one vectorised pass."""
    k, h, w = masks.shape
    if k == 0:
        return []
    flat = masks.transpose(1, 2).reshape(k, h * w).bool()
    rows, cols = (flat[:, 1:] != flat[:, :-1]).nonzero(as_tuple=True)
    ends = cols + 1  # a run ends (exclusive) at each change
    starts = torch.cat([ends.new_zeros(1), ends])[:-1]  # the previous end, 0 on a new row
    first_of_row = torch.ones_like(rows, dtype=torch.bool)
    first_of_row[1:] = rows[1:] != rows[:-1]
    starts[first_of_row] = 0
    n_changes = torch.bincount(rows, minlength=k)
    last_end = torch.zeros(k, dtype=ends.dtype, device=ends.device)
    has_changes = n_changes > 0
    last_end[has_changes] = ends[n_changes.cumsum(0)[has_changes] - 1]

    lengths = (ends - starts).tolist()
    tails = (h * w - last_end).tolist()
    leading_one = flat[:, 0].tolist()
    out, offset = [], 0
    for i, n in enumerate(n_changes.tolist()):
        counts = [0] if leading_one[i] else []
        counts.extend(lengths[offset : offset + n])
        counts.append(tails[i])
        offset += n
        out.append({"size": [h, w], "counts": counts})
    return out


def rle_to_mask(rle: Rle) -> np.ndarray:
    """One uncompressed RLE -> `h x w` bool."""
    return rles_to_masks([rle])[0]


def rles_to_masks(rles: Sequence[Rle]) -> np.ndarray:
    """Uncompressed RLEs of one size -> `K x h x w` bool, decoded together."""
    if len(rles) == 0:
        raise ValueError("rles_to_masks needs at least one RLE to know the mask size")
    h, w = (int(v) for v in rles[0]["size"])
    counts = [np.asarray(rle["counts"], dtype=np.int64) for rle in rles]
    parity = np.concatenate([np.arange(c.size) % 2 == 1 for c in counts])
    flat = np.repeat(parity, np.concatenate(counts))
    if flat.size != len(rles) * h * w:
        raise ValueError("RLE counts do not add up to the mask sizes")
    return flat.reshape(len(rles), w, h).transpose(0, 2, 1)


def rle_area(rle: Rle) -> int:
    """Foreground pixels of an uncompressed RLE (the sum of its odd runs)."""
    return int(sum(rle["counts"][1::2]))


def rle_to_coco(rles: Sequence[Rle]) -> list[Rle]:
    """Uncompressed RLEs -> pycocotools compressed RLEs with `counts` as `str`."""
    if len(rles) == 0:
        return []
    h, w = (int(v) for v in rles[0]["size"])
    encoded = mask_utils.frPyObjects(list(rles), h, w)
    return [{"size": list(r["size"]), "counts": r["counts"].decode("utf-8")} for r in encoded]


def masks_to_coco(masks: np.ndarray) -> list[Rle]:
    """`K x h x w` bool masks (numpy) -> compressed COCO RLEs with `counts` as `str`."""
    masks = np.asarray(masks, dtype=bool)
    if masks.shape[0] == 0:
        return []
    encoded = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [{"size": list(r["size"]), "counts": r["counts"].decode("utf-8")} for r in encoded]
