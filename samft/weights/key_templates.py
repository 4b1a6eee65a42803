"""Rename state-dict keys both ways with one table of key-template pairs.

A `KeyTemplates` holds pairs `(meta_template, transformers_template)`: Meta's layout
(`segment_anything` or `sam2`) on the left, Hugging Face transformers' on the right. Both
directions read the same table, so a round trip is the identity. A template is a key
with `{name}` placeholders; each name matches the regular expression the table gives it
(`{i}` / `{n}` an index, `{p}` weight or bias by default) and is carried over unchanged,
except `{mlp}`: a layer of an MLP head, which the two layouts number differently
(Meta's `layers.0 .. layers.{d-1}`, transformers' `proj_in`, `layers.0 .. layers.{d-3}`,
`proj_out`; `d`, the depth, is read from the keys of each head).

Only names change: the tensors are passed through (the same objects).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

from torch import Tensor

from samft.weights.files import CheckpointError

META, TRANSFORMERS = 0, 1  # the two sides of a pair
DEFAULT_GROUPS = {"i": r"\d+", "n": r"\d+", "p": r"weight|bias"}
_MLP = (r"layers\.\d+", r"proj_in|proj_out|layers\.\d+")


class KeyTemplates:
    """A two-way key map.

    Args:
        pairs: `(meta_template, transformers_template)` for every tensor kind.
        groups: the regular expression of each placeholder, beside `DEFAULT_GROUPS`.
        layouts: the two layouts' names, for error messages (e.g. "Meta's sam2",
            "transformers' Sam2Model").
    """

    def __init__(
        self,
        pairs: Sequence[tuple[str, str]],
        groups: Mapping[str, str],
        layouts: tuple[str, str],
    ) -> None:
        self.layouts = layouts
        self._groups = {**DEFAULT_GROUPS, **groups}
        self._rules = [
            [(self._compile(pair[side], side), pair[1 - side]) for pair in pairs]
            for side in (META, TRANSFORMERS)
        ]

    def _compile(self, template: str, side: int) -> re.Pattern[str]:
        parts = re.split(r"\{(\w+)\}", template)  # literal, name, literal, name, ...
        pattern = "".join(
            re.escape(part) if k % 2 == 0 else f"(?P<{part}>{self._group(part, side)})"
            for k, part in enumerate(parts)
        )
        return re.compile(pattern)

    def _group(self, name: str, side: int) -> str:
        return _MLP[side] if name == "mlp" else self._groups[name]

    def rename(self, state_dict: Mapping[str, Tensor], side: int) -> dict[str, Tensor]:
        """Every key read from `side` (META or TRANSFORMERS) renamed to the other side's;
        a CheckpointError lists keys the table does not know."""
        found: dict[str, tuple[re.Match[str], str]] = {}
        unknown = []
        for key in state_dict:
            for pattern, target in self._rules[side]:
                match = pattern.fullmatch(key)
                if match:
                    found[key] = (match, target)
                    break
            else:
                unknown.append(key)
        if unknown:
            shown = ", ".join(sorted(unknown)[:6]) + (" ..." if len(unknown) > 6 else "")
            raise CheckpointError(
                f"{len(unknown)} key(s) not in {self.layouts[side]} layout: {shown}"
            )

        heads: dict[str, set[str]] = {}  # MLP head prefix -> its layer names, for the depth
        for key, (match, _) in found.items():
            if "mlp" in match.groupdict():
                heads.setdefault(key[: match.start("mlp")], set()).add(match["mlp"])

        out: dict[str, Tensor] = {}
        for key, (match, target) in found.items():
            groups = match.groupdict()
            if "mlp" in groups:
                prefix = key[: match.start("mlp")]
                groups["mlp"] = mlp_layer(groups["mlp"], len(heads[prefix]), side, prefix)
            out[target.format(**groups)] = state_dict[key]
        return out


def mlp_layer(name: str, depth: int, side: int, prefix: str) -> str:
    """One layer name of a `depth`-layer MLP head read from `side`, in the other layout."""
    if depth < 2:
        raise CheckpointError(
            f"MLP head {prefix}* has {depth} layer; transformers' MLPs have two or more"
        )
    meta = [f"layers.{k}" for k in range(depth)]
    hf = ["proj_in", *(f"layers.{k}" for k in range(depth - 2)), "proj_out"]
    source, target = (meta, hf) if side == META else (hf, meta)
    if name not in source:
        raise CheckpointError(f"MLP head {prefix}* of {depth} layers has a gap before {name}")
    return target[source.index(name)]
