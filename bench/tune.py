"""Tuning with equal effort for every method: one Optuna study per (suite, task, method, budget).

The trials are engine jobs (:class:`TrialSource`): each is asked from its study, trained by
whatever executor the command chose, reported epoch by epoch to Optuna's pruner (a pruned trial
is cancelled after the epoch that decided it), and told its result. The trials of one study run
one after another, so a study proposes, prunes and ends exactly as it would in one process;
several studies run at once when the executor has room. The objective is the **last-epoch**
val200 accuracy of the ``tune`` stage (train800 -> val200): test lists are never read, and need
not exist. Optuna's storage is the single source of truth for trials; every trial is also an
MLflow run in ``bench/<suite>-tune``. The fairness rules are in :mod:`bench.studies`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any

from methods.base import Composite, identity_dict

from . import schema
from .engine import Executor, Job, JobData, Recorder, Reporter, RunOutcome, RunRecord, Work, drive
from .errors import BenchError
from .method_entries import resolve_methods
from .studies import (
    INTERRUPTED,
    TUNE_SEED,
    StudySummary,
    counts_toward_effort,
    open_study,
    preset_shared,
    split_hparams,
    study_name,
    summarize_study,
)
from .sweep import PlannedRun, SweepPlan, SweepRequest, TaskLoader, plan_sweep, run_tags
from .tracking import experiment_name, flatten_params


@dataclass
class _Study:
    """One study of a tuning request: the run it tunes and the trials it still needs."""

    run: PlannedRun
    name: str
    study: Any
    attrs: dict[str, Any]
    remaining: int
    parent: str | None = None  # its MLflow parent run, open while its trials train
    busy: bool = False  # a trial is in flight


def _study_attrs(plan: SweepPlan, run: PlannedRun) -> dict[str, Any]:
    """What a study's trials were trained under; a final run must match it to use the results."""
    return {
        "backbone": plan.backbone,
        "checkpoint": plan.weights.checkpoint_id,
        "epochs": plan.preset.epochs,
        "preset": plan.preset.name,
        "data": run.spec.data,
        "config": identity_dict(run.config),
    }


def _prepare_study(plan: SweepPlan, run: PlannedRun, storage: str, trials: int) -> _Study:
    """Open (or create) the study of ``run``, check it was tuned under the same settings, mark
    trials a killed process left RUNNING as failed and interrupted, and enqueue trial 0 (the
    preset configuration)."""
    import optuna

    name = study_name(plan.suite.name, run.task.name, run.method.name, run.spec.budget)
    study = open_study(storage, name, plan.preset.epochs)
    attrs = _study_attrs(plan, run)
    if not study.user_attrs:
        for k, v in attrs.items():
            study.set_user_attr(k, v)
    elif any(study.user_attrs.get(k) != v for k, v in attrs.items()):
        changed = [k for k, v in attrs.items() if study.user_attrs.get(k) != v]
        raise BenchError(
            f"study {name} in {storage} was tuned with other {', '.join(changed)}; "
            "use another --storage or the original settings"
        )
    # One driver tunes a study at a time, so a RUNNING trial found now was left by a killed process.
    # Optuna's public fail_stale_trials needs heartbeats and a grace period; this needs neither.
    for stale in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(stale._trial_id, INTERRUPTED, True)
        study._storage.set_trial_state_values(stale._trial_id, optuna.trial.TrialState.FAIL)
    if not study.trials:  # trial 0: the preset configuration (the suite preset + the method's own defaults)
        study.enqueue_trial({**preset_shared(plan.preset), **run.method.published_hparams()}, skip_if_exists=True)
    done = sum(counts_toward_effort(t) for t in study.get_trials(deepcopy=False))
    return _Study(run, name, study, attrs, max(0, trials - done))


