"""DTL and DTL+ (Fu, Zhu, Wu, "DTL: Disentangled Transfer Learning for Visual Recognition", AAAI 2024).

A compact side network (CSN) beside the frozen backbone. For every block input x_i a rank-r map
g_i(x) = x A_i^T B_i^T (A_i: r x d Kaiming-uniform with a = sqrt(5), B_i: d x r zero; r = 2, no
bias) is summed cumulatively, h_i = sum_{j<=i} g_j(x_j). After blocks M..L-1 (M = L/2: blocks
7-12 of ViT-B/16, 0-based 6-11) the sum passes through the fixed swish phi(h) = h * sigmoid(100 h)
and is added to the block output. ``fusion_size=k`` gives DTL+: one depthwise k x k convolution
(no bias, 'same' padding), shared by all add points, over the patch grid; the class token bypasses
it. The head reads LayerNorm(mean of the patch tokens), not the class token.

Follows the official code (``heekhero/DTL@bf6c51e``, ``models/vision_transformer.py``) in all of
the above, including: pooling then the pretrained final norm (timm's ``global_pool='avg'`` would
instead build a fresh ``fc_norm``), and PyTorch's asymmetric 'same' padding for even k.

Memory, the method's point: blocks before the first add point see nothing trainable, so they run
without an autograd graph and only their inputs x_i are kept for the CSN. Blocks after it must
stay in the graph: their input already carries phi(h), so an exact gradient for the CSN flows back
through them (the official code does the same, implicitly). The gradient equals a full-graph run's
(tested), and the saved activations are a fraction of LoRA's (tested; ``bench methods info dtl
--memory``).

Swin (the official ``models/swin_transformer.py`` and ``train_swin_vtab.py``): the side sum is
kept per stage (it restarts at zero at every stage, whose width differs), the maps sit on the
blocks of the stages that have add points (blocks 4-23 of Swin-B, the scripts'
``--lora_before_blocks 4-23``), the side signal is added after blocks ``add_from`` onwards (14-23,
``--add_after_blocks 14-23``; ``add_from=None`` is 14 of 24 scaled to the depth), and DTL+ has
one depthwise convolution per such stage, over the stage's token grid. The head is the Swin's
own (final norm, mean of the tokens), so DTL on a Swin equals the backbone at init. Count on a
Swin: 2 r Σ (widths of the mapped blocks) + k² Σ (widths of the stages with add points); Swin-B at
r = 2: 45,056 (the scripts' r = 4: 90,112; DTL+ k = 5 adds 25 · (512 + 1024) = 38,400).
Deviations on Swin: the default rank stays DTL's ViT rank 2 (the Swin scripts use r = 4:
``--set dtl.rank=4``); the official model also builds (trainable, never used) convolutions for
the stages without add points, which are left out here.

Not re-parameterisable (the swish and the pooling are not linear in the backbone's weights).
Deviations: the training recipe is the harness preset, not DTL's (AdamW wd 0.05, batch 32,
110 epochs with the last 10 at ~1e-8, per-dataset lr and drop-path; those lr and drop-path ranges
are the search-space priors instead).
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
    fit_affine_size,
    freeze_all_but,
    make_config,
    register_method,
    shared_search_space,
)

BETA = 100.0  # the fixed swish slope of the official code
SWIN_ADD_FROM = (14, 24)  # the Swin scripts' --add_after_blocks 14-23 on Swin-B's 24 blocks


@dataclass
class DTLConfig:
    rank: int = 2
    add_from: int | None = None  # first block whose output gets the side signal; None: depth // 2
    fusion_size: int = 0  # k > 0: DTL+ with a shared depthwise k x k convolution


class LowRank(nn.Module):
    def __init__(self, dim: int, rank: int):
        super().__init__()
        self.A = nn.Parameter(torch.empty(rank, dim))
        self.B = nn.Parameter(torch.zeros(dim, rank))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.A.t()) @ self.B.t()


class SideNetwork(nn.Module):
    """The CSN: one low-rank map per block and, for DTL+, the shared depthwise convolution."""

    def __init__(self, dim: int, depth: int, rank: int, add_from: int, fusion_size: int):
        super().__init__()
        self.maps = nn.ModuleList(LowRank(dim, rank) for _ in range(depth))
        self.add_from = add_from
        self.fusion = nn.Conv2d(dim, dim, fusion_size, padding="same", groups=dim, bias=False) if fusion_size else None

    def inject(self, h: torch.Tensor, prefix: int, grid: tuple[int, int]) -> torch.Tensor:
        out = h * torch.sigmoid(BETA * h)
        if self.fusion is None:
            return out
        b, _, c = out.shape
        patches = out[:, prefix:].reshape(b, *grid, c).permute(0, 3, 1, 2)
        fused = self.fusion(patches).permute(0, 2, 3, 1).reshape(b, -1, c)
        return torch.cat([out[:, :prefix], fused], dim=1)


def gap_head(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """DTL's head: mean of the patch tokens, then the pretrained final LayerNorm, then the head."""
    x = x[:, model.num_prefix_tokens :].mean(dim=1)
    return model.head(model.head_drop(model.norm(x)))


