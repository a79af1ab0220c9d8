"""Where jobs run. An executor takes jobs, runs up to :attr:`capacity` at once, and hands their
events to the driver; it knows nothing of MLflow, Optuna or sweeps.

* :class:`InlineExecutor`: this process, one job at a time. No Ray, no extra processes: the
  default on a CPU and on one GPU.
* :class:`bench.engine.raycluster.RayExecutor`: Ray core tasks, on this host's GPUs (several runs
  per GPU with fractional GPUs), on CPU workers, or on an existing cluster of any size.

The protocol is small on purpose: a new backend (Slurm, torchrun) is one more class.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from ..errors import BenchError
from .events import Event
from .work import Work, placement, run_work


class Executor(Protocol):
    name: str

    @property
    def capacity(self) -> int:
        """How many jobs may be in flight at once."""

    def submit(self, work: Work, train: Any, evaluate: Any) -> None:
        """Start ``work`` on the given splits (SplitData, decoded in the driver)."""

    def cancel(self, job: int) -> None:
        """Ask job ``job`` to stop after its current epoch; it ends with Cancelled (or Done, if first)."""

    def wait(self, deliver: Callable[[Event], None]) -> None:
        """Deliver the events that have happened, in order per job; block briefly when there are none."""

    def close(self, graceful: bool) -> None:
        """Release workers. Not graceful (Ctrl-C, a failure of the driver): stop the jobs in flight now."""


class InlineExecutor:
    """Runs each job in this process when the driver waits, delivering its events as they happen.

    The driver handles each event before training goes on, so a cancel decided on an epoch's
    event (a pruned trial) takes effect right after that epoch, exactly as Optuna's own loop does.
    """

    name = "inline"

    def __init__(self, device: torch.device):
        self.device = device
        self._queue: deque[tuple[Work, Any, Any]] = deque()
        self._cancelled: set[int] = set()

    @property
    def capacity(self) -> int:
        return 1

    def submit(self, work: Work, train: Any, evaluate: Any) -> None:
        self._queue.append((work, train, evaluate))

    def cancel(self, job: int) -> None:
        self._cancelled.add(job)

    def wait(self, deliver: Callable[[Event], None]) -> None:
        if not self._queue:
            return
        work, train, evaluate = self._queue.popleft()

        def emit(event: Event) -> bool:
            deliver(event)
            return work.job in self._cancelled

        where = placement(self.name, "local", self.device)
        deliver(run_work(work, train, evaluate, self.device, where, emit))
        self._cancelled.discard(work.job)

    def close(self, graceful: bool) -> None:
        self._queue.clear()


EXECUTORS = ("auto", "inline", "ray")
DEFAULT_RUNS_PER_GPU = 1


@dataclass(frozen=True)
class ExecutorOptions:
    """The command line's choice of executor (``--executor``, ``--ray-address``, ``--gpus``,
    ``--runs-per-gpu``, ``--workers``)."""

    kind: str = "auto"
    address: str | None = None
    gpus: str | None = None  # all | N | 0,1: the GPUs of a local Ray cluster
    runs_per_gpu: int | None = None
    workers: int | None = None  # CPU workers of a local cluster; on a cluster, a cap on runs at once
    object_store_mb: int | None = None

    @property
    def wants_ray(self) -> bool:
        return any(v is not None for v in (self.address, self.gpus, self.runs_per_gpu, self.workers))


def choose_executor(options: ExecutorOptions, device: str) -> str:
    """``inline`` or ``ray``: what ``auto`` means here, and whether the options fit the choice."""
    if options.kind not in EXECUTORS:
        raise BenchError(f"--executor {options.kind!r} must be one of {', '.join(EXECUTORS)}")
    if options.kind == "inline" and options.wants_ray:
        given = [
            flag
            for flag, value in (
                ("--ray-address", options.address),
                ("--gpus", options.gpus),
                ("--runs-per-gpu", options.runs_per_gpu),
                ("--workers", options.workers),
            )
            if value is not None
        ]
        raise BenchError(f"{', '.join(given)} need the Ray executor; drop --executor inline or those options")
    if options.kind != "auto":
        return options.kind
    if options.wants_ray:
        return "ray"
    several_gpus = device != "cpu" and torch.cuda.is_available() and torch.cuda.device_count() > 1
    return "ray" if several_gpus else "inline"


def parse_gpus(text: str) -> list[str]:
    """``all`` -> every visible GPU; ``N`` -> the first N; ``0,1`` -> those (``1,`` is GPU 1 alone).
    Returns the CUDA_VISIBLE_DEVICES names of the chosen GPUs."""
    if not torch.cuda.is_available():
        raise BenchError(f"--gpus {text} needs CUDA devices, but none is visible; drop --gpus to run on the CPU")
    count = torch.cuda.device_count()
    value = text.strip().lower()
    try:
        if value == "all":
            indices = list(range(count))
        elif "," in value:
            indices = [int(v) for v in value.split(",") if v.strip()]
        else:
            n = int(value)
            if n < 1:
                raise ValueError
            if n > count:
                raise BenchError(f"--gpus {text} asks for {n} GPUs but {count} are visible; use --gpus all")
            indices = list(range(n))
    except ValueError:
        raise BenchError(
            f"--gpus {text!r} is neither all, a count (2 means GPUs 0 and 1) nor a list of GPU indices "
            "(0,1; GPU k alone is written k,)"
        ) from None
    bad = [i for i in indices if not 0 <= i < count]
    if bad or not indices or len(set(indices)) != len(indices):
        raise BenchError(f"--gpus {text!r} must list distinct GPU indices between 0 and {count - 1} ({count} visible)")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [v.strip() for v in visible.split(",")] if visible else [str(i) for i in range(count)]
    return [names[i] for i in indices]


def make_executor(options: ExecutorOptions, device: str) -> Executor:
    """The executor the options ask for; ``device`` is the command's ``--device`` (auto, cpu, cuda).

    Ray jobs train on GPUs unless ``--device cpu`` says otherwise or, on this host, only
    ``--workers`` (CPU workers) was given; on a cluster joined with ``--ray-address``, ``auto``
    uses the cluster's GPUs if it has any.
    """
    kind = choose_executor(options, device)
    if options.runs_per_gpu is not None and options.runs_per_gpu < 1:
        raise BenchError(f"--runs-per-gpu {options.runs_per_gpu} must be at least 1")
    if options.workers is not None and options.workers < 1:
        raise BenchError(f"--workers {options.workers} must be at least 1")
    if kind == "inline":
        cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        return InlineExecutor(torch.device("cuda" if cuda else "cpu"))
    if options.gpus is not None and options.address is not None:
        raise BenchError("--gpus picks GPUs of a local Ray cluster; with --ray-address the cluster's GPUs are used")
    if device == "cpu" and (options.gpus is not None or options.runs_per_gpu is not None):
        raise BenchError("--gpus and --runs-per-gpu contradict --device cpu; drop one of them")
    use_gpu: bool | None
    if device == "cpu":
        use_gpu = False
    elif options.gpus is not None or options.runs_per_gpu is not None or device == "cuda":
        use_gpu = True
    elif options.address is not None:
        use_gpu = None  # the cluster's GPUs, if it has any
    else:
        use_gpu = options.workers is None and torch.cuda.is_available()
    gpus = None
    if options.address is None and use_gpu:
        gpus = parse_gpus(options.gpus or "all")
    from .raycluster import RayExecutor

    return RayExecutor(
        address=options.address,
        gpus=gpus,
        use_gpu=use_gpu,
        runs_per_gpu=options.runs_per_gpu or DEFAULT_RUNS_PER_GPU,
        workers=options.workers,
        object_store_mb=options.object_store_mb,
    )
