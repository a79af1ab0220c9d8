"""What a sweep's or study's runs cost against the wall time they took: the line printed at the end
of ``bench run`` and ``bench tune``, and the ``sweep/*`` metrics of its parent run.

Efficiency is the steady training time of the runs trained, over the wall time times the run
slots (GPUs, or runs packed per GPU): the share of the devices' time that went into training at
full speed. Warm-up (building, compiling, capturing), evaluation, data loading and recording are
what it leaves out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from . import schema


@dataclass(frozen=True)
class SweepEfficiency:
    runs: int  # runs trained (reused and failed runs cost nothing here)
    wall_s: float
    train_s: float
    warmup_s: float
    steady_s: float
    slots: int = 1

    @property
    def efficiency(self) -> float:
        return self.steady_s / (self.wall_s * self.slots) if self.wall_s > 0 else 0.0

    def metrics(self) -> dict[str, float]:
        return {
            schema.SWEEP_WALL_SECONDS: self.wall_s,
            schema.SWEEP_TRAIN_SECONDS: self.train_s,
            schema.SWEEP_WARMUP_SECONDS: self.warmup_s,
            schema.SWEEP_STEADY_SECONDS: self.steady_s,
            schema.SWEEP_EFFICIENCY: self.efficiency,
        }

    def line(self) -> str:
        slots = f" × {self.slots} slots" if self.slots > 1 else ""
        return (
            f"{self.runs} run{'s' if self.runs != 1 else ''} trained in {duration(self.wall_s)}: "
            f"training {duration(self.train_s)}, warm-up {duration(self.warmup_s)}, "
            f"efficiency {self.efficiency:.0%} (steady training / wall time{slots})"
        )


def measure(outcomes: Iterable[Any], wall_s: float, slots: int = 1) -> SweepEfficiency:
    """Sum the timings of the ``trained`` outcomes (``bench.engine.RunOutcome``)."""
    trained = [o for o in outcomes if o.status == "trained" and o.timing is not None]
    return SweepEfficiency(
        runs=len(trained),
        wall_s=wall_s,
        train_s=sum(o.timing.train_s for o in trained),
        warmup_s=sum(o.timing.warmup_s for o in trained),
        steady_s=sum(o.timing.steady_s for o in trained),
        slots=max(1, slots),
    )


def duration(seconds: float) -> str:
    """12.3 s, 4 min 05 s, 2 h 03 min."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"
