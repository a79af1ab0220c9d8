"""FacT: Factor-Tuning (Jie & Deng, "FacT: Factor-Tuning for Lightweight Adaptation on Vision
Transformer", AAAI 2023, arXiv 2212.03145). Official code: ``JieShibo/PETL-ViT``, folder ``FacT``
(``fact_tt.py``, ``fact_tk.py``, ``configs/{tt,tk}/<task>.yaml``).

Tensorisation (paper Sec. 3.1). Every block's weights split into d x d matrices: q, k and v (the
three output thirds of timm's fused ``attn.qkv``), the attention output ``proj``, the four output
quarters of ``mlp.fc1`` and the four input quarters of ``mlp.fc2``: 12 slices per block, 12L in
all, stacked into one 12L x d x d tensor whose increment ΔW is factorised with factors shared by
every block. ``fact_tt`` and ``fact_tk`` are the paper's two formats (Eq. 8 and 10):

* FacT-TT (Tensor-Train): ΔW_i = s · U Σ_i Vᵀ, U, V ∈ R^{d×r} shared, Σ ∈ R^{12L×r×r}.
* FacT-TK (Tucker): ΔW_i = s · U (C ×₃ P_i) Vᵀ, U, V ∈ R^{d×r}, a core C ∈ R^{r×r×r} and
  P ∈ R^{12L×r} (one row per slice), all shared.

In timm's y = W x orientation the update of slice i is s · V M_iᵀ Uᵀ with M_i the slice's r x r
core; it runs on activations as the official code does, y = W x + s · V dropout(M_iᵀ Uᵀ x), with
dropout 0.1 between the core and V. V is zero, so ΔW = 0 at init (the model is the backbone);
the other factors are random, as in the official code: U as ``nn.Linear(d, r)`` (uniform
±1/√d); TT's cores as the official per-operation ``nn.Linear`` weights (uniform ±1/√(r a), a the
slice's count of input chunks: 4 for fc2's quarters, 1 otherwise); TK's C and P Xavier-uniform in
the official shapes (r × r × r and r × 12L).

Count on a ViT of width d, L blocks, MLP width 4d, rank r (paper Sec. 3.2):
TT 2dr + 12L r², TK 2dr + 12L r + r³. ViT-B/16: TT at r = 16 **61,440**, TK at r = 32
**86,528**. The paper's Table 1 reports FacT-TT≤16 at 0.037 M and FacT-TK≤32 at 0.069 M: the
rank is chosen per task there (the official configs: TT r ∈ {4, 8, 16}, TK r ∈ {16, 32}), and the
table averages the count over the three VTAB groups; its fixed-rank rows FacT-TT4 (8,448) and
FacT-TK8 (13,952) are ``--set fact_tt.rank=4`` and ``--set fact_tk.rank=8``.

Defaults: rank 16 (TT) and 32 (TK), the largest ranks of the official per-task configs (TT uses
16 on 9 of 19 VTAB-1K tasks, as FacT-TT16 in the paper's Swin and few-shot experiments; TK uses
32 on 13 of 19); scale s = 1 (TT) and 10 (TK), the most frequent per-task values of the official
configs (7 and 9 of 19 tasks; the paper sweeps s over {0.01, 0.1, 1, 10, 100}); dropout 0.1.

Swin (paper Sec. 4.3, "partitioned tensorisation"): the width changes across stages, so each
stage is tensorised on its own with its own factors (Swin-B: 24 x 128 x 128, 24 x 256 x 256,
216 x 512 x 512, 24 x 1024 x 1024). Count: Σ_stages (2 w_s r + 12 L_s r²) for TT and
Σ_stages (2 w_s r + 12 L_s r + r³) for TK; Swin-B at TT r = 16: 135,168 (the paper's Table 2:
FacT-TT16, 0.135 M).

Merge: each slice's s · V M_iᵀ Uᵀ is added to its part of the frozen weight, leaving plain timm
linears; the factors are dropped.

Deviations:

* The official TK code builds fc1's and fc2's cores by reshaping the r × r × 4 slab of
  C ×₃ P into r × 4r without moving the slice axis (and transposes fc2's), so its MLP increments
  are not the Tucker slices of Eq. 10; here every one of the 12 slices uses its own C ×₃ P_i,
  as the paper writes it. The parameter count is unchanged.
* The official code hard-codes width 768 and the MLP ratio 4; here the widths come from the
  backbone and any MLP width that is a multiple of the block width is split into that many
  slices (a backbone where it is not is refused).
* The training recipe is the harness preset; the official scripts train 100 epochs with AdamW
  (lr 1e-3, weight decay 1e-4), as the preset does for VTAB-1K.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from .backbones import BackboneSpec, LinearSpec, describe_backbone
from .base import (
    Method,
    MethodError,
    check_range,
    freeze_all_but,
    make_config,
    register_method,
    shared_search_space,
)
from .peft_tuners import fit_configs

FACTORS_ATTR = "fact"  # where the shared factors live on the model (dropped by merge)


@dataclass
class FacTTTConfig:
    rank: int = 16  # r; the official configs use 4, 8 or 16 per task
    scale: float = 1.0  # s; the official configs use 0.01 to 100 per task
    dropout: float = 0.1  # between the core and V, as in the official code


@dataclass
class FacTTKConfig:
    rank: int = 32  # r; the official configs use 16 or 32 per task
    scale: float = 10.0
    dropout: float = 0.1


@dataclass(frozen=True)
class Group:
    """Blocks sharing one set of factors: a ViT's blocks, or one Swin stage."""

    width: int
    linears: tuple[LinearSpec, ...]

    @property
    def slices(self) -> int:
        return sum(math.prod(_chunks(lin, self.width)) for lin in self.linears)


