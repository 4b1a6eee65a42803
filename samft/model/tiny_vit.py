"""TinyViT, the small image encoder of MobileSAM and LiteMedSAM.

A convolutional stem and stage (MBConv blocks), then three stages of windowed-attention
blocks, each stage ending in a patch-merging convolution, and SAM's neck on top. With
MobileSAM's settings a `B x 3 x 1024 x 1024` image gives a `B x 256 x 64 x 64` embedding,
like SAM's ViT; LiteMedSAM's 1x1 stem gives the same from `B x 3 x 256 x 256`.

BatchNorm. TinyViT normalises its convolutions with BatchNorm, whose running statistics
are part of the released weights. By default (`freeze_batchnorm=True`) every BatchNorm
stays in eval mode even when the encoder is put in training mode: it then acts as a fixed
affine map from the pretrained statistics, while its weight and bias still learn when the
encoder is trained. Fine-tuning batches are small (a few images per device), and their
batch statistics would be noisy and drift the pretrained ones; with activation
checkpointing a training-mode BatchNorm would even update its statistics twice per step.
With `freeze_batchnorm=False`, BatchNorm layers follow the training mode (batch
statistics, updated running averages), except those whose parameters are all frozen
(`requires_grad=False`: a frozen or LoRA-adapted encoder), which stay in eval mode
regardless. The rule is applied whenever `train()` is called (so after changing
`requires_grad`, call `train()` again).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.checkpoint import checkpoint

from samft.model.common import LayerNorm2d
from samft.model.tiny_vit_blocks import MBConv, PatchEmbed, PatchMerging, TinyViTBlock

# stem name -> (kernel size, stride, padding) of both stem convolutions
STEMS = {"conv3x3_s2": (3, 2, 1), "conv1x1": (1, 1, 0)}


class TinyViT(nn.Module):
    """`B x in_chans x S x S` normalised, padded images -> `B x out_chans x S/t x S/t`.

    t, the output stride, is the stem's stride squared (4 for `stem="conv3x3_s2"`, 1 for
    `"conv1x1"`) times the product of `merge_strides`. Stage i has `depths[i]` blocks of
    width `embed_dims[i]`; stage 0 is convolutional (MBConv), stages 1.. attend in
    windows of `window_sizes[i]` with `num_heads[i]` heads (`num_heads[0]` and
    `window_sizes[0]` are unused). Stage i < last ends with a patch merging of stride
    `merge_strides[i]`; MobileSAM's and LiteMedSAM's `(2, 2, 1)` keeps the last two
    stages at the same resolution (their code picks stride 1 from the width 320).

    `with_head` adds MobileSAM's ImageNet classifier (`norm_head`, `head`), which SAM never
    runs; it exists only so that MobileSAM's checkpoint loads strictly, and is stored as
    buffers so it is never trained. `activation_checkpointing` recomputes each block in
    the backward pass (training mode with autograd only; outputs unchanged). See the module
    docstring for `freeze_batchnorm`.
    """

    def __init__(
        self,
        img_size: int = 1024,
        in_chans: int = 3,
        embed_dims: Sequence[int] = (64, 128, 160, 320),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (2, 4, 5, 10),
        window_sizes: Sequence[int] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
        stem: str = "conv3x3_s2",
        merge_strides: Sequence[int] = (2, 2, 1),
        out_chans: int = 256,
        with_head: bool = False,
        num_classes: int = 1000,
        freeze_batchnorm: bool = True,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        stages = len(depths)
        if not (len(embed_dims) == len(num_heads) == len(window_sizes) == stages >= 2):
            raise ValueError(
                "embed_dims, depths, num_heads and window_sizes need one entry per stage "
                f"(at least 2), got {embed_dims}, {depths}, {num_heads}, {window_sizes}"
            )
        if len(merge_strides) != stages - 1:
            raise ValueError(f"merge_strides needs {stages - 1} entries, got {merge_strides}")
        if stem not in STEMS:
            raise ValueError(f"unknown TinyViT stem '{stem}'; expected one of {sorted(STEMS)}")
        kernel, stem_stride, padding = STEMS[stem]
        self.stride = stem_stride**2
        for s in merge_strides:
            self.stride *= s
        if img_size <= 0 or img_size % self.stride:
            raise ValueError(
                f"image size {img_size} is not a multiple of the encoder stride {self.stride}"
            )
        self.img_size = img_size
        self.freeze_batchnorm = freeze_batchnorm
        self.activation_checkpointing = activation_checkpointing

        self.patch_embed = PatchEmbed(in_chans, embed_dims[0], kernel, stem_stride, padding)
        # stochastic depth rate grows linearly from 0 over all blocks (plain floats, so
        # that building under `torch.device("meta")` works)
        n = sum(depths)
        rates = [drop_path_rate * i / (n - 1) if n > 1 else 0.0 for i in range(n)]
        self.layers = nn.ModuleList()
        for i in range(stages):
            block_rates = rates[sum(depths[:i]) : sum(depths[: i + 1])]
            if i == 0:
                blocks = [MBConv(embed_dims[0], mbconv_expand_ratio, r) for r in block_rates]
            else:
                blocks = [
                    TinyViTBlock(
                        embed_dims[i],
                        num_heads[i],
                        window_sizes[i],
                        mlp_ratio,
                        drop_rate,
                        r,
                        local_conv_size,
                    )
                    for r in block_rates
                ]
            merge = None
            if i < stages - 1:
                merge = PatchMerging(embed_dims[i], embed_dims[i + 1], merge_strides[i])
            self.layers.append(Stage(blocks, merge, channels_last=i > 0))

        if with_head:
            self.norm_head = StoredTensors(
                weight=torch.ones(embed_dims[-1]), bias=torch.zeros(embed_dims[-1])
            )
            self.head = StoredTensors(
                weight=torch.zeros(num_classes, embed_dims[-1]), bias=torch.zeros(num_classes)
            )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )
        self.apply(_init_weights)

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[-2:] != (self.img_size, self.img_size):
            raise ValueError(
                f"image encoder expects B x 3 x {self.img_size} x {self.img_size} input "
                f"(Sam.preprocess pads to it), got {tuple(x.shape)}"
            )
        x = self.patch_embed(x)
        recompute = self.activation_checkpointing and self.training and torch.is_grad_enabled()
        for stage in self.layers:
            x = stage(x, recompute)
        return self.neck(x)

    def train(self, mode: bool = True) -> TinyViT:
        """Set the training mode, keeping BatchNorm frozen as the module docstring says."""
        super().train(mode)
        if mode:
            for module in self.modules():
                if isinstance(module, _BatchNorm) and (
                    self.freeze_batchnorm or not any(p.requires_grad for p in module.parameters())
                ):
                    module.eval()
        return self


class Stage(nn.Module):
    """Blocks of one resolution, then an optional patch merging: `B x C x H x W` in and out.

    Attention stages (`channels_last`) run their blocks on `B x H x W x C`.
    """

    def __init__(
        self, blocks: list[nn.Module], downsample: nn.Module | None, channels_last: bool
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.downsample = downsample
        self.channels_last = channels_last

    def forward(self, x: Tensor, recompute: bool = False) -> Tensor:
        if self.channels_last:
            x = x.permute(0, 2, 3, 1)
        for block in self.blocks:
            x = checkpoint(block, x, use_reentrant=False) if recompute else block(x)
        if self.channels_last:
            x = x.permute(0, 3, 1, 2)
        return x if self.downsample is None else self.downsample(x)


class StoredTensors(nn.Module):
    """Named tensors kept as (persistent) buffers: in the state dict, never trained."""

    def __init__(self, **tensors: Tensor) -> None:
        super().__init__()
        for name, tensor in tensors.items():
            self.register_buffer(name, tensor)


def _init_weights(module: nn.Module) -> None:
    """TinyViT's initialisation: truncated-normal linear weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
