"""Trainable-parameter budgets: parsing, and the structural config each method uses to meet one.

The count a budget refers to is the methods' own rule: trainable parameters, shared tensors once,
the classification head excluded (it is the same for every method and reported separately).
Methods that cannot be sized (``linear``, ``full``) are references: they run at their fixed count
whatever the budget, and their runs are shared by every budget's sweep.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from methods.base import BackboneSpec, Method, config_to_dict, make_config

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


def format_budget(budget: int) -> str:
    """300000 -> "300k", 1200000 -> "1.2M": the short form used in study names and tables."""
    if budget >= 1_000_000:
        return f"{budget / 1_000_000:g}M"
    if budget >= 1_000:
        return f"{budget / 1_000:g}k"
    return str(budget)


@dataclass(frozen=True)
class BudgetChoice:
    method: str
    adjustable: bool
    config: Any
    count: int
    budget: int

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
            "deviation": round(self.deviation, 4),
        }


def choose_for_budget(method: Method, spec: BackboneSpec, budget: int) -> BudgetChoice:
    """The method's structure at ``budget``; a reference method keeps its fixed structure."""
    if not method.budget_adjustable:
        config = make_config(method)
        return BudgetChoice(method.name, False, config, method.count(spec, config), budget)
    config = method.for_budget(spec, budget)
    return BudgetChoice(method.name, True, config, method.count(spec, config), budget)
