"""The run engine: one driver for ``bench run`` and ``bench tune``, whatever executes the jobs.

* a job source (a sweep's planned runs, or Optuna trials) hands out :class:`Job` s;
* an executor (:class:`InlineExecutor` in this process, or
  :class:`~bench.engine.raycluster.RayExecutor` on Ray) runs them and reports events;
* :func:`drive` routes every event to the :class:`Recorder`, the only MLflow writer.

Nothing here imports Ray until a Ray executor is asked for, so the inline path pays nothing.
"""

from .driver import Job, JobData, JobSource, Reporter, RunOutcome, SilentReporter, drive
from .events import Cancelled, Done, Epoch, Failed, Placement, Started, WorkerLost
from .executors import Executor, ExecutorOptions, InlineExecutor, make_executor
from .recorder import Recorder, RunRecord, epoch_metrics
from .work import Work, build_model, run_work

__all__ = [
    "Cancelled",
    "Done",
    "Epoch",
    "Executor",
    "ExecutorOptions",
    "Failed",
    "InlineExecutor",
    "Job",
    "JobData",
    "JobSource",
    "Placement",
    "Recorder",
    "Reporter",
    "RunOutcome",
    "RunRecord",
    "SilentReporter",
    "Started",
    "Work",
    "WorkerLost",
    "build_model",
    "drive",
    "epoch_metrics",
    "make_executor",
    "run_work",
]
