"""LoRA: low-rank adapters on a model's linear layers, for cheap fine-tuning (Hu et al. 2021,
arXiv 2106.09685: W x + (alpha / r) B A x with A (r, in) Gaussian, B (out, r) zero, so training
starts from the unchanged model; only A and B learn).

Written here rather than taken from `peft`: peft wraps Hugging Face `PreTrainedModel`s and brings
`accelerate` and `transformers` with it, while genforge's models are plain `nn.Module`s whose
checkpoints are flat safetensors. An adapted layer is still an `nn.Linear` with the same `weight`
and `bias` names plus `lora_A` and `lora_B`, so a checkpoint without adapters loads into it (the
adapters start at their init), the adapter alone is the tensors named `*.lora_*`, and merging
(W += (alpha / r) B A) gives back a plain model with the same outputs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from genforge.config import StrictModel
from genforge.errors import ModelError

ADAPTER = ".lora_"  # what the name of every adapter tensor contains


class LoraConfig(StrictModel):
    rank: int = Field(default=8, ge=1, le=1024)
    alpha: float = Field(default=16.0, gt=0.0)  # the update is scaled by alpha / rank
    targets: list[str] = Field(default=["c_attn"], min_length=1)  # last names of the Linear layers to adapt


class LoRALinear(nn.Linear):
    """nn.Linear plus a rank-r update; the base weight and bias are frozen."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__(base.in_features, base.out_features, bias=base.bias is not None,
                         device=base.weight.device, dtype=base.weight.dtype)
        with torch.no_grad():
            self.weight.copy_(base.weight)
            if base.bias is not None:
                self.bias.copy_(base.bias)
        self.weight.requires_grad_(False)
        if self.bias is not None:
            self.bias.requires_grad_(False)
        self.scale = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, device=base.weight.device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, device=base.weight.device))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # as nn.Linear initialises (the paper's reference code)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias) + F.linear(F.linear(x, self.lora_A), self.lora_B) * self.scale

    def merged(self) -> nn.Linear:
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                        device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            out.weight.copy_(self.weight + self.scale * self.lora_B @ self.lora_A)
            if self.bias is not None:
                out.bias.copy_(self.bias)
        return out


def _swap(model: nn.Module, make) -> int:
    """Replace each child Linear that `make(name, child)` maps to a module; the number replaced."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            new = make(name, child)
            if new is not None:
                setattr(parent, name, new)
                count += 1
    return count


def apply_lora(model: nn.Module, config: LoraConfig) -> nn.Module:
    """Freeze `model` and adapt every nn.Linear whose last name is in config.targets."""
    for p in model.parameters():
        p.requires_grad_(False)
    count = _swap(model, lambda name, m: LoRALinear(m, config.rank, config.alpha)
                  if name in config.targets and type(m) is nn.Linear else None)
    if count == 0:
        raise ModelError(f"lora.targets {config.targets} names no linear layer of this model")
    return model


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its weight: a plain model with the same outputs."""
    _swap(model, lambda name, m: m.merged() if isinstance(m, LoRALinear) else None)
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def adapter_tensors(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The adapter alone: the `*.lora_*` tensors of a state dict."""
    return {k: v for k, v in state.items() if ADAPTER in k}
