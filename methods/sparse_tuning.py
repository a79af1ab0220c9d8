"""Sparse-Tuning (Liu et al., arXiv 2405.14700; official code ``liuting20/Sparse-Tuning@550cc00``).

Token sparsification as the official code (EViT-style, ``models/vit_image.py``): in blocks
``drop_blocks`` (0-based 3, 6, 9 on a 12-block ViT; ``auto`` scales them to L/4, L/2, 3L/4) the tokens are ranked by the head-averaged attention from [CLS],
ceil(rho (N - 1)) are kept (rho = 0.7) in descending score order, and with ``fuse=True`` (the
paper's default; the code's flag is off by default) the dropped tokens become one token, their
score-weighted sum (weights not renormalised). The cut happens between the attention and the MLP
of those blocks; later blocks run on the shorter sequence: 197 -> 140 -> 100 -> 72 tokens on
ViT-B/16 with fusion, 197 -> 139 -> 98 -> 69 without. The head reads the class token.

Dense adapters, two wirings:

* ``adapter="paper"`` (default), the paper's Dense Adapter (its Fig. 2): adapter i reads the FFN
  input of block i (the LayerNorm-ed tokens the MLP reads) and the outputs of adapters i-1 and
  i-3 (token-sparsified by the same selections as the stream), each through its own
  down-projection to ``width``; the sum goes through a ReLU and an up-projection added to the FFN
  output. Width 32 gives 1,091,584 parameters on ViT-B/16, the paper's "about 1.1 M".
* ``adapter="code"``, the released adapter: per block 768->64 (ReLU) ->32 ->64, then [32; 64] ->64
  plus a skip, ->768, on the (not normalised) stream, added beside the MLP; adapter outputs are
  summed in groups {0,1,2}, {3,4,5}, {6,7,8}, {9,10}, and each group sum is added to the stream
  again after blocks 2, 5, 8 and 11, the first also re-adding the patch embeddings. 109,536 per
  block, 1,314,432 in total. It re-injects the embeddings, so it is not the backbone even at rho = 1.

Up-projections start at zero, down-projections Kaiming-uniform, biases zero (the code's init).

Deviations and decisions: the keep-rate warm-up (``adjust_keep_rate``) that the code computes but
its attention ignores is left out: sparsification is active from the first step, as the code
actually behaves. With rho = 1 nothing is cut and no fused token is appended (EViT's guard), so
the paper wiring with zero up-projections is exactly the backbone. The code's head
(BatchNorm1d without affine before the Linear) and its training recipe are not used: every method
shares the suite's head and preset. Not re-parameterisable: tokens are dropped.

ViTs only. On a Swin it is refused before any run: its token selection ranks tokens by the
attention the class token pays them under global attention, and a Swin has no class token and
attends within fixed windows over a full token grid that shifted windows and patch merging need
(the paper and the official code have no Swin path).
"""

from __future__ import annotations

import math
import types
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from .backbones import BackboneSpec, describe_backbone
from .base import (
    Method,
    MethodError,
    budget_error,
    freeze_all_but,
    make_config,
    register_method,
    shared_search_space,
    within_budget,
)

CODE_DIMS = (64, 32)  # the released adapter's fixed inner widths


@dataclass
class SparseTuningConfig:
    keep_rate: float = 0.7
    drop_blocks: str = "auto"  # 0-based indices, or "auto": L/4, L/2, 3L/4 (3, 6, 9 on 12-block ViTs)
    fuse: bool = True
    adapter: Literal["paper", "code"] = "paper"
    width: int = 32  # bottleneck of the paper's Dense Adapter (ignored by adapter="code")


def kept(n_tokens: int, keep_rate: float) -> int:
    """Non-class tokens kept from ``n_tokens - 1``: ceil(rho (N - 1)), free of float noise."""
    return math.ceil(round(keep_rate * (n_tokens - 1), 9))


def sequence_lengths(n_tokens: int, depth: int, config: SparseTuningConfig) -> list[tuple[int, int]]:
    """(tokens entering attention, tokens entering the MLP) for every block, in closed form."""
    drops = parse_blocks(config.drop_blocks, depth)
    out = []
    for i in range(depth):
        before = n_tokens
        if i in drops and config.keep_rate < 1:
            n_tokens = 1 + kept(n_tokens, config.keep_rate) + int(config.fuse)
        out.append((before, n_tokens))
    return out


def parse_blocks(text: str, depth: int) -> set[int]:
    if text == "auto":  # the official (3, 6, 9) of a 12-block ViT, scaled to other depths
        return {round(k * depth / 4) for k in (1, 2, 3)}
    try:
        blocks = {int(t) for t in text.split(",") if t.strip()}
    except ValueError:
        raise MethodError(f"sparse_tuning drop_blocks={text!r} must be comma-separated block indices") from None
    bad = sorted(b for b in blocks if not 0 <= b < depth)
    if bad:
        raise MethodError(f"sparse_tuning drop_blocks {bad} are not blocks of a {depth}-block ViT (0..{depth - 1})")
    return blocks