def _chunks(lin: LinearSpec, width: int) -> tuple[int, int]:
    """(output chunks, input chunks) of width x width slices in ``lin``."""
    return lin.out_features // width, lin.in_features // width


def fact_groups(spec: BackboneSpec, method: str) -> list[Group]:
    """The tensorised groups of ``spec`` (one per stage), refusing a linear that is not made of
    whole width x width slices."""
    groups: dict[int, list[LinearSpec]] = {}
    widths: dict[int, int] = {}
    for block in spec.blocks:
        for lin in block.linears:
            if lin.in_features % block.width or lin.out_features % block.width:
                raise MethodError(
                    f"method {method!r} cannot tensorise {lin.path} of {spec.name} ({lin.out_features} x "
                    f"{lin.in_features}): its sides are not multiples of the block width {block.width}; "
                    "choose a backbone whose MLP width is a multiple of its width, or another method"
                )
        groups.setdefault(block.stage, []).extend(block.linears)
        widths[block.stage] = block.width
    return [Group(widths[s], tuple(groups[s])) for s in sorted(groups)]


def fact_count(spec: BackboneSpec, fmt: str, rank: int, method: str) -> int:
    total = 0
    for g in fact_groups(spec, method):
        core = g.slices * rank * rank if fmt == "tt" else g.slices * rank + rank**3
        total += 2 * g.width * rank + core
    return total


class FacTFactors(nn.Module):
    """The factors one group shares: U (stored as the r x d down-projection), V (d x r, zero) and
    the TT cores Σ (slices x r x r) or the Tucker core C (r x r x r) with P (r x slices)."""

    def __init__(self, fmt: str, width: int, rank: int, in_chunks: list[int]):
        super().__init__()
        self.fmt = fmt
        self.rank = rank
        self.u = nn.Parameter(torch.empty(rank, width))
        self.v = nn.Parameter(torch.zeros(width, rank))  # zero: ΔW = 0 at init
        nn.init.uniform_(self.u, -1 / math.sqrt(width), 1 / math.sqrt(width))  # nn.Linear(d, r)'s init
        if fmt == "tt":
            self.sigma = nn.Parameter(torch.empty(len(in_chunks), rank, rank))
            with torch.no_grad():
                for i, a in enumerate(in_chunks):  # the official per-operation nn.Linear(a r, b r) init
                    bound = 1 / math.sqrt(rank * a)
                    self.sigma[i].uniform_(-bound, bound)
        else:
            self.core = nn.Parameter(torch.empty(rank, rank, rank))
            self.p = nn.Parameter(torch.empty(rank, len(in_chunks)))
            nn.init.xavier_uniform_(self.core)
            nn.init.xavier_uniform_(self.p)

    def cores(self, start: int, n: int) -> torch.Tensor:
        """The r_in x r_out cores M_i of slices start .. start + n - 1 (u ↦ u M_i)."""
        if self.fmt == "tt":
            return self.sigma[start : start + n]
        return torch.einsum("abc,ci->iab", self.core, self.p[:, start : start + n])


