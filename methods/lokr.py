"""LoKr (Yeh et al., *Navigating Text-To-Image Customization: From LyCORIS Fine-Tuning to Model
Evaluation*, ICLR 2024, arXiv 2309.14859; official code ``KohakuBlueleaf/LyCORIS``) through Hugging
Face ``peft``'s ``LoKrConfig``.

Each targeted linear W₀ (out × in) gains a Kronecker product

ΔW = (α / r) · W1 ⊗ W2,  W1: a × c,  W2: b × d,  out = a · b,  in = c · d,

where (a, b) and (c, d) are peft's ``factorization`` of out and in: with ``factor = -1`` (the
default) the most balanced pair, smaller factor first (2304 = 48 · 48, 768 = 24 · 32); with
``factor = f`` dividing the width, a = c = f (peft's ``decompose_factor``). W2 is itself low-rank, W2a W2b with
W2a: b × r and W2b: r × d, when r < max(b, d) / 2, and a full b × d matrix otherwise. peft
initialises W2 (or W2a) to zero, so the model equals the backbone at step 0.

Count per targeted linear: a c + (r (b + d) if r < max(b, d) / 2 else b d). On ViT-B/16 at the
default (r = 8, every block's fused qkv): 12 · (48·24 + 8 · (48 + 32)) = 21,504. Swin: the same
rule per block at each stage's width.

Defaults: r = 8, α = r (scale 1), qkv of every block; LyCORIS publishes no VTAB-1K setting, these
are bench's. Size: ``rank`` and ``factor`` are fitted to a budget (the nearest count over factor -1, 2, 4,
8, 16 and every rank, the default factor first on ties); past max(b, d) / 2 W2 is full and the
count no longer grows, so the rank is capped there. A small factor makes W2 large: factor 4 on
ViT-B/16's qkv gives W2 576 × 192, so LoKr reaches budgets of 0.3 M and more. KARST (this project's ``karst`` method) is a
multi-kernel relative of LoKr. Merge: peft folds ΔW into each weight.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from peft import LoKrConfig, inject_adapter_in_model
from peft.tuners.lokr.layer import factorization
from torch import nn

from .backbones import BackboneSpec, LinearSpec, describe_backbone
from .base import Method, MethodError, check_range, make_config, register_method
from .peft_tuners import fit_configs, freeze_to_adapters, linears_of, merge_tuner_layers, parse_roles

MAX_SCALE = 100.0  # alpha / rank, as for LoRA


@dataclass
class LoKrSettings:
    rank: int = 8
    alpha: float | None = None  # None: alpha = rank (scale 1)
    targets: str = "qkv"  # comma-separated subset of qkv, proj, fc1, fc2
    factor: int = -1  # peft's decompose_factor: -1 the most balanced factorisation, f > 0 W1 is f x f


# The factors a budget fit tries, the default (balanced) first.
BUDGET_FACTORS = (-1, 2, 4, 8, 16)


def kronecker_shape(lin: LinearSpec, factor: int = -1) -> tuple[int, int, int, int]:
    """(a, b, c, d) with out = a b and in = c d, peft's factorisation of the layer."""
    a, b = factorization(lin.out_features, factor)
    c, d = factorization(lin.in_features, factor)
    return a, b, c, d


def lokr_count(lin: LinearSpec, rank: int, factor: int = -1) -> int:
    a, b, c, d = kronecker_shape(lin, factor)
    return a * c + (rank * (b + d) if rank < max(b, d) / 2 else b * d)


@register_method
class LoKr(Method):
    name = "lokr"
    category = "reparameterisable"
    paper = "Yeh et al., ICLR 2024 (arXiv 2309.14859)"
    Config = LoKrSettings
    description = "LoKr through peft: Kronecker product with a low-rank factor per linear (mergeable)"
    identity_at_init = True
    mergeable = True
    families = ("vit", "swin")

    def validate(self, config: LoKrSettings) -> None:
        if config.rank < 1:
            raise MethodError(f"lokr rank={config.rank} must be a positive integer")
        if config.factor == 0 or config.factor < -1:
            raise MethodError(f"lokr factor={config.factor} must be -1 (balanced) or a positive integer")
        if config.alpha is not None:
            check_range("lokr", "alpha", config.alpha, 0.0, MAX_SCALE * config.rank, low_open=True)
        parse_roles(self.name, config.targets)

    def apply(self, model: nn.Module, config: LoKrSettings) -> nn.Module:
        spec = describe_backbone(model)
        self.check_backbone(spec)
        peft_config = LoKrConfig(
            r=config.rank,
            alpha=config.alpha if config.alpha is not None else config.rank,
            decompose_factor=config.factor,
            target_modules=[lin.path for lin in linears_of(spec, self.name, config.targets)],
        )
        return freeze_to_adapters(inject_adapter_in_model(peft_config, model))

    def count(self, spec: BackboneSpec, config: LoKrSettings) -> int:
        return sum(lokr_count(lin, config.rank, config.factor) for lin in linears_of(spec, self.name, config.targets))

    def size_limits(self, spec: BackboneSpec, config: LoKrSettings) -> dict[str, tuple[int, str]]:
        # the smallest rank at which every adapted layer's W2 is full: larger ranks add nothing
        cap = max(
            (max(b, d) + 1) // 2
            for _, b, _, d in (
                kronecker_shape(lin, config.factor) for lin in linears_of(spec, self.name, config.targets)
            )
        )
        return {
            "rank": (cap, f"W2 is a full b x d matrix from rank max(b, d) / 2 on the adapted layers {config.targets}")
        }

    def _candidates(self, spec: BackboneSpec) -> list[LoKrSettings]:
        """Every (factor, rank) a budget fit may use, the default factor first."""
        out = []
        for factor in BUDGET_FACTORS:
            config = make_config(self, {"factor": factor})
            cap, _ = self.size_limits(spec, config)["rank"]
            out.extend(dataclasses.replace(config, rank=rank) for rank in range(1, cap + 1))
        return out

    def largest_config(self, spec: BackboneSpec) -> LoKrSettings:
        return max(self._candidates(spec), key=lambda c: self.count(spec, c))

    def for_budget(self, spec: BackboneSpec, budget: int) -> LoKrSettings:
        return fit_configs(self.name, self._candidates(spec), lambda c: self.count(spec, c), budget)

    def merge(self, model: nn.Module) -> nn.Module:
        return merge_tuner_layers(model)
