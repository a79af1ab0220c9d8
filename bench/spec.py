"""Run identity: what a run is, and the key that says two runs are the same."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no whitespace: equal values give equal strings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


@dataclass(frozen=True)
class RunSpec:
    """Everything that determines a run's result. ``run_key`` hashes all of it.

    Anything not here (the work directory, the tracking URI, the device, the code version) does
    not change a run's identity: re-running the same command finds the same keys and trains nothing.
    """

    suite: str
    task: str
    stage: str
    method: str
    method_config: dict[str, Any]
    hparams: dict[str, Any]  # the resolved preset, overrides applied
    seed: int
    preset: str
    backbone: str
    checkpoint: str  # "sha256:<hex>" or "random-init:seed<k>"
    data: str  # fingerprint of the task's list files for this stage
    num_classes: int
    budget: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. few-shot shots; part of the key

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def run_key(self) -> str:
        return hashlib.sha256(canonical_json(self.to_dict()).encode()).hexdigest()[:32]

    @property
    def label(self) -> str:
        """Short human name, e.g. ``lora/dtd/s2``, at a budget ``lora@300k/dtd/s2``; few-shot
        ``lora/oxford_pets/k4/s0`` (split seed = seed) or ``lora/oxford_pets/k4/split1/s0`` (split
        seed 1, training seed 0)."""
        split = ""
        if "shots" in self.extra:
            split = f"/k{self.extra['shots']}"
            if self.extra.get("split_seed") != self.seed:
                split += f"/split{self.extra['split_seed']}"
        return f"{self.method_label}/{self.task}{split}/s{self.seed}"

    @property
    def method_label(self) -> str:
        """The method, with the budget it was fitted to: ``lora``, ``lora@300k``."""
        if self.budget is None:
            return self.method
        from .budget import format_budget

        return f"{self.method}@{format_budget(self.budget)}"