class FacTLinear(nn.Module):
    """A frozen ``nn.Linear`` plus the FacT increment of its slices, computed on activations."""

    def __init__(self, base: nn.Linear, factors: FacTFactors, first: int, width: int, scale: float, dropout: float):
        super().__init__()
        self.base = base
        self._factors = (factors,)  # shared with every block of the group; registered once on the model
        self.first = first
        self.width = width
        self.out_chunks = base.out_features // width
        self.in_chunks = base.in_features // width
        self.scale = scale
        self.dropout = nn.Dropout(dropout)

    @property
    def factors(self) -> FacTFactors:
        return self._factors[0]

    def _slice_cores(self) -> torch.Tensor:
        """(out chunks, in chunks, r, r): the core of output chunk i and input chunk j."""
        b, a, r = self.out_chunks, self.in_chunks, self.factors.rank
        return self.factors.cores(self.first, a * b).reshape(b, a, r, r)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f, (b, a), r = self.factors, (self.out_chunks, self.in_chunks), self.factors.rank
        cores = self._slice_cores().permute(1, 2, 0, 3).reshape(a * r, b * r)  # block matrix over chunks
        u = (x.unflatten(-1, (a, self.width)) @ f.u.t()).flatten(-2)  # (..., a r)
        z = self.dropout(u @ cores).unflatten(-1, (b, r))
        return self.base(x) + self.scale * (z @ f.v.t()).flatten(-2)

    @torch.no_grad()
    def delta_weight(self) -> torch.Tensor:
        """s · V M_ijᵀ Uᵀ in every (output chunk i, input chunk j) block: the weight's increment."""
        f = self.factors
        u, v, m = f.u.double(), f.v.double(), self._slice_cores().double()
        delta = torch.einsum("ot,ijst,sn->iojn", v, m, u)
        return (self.scale * delta).reshape(self.base.out_features, self.base.in_features)

    @torch.no_grad()
    def folded(self) -> nn.Linear:
        self.base.weight.add_(self.delta_weight().to(self.base.weight.dtype))
        return self.base


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


class FacT(Method):
    """FacT with the tensor format ``fmt`` ("tt" or "tk"); registered as ``fact_tt`` and ``fact_tk``."""

    fmt: ClassVar[str]
    identity_at_init = True  # V starts at zero
    mergeable = True
    families = ("vit", "swin")
    category = "reparameterisable"
    paper = "Jie & Deng, AAAI 2023 (arXiv 2212.03145)"

    def validate(self, config: Any) -> None:
        if config.rank < 1:
            raise MethodError(f"{self.name} rank={config.rank} must be a positive integer, e.g. 8")
        check_range(self.name, "scale", config.scale, 0.0, 1000.0, low_open=True)
        check_range(self.name, "dropout", config.dropout, 0.0, 1.0, high_open=True)

    def apply(self, model: nn.Module, config: Any) -> nn.Module:
        spec = describe_backbone(model)
        self.check_backbone(spec)
        groups = fact_groups(spec, self.name)
        factors = nn.ModuleList()
        for group in groups:
            in_chunks = [
                _chunks(lin, group.width)[1]
                for lin in group.linears
                for _ in range(math.prod(_chunks(lin, group.width)))
            ]
            shared = FacTFactors(self.fmt, group.width, config.rank, in_chunks)
            factors.append(shared)
            first = 0
            for lin in group.linears:
                wrapped = FacTLinear(
                    model.get_submodule(lin.path), shared, first, group.width, config.scale, config.dropout
                )
                _set(model, lin.path, wrapped)
                first += math.prod(_chunks(lin, group.width))
        setattr(model, FACTORS_ATTR, factors)
        freeze_all_but(model, list(factors.parameters()))
        return model

    def count(self, spec: BackboneSpec, config: Any) -> int:
        return fact_count(spec, self.fmt, config.rank, self.name)

    def size_limits(self, spec: BackboneSpec, config: Any) -> dict[str, tuple[int, str]]:
        cap = min(g.width for g in fact_groups(spec, self.name))
        return {"rank": (cap, "U and V are width x rank, so the (narrowest) width bounds their rank")}

    def for_budget(self, spec: BackboneSpec, budget: int) -> Any:
        # the count grows as r² (TT) or r³ (TK): the nearest rank, not an affine fit
        cap = self.size_limits(spec, make_config(self))["rank"][0]
        ranks = list(range(1, cap + 1))
        rank = fit_configs(self.name, ranks, lambda r: fact_count(spec, self.fmt, r, self.name), budget)
        return make_config(self, {"rank": rank})

    def search_space(self, trial: Any) -> dict[str, Any]:
        # the paper sweeps s over {0.01, 0.1, 1, 10, 100}
        return {**shared_search_space(trial), "scale": trial.suggest_float("scale", 0.01, 100.0, log=True)}

    def published_hparams(self) -> dict[str, Any]:
        return {"scale": self.Config().scale}

    def merge(self, model: nn.Module) -> nn.Module:
        for path, module in list(model.named_modules()):
            if isinstance(module, FacTLinear):
                _set(model, path, module.folded())
        if hasattr(model, FACTORS_ATTR):
            delattr(model, FACTORS_ATTR)
        return model


@register_method
class FacTTT(FacT):
    name = "fact_tt"
    Config = FacTTTConfig
    fmt = "tt"
    description = "FacT-TT: tensor-train factors of all blocks' weight increments, shared across layers (mergeable)"
    published_params = "0.037M"  # Table 1, FacT-TT≤16 (rank chosen per task)


@register_method
class FacTTK(FacT):
    name = "fact_tk"
    Config = FacTTKConfig
    fmt = "tk"
    description = "FacT-TK: Tucker factors of all blocks' weight increments, shared across layers (mergeable)"
    published_params = "0.069M"  # Table 1, FacT-TK≤32 (rank chosen per task)
