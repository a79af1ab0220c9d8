"""What the peft tuners behind bench share: exact target paths, freezing, merging, and fitting
one integer size field to a budget.

peft builds and initialises every adapter; bench only names the linears (exact paths from the
backbone description, so neither ``patch_embed.proj`` nor a Swin's ``downsample.reduction`` is
ever matched) and decides what trains.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable
from typing import Any

from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from .backbones import ROLES, BackboneSpec
from .base import MethodError, budget_error, freeze_all_but, within_budget


def parse_roles(method: str, targets: str) -> list[str]:
    """``"qkv,fc2"`` -> ``["qkv", "fc2"]``; a one-line refusal naming the valid roles otherwise."""
    names = [t.strip() for t in targets.split(",") if t.strip()]
    bad = [t for t in names if t not in ROLES]
    if bad or not names:
        raise MethodError(
            f"{method} targets {targets!r} are not valid; use a comma-separated subset of {', '.join(ROLES)}"
        )
    return names


def adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters peft's tuner layers hold under their adapter names (never the base layer's)."""
    params = []
    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            for attr in module.adapter_layer_names:
                holder = getattr(module, attr, None)
                if isinstance(holder, nn.Module):
                    params.extend(holder.parameters())
                elif isinstance(holder, nn.Parameter):
                    params.append(holder)
    return params


def freeze_to_adapters(model: nn.Module) -> nn.Module:
    """Train the peft adapters and the head; freeze everything else."""
    freeze_all_but(model, adapter_parameters(model))
    return model


def merge_tuner_layers(model: nn.Module) -> nn.Module:
    """Fold every peft tuner layer into its base layer (peft's own ``merge``) and put the plain base
    layer back, which is what peft's ``merge_and_unload`` does on a ``PeftModel``."""
    for name, module in list(model.named_modules()):
        if isinstance(module, BaseTunerLayer):
            module.merge(safe_merge=module.get_base_layer().weight.device.type != "meta")  # meta: no values
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, child, module.get_base_layer())
    return model


def fit_size(
    method: str,
    config: Any,
    field: str,
    cap: int,
    count: Callable[[Any], int],
    budget: int,
) -> Any:
    """The config with ``field`` in 1..cap whose count is nearest ``budget``, if within ±5 %;
    otherwise a refusal naming the nearest feasible counts."""
    return fit_configs(
        method, [dataclasses.replace(config, **{field: size}) for size in range(1, cap + 1)], count, budget
    )


def fit_configs(method: str, candidates: list[Any], count: Callable[[Any], int], budget: int) -> Any:
    """The candidate whose count is nearest ``budget`` (the earliest on ties), if within ±5 %;
    otherwise a refusal naming the nearest feasible counts."""
    counts = [count(c) for c in candidates]
    best = min(range(len(candidates)), key=lambda i: (abs(counts[i] - budget), i))
    if not within_budget(counts[best], budget):
        raise MethodError(budget_error(method, budget, counts))
    return candidates[best]


def placements(default: str) -> list[str]:
    """Which linears a budget fit may adapt, in the order it tries them: the default, all four,
    then every other subset of the block's linears, larger ones first."""
    subsets = [",".join(c) for n in range(len(ROLES), 0, -1) for c in itertools.combinations(ROLES, n)]
    return list(dict.fromkeys([default, ",".join(ROLES), *subsets]))


def fit_first_group(method: str, groups: list[list[Any]], count: Callable[[Any], int], budget: int) -> Any:
    """The candidate nearest ``budget`` in the first group that has one within ±5 % (a group: the
    sizes at one placement); otherwise a refusal naming the nearest feasible counts of all groups."""
    for group in groups:
        if any(within_budget(count(c), budget) for c in group):
            return fit_configs(method, group, count, budget)
    return fit_configs(method, [c for group in groups for c in group], count, budget)


def linears_of(spec: BackboneSpec, method: str, targets: str) -> list:
    return spec.linears(parse_roles(method, targets))
