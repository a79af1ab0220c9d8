"""BitFit (Ben Zaken, Ravfogel, Goldberg, "BitFit: Simple Parameter-efficient Fine-tuning for
Transformer-based Masked Language-models", ACL 2022, arXiv 2106.10199).

Only the backbone's bias terms train (and the head, as for every method). Nothing is added, so
the adapted model is the backbone at init, and ``merge`` has nothing to fold: the trained biases
already live in plain timm layers. Official code: ``benzakenelad/BitFit`` (NLP); the vision
numbers the field cites come from VPT's and SSF's tables, which train every bias of the ViT.

Count on a ViT of width d, MLP width h, L blocks (qkv with bias):
L · (3d + d + 2d + h + d) + d + d = L · (7d + h) + 2d: per block the qkv, proj, two LayerNorm and
two MLP biases; then the patch embedding's and the final LayerNorm's biases. ViT-B/16:
12 · (5376 + 3072) + 1536 = **102,912** (0.10 M, the size in VTAB-1K tables, e.g. SSF Table 1).
Without qkv biases (some CLIP/DINOv2 variants) the 3d term drops.

On a Swin with stage widths w_s (blocks of stage s at width w_s, MLP width h_s): every block's
6 w_s + h_s (the qkv's 3 w_s with bias), the patch embedding's convolution and LayerNorm (2 w_0),
each patch merging's LayerNorm over 4 w_{s-1} = 2 w_s channels, and the final LayerNorm (w_last).
Relative-position bias tables are attention parameters, not bias terms, and stay frozen.

Deviation: none in what trains. A ViT with a pre-norm before the blocks (CLIP's ``norm_pre``) has
one more d-wide bias that trains but the closed form leaves out (the count check runs on the
supervised ViT layout).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from .backbones import BackboneSpec, describe_backbone
from .base import Method, freeze_all_but, head_parameters, register_method, shared_search_space


@dataclass
class BitFitConfig:
    """BitFit has no structural hyperparameters: every bias trains."""


def backbone_biases(model: nn.Module) -> list[nn.Parameter]:
    """Every parameter named ``*.bias`` outside the classification head."""
    head = {id(p) for p in head_parameters(model)}
    return [p for name, p in model.named_parameters() if name.endswith(".bias") and id(p) not in head]


def bitfit_count(spec: BackboneSpec) -> int:
    blocks = sum(
        sum(lin.out_features for lin in b.linears if lin.bias) + 2 * b.width  # linears' biases + two norms
        for b in spec.blocks
    )
    if spec.family == "vit":
        return blocks + 2 * spec.embed_dim  # patch embedding + final norm
    widths = spec.stage_widths
    patch_embed = 2 * widths[0]  # convolution bias + LayerNorm bias
    merges = sum(2 * w for w in widths[1:])  # LayerNorm over the 4 w_{s-1} concatenated channels
    return blocks + patch_embed + merges + widths[-1]


@register_method
class BitFit(Method):
    name = "bitfit"
    category = "selective"
    paper = "Ben Zaken et al., ACL 2022 (arXiv 2106.10199)"
    published_params = "0.10M"  # the VTAB-1K tables of the NOAH (arXiv 2206.04673), SSF and FacT papers
    Config = BitFitConfig
    description = "BitFit: only the backbone's biases (and the head) train (mergeable: nothing to fold)"
    identity_at_init = True  # nothing is added
    mergeable = True
    budget_adjustable = False  # a fixed set of tensors: one size per backbone
    families = ("vit", "swin")

    def apply(self, model: nn.Module, config: BitFitConfig) -> nn.Module:
        self.check_backbone(describe_backbone(model))
        freeze_all_but(model, backbone_biases(model))
        return model

    def count(self, spec: BackboneSpec, config: BitFitConfig) -> int:
        return bitfit_count(spec)

    def search_space(self, trial: Any) -> dict[str, Any]:
        return shared_search_space(trial)

    def merge(self, model: nn.Module) -> nn.Module:
        return model  # the trained biases are the plain layers' own
