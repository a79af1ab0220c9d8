"""Full fine-tuning: every backbone parameter trains (the upper reference point)."""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import BackboneSpec, EmptyConfig, Method, freeze_all_but, register_method


@register_method
class Full(Method):
    name = "full"
    Config = EmptyConfig
    description = "full fine-tuning: every parameter trains"
    identity_at_init = True
    mergeable = True  # the trained model is already a plain timm model
    budget_adjustable = False  # the all-parameter reference

    def apply(self, model: nn.Module, config: Any) -> nn.Module:
        freeze_all_but(model, model.parameters())
        return model

    def count(self, spec: BackboneSpec, config: Any) -> int:
        return spec.backbone_params

    def merge(self, model: nn.Module) -> nn.Module:
        return model
