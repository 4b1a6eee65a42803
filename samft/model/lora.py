"""Low-rank adapters (LoRA) for the linear layers of the image encoder.

We use a small module of our own rather than the `peft` library: peft wraps each target in
a `LoraLayer` whose base weight moves to `<name>.base_layer.weight`, which breaks the
official state-dict keys (`blocks.0.attn.qkv.weight`) that every SAM tool expects. Here a
`LoRALinear` *is* an `nn.Linear`: its base `weight` and `bias` keep their keys, the adapter
adds `lora_A`, `lora_B` and a `lora_scaling` buffer beside them, and merging is one line of
algebra. Storing the scaling in the state dict makes an unmerged checkpoint
self-describing, so `merge_lora_state_dict` can fold it without the training config.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

LORA_KEYS = ("lora_A", "lora_B", "lora_scaling")


class LoRALinear(nn.Linear):
    """`y = x W^T + b + scaling * dropout(x) A^T B^T`, with `W` and `b` frozen.

    `B` starts at zero, so the adapted layer computes exactly what the base layer did
    until training moves it.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        rank: int,
        alpha: float,
        dropout: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias)
        if rank <= 0:
            raise ValueError(f"LoRA rank must be positive, got {rank}")
        self.rank = rank
        self.lora_A = nn.Parameter(torch.empty(rank, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank))
        self.register_buffer("lora_scaling", torch.tensor(float(alpha) / rank))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)

    @classmethod
    def from_linear(
        cls, linear: nn.Linear, rank: int, alpha: float, dropout: float = 0.0
    ) -> LoRALinear:
        """Wrap an existing layer, sharing its weight and bias tensors."""
        layer = cls(
            linear.in_features,
            linear.out_features,
            rank,
            alpha,
            dropout,
            bias=linear.bias is not None,
        ).to(device=linear.weight.device, dtype=linear.weight.dtype)
        layer.weight = nn.Parameter(linear.weight.detach(), requires_grad=False)
        if linear.bias is not None:
            layer.bias = nn.Parameter(linear.bias.detach(), requires_grad=False)
        return layer

    def forward(self, x: Tensor) -> Tensor:
        base = super().forward(x)
        update = self.lora_dropout(x) @ self.lora_A.t() @ self.lora_B.t()
        return base + self.lora_scaling * update

    def delta_weight(self) -> Tensor:
        return self.lora_scaling * (self.lora_B @ self.lora_A)

    def merged(self) -> nn.Linear:
        """A plain `nn.Linear` computing the same function (without dropout)."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        linear = linear.to(device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(self.weight + self.delta_weight().to(self.weight.dtype))
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, scaling={self.lora_scaling.item():g}"


def apply_lora(
    module: nn.Module,
    rank: int,
    alpha: float,
    dropout: float = 0.0,
    target_modules: Iterable[str] = ("qkv",),
) -> list[str]:
    """Replace every `nn.Linear` whose attribute name is in `target_modules` by a LoRALinear.

    Returns the qualified names of the replaced layers. Raises if nothing matched, since a
    typo in `target_modules` would otherwise train nothing of the encoder.
    """
    targets = set(target_modules)
    replaced: list[str] = []
    for parent_name, parent in list(module.named_modules()):
        for child_name, child in list(parent.named_children()):
            if child_name in targets and type(child) is nn.Linear:
                setattr(parent, child_name, LoRALinear.from_linear(child, rank, alpha, dropout))
                replaced.append(f"{parent_name}.{child_name}" if parent_name else child_name)
    if not replaced:
        raise ValueError(
            f"LoRA target_modules {sorted(targets)} matched no nn.Linear layer; "
            "in SAM's image encoder the names are qkv, proj (attention), lin1, lin2 (MLP)"
        )
    return replaced


def merge_lora(module: nn.Module) -> int:
    """Fold every LoRALinear inside `module` into a plain nn.Linear, in place."""
    count = 0
    for _, parent in list(module.named_modules()):
        for child_name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                setattr(parent, child_name, child.merged())
                count += 1
    return count


def has_lora_keys(state_dict: dict[str, Tensor]) -> bool:
    return any(key.rsplit(".", 1)[-1] in LORA_KEYS for key in state_dict)


def merge_lora_state_dict(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Return a copy of `state_dict` with every adapter folded into its base weight."""
    merged = {k: v for k, v in state_dict.items() if k.rsplit(".", 1)[-1] not in LORA_KEYS}
    prefixes = {k[: -len(".lora_A")] for k in state_dict if k.endswith(".lora_A")}
    for prefix in sorted(prefixes):
        try:
            a = state_dict[f"{prefix}.lora_A"]
            b = state_dict[f"{prefix}.lora_B"]
            scaling = state_dict[f"{prefix}.lora_scaling"]
            weight = state_dict[f"{prefix}.weight"]
        except KeyError as missing:
            raise KeyError(f"incomplete LoRA adapter at '{prefix}': no key {missing}") from None
        delta = scaling.float() * (b.float() @ a.float())
        merged[f"{prefix}.weight"] = (weight.float() + delta).to(weight.dtype)
    return merged
