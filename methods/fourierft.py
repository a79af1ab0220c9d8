"""FourierFT (Gao et al., *Parameter-Efficient Fine-Tuning with Discrete Fourier Transform*,
ICML 2024, arXiv 2405.03003; official code ``Chaos96/fourierft``) through Hugging Face ``peft``'s
``FourierFTConfig``.

Each targeted linear W₀ (out × in) gains ΔW = α · Re(IDFT2(F)), where F is an out × in spectrum
that is zero except at n frequencies drawn once at random (a fixed seed, shared by every layer)
whose coefficients train. bench starts the coefficients at zero (peft's ``init_weights=True``),
so the model equals the backbone at step 0.

Count: n per targeted linear; on ViT-B/16 at the default (n = 1,000 on every block's fused qkv)
12 · 1,000 = 12,000. Swin: the same per block.

Defaults: n = 1,000 and scale α = 150, peft's defaults (the paper sets n and α per task);
qkv of every block. Size: ``n_frequency`` is fitted to a
budget, at most in · out of the smallest adapted layer (the spectrum's size). Merge: peft folds
ΔW into each weight.

Deviation: peft's default draws the coefficients from a standard normal, so that model does not
start at the backbone; bench starts them at zero (peft's ``init_weights=True``), as every other
method here starts at its backbone.
"""

from __future__ import annotations

from dataclasses import dataclass

from peft import FourierFTConfig, inject_adapter_in_model
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
class FourierFTSettings:
    n_frequency: int = 1000  # trained spectral coefficients per adapted linear
    scale: float = 150.0  # alpha in dW = alpha * Re(IDFT2(F))
    targets: str = "qkv"  # comma-separated subset of qkv, proj, fc1, fc2
    frequency_seed: int = 0  # seed of the frequencies' positions


@register_method
class FourierFT(Method):
    name = "fourierft"
    category = "reparameterisable"
    paper = "Gao et al., ICML 2024 (arXiv 2405.03003)"
    Config = FourierFTSettings
    description = "FourierFT through peft: n trained spectral coefficients per linear (mergeable)"
    identity_at_init = True
    mergeable = True
    families = ("vit", "swin")

    def validate(self, config: FourierFTSettings) -> None:
        if config.n_frequency < 1:
            raise MethodError(f"fourierft n_frequency={config.n_frequency} must be a positive integer")
        check_range("fourierft", "scale", config.scale, 0.0, 1e4, low_open=True)
        parse_roles(self.name, config.targets)

    def apply(self, model: nn.Module, config: FourierFTSettings) -> nn.Module:
        spec = describe_backbone(model)
        self.check_backbone(spec)
        peft_config = FourierFTConfig(
            n_frequency=config.n_frequency,
            scaling=config.scale,
            random_loc_seed=config.frequency_seed,
            init_weights=True,  # zero coefficients: the backbone at step 0
            target_modules=[lin.path for lin in linears_of(spec, self.name, config.targets)],
        )
        return freeze_to_adapters(inject_adapter_in_model(peft_config, model))

    def count(self, spec: BackboneSpec, config: FourierFTSettings) -> int:
        return config.n_frequency * len(linears_of(spec, self.name, config.targets))

    def size_limits(self, spec: BackboneSpec, config: FourierFTSettings) -> dict[str, tuple[int, str]]:
        cap = min(lin.in_features * lin.out_features for lin in linears_of(spec, self.name, config.targets))
        return {"n_frequency": (cap, f"in x out of the adapted layers {config.targets}, the spectrum's size")}

    def for_budget(self, spec: BackboneSpec, budget: int) -> FourierFTSettings:
        layers = len(linears_of(spec, self.name, make_config(self).targets))
        return make_config(self, {"n_frequency": fit_affine_size(self.name, lambda n: n * layers, budget)})

    def merge(self, model: nn.Module) -> nn.Module:
        return merge_tuner_layers(model)
