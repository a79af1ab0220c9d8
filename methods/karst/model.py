"""KARST as a bench method: where its layers go in a timm ViT or Swin, its count, budget and merge."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..backbones import BackboneSpec, BlockSpec, LinearSpec, describe_backbone
from ..base import (
    Method,
    MethodError,
    budget_error,
    check_range,
    config_to_dict,
    freeze_all_but,
    make_config,
    register_method,
    shared_search_space,
    within_budget,
)
from .config import KarstConfig
from .layer import KarstLinear, Rescale, merge_linear, split_width

# The published shape and the grid for_budget searches (f stays 8; N and r move).
PUBLISHED = (2, 8)  # (kernels, rank)
# The largest scale alpha / rank accepted (published: 1/8); far larger ones blow the update up
# until training stops moving.
MAX_SCALE = 100.0
BUDGET_KERNELS = range(1, 17)
BUDGET_RANKS = range(1, 65)
# The smallest rank, as a fraction of the widest layers' rank, the per-stage rule gives (the Swin
# script's table: rank 2 for m = 16 and m = 32 at rank 8 for m = 128).
MIN_RANK_FRACTION = 0.25


def _narrowest(lin: LinearSpec) -> int:
    """min(in, out per split): the official Swin script keys a layer's rank on this width / f."""
    return min(lin.in_features, lin.split_out)


def layer_ranks(spec: BackboneSpec, factor: int, rank: int) -> list[int]:
    """The rank of every adapted linear of ``spec`` (in ``spec.linears()`` order).

    ``rank`` is the rank of the widest layers. A layer whose m = min(in, out)/f is narrower gets rank * max(m / m_max, 1/4), rounded: the official Swin
    script's table (``Lucenova/KARST:train_swin_vtab.py``, ``HIERARCHY_RANK``: m 16 -> 2, 32 -> 2,
    64 -> 4, 128 -> 8) at rank 8, i.e. r = 2, 2, 4, 8 for the Swin-B widths 128, 256, 512, 1024.
    On a ViT every layer has the same m, so every layer gets ``rank``.
    """
    linears = spec.linears()
    for lin in linears:
        split_width(lin.in_features, factor, lin.path)
        split_width(lin.split_out, factor, lin.path)
    widest = max(_narrowest(lin) for lin in linears)
    return [max(1, round(rank * max(_narrowest(lin) / widest, MIN_RANK_FRACTION))) for lin in linears]


