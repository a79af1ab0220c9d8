"""KAdaptation (He et al., "Parameter-efficient Model Adaptation for Vision Transformers", AAAI 2023).

The query and value projections (the q and v slices of timm's fused ``attn.qkv``) get

    dW = c * sum_{i=1..n} A_i (x) B_i,   A_i = p_i q_i^T (n x n, shared by all layers: "slow"),
                                         B_i = U_i V_i^T ((d/n) x (d/n), rank r, per layer: "fast"),

plus one learnable bias per layer added to both q and v. Defaults follow the official code
(``eric-ai-lab/PEViT@be6fb43``, ``vision_benchmark/evaluation/model.py``): n = 32, rank 1, shared
rank-1 rules, c = 160, dropout 0.5 on the update matrix during training, the shared rules drawn
from U(-0.01, 0.01). With them the count on ViT-B/16 is the code's 50,176.

Swin: the same update on every block's fused qkv at the block's width (B_i is (d_s/n) x (d_s/n)
per stage; the rules A_i stay n x n and shared across stages): 64,256 on Swin-B. The official code
has no Swin path; this is the ViT recipe applied per block.

Kept from the official code, and why: the scale c = 160 and the U(-0.01, 0.01) rules together set
the update's magnitude (changing one alone moves it by orders of magnitude); the dropout on the
update is the code's regulariser (``dropout`` sets it; 0 turns it off). Where the code adds the q
delta *after* q is divided by sqrt(d_head), the delta here is applied to W_q scaled by
sqrt(d_head): the same function, and now a plain weight update that merges into ``qkv``.

Fixed, each with a test that fails on the official behaviour:

* both factors of every B_i start at zero in the code, a saddle point where no Kronecker
  parameter ever gets a gradient: here U_i is Kaiming-uniform and V_i zero, so the model is the
  backbone at init and every factor gets a gradient after the first step;
* the code builds the v update from the q factors: here v has its own U, V and rules;
* the code reshapes the delta computed in (seq, batch, C) layout into (batch * heads, seq, C / heads),
  mixing tokens and images: here the update is a per-token linear map, so permuting the images of
  a batch permutes the outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .backbones import BackboneSpec, describe_backbone
from .base import (
    Method,
    MethodError,
    budget_error,
    check_range,
    freeze_all_but,
    make_config,
    register_method,
    shared_search_space,
    within_budget,
)

PUBLISHED = (32, 1)  # (n, rank)
# The largest scale c accepted: the tuner searches 10..1000 around the published 160; far beyond,
# the update swamps the frozen weights and training stops moving.
MAX_SCALE = 10_000.0
BUDGET_N = (4, 8, 16, 32, 64)  # the numbers of Kronecker terms a budget may choose


@dataclass
class KAdaptationConfig:
    n: int = 32  # number of Kronecker terms; A_i is n x n, B_i is (d/n) x (d/n)
    rank: int = 1  # rank of each fast factor B_i = U_i V_i^T
    scale: float = 160.0  # c: the official alpha / r * 5 = 128 / 4 * 5
    dropout: float = 0.5  # dropout on the update matrix during training (official)


class SharedRules(nn.Module):
    """The slow weights A_i = p_i q_i^T, one set for q and one for v, shared by every layer."""

    def __init__(self, n: int):
        super().__init__()
        self.p = nn.Parameter(torch.empty(2, n, n))  # [q/v, i, :] = p_i
        self.q = nn.Parameter(torch.empty(2, n, n))
        nn.init.uniform_(self.p, -0.01, 0.01)  # the official rule init
        nn.init.uniform_(self.q, -0.01, 0.01)

    def rules(self) -> torch.Tensor:
        """A: (2, n, n, n) with A[s, i] = p[s, i] q[s, i]^T."""
        return torch.einsum("sia,sib->siab", self.p, self.q)


class KAdaptationQKV(nn.Module):
    """A frozen fused qkv ``Linear`` with KAdaptation's updates of its q and v slices."""

    def __init__(self, base: nn.Linear, rules: SharedRules, config: KAdaptationConfig, head_dim: int):
        super().__init__()
        d = base.in_features
        if base.out_features != 3 * d or d % config.n:
            raise MethodError(
                f"kadaptation n={config.n} must divide the width {d} of qkv; choose n among "
                f"{[m for m in (4, 8, 16, 32, 64) if d % m == 0]}"
            )
        self.base, self.d, self.n, self.m = base, d, config.n, d // config.n
        self.scale, self.dropout = config.scale, config.dropout
        self.q_gain = math.sqrt(head_dim)  # the code adds the q delta after q / sqrt(d_head)
        object.__setattr__(self, "_rules", rules)  # shared: registered once, on the model
        # Fast factors for q (index 0) and v (index 1): U Kaiming-uniform, V zero.
        self.fast_u = nn.Parameter(torch.empty(2, config.n, self.m, config.rank))
        self.fast_v = nn.Parameter(torch.zeros(2, config.n, self.m, config.rank))
        bound = 1.0 / math.sqrt(self.m)  # kaiming_uniform(a=sqrt(5)) on the (rank, d/n) factor
        nn.init.uniform_(self.fast_u, -bound, bound)
        self.bias = nn.Parameter(torch.zeros(d))  # one bias per layer, added to q and v (official)

    def delta_weights(self) -> torch.Tensor:
        """(2, d, d): the q and v updates, sqrt(d_head) already applied to q."""
        a = self._rules.rules()  # (2, n, n, n)
        b = torch.einsum("sikr,silr->sikl", self.fast_u, self.fast_v)  # (2, n, m, m)
        dw = torch.einsum("siab,sikl->sakbl", a, b).reshape(2, self.d, self.d)  # sum_i A_i (x) B_i
        gain = torch.tensor([self.q_gain, 1.0], device=dw.device, dtype=dw.dtype).view(2, 1, 1)
        return self.scale * gain * dw

    def bias_deltas(self) -> torch.Tensor:
        return torch.stack([self.q_gain * self.bias, self.bias])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dw = self.delta_weights()
        if self.training and self.dropout > 0:
            dw = nn.functional.dropout(dw, self.dropout)  # on the update matrix, as the code does
        out = self.base(x)
        d = self.d
        qv = nn.functional.linear(x, dw.reshape(2 * d, d).to(x.dtype), self.bias_deltas().reshape(2 * d).to(x.dtype))
        return torch.cat([out[..., :d] + qv[..., :d], out[..., d : 2 * d], out[..., 2 * d :] + qv[..., d:]], dim=-1)


