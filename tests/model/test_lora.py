"""LoRA keeps the official keys, starts as the identity, merges exactly."""

import pytest
import torch
from torch import nn

from samft.model.lora import (
    LoRALinear,
    apply_lora,
    has_lora_keys,
    merge_lora,
    merge_lora_state_dict,
)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(8, 24)
        self.proj = nn.Linear(8, 8)

    def forward(self, x):
        return self.proj(self.qkv(x)[..., :8])


def net():
    return nn.Sequential(Block(), Block())


def test_adapted_model_keeps_official_keys_and_starts_identical():
    model = net()
    x = torch.randn(3, 8)
    before = model(x)
    keys_before = set(model.state_dict())
    replaced = apply_lora(model, rank=2, alpha=4, target_modules=["qkv"])
    assert replaced == ["0.qkv", "1.qkv"]
    keys_after = set(model.state_dict())
    assert keys_before <= keys_after
    assert keys_after - keys_before == {
        f"{i}.qkv.{k}" for i in range(2) for k in ("lora_A", "lora_B", "lora_scaling")
    }
    torch.testing.assert_close(model(x), before, rtol=0, atol=0)


def test_only_adapters_are_trainable():
    layer = LoRALinear.from_linear(nn.Linear(4, 6), rank=2, alpha=2)
    trainable = {n for n, p in layer.named_parameters() if p.requires_grad}
    assert trainable == {"lora_A", "lora_B"}


def _train_a_little(model):
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, LoRALinear):
                module.lora_B.normal_()


def test_merge_in_place_matches_unmerged_output():
    model = net()
    apply_lora(model, rank=3, alpha=6, target_modules=["qkv", "proj"])
    _train_a_little(model)
    x = torch.randn(5, 8)
    unmerged = model(x)
    assert merge_lora(model) == 4
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    torch.testing.assert_close(model(x), unmerged, rtol=1e-5, atol=1e-5)


def test_merge_state_dict_loads_strict_into_plain_model():
    model = net()
    apply_lora(model, rank=2, alpha=8, target_modules=["qkv"])
    _train_a_little(model)
    x = torch.randn(4, 8)
    expected = model(x)
    state = model.state_dict()
    assert has_lora_keys(state)
    merged = merge_lora_state_dict(state)
    assert not has_lora_keys(merged)
    plain = net()
    plain.load_state_dict(merged, strict=True)
    torch.testing.assert_close(plain(x), expected, rtol=1e-5, atol=1e-5)
    # the scaling (alpha / rank = 4) is applied: W' - W == 4 * B @ A
    layer = model[0].qkv
    delta = merged["0.qkv.weight"] - state["0.qkv.weight"]
    torch.testing.assert_close(delta, 4.0 * layer.lora_B @ layer.lora_A)


def test_unknown_target_is_an_error():
    with pytest.raises(ValueError, match="matched no nn.Linear"):
        apply_lora(net(), rank=2, alpha=2, target_modules=["q_proj"])


def test_incomplete_adapter_is_named():
    state = {"a.weight": torch.zeros(2, 2), "a.lora_A": torch.zeros(1, 2)}
    with pytest.raises(KeyError, match="incomplete LoRA adapter at 'a'"):
        merge_lora_state_dict(state)