class TrialSource:
    """Optuna trials as engine jobs: ask -> job; epoch -> report, prune -> cancel; end -> tell."""

    def __init__(
        self, plan: SweepPlan, studies: list[_Study], recorder: Recorder, storage: str, trials: int, cache_dir: Path
    ):
        self.plan, self.recorder, self.storage, self.trials, self.cache_dir = plan, recorder, storage, trials, cache_dir
        self.experiment = experiment_name(plan.suite.name, tune=True)
        self.waiting: deque[_Study] = deque(s for s in studies if s.remaining > 0)
        self.open: list[_Study] = []
        self.inflight: dict[int, tuple[_Study, Any]] = {}  # job -> (its study, its Optuna trial)
        self.ids = count()
        self._load = TaskLoader(plan, cache_dir)

    def next_job(self) -> Job | None:
        study = next((s for s in self.open if not s.busy and s.remaining > 0), None)
        if study is None and self.waiting:
            study = self.waiting.popleft()
            study.parent = self._open_parent(study)
            self.open.append(study)
        return self._ask(study) if study is not None else None

    def _open_parent(self, s: _Study) -> str:
        run = s.run
        parent = self.recorder.open_parent(
            self.experiment,
            hashlib.sha256(s.name.encode()).hexdigest()[:24],
            tags={
                schema.SUITE: self.plan.suite.name,
                schema.TASK: run.task.name,
                schema.METHOD: run.method.name,
                schema.BUDGET: str(run.spec.budget) if run.spec.budget is not None else "none",
                schema.STUDY: s.name,
                schema.SWEEP_NAME: f"study/{s.name}",
                schema.OPTUNA_STORAGE: self.storage,
            },
            params=flatten_params({"n_trials": self.trials, **s.attrs}),
        )
        if self.plan.request.sweep_file is not None:
            self.recorder.tracker.log_text(parent, self.plan.request.sweep_file, schema.SWEEP_FILE)
        return parent

    def _ask(self, s: _Study) -> Job:
        import optuna

        trial = s.study.ask()
        try:
            values = s.run.method.search_space(trial)
            preset, config = split_hparams(s.run.method, s.run.config, self.plan.preset, values)
        except BaseException:
            s.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        spec = dataclasses.replace(s.run.spec, hparams=preset.to_dict(), method_config=identity_dict(config))
        run = PlannedRun(spec, s.run.task, s.run.method, config, preset)
        tags = run_tags(spec, **{schema.STUDY: s.name, schema.TRIAL: str(trial.number)})
        if (label := s.run.tags.get(schema.WEIGHTS_LABEL)) is not None:
            tags[schema.WEIGHTS_LABEL] = label
        params = flatten_params({"method": spec.method_config, "hp": spec.hparams, "trial": values})
        resolved = {"run_key": spec.run_key, "spec": spec.to_dict(), "study": s.name, "trial": trial.number}
        record = RunRecord(self.experiment, s.parent, f"trial-{trial.number:03d}", tags, params, resolved)
        work = Work(next(self.ids), run, self.plan.stage, self.plan.weights, self.plan.request.system_metrics)
        job = Job(work, record)
        s.remaining -= 1
        s.busy = True
        self.inflight[job.id] = (s, trial)
        return job

    def load(self, job: Job) -> JobData:
        return self._load(job.run)

    def on_epoch(self, job: Job, metrics: Any) -> bool:
        _, trial = self.inflight[job.id]
        trial.report(metrics.eval_acc, metrics.epoch)
        return trial.should_prune()

    def on_end(self, job: Job, outcome: RunOutcome, end: Any) -> tuple[dict[str, str], dict[str, float]]:
        import optuna

        s, trial = self.inflight.pop(job.id)
        State = optuna.trial.TrialState
        metrics: dict[str, float] = {}
        if outcome.status == "trained":
            value = end.result.epochs[-1].eval_acc  # the last epoch's val200 accuracy, never the best
            s.study.tell(trial, value, state=State.COMPLETE)
            state, metrics = "complete", {schema.TUNE_OBJECTIVE: value}
        elif outcome.status == "cancelled":
            s.study.tell(trial, state=State.PRUNED)
            state = "pruned"
        else:
            if outcome.status == "interrupted":  # Ctrl-C: not the method's failure, so it does not count
                trial.set_user_attr(INTERRUPTED, True)
            s.study.tell(trial, state=State.FAIL)
            state = "failed"
        s.busy = False
        if s.remaining == 0:
            self._close(s)
        return {schema.OPTUNA_STATE: state}, metrics

    def _close(self, s: _Study) -> None:
        self.open.remove(s)
        self.recorder.close_parent(s.parent, "FINISHED", {"trials": len(s.study.trials)})

    def close_all(self) -> None:
        for s in list(self.open):
            with contextlib.suppress(Exception):
                self._close(s)


def run_tuning(
    request: SweepRequest,
    trials: int,
    workdir: Path,
    recorder: Recorder,
    storage: str,
    executor: Executor,
    reporter: Reporter | None = None,
    warn: Callable[[str], None] | None = None,
) -> list[StudySummary]:
    """Top every study of the request up to ``trials`` trials on ``executor``; return each study's state.

    One study per (task, method, budget); ``warn`` gets the plan's warnings (budgets a method cannot
    reach, left out) before any trial starts."""
    if trials < 1:
        raise BenchError(f"--trials {trials} must be at least 1")
    import suites

    if suites.get_suite(request.suite).fewshot is not None:
        raise BenchError(
            f"`bench tune` does not tune few-shot suites yet ({request.suite!r}); run them with the suite "
            "preset (`bench run`), or pick settings on the val lists with `bench run --stage tune`"
        )
    request = dataclasses.replace(request, stage="tune", seeds=[TUNE_SEED], hparams="preset")
    for method in resolve_methods(request.methods):
        if isinstance(method, Composite):
            raise BenchError(
                f"composition {method.name!r} cannot be tuned yet (its parts' hyperparameters share names); "
                "tune its parts alone, and run the composition with --hparams preset"
            )
    plan = plan_sweep(request, workdir)
    for warning in plan.warnings if warn is not None else ():
        warn(warning)
    studies = [_prepare_study(plan, run, storage, trials) for run in plan.runs]
    source = TrialSource(plan, studies, recorder, storage, trials, workdir / "cache" / "images")
    try:
        drive(source, executor, recorder, reporter)
    finally:
        source.close_all()
    return [summarize_study(s.study, s.run.method.name, s.run.task.name) for s in studies]