class Selection:
    """One drop block's token selection, applicable to every per-token tensor carried along."""

    def __init__(self, scores: torch.Tensor, keep: int, fuse: bool):
        # scores: (B, N - 1), the head-averaged attention from [CLS] to every other token
        top = scores.topk(keep, dim=1).indices  # sorted by descending score, as the code keeps them
        self.index = top
        self.fuse_weights = None
        if fuse:
            dropped = torch.ones_like(scores, dtype=torch.bool).scatter_(1, top, False)
            self.fuse_weights = (scores * dropped).unsqueeze(1)  # (B, 1, N - 1), not renormalised

    def __call__(self, t: torch.Tensor) -> torch.Tensor:
        rest = t[:, 1:]
        keep = rest.gather(1, self.index.unsqueeze(-1).expand(-1, -1, t.shape[-1]))
        parts = [t[:, :1], keep]
        if self.fuse_weights is not None:
            parts.append(self.fuse_weights.to(rest.dtype) @ rest)
        return torch.cat(parts, dim=1)


def attention_with_cls_scores(attn: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """timm ``Attention``, also returning the head-averaged attention from [CLS] to every other token.

    The output goes through the fused kernel (``scaled_dot_product_attention``); the scores need
    only the [CLS] row, so the N x N attention map is never materialised. With attention dropout
    active (training with ``attn_drop > 0``) the explicit path keeps dropout and scores consistent.
    """
    b, n, _ = x.shape
    qkv = attn.qkv(x).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    q, k = attn.q_norm(q), attn.k_norm(k)
    cls_row = ((q[:, :, :1] * attn.scale) @ k.transpose(-2, -1)).float().softmax(dim=-1)  # (B, H, 1, N)
    scores = cls_row[:, :, 0, 1:].mean(dim=1)
    drop = attn.attn_drop.p if attn.training else 0.0
    if drop > 0:
        weights = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
        out = attn.attn_drop(weights) @ v
    else:
        out = nn.functional.scaled_dot_product_attention(q, k, v)
    out = out.transpose(1, 2).reshape(b, n, -1)
    return attn.proj_drop(attn.proj(attn.norm(out))), scores.detach()


def _down(d_in: int, d_out: int) -> nn.Linear:
    layer = nn.Linear(d_in, d_out)  # Kaiming-uniform (a = sqrt(5)) weight, as nn.Linear and the code
    nn.init.zeros_(layer.bias)
    return layer


def _up(d_in: int, d_out: int) -> nn.Linear:
    layer = nn.Linear(d_in, d_out)
    nn.init.zeros_(layer.weight)
    nn.init.zeros_(layer.bias)
    return layer


class DenseAdapter(nn.Module):
    """The paper's DA: its own down-projection per input, summed, ReLU, one up-projection."""

    def __init__(self, dim: int, width: int, n_inputs: int):
        super().__init__()
        self.downs = nn.ModuleList(_down(dim, width) for _ in range(n_inputs))
        self.up = _up(width, dim)

    def forward(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return self.up(torch.relu(sum(down(x) for down, x in zip(self.downs, inputs, strict=True))))


class CodeAdapter(nn.Module):
    """The released adapter (``models/adapter.py``): 768 -> 64 -> 32 -> 64, [32; 64] -> 64 (+ skip) -> 768."""

    def __init__(self, dim: int):
        super().__init__()
        wide, narrow = CODE_DIMS
        self.d1, self.d2, self.u1 = _down(dim, wide), _down(wide, narrow), _up(narrow, wide)
        self.d3, self.u2 = _down(narrow + wide, wide), _up(wide, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h0 = torch.relu(self.d1(x))
        s = self.d2(h0)
        u = self.u1(s)
        return self.u2(self.d3(torch.cat([s, u], dim=-1)) + h0)


class SparseState(nn.Module):
    """Sparse-Tuning's own modules, and the per-block plan (where to cut, what each adapter reads)."""

    def __init__(self, dim: int, depth: int, config: SparseTuningConfig):
        super().__init__()
        self.drops = parse_blocks(config.drop_blocks, depth)
        self.keep_rate, self.fuse, self.wiring = config.keep_rate, config.fuse, config.adapter
        if config.adapter == "paper":
            self.adapters = nn.ModuleList(
                DenseAdapter(dim, config.width, 1 + int(i >= 1) + int(i >= 3)) for i in range(depth)
            )
        else:
            self.adapters = nn.ModuleList(CodeAdapter(dim) for _ in range(depth))
        # the code's dense groups {0,1,2}, {3,4,5}, ..., the last block's adapter stays inside it
        self.group_end = {i: min(i - i % 3 + 2, depth - 1) for i in range(depth - 1)}
        self.group_adds = set(self.group_end.values())  # blocks after which a group sum is re-added


def sparse_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    state: SparseState = self.sparse
    x = self.norm_pre(self.patch_drop(self._pos_embed(self.patch_embed(x))))
    outputs: dict[int, torch.Tensor] = {}  # adapter outputs later adapters read (paper wiring)
    group: torch.Tensor | None = x if state.wiring == "code" else None  # the code re-adds the embeddings
    for i, block in enumerate(self.blocks):
        if i in state.drops and state.keep_rate < 1:
            attn_out, scores = attention_with_cls_scores(block.attn, block.norm1(x))
            x = x + block.drop_path1(block.ls1(attn_out))
            select = Selection(scores, kept(x.shape[1], state.keep_rate), state.fuse)
            x = select(x)
            outputs = {j: select(t) for j, t in outputs.items()}
            group = select(group) if group is not None else None
        else:
            x = x + block.drop_path1(block.ls1(block.attn(block.norm1(x))))
        ffn_in = block.norm2(x)
        mlp_out = block.drop_path2(block.ls2(block.mlp(ffn_in)))
        if state.wiring == "paper":
            reads = [ffn_in] + [outputs[j] for j in (i - 1, i - 3) if j in outputs]
            adapted = state.adapters[i](reads)
            outputs = {j: t for j, t in {**outputs, i: adapted}.items() if j > i - 3}
            x = x + mlp_out + adapted
        else:
            adapted = state.adapters[i](x)
            x = x + mlp_out + adapted
            if i in state.group_end:
                group = adapted if group is None else group + adapted
            if i in state.group_adds:
                if group is not None:
                    x = x + group
                group = None
    return self.forward_head(self.norm(x))


def adapter_count(dim: int, depth: int, config: SparseTuningConfig) -> int:
    if config.adapter == "code":
        wide, narrow = CODE_DIMS
        per_block = (dim * wide + wide) + (wide * narrow + narrow) + (narrow * wide + wide)
        per_block += ((narrow + wide) * wide + wide) + (wide * dim + dim)
        return depth * per_block
    downs = sum(1 + int(i >= 1) + int(i >= 3) for i in range(depth))
    return downs * (dim * config.width + config.width) + depth * (config.width * dim + dim)


@register_method
class SparseTuning(Method):
    name = "sparse_tuning"
    category = "additive"
    paper = "Liu et al. (arXiv 2405.14700)"
    Config = SparseTuningConfig
    description = "Sparse-Tuning: drop low-attention tokens at blocks 3, 6, 9 and adapt with dense adapters"
    identity_at_init = False  # tokens are dropped; see extra_checks for what does hold
    mergeable = False
    families = ("vit",)
    unsupported_reasons = {
        "swin": (
            "it ranks tokens by the attention they receive from the class token under global attention and "
            "drops the rest, and a Swin has no class token and attends within fixed windows whose token grid "
            "dropping would break (windows, shifts and patch merging need every position)"
        )
    }

    def validate(self, config: SparseTuningConfig) -> None:
        if not 0.0 < config.keep_rate <= 1.0:
            raise MethodError(f"sparse_tuning keep_rate={config.keep_rate} must be in (0, 1]")
        if config.adapter not in ("paper", "code"):
            raise MethodError(f"sparse_tuning adapter={config.adapter!r} must be paper or code")
        if config.width < 1:
            raise MethodError(f"sparse_tuning width={config.width} must be a positive integer")

    def apply(self, model: nn.Module, config: SparseTuningConfig) -> nn.Module:
        self.check_backbone(describe_backbone(model))
        model.sparse = SparseState(model.embed_dim, len(model.blocks), config)
        model.forward = types.MethodType(sparse_forward, model)
        freeze_all_but(model, model.sparse.parameters())
        return model

    def count(self, spec: BackboneSpec, config: SparseTuningConfig) -> int:
        return adapter_count(spec.embed_dim, spec.depth, config)

    def size_limits(self, spec: BackboneSpec, config: SparseTuningConfig) -> dict[str, tuple[int, str]]:
        if config.adapter == "code":  # fixed widths; `width` is not used
            return {}
        return {"width": (spec.embed_dim, "an adapter bottleneck no wider than the model")}

    def for_budget(self, spec: BackboneSpec, budget: int) -> SparseTuningConfig:
        default = make_config(self)
        widths = range(1, spec.embed_dim + 1)
        counts = {w: adapter_count(spec.embed_dim, spec.depth, SparseTuningConfig(width=w)) for w in widths}
        width = min(counts, key=lambda w: abs(counts[w] - budget))
        if not within_budget(counts[width], budget):
            raise MethodError(
                budget_error(self.name, budget, [counts[w] for w in (width - 1, width, width + 1) if w in counts])
            )
        return make_config(self, {"width": width, "adapter": default.adapter})

    def search_space(self, trial: Any) -> dict[str, Any]:
        # the keep rate trades accuracy for FLOPs: it stays at the method's published 0.7
        return shared_search_space(trial)

    def extra_checks(self, config: SparseTuningConfig) -> list[Any]:
        from .sparse_checks import sparse_tuning_checks

        return sparse_tuning_checks(self, config)
