"""Attention-bias tuning: BitFit (Ben Zaken et al., ACL 2022) restricted to the attention biases.

The worked example of a bench method plugin, in one file: a config dataclass, ``apply`` (unfreeze
the chosen biases), ``count`` (closed form over the backbone description) and ``merge`` (nothing
to fold: the trained biases already live in plain timm layers). bench ships full BitFit as the
built-in ``bitfit``; this variant trains the subset BitFit's own ablations single out, the
attention's biases.

Count on a ViT of width d and L blocks (qkv with bias): ``scope="attn"``: L · (3d + d) (qkv and
proj biases), 36,864 on ViT-B/16; ``scope="qkv"``: L · 3d, 27,648 on ViT-B/16.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from methods.base import BackboneSpec, Method, MethodError, freeze_all_but


@dataclass
class AttnBiasConfig:
    # Which attention biases train: "attn" (qkv and proj) or "qkv" (the fused qkv only).
    scope: str = "attn"


def _selected(name: str, scope: str) -> bool:
    if scope == "qkv":
        return name.endswith(".attn.qkv.bias")
    return name.endswith((".attn.qkv.bias", ".attn.proj.bias"))


class AttnBias(Method):
    name = "attn_bias"
    Config = AttnBiasConfig
    description = "Attention-bias tuning: only the qkv (and proj) biases of every block train"
    identity_at_init = True  # nothing is added, so the model is the backbone
    mergeable = True
    budget_adjustable = False  # a fixed set of tensors

    def validate(self, config: AttnBiasConfig) -> None:
        if config.scope not in ("attn", "qkv"):
            raise MethodError(f"attn_bias scope={config.scope!r} must be 'attn' or 'qkv'; set --set scope=attn")

    def apply(self, model: nn.Module, config: AttnBiasConfig) -> nn.Module:
        keep = [p for name, p in model.named_parameters() if _selected(name, config.scope)]
        freeze_all_but(model, keep)
        return model

    def count(self, spec: BackboneSpec, config: AttnBiasConfig) -> int:
        roles = ("qkv",) if config.scope == "qkv" else ("qkv", "proj")
        return sum(lin.out_features for lin in spec.linears(roles) if lin.bias)

    def merge(self, model: nn.Module) -> nn.Module:
        return model
