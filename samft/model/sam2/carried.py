"""The video model's tensors, carried unchanged through an image model's state dict.

A SAM 2 checkpoint is the whole video model: besides the image encoder, prompt encoder,
mask decoder and `no_mem_embed` that `Sam2` runs, it holds the memory attention, the
memory encoder and the object-pointer parts. `Sam2` never runs them, but an export must
give them back so that Meta's `build_sam2` and `build_sam2_video_predictor` load it
strictly. `CarriedTensors` keeps them by their state-dict names, as CPU copies outside
the module tree: they are never trained, counted, moved or cast with the model (a bf16 or
GPU model still exports them bit for bit) and never broadcast by DDP. `Sam2`'s state-dict
methods take them in on load and write them back on save.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping

from torch import Tensor

# The top-level names (before the first ".") of the video-only parts of `SAM2Base`.
VIDEO_PARTS = frozenset(
    {
        "memory_attention",
        "memory_encoder",
        "maskmem_tpos_enc",
        "no_mem_pos_enc",
        "no_obj_ptr",
        "no_obj_embed_spatial",
        "obj_ptr_proj",
        "obj_ptr_tpos_proj",
        "mask_downsample",
    }
)


def is_video_part(name: str) -> bool:
    """Whether a state-dict key (relative to the model) belongs to the video model."""
    return name.split(".", 1)[0] in VIDEO_PARTS


class CarriedTensors:
    """Tensors kept by their state-dict names (`memory_attention.layers.0...`), in the order
    they came."""

    def __init__(self) -> None:
        self._tensors: dict[str, Tensor] = {}

    def __len__(self) -> int:
        return len(self._tensors)

    def items(self) -> Iterator[tuple[str, Tensor]]:
        """(state-dict name, tensor) of every carried tensor."""
        yield from self._tensors.items()

    def take(self, state_dict: MutableMapping[str, Tensor], prefix: str) -> list[str]:
        """Move the video parts under `prefix` out of `state_dict` into this holder, as CPU
        copies of the same dtype.

        A name carried already is replaced; the carried names that `state_dict` lacks are
        returned with `prefix` (the caller reports them as missing, as for any tensor).
        """
        found = [k for k in state_dict if k.startswith(prefix) and is_video_part(k[len(prefix) :])]
        for key in found:
            tensor = state_dict.pop(key)
            self._tensors[key[len(prefix) :]] = tensor.detach().to("cpu", copy=True)
        taken = {key[len(prefix) :] for key in found}
        return [prefix + name for name in self._tensors if name not in taken]

    def put(self, destination: MutableMapping[str, Tensor], prefix: str) -> None:
        """Write the carried tensors into `destination` under `prefix`."""
        for name, tensor in self._tensors.items():
            destination[prefix + name] = tensor
