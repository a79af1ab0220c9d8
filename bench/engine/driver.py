"""The driver: one loop for every sweep and every tuning study, whatever executes the jobs.

``drive(source, executor, recorder, reporter)`` fills the executor's free slots with jobs from
the source, routes each job's events to the recorder (the only MLflow writer), the source (which
may cancel a job, and learns how each ended) and the reporter (the progress display), and ends
every run exactly once:

* Done -> FINISHED, after its metrics and artifacts; Cancelled -> FINISHED without a result (a
  pruned trial, tagged so by its source);
* Failed, WorkerLost, or a failure to decode the job's data -> FAILED with a one-line
  ``bench.error``; the loop goes on with the other jobs;
* Ctrl-C or a failure of this process -> every run in flight KILLED (or FAILED), the executor
  stopped, and the exception raised again.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Protocol

from .. import interrupts
from ..diskfull import is_full_disk
from ..errors import BenchError
from .events import Cancelled, Done, End, Epoch, Event, Failed, Started, WorkerLost
from .executors import Executor
from .recorder import Recorder, RunRecord
from .work import Work


@dataclass
class Job:
    """A unit of work with its MLflow record: what the source hands the driver."""

    work: Work
    record: RunRecord

    @property
    def id(self) -> int:
        return self.work.job

    @property
    def run(self) -> Any:
        return self.work.run


@dataclass
class JobData:
    """A job's decoded splits, and the evaluation list that its predictions are written against."""

    train: Any  # SplitData
    evaluate: Any  # SplitData
    eval_entries: list
    root: Any  # the task folder: predictions name images relative to it


@dataclass(frozen=True)
class RunTiming:
    """Where a trained run's time went (seconds; see bench.train.RunResult)."""

    train_s: float
    warmup_s: float
    steady_s: float


@dataclass
class RunOutcome:
    """How one run of a sweep or study ended, for summaries and the progress display."""

    spec: Any
    status: str  # trained | skipped | failed | cancelled | interrupted
    run_id: str | None
    eval_acc: float | None = None
    error: str | None = None
    user_error: bool = False
    timing: RunTiming | None = None  # trained runs


class JobSource(Protocol):
    def next_job(self) -> Job | None:
        """A job to start now, or None: none now (the driver waits for a running job to end) or ever."""

    def load(self, job: Job) -> JobData:
        """The job's decoded splits (from the image cache); raises BenchError for unreadable data."""

    def on_epoch(self, job: Job, metrics: Any) -> bool:
        """Whether to cancel ``job`` after this epoch (a pruned trial)."""

    def on_end(self, job: Job, outcome: RunOutcome, end: End | None) -> tuple[dict[str, str], dict[str, float]]:
        """Learn how ``job`` ended (``end`` None: interrupted); return extra tags and metrics for its record."""

    # Optional, where other processes may hold jobs of the same source (see bench.claims):
    # ``ended(job)``: the job's end state is written, so another process may take the job up;
    # ``idle() -> bool``: nothing is in flight here and next_job has none now; wait a moment and
    # return True to be asked again, or False when the source is done.


class Reporter(Protocol):
    """What the driver and the sweep tell their caller (the CLI draws progress bars from it)."""

    def sweep_started(self, plan: Any, todo: int) -> None: ...
    def run_started(self, run: Any, epochs: int) -> None: ...
    def epoch_done(self, run: Any, metrics: Any) -> None: ...
    def run_done(self, run: Any, outcome: RunOutcome) -> None: ...
    def sweep_done(self, cost: Any) -> None:
        """The sweep has ended; ``cost`` is its bench.efficiency.SweepEfficiency."""


class SilentReporter:
    def sweep_started(self, plan: Any, todo: int) -> None:
        pass

    def run_started(self, run: Any, epochs: int) -> None:
        pass

    def epoch_done(self, run: Any, metrics: Any) -> None:
        pass

    def run_done(self, run: Any, outcome: RunOutcome) -> None:
        pass

    def sweep_done(self, cost: Any) -> None:
        pass


@dataclass
class _InFlight:
    job: Job
    run_id: str
    data: JobData
    cancelled: bool = False


