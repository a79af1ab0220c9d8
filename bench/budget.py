"""Trainable-parameter budgets: parsing, and the structural config each method uses to meet one.

The count a budget refers to is the methods' own rule: free trainable parameters
(``Method.budget_count``: what the model stores, unless some stored entries are tied, as BOFT's
skew-symmetric blocks), shared tensors once, the classification head excluded (it is the same for
every method and reported separately).
Methods that cannot be sized (``linear``, ``full``) are references: they run at their fixed count
whatever the budget, and their runs are shared by every budget's sweep.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from methods.base import BUDGET_TOLERANCE, BackboneSpec, Composite, Method, MethodError, config_to_dict, make_config

from .errors import BenchError

_UNITS = {"": 1, "k": 1_000, "m": 1_000_000}


def parse_budget(text: str) -> int:
    """``"300000"``, ``"300k"``, ``"0.3M"`` -> 300000 (case-insensitive, ``_`` and ``,`` allowed)."""
    match = re.fullmatch(r"\s*([0-9][0-9_,]*(?:\.[0-9]+)?)\s*([kKmM]?)\s*", text or "")
    if not match:
        raise BenchError(f"--budget {text!r} is not a parameter count; write e.g. 300000, 300k or 0.3M")
    value = float(match.group(1).replace("_", "").replace(",", "")) * _UNITS[match.group(2).lower()]
    if value < 1 or value != round(value):
        raise BenchError(f"--budget {text!r} must be a positive whole number of parameters")
    return int(round(value))


def parse_budgets(text: str) -> list[int]:
    """``"0.1M,0.3M,1M"`` -> [100000, 300000, 1000000]: one or more distinct budgets, in the order given."""
    budgets = [parse_budget(item) for item in text.split(",") if item.strip()] if text and text.strip() else []
    if not budgets:
        raise BenchError(f"--budget {text!r} names no budget; write e.g. 0.3M, or a list 0.1M,0.3M,1M")
    if len(set(budgets)) != len(budgets):
        raise BenchError(f"--budget {text!r} repeats a budget; list each one once, e.g. 0.1M,0.3M,1M")
    return budgets


def format_budget(budget: int) -> str:
    """300000 -> "300k", 1200000 -> "1.2M": the short form used in study names and tables."""
    if budget >= 1_000_000:
        return f"{budget / 1_000_000:g}M"
    if budget >= 1_000:
        return f"{budget / 1_000:g}k"
    return str(budget)


class UnreachableBudget(MethodError):
    """No structure of a method meets a budget on a backbone; the message names the nearest feasible
    counts. A sweep over several budgets leaves such a (method, budget) out instead of stopping."""


@dataclass(frozen=True)
class BudgetChoice:
    method: str
    adjustable: bool
    config: Any
    count: int  # free parameters (Method.budget_count): what the budget charges
    budget: int
    stored: int | None = None  # trainable parameters the model stores, where more than ``count``

    @property
    def deviation(self) -> float:
        return (self.count - self.budget) / self.budget

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "budget": self.budget,
            "adjustable": self.adjustable,
            "config": config_to_dict(self.config),
            "trainable_params": self.count,
            "stored_params": self.stored if self.stored is not None else self.count,
            "deviation": round(self.deviation, 4),
        }


def choose_for_budget(method: Method, spec: BackboneSpec, budget: int) -> BudgetChoice:
    """The method's structure at ``budget``; a reference method keeps its fixed structure.

    A budget beyond what the backbone's shapes allow is refused with the largest count that fits,
    rather than met with a rank larger than the layers it adapts. A method that does not support
    the backbone's family is refused in one line.
    """
    method.check_backbone(spec)
    if not method.budget_adjustable:
        config = make_config(method)
        return BudgetChoice(
            method.name, False, config, method.budget_count(spec, config), budget, method.count(spec, config)
        )
    largest = method.largest_config(spec)
    most = method.budget_count(spec, largest)
    limits = method.size_limits(spec, largest)
    if limits and budget > most * (1 + BUDGET_TOLERANCE):
        caps = ", ".join(f"{name} <= {cap}, {why}" for name, (cap, why) in limits.items())
        raise UnreachableBudget(
            f"method {method.name!r} cannot reach a budget of {budget:,} trainable parameters on {spec.name}: "
            f"its structure allows at most {most:,} ({caps}); choose a budget up to {most:,}"
        )
    try:
        config = method.for_budget(spec, budget)
    except MethodError as exc:  # a method's own fit names the nearest feasible counts
        raise UnreachableBudget(str(exc)) from None
    check_structure(method, spec, config)
    return BudgetChoice(
        method.name, True, config, method.budget_count(spec, config), budget, method.count(spec, config)
    )


def check_structure(method: Method, spec: BackboneSpec, config: Any) -> None:
    """Refuse a size field beyond the backbone's structure (from --set or a method's budget fit),
    and a backbone family the method does not support."""
    method.check_backbone(spec)
    if isinstance(method, Composite):
        for part, (_, part_config) in zip(method.parts, config.parts, strict=True):
            check_structure(part, spec, part_config)
        return
    for name, (cap, why) in method.size_limits(spec, config).items():
        value = getattr(config, name)
        if value > cap:
            raise BenchError(
                f"{method.name} {name}={value} exceeds the structure of {spec.name}: at most {cap} ({why}); "
                f"set {method.name}.{name} to {cap} or less"
            )
