"""VPT: Visual Prompt Tuning, Shallow and Deep (Jia, Tang, Chen, Cardie, Belongie, Hariharan,
Lim, ECCV 2022, arXiv 2203.12119).

n trainable prompt tokens of the model width d join the token sequence after the class (and
register) tokens, before the patch tokens, with no positional embedding. **VPT-Shallow**
(``vpt_shallow``) inserts them once, before the first block. **VPT-Deep** (``vpt_deep``) gives
every block its own n prompts: before block i > 0 the outputs at the prompt positions are
replaced by block i's prompts. After the last block the prompt tokens are dropped, so the final
norm and the head see the backbone's tokens only (the official ``PromptedVisionTransformer``
reads the class token; dropping them also keeps a mean-pooling head to the patch tokens).

Follows the official code (``KMnP/vpt``, ``src/models/vit_prompt/vit.py``): prompts initialised
uniform in [-v, v] with v = sqrt(6 / (3 p² + d)) (p: the patch size; Xavier-uniform over the
patch embedding's fan-in and the width), an optional dropout on the prompts (``dropout``, the
official ``PROMPT.DROPOUT``, default 0.0), no projection (``PROMPT.PROJECT = -1``).

Count on a ViT of width d and L blocks: Shallow n · d; Deep L · n · d. ViT-B/16 at the default
n = 10: Shallow **7,680**, Deep **92,160**. The prompt length is chosen per task in the paper
(from {1, 5, 10, 50, 100, 200}); the VTAB-1K tables of later work list the average over tasks
of those per-task sizes on ViT-B/16, 0.06 M (Shallow) and 0.53 M (Deep). Here the default is 10
for every task; a ``--budget`` sets n.

Not the backbone at init (``identity_at_init = False``): the prompts take part in attention from
the first step. What does hold is checked instead (``extra_checks``): the head sees the
backbone's token count, the output does not depend on the order of the prompts (they carry no
position), and the init lies in the official range.

ViT only: on a Swin, tokens are attended within local windows and merged by position, so a token
without a place in the grid has no window to join (the official Swin variant builds prompts per
window, a different method).

Deviations: the training recipe is the harness preset, not VPT's (SGD with momentum 0.9,
weight decay 1e-4, 100 epochs, per-task lr and prompt length); the official code also keeps the
frozen backbone in eval mode while training (no drop-path), the harness applies its drop-path.
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .backbones import BackboneSpec, describe_backbone
from .base import (
    Method,
    MethodError,
    check_range,
    fit_affine_size,
    freeze_all_but,
    make_config,
    register_method,
    shared_search_space,
)

#: The longest prompt in VPT's search ({1, 5, 10, 50, 100, 200}): past it, n is not a setting the paper studied.
MAX_TOKENS = 200


@dataclass
class VPTConfig:
    num_tokens: int = 10  # n; chosen per task in the paper
    dropout: float = 0.0  # dropout on the prompt tokens (the official PROMPT.DROPOUT)


def init_range(patch_size: int, width: int) -> float:
    """The official uniform bound: sqrt(6 / (3 p² + d))."""
    return math.sqrt(6.0 / (3 * patch_size * patch_size + width))


class VisualPrompts(nn.Module):
    """The prompt tokens: one set (Shallow) or one per block (Deep), each n x d."""

    def __init__(self, layers: int, num_tokens: int, width: int, patch_size: int, dropout: float):
        super().__init__()
        bound = init_range(patch_size, width)
        self.prompts = nn.Parameter(torch.empty(layers, num_tokens, width).uniform_(-bound, bound))
        self.dropout = dropout

    @property
    def num_tokens(self) -> int:
        return self.prompts.shape[1]

    def tokens(self, layer: int, batch: int) -> torch.Tensor:
        # functional dropout: a module call on a view of the parameter trips torch's module
        # tracker (FlopCounterMode) under no_grad
        return nn.functional.dropout(self.prompts[layer].expand(batch, -1, -1), self.dropout, self.training)


def prompted_forward_features(
    self: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
) -> torch.Tensor:
    """timm's ``forward_features`` with prompts after the prefix tokens, dropped after the last block."""
    if attn_mask is not None or is_causal:
        raise MethodError("VPT adds prompt tokens, so an attention mask over the image tokens does not fit; drop it")
    vpt: VisualPrompts = self.vpt
    x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))
    prefix, n, batch = self.num_prefix_tokens, vpt.num_tokens, x.shape[0]
    x = torch.cat([x[:, :prefix], vpt.tokens(0, batch), x[:, prefix:]], dim=1)
    for i, block in enumerate(self.blocks):
        if 0 < i < vpt.prompts.shape[0]:  # Deep: block i reads its own prompts
            x = torch.cat([x[:, :prefix], vpt.tokens(i, batch), x[:, prefix + n :]], dim=1)
        x = block(x)
    x = torch.cat([x[:, :prefix], x[:, prefix + n :]], dim=1)  # prompts never reach the head
    return self.norm(x)


