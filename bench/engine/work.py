"""One job, run wherever an executor puts it: build the model, train, report events.

:func:`run_work` is the only code that trains on behalf of the engine. The inline executor calls
it in this process and Ray workers call it in theirs; it never touches MLflow (the driver's
recorder does) and turns every outcome into an event, so a failing run can never take its
executor, or the other runs, down with it.
"""

from __future__ import annotations

import contextlib
import gc
import os
import platform
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..backbone import Weights, build_backbone, normalization
from ..compile_cache import StepCache, WarmRequest, step_kind
from ..errors import BenchError
from ..sysmetrics import SystemSampler
from ..train import COMPILE_MODES, SplitData, default_compile_mode, train_run
from .events import Cancelled, Done, End, Epoch, Event, Failed, Placement, Started


@dataclass(frozen=True)
class Work:
    """What a worker needs to train one job; the splits travel beside it (see the executors)."""

    job: int
    run: Any  # a planned run: .spec, .method, .config, .preset
    stage: Any  # suites.base.Stage
    weights: Weights
    system_metrics: bool = True  # sample GPU/CPU/RAM while training (bench.sysmetrics)
    compile_cache: str | None = None  # the folder compiled steps are kept in (bench.compile_cache)


COMPILE_MODE_ENV = "BENCH_COMPILE_MODE"


class _Cancel(Exception):
    """The driver cancelled the job: raised from the epoch callback, caught in :func:`run_work`."""


def build_model(run: Any, weights: Weights) -> tuple[torch.nn.Module, tuple[float, ...], tuple[float, ...]]:
    """The run's backbone with the method applied, and the backbone's normalisation (mean, std)."""
    spec = run.spec
    model = build_backbone(
        spec.backbone,
        num_classes=spec.num_classes,
        img_size=run.preset.img_size,
        drop_path=run.preset.drop_path,
        weights=weights,
        seed=spec.seed,
    )
    mean, std = normalization(model)
    return run.method.apply(model, run.config), mean, std


def compile_mode(device: torch.device, method: Any) -> str:
    """The run's compile mode: ``$BENCH_COMPILE_MODE`` where set (``eager`` never compiles; a compiled
    mode on the CPU is for tests and measurements), else :func:`bench.train.default_compile_mode`."""
    named = os.environ.get(COMPILE_MODE_ENV)
    if not named:
        return default_compile_mode(device, method)
    if named not in COMPILE_MODES:
        raise BenchError(f"{COMPILE_MODE_ENV}={named!r} is not one of {', '.join(COMPILE_MODES)}; unset it or pick one")
    return named


def step_cache(work: Work, device: torch.device, mode: str) -> StepCache | None:
    """Where the run's compiled step is kept, and its kind: None for an eager run or without a folder."""
    if mode == "eager" or work.compile_cache is None:
        return None
    run, frozen_bf16 = work.run, device.type == "cuda"
    kind = step_kind(
        method=run.method.name,
        method_config=run.spec.method_config,
        backbone=run.spec.backbone,
        img_size=run.preset.img_size,
        batch_size=run.preset.batch_size,
        drop_path=run.preset.drop_path,
        mode=mode,
        frozen_bf16=frozen_bf16,
        device=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
    )
    return StepCache(Path(work.compile_cache), kind, WarmRequest(run, mode, frozen_bf16, str(device)))


def placement(executor: str, node_id: str, device: torch.device) -> Placement:
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    host, pid = socket.gethostname(), os.getpid()
    import peft
    import timm

    return Placement(
        executor,
        node_id,
        host,
        pid,
        str(device),
        gpu,
        torch.__version__,
        platform.python_version(),
        timm.__version__,
        peft.__version__,
    )


def run_work(
    work: Work,
    train: SplitData,
    evaluate: SplitData,
    device: torch.device,
    where: Placement,
    emit: Callable[[Event], bool],
) -> End:
    """Train ``work`` and return how it ended. ``emit`` delivers Started and Epoch events and
    answers whether the driver has cancelled the job since; a cancelled job stops after the epoch
    it has just reported. Only KeyboardInterrupt escapes (Ctrl-C ends the whole sweep)."""
    run = work.run
    started_at = time.perf_counter()
    try:
        model, mean, std = build_model(run, work.weights)
        mode = compile_mode(device, run.method)
        emit(Started(work.job, where, mean, std, mode))

        sampler = SystemSampler(device) if work.system_metrics else None

        def on_epoch(metrics) -> None:
            if sampler is not None:
                metrics.system = sampler.take()
            if emit(Epoch(work.job, metrics)):
                raise _Cancel

        with sampler or contextlib.nullcontext():
            result = train_run(
                model,
                run.method,
                run.preset,
                work.stage,
                train,
                evaluate,
                seed=run.spec.seed,
                device=device,
                mean=mean,
                std=std,
                on_epoch=on_epoch,
                compile_mode=mode,
                step_cache=step_cache(work, device, mode),
                started_at=started_at,
            )
        return Done(work.job, result)
    except _Cancel:
        return Cancelled(work.job)
    except BenchError as exc:
        return Failed(work.job, str(exc), user_error=True)
    except Exception as exc:  # a non-finite loss, out of memory, a bug: this run fails, the others go on
        return Failed(work.job, f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc())
    finally:
        model = None
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
