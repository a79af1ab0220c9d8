"""OFT (Qiu et al., *Controlling Text-to-Image Diffusion by Orthogonal Finetuning*, NeurIPS 2023,
arXiv 2306.07280; official code ``Zeju1997/oft``) through Hugging Face ``peft``'s ``OFTConfig``.

Each targeted linear's weight is multiplied by a learned block-diagonal orthogonal matrix R
acting on its input dimension, W = W₀ R, R = diag(R₁, …, R_{in/b}), each b × b block the Cayley
transform of a skew-symmetric matrix (peft stores its b (b − 1) / 2 free entries). The skew
parts start at 0, so R = I and the model equals the backbone at step 0.

Count: Σ over targeted linears of (in / b) · b (b − 1) / 2 = in (b − 1) / 2. On ViT-B/16 at the
default (block size 32 on every block's fused qkv): 12 · 24 · 496 = 142,848. Swin: the same per
block at each stage's width.

Defaults: block size b = 32 (peft's default), qkv of every block; the paper's diffusion setting
(r = 4 blocks) does not carry over to ViTs, so this is bench's choice. Size: ``block_size`` is
fitted to a budget over the divisors of the adapted layers' input widths (it must divide each),
at the default targets or, where those cannot meet it, all four linears of every block.
Merge: peft folds R into each weight. peft computes the Cayley transform by a truncated Neumann
series by default (R then only nearly orthogonal); bench turns that off
(``use_cayley_neumann=False``) for the exact transform of the paper and its code. peft's COFT
(constrained) variant and block sharing are not exposed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from peft import OFTConfig, inject_adapter_in_model
from torch import nn

from .backbones import BackboneSpec, describe_backbone
from .base import Method, MethodError, make_config, register_method
from .peft_tuners import fit_configs, freeze_to_adapters, linears_of, merge_tuner_layers, parse_roles


@dataclass
class OFTSettings:
    block_size: int = 32  # b: size of each orthogonal block; must divide every adapted layer's input width
    targets: str = "qkv"  # comma-separated subset of qkv, proj, fc1, fc2


# Placements a budget fit tries, the default first: block sizes alone are powers of two on most
# backbones, too coarse to meet a budget within 5 % (Swin-B's qkv: 186,496 or 379,008).
BUDGET_TARGETS = ("qkv", "qkv,proj,fc1,fc2")


def input_gcd(spec: BackboneSpec, targets: str) -> int:
    return math.gcd(*(lin.in_features for lin in linears_of(spec, "oft", targets)))


@register_method
class OFT(Method):
    name = "oft"
    cuda_graphs = False  # the Cayley transform's linear solve cannot be captured in a CUDA graph
    category = "reparameterisable"
    paper = "Qiu et al., NeurIPS 2023 (arXiv 2306.07280)"
    Config = OFTSettings
    description = "OFT through peft: block-diagonal orthogonal rotation of each linear's input (mergeable)"
    identity_at_init = True
    mergeable = True
    families = ("vit", "swin")

    def validate(self, config: OFTSettings) -> None:
        if config.block_size < 2:
            raise MethodError(f"oft block_size={config.block_size} must be an integer of at least 2")
        parse_roles(self.name, config.targets)

    def _check_divides(self, spec: BackboneSpec, config: OFTSettings) -> None:
        if input_gcd(spec, config.targets) % config.block_size:
            raise MethodError(
                f"oft block_size={config.block_size} does not divide the input widths of the adapted layers of "
                f"{spec.name}; choose a divisor of {input_gcd(spec, config.targets)}"
            )

    def apply(self, model: nn.Module, config: OFTSettings) -> nn.Module:
        spec = describe_backbone(model)
        self.check_backbone(spec)
        self._check_divides(spec, config)
        peft_config = OFTConfig(
            r=0,
            oft_block_size=config.block_size,
            use_cayley_neumann=False,  # the exact Cayley transform, as the paper
            target_modules=[lin.path for lin in linears_of(spec, self.name, config.targets)],
        )
        return freeze_to_adapters(inject_adapter_in_model(peft_config, model))

    def count(self, spec: BackboneSpec, config: OFTSettings) -> int:
        b = config.block_size
        return sum(lin.in_features // b * (b * (b - 1) // 2) for lin in linears_of(spec, self.name, config.targets))

    def size_limits(self, spec: BackboneSpec, config: OFTSettings) -> dict[str, tuple[int, str]]:
        return {"block_size": (input_gcd(spec, config.targets), "a divisor of the adapted layers' input widths")}

    def _candidates(self, spec: BackboneSpec) -> list[OFTSettings]:
        """Every (targets, block size) a budget fit may use, the default targets first."""
        out = []
        for targets in BUDGET_TARGETS:
            config = make_config(self, {"targets": targets})
            g = input_gcd(spec, targets)
            out.extend(replace(config, block_size=b) for b in range(2, g + 1) if g % b == 0)
        return out

    def largest_config(self, spec: BackboneSpec) -> OFTSettings:
        return max(self._candidates(spec), key=lambda c: self.count(spec, c))

    def for_budget(self, spec: BackboneSpec, budget: int) -> OFTSettings:
        return fit_configs(self.name, self._candidates(spec), lambda c: self.count(spec, c), budget)

    def merge(self, model: nn.Module) -> nn.Module:
        return merge_tuner_layers(model)
