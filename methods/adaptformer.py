"""AdaptFormer (Chen, Ge, Tong, Wang, Song, Wang, Luo, "AdaptFormer: Adapting Vision Transformers
for Scalable Visual Recognition", NeurIPS 2022, arXiv 2205.13535).

A bottleneck MLP beside each block's MLP ("AdaptMLP"). It reads the block's state after the
attention residual, x, and its output joins the MLP branch:

x_out = x + MLP(LN(x)) + s · W_up ReLU(W_down x + b_down) + s · b_up,

W_down: r x d, W_up: d x r, s = 0.1, r = 64, dropout 0.1 on the bottleneck while training. Follows
the official code (``ShoufaChen/AdaptFormer``, ``models/adapter.py`` and ``models/custom_modules.py``,
with ``main_image.py``'s ``ffn_option="parallel"``, ``ffn_adapter_layernorm_option="none"``,
``ffn_adapter_init_option="lora"``, ``ffn_adapter_scalar="0.1"``, ``ffn_num=64``): W_down is
Kaiming-uniform (a = sqrt(5)), W_up and both biases start at zero, so the model is the backbone at
init; no LayerNorm inside the adapter; the adapter's output bypasses the MLP branch's drop-path.

Count on a ViT of width d and L blocks: L · (2 d r + r + d). ViT-B/16 at r = 64: **1,189,632**
(1.19 M). VTAB-1K tables (e.g. NOAH's, SSF's) list AdaptFormer at 0.16 M, which matches r = 8
(156,768): ``--set adaptformer.bottleneck=8``. On a Swin, Σ over blocks of (2 w r + r + w) at each
block's width w; Swin-B at r = 64: 1,553,664 (the official code is ViT-only; the adapter sits in
each Swin block exactly as in a ViT block).

Not re-parameterisable (the ReLU sits between the two projections). Deviation: the training
recipe is the harness preset, not the official fine-tuning script's.
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .backbones import BackboneSpec, block_paths, describe_backbone
from .base import (
    Method,
    MethodError,
    check_range,
    fit_affine_size,
    freeze_all_but,
    make_config,
    register_method,
    shared_search_space,
)


@dataclass
class AdaptFormerConfig:
    bottleneck: int = 64  # r, the official ffn_num
    scale: float = 0.1  # s, the official ffn_adapter_scalar
    dropout: float = 0.1  # on the bottleneck, as in the official Adapter


class AdaptMLP(nn.Module):
    """s · up(dropout(ReLU(down(x)))): the official Adapter with no LayerNorm and no residual."""

    def __init__(self, width: int, bottleneck: int, scale: float, dropout: float):
        super().__init__()
        self.down_proj = nn.Linear(width, bottleneck)
        self.up_proj = nn.Linear(bottleneck, width)
        self.scale = scale
        self.dropout = dropout
        nn.init.kaiming_uniform_(self.down_proj.weight, a=math.sqrt(5))
        nn.init.zeros_(self.down_proj.bias)
        nn.init.zeros_(self.up_proj.weight)
        nn.init.zeros_(self.up_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = nn.functional.dropout(torch.relu(self.down_proj(x)), self.dropout, self.training)
        return self.up_proj(hidden) * self.scale


def vit_block_forward(
    self: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
) -> torch.Tensor:
    x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)))
    return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x)))) + self.adaptmlp(x)


def swin_block_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    b, h, w, c = x.shape
    x = x + self.drop_path1(self._attn(self.norm1(x)))
    x = x.reshape(b, -1, c)
    x = x + self.drop_path2(self.mlp(self.norm2(x))) + self.adaptmlp(x)
    return x.reshape(b, h, w, c)


def adaptformer_count(spec: BackboneSpec, bottleneck: int) -> int:
    return sum(2 * b.width * bottleneck + bottleneck + b.width for b in spec.blocks)


@register_method
class AdaptFormer(Method):
    name = "adaptformer"
    category = "additive"
    paper = "Chen et al., NeurIPS 2022 (arXiv 2205.13535)"
    published_params = "0.16M"  # the VTAB-1K tables of the NOAH (arXiv 2206.04673), SSF and FacT papers
    Config = AdaptFormerConfig
    description = "AdaptFormer: a scaled bottleneck MLP parallel to every block's MLP"
    identity_at_init = True  # the up-projection starts at zero
    mergeable = False
    families = ("vit", "swin")

    def validate(self, config: AdaptFormerConfig) -> None:
        if config.bottleneck < 1:
            raise MethodError(f"adaptformer bottleneck={config.bottleneck} must be a positive integer, e.g. 64")
        check_range(self.name, "scale", config.scale, 0.0, 100.0, low_open=True)
        check_range(self.name, "dropout", config.dropout, 0.0, 1.0, high_open=True)

    def apply(self, model: nn.Module, config: AdaptFormerConfig) -> nn.Module:
        spec = describe_backbone(model)
        self.check_backbone(spec)
        forward = vit_block_forward if spec.family == "vit" else swin_block_forward
        adapters = []
        for (_, _, block), block_spec in zip(block_paths(model), spec.blocks, strict=True):
            block.adaptmlp = AdaptMLP(block_spec.width, config.bottleneck, config.scale, config.dropout)
            block.forward = types.MethodType(forward, block)
            adapters.append(block.adaptmlp)
        freeze_all_but(model, [p for a in adapters for p in a.parameters()])
        return model

    def count(self, spec: BackboneSpec, config: AdaptFormerConfig) -> int:
        return adaptformer_count(spec, config.bottleneck)

    def size_limits(self, spec: BackboneSpec, config: AdaptFormerConfig) -> dict[str, tuple[int, str]]:
        return {"bottleneck": (min(b.width for b in spec.blocks), "the (narrowest) model width the adapter projects")}

    def for_budget(self, spec: BackboneSpec, budget: int) -> AdaptFormerConfig:
        r = fit_affine_size(self.name, lambda r: adaptformer_count(spec, r), budget)
        return make_config(self, {"bottleneck": r})

    def search_space(self, trial: Any) -> dict[str, Any]:
        # the paper ablates the scale s and keeps 0.1; the range spans a decade either side
        return {**shared_search_space(trial), "scale": trial.suggest_float("scale", 0.01, 1.0, log=True)}

    def published_hparams(self) -> dict[str, Any]:
        return {"scale": 0.1}