def kadaptation_count(spec: BackboneSpec, n: int, rank: int) -> int:
    """Per layer of width d: 2 (q, v) x n x 2 (U, V) x (d/n) x rank + d (bias); shared 2 x 2 x n x n (p, q rules).

    On a Swin each block counts at its stage's width: the shared rules are n x n whatever the width.
    """
    total = 0
    for block in spec.blocks:
        d = block.width
        if d % n:
            raise MethodError(
                f"kadaptation n={n} does not divide the width {d} of {block.path}; choose n among "
                f"{[m for m in BUDGET_N if all(b.width % m == 0 for b in spec.blocks)]}"
            )
        total += 2 * n * 2 * (d // n) * rank + d
    return total + 4 * n * n


def _dividing_n(spec: BackboneSpec) -> list[int]:
    """The numbers of Kronecker terms a budget may choose that divide every block's width."""
    return [n for n in BUDGET_N if all(b.width % n == 0 for b in spec.blocks)]


@register_method
class KAdaptation(Method):
    name = "kadaptation"
    category = "reparameterisable"
    paper = "He et al., AAAI 2023 (arXiv 2203.16329)"
    Config = KAdaptationConfig
    description = "KAdaptation: shared Kronecker rules x per-layer low-rank factors on q and v (mergeable)"
    identity_at_init = True
    mergeable = True
    families = ("vit", "swin")

    def validate(self, config: KAdaptationConfig) -> None:
        if config.n < 1 or config.rank < 1:
            raise MethodError(f"kadaptation n={config.n} and rank={config.rank} must be positive integers")
        if not 0.0 <= config.dropout < 1.0:
            raise MethodError(f"kadaptation dropout={config.dropout} must be in [0, 1)")
        check_range("kadaptation", "scale", config.scale, 0.0, MAX_SCALE, low_open=True)

    def apply(self, model: nn.Module, config: KAdaptationConfig) -> nn.Module:
        spec = describe_backbone(model)
        self.check_backbone(spec)
        model.kadaptation_rules = SharedRules(config.n)
        attns = [model.get_submodule(block.path).attn for block in spec.blocks]
        for attn in attns:
            # head_dim from the attention's own scale (timm's Swin attention keeps no head_dim)
            head_dim = round(attn.scale**-2)
            attn.qkv = KAdaptationQKV(attn.qkv, model.kadaptation_rules, config, head_dim)
        layers = [attn.qkv for attn in attns]
        own = [p for layer in layers for p in (layer.fast_u, layer.fast_v, layer.bias)]
        freeze_all_but(model, [*own, *model.kadaptation_rules.parameters()])
        return model

    def count(self, spec: BackboneSpec, config: KAdaptationConfig) -> int:
        return kadaptation_count(spec, config.n, config.rank)

    def size_limits(self, spec: BackboneSpec, config: KAdaptationConfig) -> dict[str, tuple[int, str]]:
        d = min(b.width for b in spec.blocks)
        return {"rank": (max(1, d // config.n), f"B_i is width/n x width/n with n={config.n} (narrowest width {d})")}

    def largest_config(self, spec: BackboneSpec) -> KAdaptationConfig:
        divisors = _dividing_n(spec)
        n = min(divisors) if divisors else PUBLISHED[0]
        return make_config(self, {"n": n, "rank": max(1, min(b.width for b in spec.blocks) // n)})

    def for_budget(self, spec: BackboneSpec, budget: int) -> KAdaptationConfig:
        d = min(b.width for b in spec.blocks)
        candidates = [(n, r, kadaptation_count(spec, n, r)) for n in _dividing_n(spec) for r in range(1, d // n + 1)]
        feasible = [c for c in candidates if within_budget(c[2], budget)]
        if not feasible:
            raise MethodError(budget_error(self.name, budget, [c[2] for c in candidates]))
        n, r, _ = min(
            feasible, key=lambda c: (abs(math.log2(c[0] / PUBLISHED[0])) + abs(c[1] - PUBLISHED[1]), abs(c[2] - budget))
        )
        return make_config(self, {"n": n, "rank": r})

    def search_space(self, trial: Any) -> dict[str, Any]:
        return {
            **shared_search_space(trial),
            "scale": trial.suggest_float("scale", 10.0, 1000.0, log=True),
            "dropout": trial.suggest_float("dropout", 0.0, 0.5),
        }

    def published_hparams(self) -> dict[str, Any]:
        return {"scale": 160.0, "dropout": 0.5}

    @torch.no_grad()
    def merge(self, model: nn.Module) -> nn.Module:
        # found by type, not at attn.qkv: in a composition another part's layer may wrap it (SSF's)
        for path, layer in list(model.named_modules()):
            if not isinstance(layer, KAdaptationQKV):
                continue
            base, d = layer.base, layer.d
            dw, db = layer.delta_weights(), layer.bias_deltas()
            base.weight[:d] += dw[0].to(base.weight.dtype)
            base.weight[2 * d :] += dw[1].to(base.weight.dtype)
            if base.bias is None:  # a bias-free qkv gains one: the learnt bias has to live somewhere
                base.bias = nn.Parameter(torch.zeros(3 * d, device=base.weight.device, dtype=base.weight.dtype))
            base.bias[:d] += db[0].to(base.bias.dtype)
            base.bias[2 * d :] += db[1].to(base.bias.dtype)
            parent, _, child = path.rpartition(".")
            setattr(model.get_submodule(parent), child, base)
        if hasattr(model, "kadaptation_rules"):
            del model.kadaptation_rules
        return model