def _embed(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.norm_pre(model.patch_drop(model._pos_embed(model.patch_embed(x))))


def dtl_forward(self: nn.Module, x: torch.Tensor, keep_graph: bool = False) -> torch.Tensor:
    """The adapted ViT's forward. ``keep_graph=True`` records every block (a reference for tests)."""
    side: SideNetwork = self.dtl
    grid = self.patch_embed.grid_size
    x = _embed(self, x)
    h: torch.Tensor | float = 0.0
    for i, block in enumerate(self.blocks):
        h = h + side.maps[i](x)
        if i <= side.add_from and not keep_graph:
            with torch.no_grad():  # nothing trainable reaches this block: no graph, no stored activations
                x = block(x)
        else:
            x = block(x)
        if i >= side.add_from:
            x = x + side.inject(h, self.num_prefix_tokens, grid)
    return gap_head(self, x)


class _GapBackbone(nn.Module):
    """The frozen backbone read the way DTL reads it: the function DTL equals at init."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        return gap_head(m, m.blocks(_embed(m, x)))


class SwinSideNetwork(nn.Module):
    """DTL's CSN on a Swin: maps on the blocks of the stages with add points, one fusion per such stage."""

    def __init__(self, spec: BackboneSpec, rank: int, add_from: int, fusion_size: int):
        super().__init__()
        self.add_from = add_from
        stages = _stages_with_adds(spec, add_from)
        self.mapped = [b.index for b in spec.blocks if b.stage in stages]
        self.maps = nn.ModuleDict({str(b.index): LowRank(b.width, rank) for b in spec.blocks if b.stage in stages})
        widths = {b.stage: b.width for b in spec.blocks}
        self.fusion = nn.ModuleDict(
            {
                str(s): nn.Conv2d(widths[s], widths[s], fusion_size, padding="same", groups=widths[s], bias=False)
                for s in sorted(stages)
            }
            if fusion_size
            else {}
        )

    def inject(self, h: torch.Tensor, stage: int) -> torch.Tensor:
        """swish(h), then the stage's depthwise convolution over the (B, H, W, C) token grid (DTL+)."""
        out = h * torch.sigmoid(BETA * h)
        if not self.fusion:
            return out
        return self.fusion[str(stage)](out.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


def dtl_swin_forward(self: nn.Module, x: torch.Tensor, keep_graph: bool = False) -> torch.Tensor:
    """The adapted Swin's forward: per-stage side sums, added after blocks ``add_from`` onwards."""
    side: SwinSideNetwork = self.dtl
    index = 0
    with torch.set_grad_enabled(keep_graph and torch.is_grad_enabled()):
        x = self.patch_embed(x)  # nothing trainable before the first add point: no graph
    for stage_index, stage in enumerate(self.layers):
        with torch.set_grad_enabled(torch.is_grad_enabled() and (keep_graph or index > side.add_from)):
            x = stage.downsample(x)
        h: torch.Tensor | float = 0.0  # the side sum restarts with every stage (the official BasicLayer)
        for block in stage.blocks:
            if str(index) in side.maps:
                h = h + side.maps[str(index)](x)
            if index <= side.add_from and not keep_graph:
                with torch.no_grad():
                    x = block(x)
            else:
                x = block(x)
            if index >= side.add_from:
                x = x + side.inject(h, stage_index)
            index += 1
    return self.forward_head(self.norm(x))


def _stages_with_adds(spec: BackboneSpec, add_from: int) -> set[int]:
    return {b.stage for b in spec.blocks if b.index >= add_from}


def default_add_from(spec: BackboneSpec) -> int:
    """The official first add point: block 6 of a 12-block ViT (L/2), block 14 of a 24-block Swin-B."""
    if spec.family == "swin":
        return round(SWIN_ADD_FROM[0] * spec.depth / SWIN_ADD_FROM[1])
    return spec.depth // 2


def dtl_count(spec: BackboneSpec, rank: int, fusion_size: int, add_from: int | None = None) -> int:
    if spec.family == "vit":
        return spec.depth * 2 * rank * spec.embed_dim + spec.embed_dim * fusion_size**2
    stages = _stages_with_adds(spec, default_add_from(spec) if add_from is None else add_from)
    maps = sum(2 * rank * b.width for b in spec.blocks if b.stage in stages)
    widths = {b.stage: b.width for b in spec.blocks}
    return maps + fusion_size**2 * sum(widths[s] for s in stages)


@register_method
class DTL(Method):
    name = "dtl"
    category = "additive"
    paper = "Fu et al., AAAI 2024 (arXiv 2312.07856)"
    published_params = "0.04M"  # DTL paper, VTAB-1K table
    Config = DTLConfig
    description = "DTL: a compact side network of rank-2 maps added to the later blocks (DTL+ with fusion_size)"
    identity_at_init = True  # relative to the GAP-then-LayerNorm backbone (see `reference`)
    mergeable = False
    families = ("vit", "swin")
    pooling = "mean of patch tokens, then the final LayerNorm (a Swin's own: norm, then the mean)"

    def validate(self, config: DTLConfig) -> None:
        if config.rank < 1:
            raise MethodError(f"dtl rank={config.rank} must be a positive integer")
        if config.fusion_size < 0:
            raise MethodError(f"dtl fusion_size={config.fusion_size} must be 0 (DTL) or a kernel size (DTL+)")

    def apply(self, model: nn.Module, config: DTLConfig) -> nn.Module:
        spec = describe_backbone(model)
        self.check_backbone(spec)
        depth = spec.depth
        add_from = default_add_from(spec) if config.add_from is None else config.add_from
        if not 0 <= add_from < depth:
            raise MethodError(f"dtl add_from={add_from} must be a block index in 0..{depth - 1}")
        if spec.family == "swin":
            model.dtl = SwinSideNetwork(spec, config.rank, add_from, config.fusion_size)
            model.forward = types.MethodType(dtl_swin_forward, model)
        else:
            model.dtl = SideNetwork(model.embed_dim, depth, config.rank, add_from, config.fusion_size)
            model.forward = types.MethodType(dtl_forward, model)
        freeze_all_but(model, model.dtl.parameters())
        return model

    def reference(self, model: nn.Module) -> nn.Module:
        if describe_backbone(model).family == "swin":
            return model  # the Swin's own head already pools the tokens after the final norm
        return _GapBackbone(model)

    def count(self, spec: BackboneSpec, config: DTLConfig) -> int:
        return dtl_count(spec, config.rank, config.fusion_size, config.add_from)

    def size_limits(self, spec: BackboneSpec, config: DTLConfig) -> dict[str, tuple[int, str]]:
        width = min(b.width for b in spec.blocks)
        return {"rank": (width, "the (narrowest) model width the low-rank maps project")}

    def for_budget(self, spec: BackboneSpec, budget: int) -> DTLConfig:
        fusion = make_config(self).fusion_size
        rank = fit_affine_size(self.name, lambda r: dtl_count(spec, r, fusion), budget)
        return make_config(self, {"rank": rank})

    def search_space(self, trial: Any) -> dict[str, Any]:
        # The authors' per-dataset VTAB choices span lr 1e-4..1e-2 and drop-path 0..0.2: the shared ranges.
        return shared_search_space(trial)

    def published_hparams(self) -> dict[str, Any]:
        return {"weight_decay": 0.05}  # DTL's recipe (lr and drop-path are per dataset there: the preset's)
