"""BitFit (Ben Zaken et al., ACL 2022, arXiv 2106.10199): train only the bias terms.

A complete bench method in one file: a config dataclass, ``apply`` (unfreeze the biases),
``count`` (closed form over the ViT's shapes) and ``merge`` (nothing to fold: the trained
biases already live in plain timm layers).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from methods.base import BackboneSpec, Method, MethodError, freeze_all_but, head_parameters


@dataclass
class BitFitConfig:
    # Which biases train: "all" (every bias of the backbone) or "attn" (qkv and proj only).
    scope: str = "all"


def _bias_counts(spec: BackboneSpec) -> dict[str, int]:
    """Biases per ViT block by module, plus the patch embedding and the final norm."""
    d, h = spec.embed_dim, spec.mlp_hidden
    qkv = 3 * d if spec.has_qkv_bias else 0
    return {"attn": qkv + d, "norms": 2 * d, "mlp": h + d}


class BitFit(Method):
    name = "bitfit"
    Config = BitFitConfig
    description = "BitFit: only the biases (and the head) train"
    identity_at_init = True  # nothing is added, so the model is the backbone
    mergeable = True

    def validate(self, config: BitFitConfig) -> None:
        if config.scope not in ("all", "attn"):
            raise MethodError(f"bitfit scope={config.scope!r} must be 'all' or 'attn'")

    def _biases(self, model: nn.Module, scope: str) -> list[nn.Parameter]:
        head = {id(p) for p in head_parameters(model)}
        keep = []
        for name, p in model.named_parameters():
            if not name.endswith("bias") or id(p) in head:
                continue
            if scope == "all" or ".attn." in name:
                keep.append(p)
        return keep

    def apply(self, model: nn.Module, config: BitFitConfig) -> nn.Module:
        freeze_all_but(model, self._biases(model, config.scope))
        return model

    def count(self, spec: BackboneSpec, config: BitFitConfig) -> int:
        per_block = _bias_counts(spec)
        if config.scope == "attn":
            return spec.depth * per_block["attn"]
        # every block's biases, the patch embedding's bias and the final norm's bias
        return spec.depth * sum(per_block.values()) + 2 * spec.embed_dim

    def merge(self, model: nn.Module) -> nn.Module:
        return model
