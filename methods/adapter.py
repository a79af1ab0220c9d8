"""Adapter (Houlsby, Giurgiu, Jastrzebski, Morrone, de Laroussilhe, Gesmundo, Attariyan, Gelly,
"Parameter-Efficient Transfer Learning for NLP", ICML 2019, arXiv 1902.00751).

Two sequential bottleneck adapters per block: one on the attention branch's output (after the
output projection), one on the MLP branch's output, each before the residual add:

A(h) = h + W_up GELU(W_down h + b_down) + b_up,  x = x + A(Attn(LN₁(x))),  x = x + A'(MLP(LN₂(x))),

W_down: m x d, W_up: d x m, m = 64. The block's two LayerNorms train too, as in the paper. Follows
the official code (``google-research/adapter-bert``, ``modeling.py``: ``feedforward_adapter`` with
``hidden_size=64``, ``init_scale=1e-3``, applied to ``attention_output`` and ``layer_output``):
weights truncated-normal with std 1e-3 (cut at ±2 std), biases zero, GELU.

Count on a ViT of width d and L blocks: L · [2 (2 d m + m + d) + 4 d] (two adapters, two
LayerNorms' weights and biases). ViT-B/16 at m = 64: **2,416,128**; at m = 8: 350,400
(``--set adapter.bottleneck=8``; VTAB-1K tables list adapters of several placements and
bottlenecks, so compare by count). On a Swin, the same per block at the block's width;
``train_norms=False`` leaves the LayerNorms frozen (4 d per block less).

Not the backbone at init (``identity_at_init = False``): the official near-identity init draws
the weights with std 1e-3, so the adapters add a tiny non-zero term from the start. The method's
own check asserts how close the start is. Not re-parameterisable (GELU inside the bottleneck).
``placement="mlp"`` keeps one adapter per block, after the MLP: with ``bottleneck=8``,
``train_norms=False`` and ``activation="quick_gelu"`` it is NOAH's VTAB-1K adapter baseline
(``ZhangYuanhan-AI/NOAH``, ``model/module/adapter_super.py``), 156,768 on ViT-B/16.

Deviations: the training recipe is the harness preset; the paper's is per task. GELU is exact
(erf) by default; adapter-bert's is the tanh approximation (``activation="gelu_tanh"``). The
paper trains every LayerNorm; here the blocks' two train and the ViT's final ``norm`` (which a
post-norm BERT layer has no counterpart of) stays frozen, so the count is the per-block formula.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from .backbones import BackboneSpec, block_paths, describe_backbone
from .base import (
    Method,
    MethodError,
    added_option,
    check_range,
    fit_affine_size,
    freeze_all_but,
    make_config,
    register_method,
    shared_search_space,
)

Placement = Literal["both", "mlp"]
Activation = Literal["gelu", "gelu_tanh", "quick_gelu"]


@dataclass
class AdapterConfig:
    bottleneck: int = 64  # m, the official hidden_size
    init_scale: float = 1e-3  # std of the truncated-normal weights (official init_scale)
    train_norms: bool = True  # the paper also trains the blocks' LayerNorms
    # both: Houlsby's two adapters per block; mlp: one, after the MLP (NOAH's VTAB-1K baseline)
    placement: Placement = added_option("both")
    # gelu: exact (erf); gelu_tanh: the tanh approximation adapter-bert's BERT uses; quick_gelu: x·σ(1.702x), NOAH's
    activation: Activation = added_option("gelu")


def _quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


ACTIVATIONS = {
    "gelu": nn.functional.gelu,
    "gelu_tanh": lambda x: nn.functional.gelu(x, approximate="tanh"),
    "quick_gelu": _quick_gelu,
}


class BottleneckAdapter(nn.Module):
    """h + up(act(down(h))): the official feedforward_adapter."""

    def __init__(self, width: int, bottleneck: int, init_scale: float, activation: str = "gelu"):
        super().__init__()
        self.down_proj = nn.Linear(width, bottleneck)
        self.up_proj = nn.Linear(bottleneck, width)
        self.activation = ACTIVATIONS[activation]
        for layer in (self.down_proj, self.up_proj):
            nn.init.trunc_normal_(layer.weight, std=init_scale, a=-2 * init_scale, b=2 * init_scale)
            nn.init.zeros_(layer.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up_proj(self.activation(self.down_proj(h)))


def vit_block_forward(
    self: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
) -> torch.Tensor:
    attn = self.attn(self.norm1(x), attn_mask=attn_mask, is_causal=is_causal)
    x = x + self.drop_path1(self.ls1(self.adapter_attn(attn)))
    return x + self.drop_path2(self.ls2(self.adapter_mlp(self.mlp(self.norm2(x)))))


def swin_block_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    b, h, w, c = x.shape
    x = x + self.drop_path1(self.adapter_attn(self._attn(self.norm1(x))))
    x = x.reshape(b, -1, c)
    x = x + self.drop_path2(self.adapter_mlp(self.mlp(self.norm2(x))))
    return x.reshape(b, h, w, c)


def adapters_per_block(placement: str) -> int:
    return 2 if placement == "both" else 1


def adapter_count(spec: BackboneSpec, bottleneck: int, train_norms: bool = True, placement: str = "both") -> int:
    per = adapters_per_block(placement)
    return sum(
        per * (2 * b.width * bottleneck + bottleneck + b.width) + (4 * b.width if train_norms else 0)
        for b in spec.blocks
    )


@register_method
class Adapter(Method):
    name = "adapter"
    category = "additive"
    paper = "Houlsby et al., ICML 2019 (arXiv 1902.00751)"
    published_params = "0.16M"  # the VTAB-1K tables of the NOAH (arXiv 2206.04673), SSF and FacT papers
    Config = AdapterConfig
    description = "Adapter (Houlsby): sequential bottleneck adapters after attention and MLP, norms trained"
    identity_at_init = False  # the official init draws weights with std 1e-3; see extra_checks
    mergeable = False
    families = ("vit", "swin")

    def validate(self, config: AdapterConfig) -> None:
        if config.bottleneck < 1:
            raise MethodError(f"adapter bottleneck={config.bottleneck} must be a positive integer, e.g. 64")
        check_range(self.name, "init_scale", config.init_scale, 0.0, 1.0, low_open=True)

    def apply(self, model: nn.Module, config: AdapterConfig) -> nn.Module:
        spec = describe_backbone(model)
        self.check_backbone(spec)
        forward = vit_block_forward if spec.family == "vit" else swin_block_forward
        keep: list[nn.Parameter] = []
        for (_, _, block), block_spec in zip(block_paths(model), spec.blocks, strict=True):
            width, args = block_spec.width, (config.bottleneck, config.init_scale, config.activation)
            # with placement "mlp" the attention branch keeps an identity, so one forward serves both
            block.adapter_attn = BottleneckAdapter(width, *args) if config.placement == "both" else nn.Identity()
            block.adapter_mlp = BottleneckAdapter(width, *args)
            block.forward = types.MethodType(forward, block)
            keep += [*block.adapter_attn.parameters(), *block.adapter_mlp.parameters()]
            if config.train_norms:
                keep += [*block.norm1.parameters(), *block.norm2.parameters()]
        freeze_all_but(model, keep)
        return model

    def count(self, spec: BackboneSpec, config: AdapterConfig) -> int:
        return adapter_count(spec, config.bottleneck, config.train_norms, config.placement)

    def size_limits(self, spec: BackboneSpec, config: AdapterConfig) -> dict[str, tuple[int, str]]:
        return {"bottleneck": (min(b.width for b in spec.blocks), "the (narrowest) model width the adapter projects")}

    def for_budget(self, spec: BackboneSpec, budget: int) -> AdapterConfig:
        return make_config(self, {"bottleneck": fit_affine_size(self.name, lambda m: adapter_count(spec, m), budget)})

    def search_space(self, trial: Any) -> dict[str, Any]:
        return shared_search_space(trial)

    def extra_checks(self, config: AdapterConfig) -> list[Any]:
        from .conformance import CheckResult, tiny_vit

        x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            plain = tiny_vit()(x)
            torch.manual_seed(0)
            adapted = self.apply(tiny_vit(), config).eval()(x)
        diff = float((plain - adapted).abs().max())
        bound = 1e-2
        return [
            CheckResult(
                "near the backbone at init (official std-1e-3 weights), not equal to it",
                0.0 < diff <= bound,
                f"max |logit difference| = {diff:.2e} (expected in (0, {bound:.0e}])",
            )
        ]
