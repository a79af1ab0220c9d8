"""Measurements of built models: parameter counts and MACs on the meta device (shapes only, no
weights, no download), and saved activations on real random weights (on request: seconds)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from methods.base import Method, trainable_params_excluding_head

from .backbone import create_backbone


def built_trainable_params(
    method: Method, config: Any, backbone: str, num_classes: int = 10, img_size: int | None = None
) -> int:
    """Trainable parameters (head excluded) of ``backbone`` with ``method`` applied, built on meta."""
    kwargs = {"img_size": img_size} if img_size else {}
    with torch.device("meta"):
        model = meta_backbone(backbone, num_classes=num_classes, **kwargs)
        model = method.apply(model, config)
    return trainable_params_excluding_head(model)


def meta_backbone(backbone: str, **kwargs: Any) -> nn.Module:
    """The backbone on the current (meta) device without drawing its initial weights: timm's random
    init runs element by element on meta tensors and took most of a sweep's planning time."""
    try:
        return create_backbone(backbone, weight_init="skip", **kwargs)
    except TypeError:  # a family whose constructor has no weight_init
        return create_backbone(backbone, **kwargs)


def activation_bytes_per_image(method: Method, config: Any, backbone: str, reference: str = "lora") -> dict[str, float]:
    """Saved-for-backward bytes of one training forward of one image, for ``method`` and ``reference``.

    Builds real (random) weights on the CPU, so it costs a few seconds for ViT-B: only on request.
    """
    from methods import get_method
    from methods.base import make_config
    from methods.conformance import saved_activation_bytes

    out = {}
    for name, (m, cfg) in {method.name: (method, config), reference: (get_method(reference), None)}.items():
        torch.manual_seed(0)
        model = create_backbone(backbone, num_classes=10, drop_path_rate=0.0)
        model = m.apply(model, cfg if cfg is not None else make_config(m))
        size = model.patch_embed.img_size
        out[name] = float(saved_activation_bytes(model, torch.randn(1, 3, *size)))
    return out


def macs_per_image(
    method: Method | None, config: Any, backbone: str, merged: bool = False, img_size: int | None = None
) -> int:
    """Multiply-accumulates of one image's forward, counted by torch's FlopCounterMode on the meta device.

    ``merged=True`` counts the deployed model (the method folded in, where it can be).
    """
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = create_backbone(backbone, num_classes=10, **({"img_size": img_size} if img_size else {}))
        if method is not None:
            model = method.apply(model, config)
            if merged and method.mergeable:
                model = method.merge(model)
        # no autograd at all: a module that returns a view of a parameter (peft's GLoRA scalars) gives,
        # even under no_grad, a tensor that requires grad without a grad_fn, which the counter's
        # module tracker cannot hook
        model.eval().requires_grad_(False)
        size = model.patch_embed.img_size
        x = torch.empty(1, 3, *size)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(x)
    return counter.get_total_flops() // 2