def patch_size_of(model: nn.Module) -> int:
    size = model.patch_embed.patch_size
    return int(size[0] if isinstance(size, tuple | list) else size)


class _VPT(Method):
    """VPT-Shallow and VPT-Deep; ``deep`` says which."""

    Config = VPTConfig
    deep: bool = False
    identity_at_init = False  # the prompts join attention from the first step; see extra_checks
    mergeable = False
    families = ("vit",)
    unsupported_reasons = {
        "swin": "prompt tokens have no place in a Swin's windows and patch merging (VPT's Swin variant is another design)"
    }

    def validate(self, config: VPTConfig) -> None:
        if config.num_tokens < 1:
            raise MethodError(f"{self.name} num_tokens={config.num_tokens} must be a positive integer, e.g. 10")
        check_range(self.name, "dropout", config.dropout, 0.0, 1.0, high_open=True)

    def _layers(self, spec: BackboneSpec) -> int:
        return spec.depth if self.deep else 1

    def apply(self, model: nn.Module, config: VPTConfig) -> nn.Module:
        spec = describe_backbone(model)
        self.check_backbone(spec)
        model.vpt = VisualPrompts(
            self._layers(spec), config.num_tokens, spec.embed_dim, patch_size_of(model), config.dropout
        )
        model.forward_features = types.MethodType(prompted_forward_features, model)
        freeze_all_but(model, model.vpt.parameters())
        return model

    def count(self, spec: BackboneSpec, config: VPTConfig) -> int:
        return self._layers(spec) * config.num_tokens * spec.embed_dim

    def size_limits(self, spec: BackboneSpec, config: VPTConfig) -> dict[str, tuple[int, str]]:
        return {"num_tokens": (MAX_TOKENS, "the longest prompt VPT's search covers")}

    def for_budget(self, spec: BackboneSpec, budget: int) -> VPTConfig:
        per_token = self._layers(spec) * spec.embed_dim
        return make_config(self, {"num_tokens": fit_affine_size(self.name, lambda n: n * per_token, budget)})

    def search_space(self, trial: Any) -> dict[str, Any]:
        return {**shared_search_space(trial), "dropout": trial.suggest_float("dropout", 0.0, 0.3)}

    def published_hparams(self) -> dict[str, Any]:
        return {"dropout": 0.0, "weight_decay": 1e-4}

    def extra_checks(self, config: VPTConfig) -> list[Any]:
        from .vpt_checks import vpt_checks

        return vpt_checks(self, config)


@register_method
class VPTShallow(_VPT):
    name = "vpt_shallow"
    category = "prompt"
    paper = "Jia et al., ECCV 2022 (arXiv 2203.12119)"
    published_params = "0.06M"  # the VTAB-1K tables of the NOAH (arXiv 2206.04673), SSF and FacT papers
    description = "VPT-Shallow: n prompt tokens before the first block, dropped before the head"
    deep = False


@register_method
class VPTDeep(_VPT):
    name = "vpt_deep"
    category = "prompt"
    paper = "Jia et al., ECCV 2022 (arXiv 2203.12119)"
    published_params = "0.53M"  # the VTAB-1K tables of the NOAH (arXiv 2206.04673), SSF and FacT papers
    description = "VPT-Deep: n prompt tokens per block, replaced before every block, dropped before the head"
    deep = True
