"""The video model's tensors, carried unchanged through an image model's state dict.

A SAM 2 checkpoint is the whole video model: besides the image encoder, prompt encoder,
mask decoder and `no_mem_embed` that `Sam2` runs, it holds the memory attention, the
memory encoder and the object-pointer parts. `Sam2` never runs them, but an export must
give them back so that Meta's `build_sam2` and `build_sam2_video_predictor` load it
strictly. `CarriedTensors` keeps them, by their state-dict names, as non-persistent
buffers (they follow `.to()`, are never trained, never counted as parameters), and
`Sam2`'s state-dict hooks take them in on load and write them back on save.
"""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping

import torch
from torch import Tensor, nn

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


class CarriedTensors(nn.Module):
    """Tensors kept by their state-dict names (`memory_attention.layers.0...`), in the order
    they came; a name's dots are stored as `__` in the buffer name."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __len__(self) -> int:
        return len(self.names)

    def items(self) -> Iterator[tuple[str, Tensor]]:
        """(state-dict name, tensor) of every carried tensor."""
        for name in self.names:
            yield name, getattr(self, _buffer_name(name))

    def take(
        self, state_dict: MutableMapping[str, Tensor], prefix: str, device: torch.device
    ) -> list[str]:
        """Move the video parts under `prefix` out of `state_dict` into this holder, on
        `device`, bit for bit (same dtype).

        A name carried already is replaced; the carried names that `state_dict` lacks are
        returned with `prefix` (the caller reports them as missing, as for any tensor).
        """
        found = [key for key in state_dict if key.startswith(prefix)]
        found = [key for key in found if is_video_part(key[len(prefix) :])]
        for key in found:
            name = key[len(prefix) :]
            tensor = state_dict.pop(key)
            if name not in self.names:
                self.names.append(name)
            self.register_buffer(_buffer_name(name), tensor.detach().to(device), persistent=False)
        taken = {key[len(prefix) :] for key in found}
        return [prefix + name for name in self.names if name not in taken]

    def put(self, destination: MutableMapping[str, Tensor], prefix: str, keep_vars: bool) -> None:
        """Write the carried tensors into `destination` under `prefix`."""
        for name, tensor in self.items():
            destination[prefix + name] = tensor if keep_vars else tensor.detach()


def _buffer_name(name: str) -> str:
    return name.replace(".", "__")
