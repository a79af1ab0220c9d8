"""LoHa (Hyeon-Woo et al., *FedPara: Low-Rank Hadamard Product for Communication-Efficient Federated
Learning*, ICLR 2022, arXiv 2108.06098; as a fine-tuning method in LyCORIS, Yeh et al., ICLR 2024,
arXiv 2309.14859, official code ``KohakuBlueleaf/LyCORIS``) through Hugging Face ``peft``'s
``LoHaConfig``.

Each targeted linear W₀ (out × in) gains a Hadamard product of two rank-r products,

ΔW = (α / r) · (W1a W1b) ⊙ (W2a W2b),  W1a, W2a: out × r,  W1b, W2b: r × in,

whose rank can reach r², for the parameters of a rank-2r LoRA. peft initialises W2a = 0, so the
model equals the backbone at step 0.

Count: 2 r (in + out) per targeted linear; on ViT-B/16 at the default (r = 8 on every block's
fused qkv) 12 · 16 · (768 + 2304) = 589,824. Swin: the same rule per block at each stage's width.

Defaults: r = 8, α = r (scale 1), qkv of every block, the LoRA row's placement so the two compare
at one placement. LyCORIS publishes no VTAB-1K setting; these are bench's choice, not the paper's.
Size: ``rank`` is fitted to a budget, at most min(in, out) of the adapted layers.
Merge: peft folds ΔW into each weight.
"""

from __future__ import annotations

from dataclasses import dataclass

from peft import LoHaConfig, inject_adapter_in_model
from torch import nn

from .backbones import BackboneSpec, describe_backbone
from .base import Method, MethodError, check_range, make_config, register_method
from .peft_tuners import fit_size, freeze_to_adapters, linears_of, merge_tuner_layers, parse_roles

MAX_SCALE = 100.0  # alpha / rank, as for LoRA


@dataclass
class LoHaSettings:
    rank: int = 8
    alpha: float | None = None  # None: alpha = rank (scale 1)
    targets: str = "qkv"  # comma-separated subset of qkv, proj, fc1, fc2


@register_method
class LoHa(Method):
    name = "loha"
    category = "reparameterisable"
    paper = "Hyeon-Woo et al., ICLR 2022 (arXiv 2108.06098)"
    Config = LoHaSettings
    description = "LoHa through peft: Hadamard product of two low-rank products per linear (mergeable)"
    identity_at_init = True
    mergeable = True
    families = ("vit", "swin")

    def validate(self, config: LoHaSettings) -> None:
        if config.rank < 1:
            raise MethodError(f"loha rank={config.rank} must be a positive integer")
        if config.alpha is not None:
            check_range("loha", "alpha", config.alpha, 0.0, MAX_SCALE * config.rank, low_open=True)
        parse_roles(self.name, config.targets)

    def apply(self, model: nn.Module, config: LoHaSettings) -> nn.Module:
        spec = describe_backbone(model)
        self.check_backbone(spec)
        peft_config = LoHaConfig(
            r=config.rank,
            alpha=config.alpha if config.alpha is not None else config.rank,
            target_modules=[lin.path for lin in linears_of(spec, self.name, config.targets)],
        )
        return freeze_to_adapters(inject_adapter_in_model(peft_config, model))

    def count(self, spec: BackboneSpec, config: LoHaSettings) -> int:
        return (
            2
            * config.rank
            * sum(lin.in_features + lin.out_features for lin in linears_of(spec, self.name, config.targets))
        )

    def size_limits(self, spec: BackboneSpec, config: LoHaSettings) -> dict[str, tuple[int, str]]:
        cap = min(min(lin.in_features, lin.out_features) for lin in linears_of(spec, self.name, config.targets))
        return {"rank": (cap, f"min(in, out) of the adapted layers {config.targets}")}

    def for_budget(self, spec: BackboneSpec, budget: int) -> LoHaSettings:
        config = make_config(self)
        cap, _ = self.size_limits(spec, config)["rank"]
        return fit_size(self.name, config, "rank", cap, lambda c: self.count(spec, c), budget)

    def merge(self, model: nn.Module) -> nn.Module:
        return merge_tuner_layers(model)
