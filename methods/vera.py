"""VeRA (Kopiczko et al., *VeRA: Vector-based Random Matrix Adaptation*, ICLR 2024, arXiv 2310.11454)
through Hugging Face ``peft``'s ``VeraConfig``.

One pair of frozen random matrices A (r × in_max) and B (out_max × r) is shared by every targeted
linear (each layer uses the top-left slice its shape needs); each layer trains only two vectors,

ΔW = Λ_b B Λ_d A,  Λ_b = diag(b), b ∈ R^out (init 0),  Λ_d = diag(d), d ∈ R^r (init 0.1),

so the model equals the backbone at step 0. A and B are drawn from a fixed seed
(``projection_prng_key``) and saved with the model, as peft does by default.

Count: Σ (r + out) per targeted linear (A and B are frozen buffers). On ViT-B/16 at the default,
r = 256 on every block's fused qkv: 12 · (256 + 2304) = 30,720. Swin: the same per block; the
shared A and B are sized for the widest stage.

Defaults: r = 256 (bench's choice: the paper sets the rank per benchmark) and d_initial = 0.1
(peft's default, the small initial d the paper recommends). The paper adapts q and v; timm fuses q, k and v into one linear, so bench adapts the fused qkv (its
b vector also scales k's rows): a deviation the count above includes.

Size: ``rank`` is fitted to a budget (each step adds one parameter per adapted linear). The rank
may exceed min(in, out): ΔW is a weighted sum of r fixed rank-one matrices, whose span keeps
growing until it fills the in · out matrices, so the cap is min(in · out). Merge: peft folds ΔW
into each weight.

peft builds VeRA through its tuner model (the shared A and B live there); bench keeps the adapted
timm model, whose layers hold the shared matrices.
"""

from __future__ import annotations

from dataclasses import dataclass

from peft import VeraConfig
from peft.tuners.vera import VeraModel
from torch import nn

from .backbones import BackboneSpec, describe_backbone
from .base import (
    Method,
    MethodError,
    check_range,
    fit_affine_size,
    make_config,
    register_method,
)
from .peft_tuners import freeze_to_adapters, linears_of, merge_tuner_layers, parse_roles


@dataclass
class VeraSettings:
    rank: int = 256
    d_initial: float = 0.1  # the initial value of every d entry (the paper's 0.1)
    targets: str = "qkv"  # comma-separated subset of qkv, proj, fc1, fc2
    projection_seed: int = 0  # seed of the frozen shared A and B


@register_method
class Vera(Method):
    name = "vera"
    category = "reparameterisable"
    paper = "Kopiczko et al., ICLR 2024 (arXiv 2310.11454)"
    Config = VeraSettings
    description = "VeRA through peft: frozen shared random projections, two trained vectors per linear (mergeable)"
    identity_at_init = True
    mergeable = True
    families = ("vit", "swin")

    def validate(self, config: VeraSettings) -> None:
        if config.rank < 1:
            raise MethodError(f"vera rank={config.rank} must be a positive integer")
        check_range("vera", "d_initial", config.d_initial, 0.0, 10.0, low_open=True)
        parse_roles(self.name, config.targets)

    def apply(self, model: nn.Module, config: VeraSettings) -> nn.Module:
        spec = describe_backbone(model)
        self.check_backbone(spec)
        peft_config = VeraConfig(
            r=config.rank,
            d_initial=config.d_initial,
            projection_prng_key=config.projection_seed,
            target_modules=[lin.path for lin in linears_of(spec, self.name, config.targets)],
        )
        VeraModel(model, peft_config, "default")  # injects the layers into `model` in place
        return freeze_to_adapters(model)

    def count(self, spec: BackboneSpec, config: VeraSettings) -> int:
        return sum(config.rank + lin.out_features for lin in linears_of(spec, self.name, config.targets))

    def size_limits(self, spec: BackboneSpec, config: VeraSettings) -> dict[str, tuple[int, str]]:
        cap = min(lin.in_features * lin.out_features for lin in linears_of(spec, self.name, config.targets))
        return {"rank": (cap, f"in x out of the adapted layers {config.targets}: r rank-one terms span them all")}

    def for_budget(self, spec: BackboneSpec, budget: int) -> VeraSettings:
        linears = linears_of(spec, self.name, make_config(self).targets)
        fixed = sum(lin.out_features for lin in linears)
        rank = fit_affine_size(self.name, lambda r: fixed + r * len(linears), budget)
        return make_config(self, {"rank": rank})

    def merge(self, model: nn.Module) -> nn.Module:
        return merge_tuner_layers(model)
