"""Full fine-tuning: every backbone parameter trains (the upper reference point).

On a Swin the count is every parameter but the head, relative-position tables included
(86,743,224 on Swin-B); the head reads timm's pooled features (final norm, mean of the tokens).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import BackboneSpec, EmptyConfig, Method, freeze_all_but, register_method


@register_method
class Full(Method):
    name = "full"
    category = "reference"
    paper = ""  # the standard baseline
    published_params = "85.8M"  # the VPT paper's VTAB-1K table
    Config = EmptyConfig
    description = "full fine-tuning: every parameter trains"
    identity_at_init = True
    mergeable = True  # the trained model is already a plain timm model
    budget_adjustable = False  # the all-parameter reference
    families = ("vit", "swin")  # the head reads the pooled features timm gives it (Swin: mean of the tokens)

    def apply(self, model: nn.Module, config: Any) -> nn.Module:
        freeze_all_but(model, model.parameters())
        return model

    def count(self, spec: BackboneSpec, config: Any) -> int:
        return spec.backbone_params

    def merge(self, model: nn.Module) -> nn.Module:
        return model

    def preset_caveat(self, preset_lr: float) -> str | None:
        # Suite presets carry PEFT learning rates (VTAB-1K: AdamW 1e-3). Updating every weight of a
        # pretrained ViT at that rate wrecks its features: on realmini cifar10 (ViT-S/14) full
        # fine-tuning reached 36.9 % against the linear probe's 64.3 %, and a CPU proxy gave 25.2 %
        # at 1e-3 against 68.2 % at 1e-4 (docs/results/realmini/). Choose its rate on validation.
        if preset_lr <= 1e-4:  # the rate the proxy found sound (68.2 %) draws no warning
            return None
        return (
            f"full fine-tuning trains every weight at the preset's learning rate {preset_lr:g}, a rate chosen "
            "for PEFT methods that wrecks pretrained features (docs/results/realmini/); tune it on validation "
            "(`bench tune --methods full`, then `bench run --hparams tuned`) before comparing with it"
        )
