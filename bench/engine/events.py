"""What a running job reports to the driver, from any executor.

Every executor turns what happens to a job into these events, in this order: one
:class:`Started`, an :class:`Epoch` per trained epoch, then exactly one end event (:class:`Done`,
:class:`Failed`, :class:`Cancelled` or :class:`WorkerLost`). They are plain dataclasses so they
pickle across processes and machines.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Placement:
    """Where a job runs: the executor, the Ray node (``local`` inline), host, process and device."""

    executor: str
    node_id: str
    host: str
    pid: int
    device: str  # "cpu" or "cuda:<index as the worker sees it>"
    gpu: str | None  # the GPU's name
    torch: str  # versions in the worker, for the run's resolved config
    python: str
    timm: str = ""
    peft: str = ""


@dataclass(frozen=True)
class Started:
    job: int
    placement: Placement
    mean: tuple[float, ...]  # the backbone's normalisation, for the run's resolved config
    std: tuple[float, ...]
    train_step: str  # the training step's compile mode on that device


@dataclass(frozen=True)
class Epoch:
    job: int
    metrics: Any  # bench.train.EpochMetrics


@dataclass(frozen=True)
class Done:
    job: int
    result: Any  # bench.train.RunResult, tensors on the CPU


@dataclass(frozen=True)
class Failed:
    """The run raised: ``error`` is one line; ``user_error`` when it was a BenchError (bad input)."""

    job: int
    error: str
    user_error: bool = False
    traceback: str | None = None


@dataclass(frozen=True)
class Cancelled:
    """The driver asked the job to stop (a pruned tuning trial); it stopped after an epoch."""

    job: int


@dataclass(frozen=True)
class WorkerLost:
    """The process (or node) training the job died: its result is unknown, so the run failed."""

    job: int
    reason: str


End = Done | Failed | Cancelled | WorkerLost
Event = Started | Epoch | End
