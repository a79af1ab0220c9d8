"""Checks on built models that need no weights: the meta device holds shapes only."""

from __future__ import annotations

from typing import Any

import torch

from methods.base import Method, trainable_params_excluding_head

from .backbone import create_vit


def built_trainable_params(method: Method, config: Any, backbone: str, num_classes: int = 10) -> int:
    """Trainable parameters (head excluded) of ``backbone`` with ``method`` applied, built on meta."""
    with torch.device("meta"):
        model = create_vit(backbone, num_classes=num_classes)
        model = method.apply(model, config)
    return trainable_params_excluding_head(model)
