"""A rich progress display for sweeps: runs done of total, the current run's epochs, ETA."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from .efficiency import SweepEfficiency, duration
from .engine import RunOutcome
from .sweep import PlannedRun, SweepPlan
from .train import EpochMetrics


class RichReporter:
    def __init__(self, console: Console, slots: int = 1):
        self.console = console
        self.slots = slots  # runs in progress at once (the executor's capacity)
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=console,
        )
        self.sweep_task = None
        self.run_tasks: dict[int, TaskID] = {}  # one bar per run in progress, oldest first
        self.started: dict[int, float] = {}  # run -> when it started (monotonic seconds)
        self.todo = 0  # runs of the sweep still to train
        self.train_seconds: list[float] = []  # wall time of each run trained so far

    def __enter__(self) -> RichReporter:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    def sweep_started(self, plan: SweepPlan, todo: int) -> None:
        total = len(plan.runs)
        self.console.print(
            f"{plan.suite.name}/{plan.stage.name}: {total} run(s), {total - todo} already finished, "
            f"{todo} to train on {plan.device} (backbone {plan.backbone}, {plan.weights.checkpoint_id[:19]})"
        )
        self.sweep_task = self.progress.add_task("runs", total=total)
        self.todo = todo

    def run_started(self, run: PlannedRun, epochs: int) -> None:
        while len(self.run_tasks) >= self.slots:  # tuning trials never report done
            self.progress.remove_task(self.run_tasks.pop(next(iter(self.run_tasks))))
        self.run_tasks[id(run)] = self.progress.add_task(f"  {escape(run.spec.label)}", total=epochs)
        self.started[id(run)] = time.monotonic()

    def epoch_done(self, run: PlannedRun, metrics: EpochMetrics) -> None:
        if id(run) not in self.run_tasks:
            return
        extra = f" val {100 * metrics.eval_acc:.1f}" if metrics.eval_acc is not None else ""
        self.progress.update(
            self.run_tasks[id(run)],
            advance=1,
            description=f"  {escape(run.spec.label)} loss {metrics.train_loss:.3f} acc {100 * metrics.train_acc:.1f}{extra}",
        )

    def run_done(self, run: PlannedRun, outcome: RunOutcome) -> None:
        if id(run) in self.run_tasks:
            self.progress.remove_task(self.run_tasks.pop(id(run)))
        started = self.started.pop(id(run), None)
        if self.sweep_task is None:  # tuning trials: no sweep bar, no line per trial
            return
        self.progress.advance(self.sweep_task)
        if outcome.status != "skipped":
            self.todo -= 1
        if outcome.status == "failed":
            self.console.print(
                f"  {escape(run.spec.label)}: [red]failed[/] ({escape(str(outcome.error))})", highlight=False
            )
            return
        if outcome.status == "interrupted":
            return
        acc = f"{100 * outcome.eval_acc:.2f}%" if outcome.eval_acc is not None else "–"
        verb = "finished earlier, reused"
        if outcome.status == "trained":
            verb = "trained"
            if started is not None:
                self.train_seconds.append(time.monotonic() - started)
                verb += f" in {duration(self.train_seconds[-1])}{self._eta()}"
        self.console.print(f"  {escape(run.spec.label)}: {acc} ({verb})", highlight=False)

    def sweep_done(self, cost: SweepEfficiency) -> None:
        if cost.runs:
            self.console.print(escape(cost.line()), highlight=False, soft_wrap=True)

    def _eta(self) -> str:
        """``; 4 left, about 12 min``: the runs still to train at the mean time of those trained, over
        the runs that train at once. Also printed where no progress bar shows (a log, a pipe)."""
        if self.todo <= 0 or not self.train_seconds:
            return ""
        mean = sum(self.train_seconds) / len(self.train_seconds)
        return f"; {self.todo} left, about {duration(mean * self.todo / self.slots)}"


def trial_line(trial: Any) -> str:
    """One finished tuning trial: study, trial number, state, value and the sampled parameters."""
    value = f" val {100 * trial.value:.2f}%" if trial.value is not None else ""
    params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in sorted(trial.params.items()))
    return f"  {escape(trial.study)} trial {trial.number}: {trial.state}{value}" + (
        f" ({escape(params)})" if params else ""
    )
