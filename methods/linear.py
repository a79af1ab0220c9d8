"""Linear probe: only the classification head trains (the zero-parameter reference point).

On a Swin the head is ``head.fc`` over timm's pooled features (final norm, mean of the tokens).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .base import BackboneSpec, EmptyConfig, Method, freeze_all_but, register_method


@register_method
class Linear(Method):
    name = "linear"
    category = "reference"
    paper = ""  # the standard baseline
    Config = EmptyConfig
    description = "linear probe: the backbone is frozen, only the head trains"
    identity_at_init = True
    mergeable = True  # nothing to fold: the model is the backbone plus its head
    budget_adjustable = False  # the zero-parameter reference
    families = ("vit", "swin")  # the head reads the pooled features timm gives it (Swin: mean of the tokens)

    def apply(self, model: nn.Module, config: Any) -> nn.Module:
        freeze_all_but(model, [])
        return model

    def count(self, spec: BackboneSpec, config: Any) -> int:
        return 0

    def merge(self, model: nn.Module) -> nn.Module:
        return model
