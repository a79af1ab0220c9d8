"""KARST as a bench method: where its layers go in a timm ViT, its count, budget and merge."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..base import (
    BackboneSpec,
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


def _linear_dims(spec: BackboneSpec) -> dict[str, tuple[int, int, int]]:
    """(in, out, splits) of the four adapted linears of a block."""
    d, h = spec.embed_dim, spec.mlp_hidden
    return {"attn.qkv": (d, 3 * d, 3), "attn.proj": (d, d, 1), "mlp.fc1": (d, h, 1), "mlp.fc2": (h, d, 1)}


def karst_count(spec: BackboneSpec, kernels: int, factor: int, rank: int, rescale: str) -> int:
    """Closed form: per block N * (4 f^2 + (r/f)(8d + 2h)) + R, with R = 6d, 6 or 0.

    Each linear (in, out) costs f^2 (C) + r * out/f (A, all splits) + r * in/f (B) per kernel;
    summed over qkv, proj, fc1 and fc2 this is the paper's 4f^2 + (r/f)(8d + 2h). The re-scaling
    has a scale and a shift at three places: 6 values per block, each d wide when channel-wise.
    """
    per_kernel = 0
    for where, (fan_in, fan_out, splits) in _linear_dims(spec).items():
        split_width(fan_in, factor, where)
        split_width(fan_out // splits, factor, where)
        per_kernel += factor * factor + rank * (fan_in + fan_out) // factor
    rescale_params = {"channel": 6 * spec.embed_dim, "scalar": 6, "none": 0}[rescale]
    return spec.depth * (kernels * per_kernel + rescale_params)


@register_method
class Karst(Method):
    name = "karst"
    Config = KarstConfig
    description = "KARST: multi-kernel Kronecker adaptation of every block linear, with re-scaling (mergeable)"
    identity_at_init = True
    mergeable = True

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
        d = model.embed_dim
        width = d if config.rescale == "channel" else 1

        def rescale() -> Rescale | None:
            return Rescale(width) if config.rescale != "none" else None

        common = {
            "kernels": config.kernels,
            "factor": config.factor,
            "rank": config.rank,
            "alpha": config.alpha,
            "mode": config.mode,
        }
        for index, block in enumerate(model.blocks):
            where = f"blocks.{index}"
            attn, mlp = block.attn, block.mlp
            attn.qkv = KarstLinear(attn.qkv, splits=3, where=f"{where}.attn.qkv", **common)
            # Re-scaling at the official code's three places: before proj, after proj, after fc2.
            attn.proj = KarstLinear(attn.proj, pre=rescale(), post=rescale(), where=f"{where}.attn.proj", **common)
            mlp.fc1 = KarstLinear(mlp.fc1, where=f"{where}.mlp.fc1", **common)
            mlp.fc2 = KarstLinear(mlp.fc2, post=rescale(), where=f"{where}.mlp.fc2", **common)
        own = [p for n, p in model.named_parameters() if ".karst_" in n or ".pre." in n or ".post." in n]
        freeze_all_but(model, own)
        return model

    def count(self, spec: BackboneSpec, config: KarstConfig) -> int:
        return karst_count(spec, config.kernels, config.factor, config.rank, config.rescale)

    def size_limits(self, spec: BackboneSpec, config: KarstConfig) -> dict[str, tuple[int, str]]:
        widths = [w for fan_in, fan_out, splits in _linear_dims(spec).values() for w in (fan_in, fan_out // splits)]
        cap = max(1, min(widths) // config.factor)
        return {"rank": (cap, f"the narrowest adapted width / factor {config.factor}")}

    def largest_config(self, spec: BackboneSpec) -> KarstConfig:
        default = make_config(self)
        cap = self.size_limits(spec, default)["rank"][0]
        return make_config(self, {"kernels": max(BUDGET_KERNELS), "rank": min(cap, max(BUDGET_RANKS))})

    def for_budget(self, spec: BackboneSpec, budget: int) -> KarstConfig:
        """(N, r) within ±5 % of ``budget``, nearest to the published (2, 8) first, then the closest count."""
        default = make_config(self)
        candidates = [
            (n, r, karst_count(spec, n, default.factor, r, default.rescale))
            for n in BUDGET_KERNELS
            for r in BUDGET_RANKS
            if r <= self.size_limits(spec, default)["rank"][0]
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
