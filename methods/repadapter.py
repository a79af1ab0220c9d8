"""RepAdapter (Luo, Huang, Zhou, Sun, Jiang, Wang, Ji, "Towards Efficient Visual Adaption via
Structural Re-parameterization", arXiv 2302.08106, 2023). Official code: ``luogen1996/RepAdapter``
(``repadapter.py``: ``RepAdapter``, ``set_RepAdapter``, ``set_RepWeight``, ``reparameterize``,
``sparse2dense``; ``train.py``; ``configs/repblock/<task>.yaml``).

A linear adapter with no nonlinearity, applied to the input of a block's attention and of its
MLP (after ``norm1`` and ``norm2``):

x' = x + s · (W_up dropout(W_down x + b_down) + b_up),

W_down: h x d dense, W_up: d x h group-wise (g groups: output group k reads only hidden units
k·h/g .. (k+1)·h/g - 1, a block-diagonal d x h matrix), s a fixed scale, dropout 0.1. Defaults:
h = 8, g = 2 (the official ``--dim 8`` and ``RepAdapter(groups=2)``), s = 0.1 (the most frequent
of the official per-task VTAB-1K scales, 6 of 19 tasks; they range over {0.1, 0.5, 1, 5, 10}),
``placement="block"`` (the official ``repblock``: before attention and MLP; ``"attn"`` is
``repattn``, before attention only). W_down is Xavier-uniform with a zero bias; W_up and b_up are
zero, so the model is the backbone at init.

Since the adapter is linear, x' = M x + c with M = I + s W_up W_down and c = s (W_up b_down + b_up),
and the linear it feeds (``attn.qkv``, ``mlp.fc1``; nothing else reads the normalised input)
absorbs it exactly: W' = W M, b' = W c + b. That is the merge (the paper's structural
re-parameterisation); the merged model is a plain timm backbone with its own state-dict keys (a
bias-free qkv gets W c as a new bias).

Count on a ViT of width d and L blocks, with a adapters per block (2 for ``block``, 1 for
``attn``): a · L · (d h + h + d h / g + d). ViT-B/16 at h = 8, g = 2, ``block``:
24 · 9,992 = **239,808** (0.24 M). The paper reports RepAdapter at 0.22 M, which is the weights
alone (24 · (768 · 8 + 768 · 4) = 221,184): its count leaves the adapters' biases out. On a Swin,
Σ over blocks at each block's width w: a · (w h + h + w h / g + w); Swin-B: 313,216. The official
code sets RepAdapter into Swin blocks in the same two places.

Deviations:

* The adapter wraps the linear it feeds (``attn.qkv(adapter(x))``) instead of sitting before the
  attention module, so the merged and unmerged models agree on every token; on a Swin whose
  token grid needs padding to whole windows, the official placement (before the padding) and
  this one differ on the padded tokens, which the merged model cannot reproduce.
* ``set_RepWeight`` in the official code reads ``adapter_mlp.weight_B`` when g = 1, an attribute
  the adapter does not have; the merge here handles every g.
* The training recipe is the harness preset; the official scripts train 100 epochs with AdamW
  (lr 1e-3, weight decay 1e-4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

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

#: The linear each placement adapts the input of, by the backbone description's roles.
PLACEMENTS = {"block": ("qkv", "fc1"), "attn": ("qkv",)}


@dataclass
class RepAdapterConfig:
    hidden_dim: int = 8  # h, the official --dim
    groups: int = 2  # g, groups of the up-projection
    scale: float = 0.1  # s; per task in the official configs (0.1 to 10)
    dropout: float = 0.1
    placement: Literal["block", "attn"] = "block"  # the official repblock / repattn


class GroupAdapter(nn.Module):
    """x + s · (up(dropout(down(x)))), the up-projection group-wise: one RepAdapter."""

    def __init__(self, width: int, hidden: int, groups: int, scale: float, dropout: float):
        super().__init__()
        self.groups = groups
        self.scale = scale
        self.down = nn.Linear(width, hidden)
        self.up_weight = nn.Parameter(torch.zeros(width, hidden // groups))  # as a grouped 1x1 conv's weight
        self.up_bias = nn.Parameter(torch.zeros(width))
        self.dropout = nn.Dropout(dropout)
        nn.init.xavier_uniform_(self.down.weight)
        nn.init.zeros_(self.down.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = self.groups
        z = self.dropout(self.down(x)).unflatten(-1, (g, -1))  # (..., g, h/g)
        up = self.up_weight.unflatten(0, (g, -1))  # (g, d/g, h/g)
        y = torch.einsum("...gk,gok->...go", z, up).flatten(-2) + self.up_bias
        return x + self.scale * y

    def dense_up(self) -> torch.Tensor:
        """The d x h block-diagonal matrix of the group-wise up-projection."""
        return torch.block_diag(*self.up_weight.unflatten(0, (self.groups, -1)))

    @torch.no_grad()
    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(M, c) with adapter(x) = M x + c (dropout off), in float64."""
        up, down = self.dense_up().double(), self.down.weight.double()
        m = torch.eye(down.shape[1], dtype=torch.float64, device=down.device) + self.scale * up @ down
        c = self.scale * (up @ self.down.bias.double() + self.up_bias.double())
        return m, c