def drive(source: JobSource, executor: Executor, recorder: Recorder, reporter: Reporter | None = None) -> None:
    reporter = reporter or SilentReporter()
    inflight: dict[int, _InFlight] = {}
    ended = getattr(source, "ended", None)
    idle = getattr(source, "idle", None)

    def end(f: _InFlight, event: End | None, status: str | None = None) -> None:
        """Record how a job ended (``event`` None: interrupted, with MLflow ``status``)."""
        with interrupts.deferred():  # a Ctrl-C now is raised once the run's end is written
            _end(f, event, status)

    def _end(f: _InFlight, event: End | None, status: str | None) -> None:
        inflight.pop(f.job.id, None)
        spec, epochs = f.job.run.spec, f.job.run.preset.epochs
        if isinstance(event, Done) and f.cancelled:
            event = Cancelled(event.job)  # it ended before the cancel reached it; its result is not wanted
        if isinstance(event, Done):
            r = event.result
            timing = RunTiming(r.train_seconds, r.warmup_seconds, r.steady_seconds)
            outcome = RunOutcome(spec, "trained", f.run_id, r.eval_acc, timing=timing)
            recorder.result(
                f.run_id,
                event.result,
                stage=f.job.work.stage.name,
                step=epochs,
                entries=f.data.eval_entries,
                root=f.data.root,
            )
        elif isinstance(event, Cancelled):
            outcome = RunOutcome(spec, "cancelled", f.run_id)
        elif isinstance(event, Failed):
            outcome = RunOutcome(spec, "failed", f.run_id, error=event.error, user_error=event.user_error)
        elif isinstance(event, WorkerLost):
            outcome = RunOutcome(spec, "failed", f.run_id, error=event.reason)
        else:
            outcome = RunOutcome(spec, "interrupted", f.run_id, error=None if status == "KILLED" else "sweep stopped")
        try:
            tags, metrics = source.on_end(f.job, outcome, event)
            mlflow_status = status or ("FAILED" if outcome.status == "failed" else "FINISHED")
            recorder.end(
                f.run_id,
                mlflow_status,
                error=outcome.error if mlflow_status == "FAILED" else None,
                traceback=event.traceback if isinstance(event, Failed) else None,
                tags=tags,
                metrics=metrics,
                step=epochs,
            )
        finally:
            if ended is not None:
                ended(f.job)
        reporter.run_done(f.job.run, outcome)

    def start(job: Job) -> None:
        try:
            data = source.load(job)  # decodes into the image cache: finds unreadable images here
        except BenchError as exc:
            f = _InFlight(job, recorder.start(job.record), JobData(None, None, [], None))
            end(f, Failed(job.id, str(exc), user_error=True))
            return
        f = _InFlight(job, recorder.start(job.record), data)
        inflight[job.id] = f
        reporter.run_started(job.run, job.run.preset.epochs)
        executor.submit(job.work, data.train, data.evaluate)

    def deliver(event: Event) -> None:
        f = inflight.get(event.job)
        if f is None:
            return  # the job has ended here already (its recording failed); nothing more is logged
        try:
            if isinstance(event, Started):
                recorder.started(f.run_id, f.job.record, event)
            elif isinstance(event, Epoch):
                interrupts.check()  # a Ctrl-C swallowed during the epoch ends the sweep here
                if f.cancelled:
                    return  # epochs trained after the deciding one are not part of the record
                recorder.epoch(f.run_id, event.metrics)
                reporter.epoch_done(f.job.run, event.metrics)
                if source.on_epoch(f.job, event.metrics):
                    f.cancelled = True
                    executor.cancel(f.job.id)
            else:
                end(f, event)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # recording failed (the store, a disk): this run fails, the others go on
            if is_full_disk(exc):
                raise  # every later run would fail the same way: stop, and say so in one line
            executor.cancel(f.job.id)
            detail = " ".join(str(exc).split())[:300]  # a store error may quote its SQL over many lines
            with contextlib.suppress(Exception):
                end(f, Failed(f.job.id, f"recording the run failed: {type(exc).__name__}: {detail}"))
            inflight.pop(f.job.id, None)

    graceful = False
    try:
        while True:
            interrupts.check()
            while len(inflight) < executor.capacity and (job := source.next_job()) is not None:
                start(job)
            if not inflight:
                if idle is not None and idle():
                    continue
                break
            executor.wait(deliver)
        graceful = True
    except BaseException as exc:
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        with interrupts.deferred():  # a second Ctrl-C does not cut this short
            for f in list(inflight.values()):
                with contextlib.suppress(Exception):
                    end(f, None, status)
        raise
    finally:
        executor.close(graceful)
