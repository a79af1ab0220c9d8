"""LN-tuning (Qi et al., *Parameter-Efficient Tuning on Layer Normalization for Pre-trained Language
Models*, arXiv 2211.08682) through Hugging Face ``peft``'s ``LNTuningConfig``.

Only the LayerNorms train: peft keeps a trainable copy of each targeted LayerNorm (its gain and
bias) next to the frozen original and runs the copy, so the model equals the backbone at step 0.

Targets: the ``norm1`` and ``norm2`` of every block (exact paths from the backbone description).
Count: Σ_blocks 2 · 2 · width; on ViT-B/16 12 · 4 · 768 = 36,864; on Swin-B
4 · (2·128 + 2·256 + 18·512 + 2·1024) = 48,128.

Deviation: the backbone's final LayerNorm (``norm``, before the head) is not tuned; timm models
pool through ``fc_norm`` or ``norm`` depending on the model, and block norms are what every
supported backbone has. Size: no size field, so like ``linear`` and ``full`` LN-tuning runs at its
one count whatever the budget. Merge: peft swaps the trained copy in; what remains is a plain
timm model.
"""

from __future__ import annotations

from dataclasses import dataclass

from peft import LNTuningConfig, inject_adapter_in_model
from torch import nn

from .backbones import BackboneSpec, describe_backbone
from .base import Method, register_method
from .peft_tuners import freeze_to_adapters, merge_tuner_layers

NORMS = ("norm1", "norm2")


@dataclass
class LNTuningSettings:
    """LN-tuning has no structural field: it tunes every block's two LayerNorms."""


@register_method
class LNTuning(Method):
    name = "ln_tuning"
    category = "selective"
    paper = "Qi et al. (arXiv 2211.08682)"
    Config = LNTuningSettings
    description = "LN-tuning through peft: only the blocks' LayerNorm gains and biases train (mergeable)"
    identity_at_init = True
    mergeable = True
    budget_adjustable = False  # the LayerNorms' size: no field to fit
    families = ("vit", "swin")

    def apply(self, model: nn.Module, config: LNTuningSettings) -> nn.Module:
        spec = describe_backbone(model)
        self.check_backbone(spec)
        paths = [f"{block.path}.{norm}" for block in spec.blocks for norm in NORMS]
        return freeze_to_adapters(inject_adapter_in_model(LNTuningConfig(target_modules=paths), model))

    def count(self, spec: BackboneSpec, config: LNTuningSettings) -> int:
        return sum(2 * len(NORMS) * block.width for block in spec.blocks)

    def merge(self, model: nn.Module) -> nn.Module:
        return merge_tuner_layers(model)