class RepAdaptedLinear(nn.Module):
    """A frozen ``nn.Linear`` reading a RepAdapter's output: base(adapter(x))."""

    def __init__(self, base: nn.Linear, adapter: GroupAdapter):
        super().__init__()
        self.base = base
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(self.adapter(x))

    @torch.no_grad()
    def folded(self) -> nn.Linear:
        """The base linear with the adapter absorbed: W' = W M, b' = W c + b."""
        base = self.base
        m, c = self.adapter.affine()
        w = base.weight.double()
        bias = w @ c + (base.bias.double() if base.bias is not None else 0.0)
        base.weight.copy_((w @ m).to(base.weight.dtype))
        if base.bias is None:
            base.bias = nn.Parameter(torch.zeros(base.out_features, dtype=base.weight.dtype), requires_grad=False)
        base.bias.copy_(bias.to(base.bias.dtype))
        return base


def repadapter_count(spec: BackboneSpec, hidden: int, groups: int, placement: str) -> int:
    per_width = len(PLACEMENTS[placement])
    return sum(per_width * (b.width * hidden + hidden + b.width * hidden // groups + b.width) for b in spec.blocks)


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


@register_method
class RepAdapter(Method):
    name = "repadapter"
    Config = RepAdapterConfig
    description = "RepAdapter: a linear group-wise adapter before attention and MLP, folded into qkv and fc1"
    identity_at_init = True  # the up-projection starts at zero
    mergeable = True
    families = ("vit", "swin")
    category = "reparameterisable"
    paper = "Luo et al., 2023 (arXiv 2302.08106)"
    published_params = "0.22M"

    def validate(self, config: RepAdapterConfig) -> None:
        if config.groups < 1:
            raise MethodError(f"repadapter groups={config.groups} must be a positive integer, e.g. 2")
        if config.hidden_dim < 1 or config.hidden_dim % config.groups:
            raise MethodError(
                f"repadapter hidden_dim={config.hidden_dim} must be a positive multiple of groups={config.groups}, "
                f"e.g. {8 * config.groups}"
            )
        check_range(self.name, "scale", config.scale, 0.0, 100.0, low_open=True)
        check_range(self.name, "dropout", config.dropout, 0.0, 1.0, high_open=True)

    def _check_widths(self, spec: BackboneSpec, groups: int) -> None:
        odd = sorted({b.width for b in spec.blocks if b.width % groups})
        if odd:
            raise MethodError(
                f"repadapter groups={groups} does not divide the width {odd[0]} of {spec.name}; "
                "set repadapter.groups to a divisor of every block width, e.g. 1 or 2"
            )

    def apply(self, model: nn.Module, config: RepAdapterConfig) -> nn.Module:
        spec = describe_backbone(model)
        self.check_backbone(spec)
        self._check_widths(spec, config.groups)
        adapters = []
        for block in spec.blocks:
            for role in PLACEMENTS[config.placement]:
                path = block.linear(role).path
                adapter = GroupAdapter(block.width, config.hidden_dim, config.groups, config.scale, config.dropout)
                _set(model, path, RepAdaptedLinear(model.get_submodule(path), adapter))
                adapters.append(adapter)
        freeze_all_but(model, [p for a in adapters for p in a.parameters()])
        return model

    def count(self, spec: BackboneSpec, config: RepAdapterConfig) -> int:
        self._check_widths(spec, config.groups)
        return repadapter_count(spec, config.hidden_dim, config.groups, config.placement)

    def size_limits(self, spec: BackboneSpec, config: RepAdapterConfig) -> dict[str, tuple[int, str]]:
        narrowest = min(b.width for b in spec.blocks)
        cap = narrowest - narrowest % config.groups
        return {"hidden_dim": (cap, "the (narrowest) model width the adapter projects, a multiple of groups")}

    def for_budget(self, spec: BackboneSpec, budget: int) -> RepAdapterConfig:
        # h must be a multiple of g: fit the number of hidden units per group
        config = make_config(self)
        g = config.groups
        n = fit_affine_size(self.name, lambda n: repadapter_count(spec, n * g, g, config.placement), budget)
        return make_config(self, {"hidden_dim": n * g})

    def search_space(self, trial: Any) -> dict[str, Any]:
        # the official search script sweeps s over {0.1, 0.5, 1, 5, 10}
        return {**shared_search_space(trial), "scale": trial.suggest_float("scale", 0.1, 10.0, log=True)}

    def published_hparams(self) -> dict[str, Any]:
        return {"scale": RepAdapterConfig.scale}

    def merge(self, model: nn.Module) -> nn.Module:
        for path, module in list(model.named_modules()):
            if isinstance(module, RepAdaptedLinear):
                _set(model, path, module.folded())
        return model