def karst_count(spec: BackboneSpec, kernels: int, factor: int, rank: int, rescale: str) -> int:
    """Closed form: the sum over adapted linears of N (f^2 + r_l (in + out) / f), plus the re-scaling.

    Each linear (in, out) costs f^2 (C) + r * out/f (A, all splits) + r * in/f (B) per kernel. On a
    ViT (width d, MLP h, one rank r) a block costs N (4 f^2 + (r/f)(8d + 2h)), the paper's form. On a
    Swin stage of width d_s (h = 4 d_s) at rank r_s it is N (4 f^2 + 16 r_s d_s / f); Swin-B at N = 2,
    f = 8, r = 2, 2, 4, 8: 303,616 with channel-wise re-scaling, 231,568 with the code's scalars.
    The re-scaling has a scale and a shift at three places per block (before and after ``proj``,
    after ``fc2``): 6 values per block, each as wide as the block when channel-wise.
    """
    linears = spec.linears()
    ranks = layer_ranks(spec, factor, rank)
    adapters = sum(
        kernels * (factor * factor + r * (lin.in_features + lin.out_features) // factor)
        for lin, r in zip(linears, ranks, strict=True)
    )
    return adapters + sum(_rescale_count(block, rescale) for block in spec.blocks)


def _rescale_count(block: BlockSpec, rescale: str) -> int:
    proj, fc2 = block.linear("proj"), block.linear("fc2")
    channel = 2 * (proj.in_features + proj.out_features + fc2.out_features)
    return {"channel": channel, "scalar": 6, "none": 0}[rescale]


@register_method
class Karst(Method):
    name = "karst"
    category = "reparameterisable"
    paper = "KARST (arXiv 2502.06779)"
    Config = KarstConfig
    description = "KARST: multi-kernel Kronecker adaptation of every block linear, with re-scaling (mergeable)"
    identity_at_init = True
    mergeable = True
    families = ("vit", "swin")

    def validate(self, config: KarstConfig) -> None:
        for field in ("kernels", "factor", "rank"):
            if getattr(config, field) < 1:
                raise MethodError(f"karst {field}={getattr(config, field)} must be a positive integer")
        if config.rescale not in ("channel", "scalar", "none"):
            raise MethodError(f"karst rescale={config.rescale!r} must be channel, scalar or none")
        if config.mode not in ("structured", "fold", "materialize"):
            raise MethodError(f"karst mode={config.mode!r} must be structured, fold or materialize")
        check_range("karst", "alpha", config.alpha, 0.0, MAX_SCALE * config.rank, low_open=True)

    def apply(self, model: nn.Module, config: KarstConfig) -> nn.Module:
        spec = describe_backbone(model)
        self.check_backbone(spec)
        ranks = iter(layer_ranks(spec, config.factor, config.rank))

        def rescale(width: int) -> Rescale | None:
            if config.rescale == "none":
                return None
            return Rescale(width if config.rescale == "channel" else 1)

        common = {"kernels": config.kernels, "factor": config.factor, "alpha": config.alpha, "mode": config.mode}
        for block in spec.blocks:
            for lin in block.linears:
                rank = next(ranks)
                parent_path, _, child = lin.path.rpartition(".")
                parent = model.get_submodule(parent_path)
                base = getattr(parent, child)
                extra: dict[str, Any] = {}
                if lin.role == "qkv":
                    extra["splits"] = lin.splits
                elif lin.role == "proj":  # re-scaling at the official code's places: around proj, after fc2
                    extra["pre"], extra["post"] = rescale(lin.in_features), rescale(lin.out_features)
                elif lin.role == "fc2":
                    extra["post"] = rescale(lin.out_features)
                setattr(parent, child, KarstLinear(base, rank=rank, where=lin.path, **common, **extra))
        own = [p for n, p in model.named_parameters() if ".karst_" in n or ".pre." in n or ".post." in n]
        freeze_all_but(model, own)
        return model

    def count(self, spec: BackboneSpec, config: KarstConfig) -> int:
        return karst_count(spec, config.kernels, config.factor, config.rank, config.rescale)

    def size_limits(self, spec: BackboneSpec, config: KarstConfig) -> dict[str, tuple[int, str]]:
        """The largest ``rank`` for which every layer's rank stays within its min(in, out) / f."""
        linears = spec.linears()
        widest = max(_narrowest(lin) for lin in linears) // config.factor
        cap = 1
        for rank in range(1, 4 * widest + 1):
            ranks = layer_ranks(spec, config.factor, rank)
            if all(r <= _narrowest(lin) // config.factor for lin, r in zip(linears, ranks, strict=True)):
                cap = rank
        return {"rank": (cap, f"every layer's rank within its narrowest width / factor {config.factor}")}

    def largest_config(self, spec: BackboneSpec) -> KarstConfig:
        default = make_config(self)
        cap = self.size_limits(spec, default)["rank"][0]
        return make_config(self, {"kernels": max(BUDGET_KERNELS), "rank": min(cap, max(BUDGET_RANKS))})

    def for_budget(self, spec: BackboneSpec, budget: int) -> KarstConfig:
        """(N, r) within ±5 % of ``budget``, nearest to the published (2, 8) first, then the closest count."""
        default = make_config(self)
        cap = self.size_limits(spec, default)["rank"][0]
        candidates = [
            (n, r, karst_count(spec, n, default.factor, r, default.rescale))
            for n in BUDGET_KERNELS
            for r in BUDGET_RANKS
            if r <= cap
        ]
        feasible = [c for c in candidates if within_budget(c[2], budget)]
        if not feasible:
            raise MethodError(budget_error(self.name, budget, [c[2] for c in candidates]))

        def distance(c: tuple[int, int, int]) -> tuple[float, float]:
            n, r, count = c
            shape = abs(n - PUBLISHED[0]) / PUBLISHED[0] + abs(r - PUBLISHED[1]) / PUBLISHED[1]
            return shape, abs(count - budget)

        n, r, _ = min(feasible, key=distance)
        return make_config(self, {**config_to_dict(default), "kernels": n, "rank": r})

    def search_space(self, trial: Any) -> dict[str, Any]:
        return {**shared_search_space(trial), "alpha": trial.suggest_float("alpha", 0.25, 8.0, log=True)}

    def published_hparams(self) -> dict[str, Any]:
        return {"alpha": 1.0}

    def merge(self, model: nn.Module) -> nn.Module:
        for name, module in list(model.named_modules()):
            if isinstance(module, KarstLinear):
                parent_name, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent_name), child, merge_linear(module))
        return model
