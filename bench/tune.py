"""Tuning with equal effort for every method: one Optuna study per (suite, task, method, budget).

The trials are engine jobs (:class:`TrialSource`): each is asked from its study, trained by
whatever executor the command chose, reported epoch by epoch to the study's scheduler (a pruned
trial is cancelled after the epoch that decided it), and told its result. Every study gets the
same effort in trial-epochs; a trial started when less than a full trial's epochs are left is
stopped when they are spent. The trials of one study run one after another in one process, so a
study proposes, prunes and ends exactly as it would alone; several studies run at once when the
executor has room. Its running trial carries a heartbeat, so a second process tuning the same
study leaves it alone and counts it, and a process that died is recognised by its silence.

The objective is the **last-epoch** val200 accuracy of the ``tune`` stage (train800 -> val200):
test lists are never read, and need not exist. Optuna's storage is the single source of truth for
trials; every trial is also an MLflow run in ``bench/<suite>-tune``, and each study's parent run
records the effort spent. The fairness rules are in :mod:`bench.studies`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import threading
import time
import warnings
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any

from methods.base import Composite, identity_dict

from . import efficiency, schema
from .compile_cache import cache_folder
from .engine import Executor, Job, JobData, Recorder, Reporter, RunOutcome, RunRecord, Work, drive
from .errors import BenchError
from .method_entries import resolve_methods
from .studies import (
    BEATING,
    DEFAULT_SCHEDULER,
    EPOCHS_CHARGED,
    HEARTBEAT_S,
    INTERRUPTED,
    LEGACY_SCHEDULER,
    RETRY_OF,
    TRAIN_SECONDS,
    TUNE_SEED,
    StudySummary,
    check_scheduler,
    effort_used,
    fail_stale_trials,
    is_interrupted,
    open_study,
    preset_shared,
    requeue_interrupted,
    retried_numbers,
    split_hparams,
    study_name,
    summarize_study,
    trial_sampler,
)
from .sweep import PlannedRun, SweepPlan, SweepRequest, TaskLoader, plan_sweep, run_tags
from .tracking import experiment_name, flatten_params


@dataclass
class _Study:
    """One study of a tuning request: the run it tunes and the effort it is given."""

    run: PlannedRun
    name: str
    study: Any
    attrs: dict[str, Any]
    budget: int  # trial-epochs
    parent: str | None = None  # its MLflow parent run, open while its trials train
    busy: bool = False  # a trial is in flight

    @property
    def epochs(self) -> int:
        return self.run.preset.epochs

    def room(self, exclude: int | None = None) -> int:
        """The trial-epochs still free: the budget less what finished trials were charged and a full
        trial for each trial running elsewhere (another process's; ``exclude``: this one's own)."""
        import optuna

        trials = self.study.get_trials(deepcopy=False)
        running = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING and t.number != exclude]
        return self.budget - effort_used(trials, self.epochs).epochs - self.epochs * len(running)


@dataclass
class _Trial:
    """A trial in flight: its study, its Optuna trial, and what it has trained so far."""

    study: _Study
    trial: Any
    cap: int  # epochs it may train: the study's epochs, or fewer when less of the budget is left
    epochs: int = 0
    seconds: float = 0.0
    budget_stop: bool = False


class _Heartbeat:
    """Records a heartbeat for every trial in flight, every HEARTBEAT_S seconds, from a thread (the
    inline executor trains in the main one), so another process can tell them from dead ones."""

    def __init__(self) -> None:
        self._trials: dict[int, Any] = {}  # trial id -> its storage
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, study: Any, trial: Any) -> None:
        study._storage.record_heartbeat(trial._trial_id)  # first, so a beating trial always has one
        trial.set_user_attr(BEATING, True)
        with self._lock:
            self._trials[trial._trial_id] = study._storage
        if self._thread is None:
            self._thread = threading.Thread(target=self._beat, name="bench-trial-heartbeat", daemon=True)
            self._thread.start()

    def remove(self, trial: Any) -> None:
        with self._lock:
            self._trials.pop(trial._trial_id, None)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            with self._lock:
                beating = list(self._trials.items())
            for trial_id, storage in beating:
                with contextlib.suppress(Exception):  # a busy store: the next beat comes soon, well within the grace
                    storage.record_heartbeat(trial_id)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


def _study_attrs(plan: SweepPlan, run: PlannedRun, scheduler: str) -> dict[str, Any]:
    """What a study's trials were trained under; a final run must match it to use the results."""
    return {
        "backbone": plan.backbone,
        "checkpoint": plan.weights.checkpoint_id,
        "epochs": plan.preset.epochs,
        "preset": plan.preset.name,
        "data": run.spec.data,
        "config": identity_dict(run.config),
        "scheduler": scheduler,
    }


def _prepare_study(plan: SweepPlan, run: PlannedRun, storage: str, budget: int, scheduler: str) -> _Study:
    """Open (or create) the study of ``run`` and check it was tuned under the same settings; fail
    the trials a dead process left RUNNING, queue every interrupted trial's configuration to train
    again, and queue trial 0 (the preset configuration) in a new study."""
    name = study_name(plan.suite.name, run.task.name, run.method.name, run.spec.budget)
    study = open_study(storage, name, plan.preset.epochs, scheduler=scheduler)
    attrs = _study_attrs(plan, run, scheduler)
    stored = dict(study.user_attrs)
    if stored and "scheduler" not in stored:
        stored["scheduler"] = LEGACY_SCHEDULER
    if not study.user_attrs:
        for k, v in attrs.items():
            study.set_user_attr(k, v)
    elif any(stored.get(k) != v for k, v in attrs.items()):
        changed = [k for k, v in attrs.items() if stored.get(k) != v]
        hint = f"--scheduler {stored['scheduler']}" if changed == ["scheduler"] else "the original settings"
        raise BenchError(
            f"study {name} in {storage} was tuned with other {', '.join(changed)}; use another --storage or {hint}"
        )
    elif "scheduler" not in study.user_attrs:  # a study from before schedulers could be chosen: say which it had
        study.set_user_attr("scheduler", LEGACY_SCHEDULER)
    fail_stale_trials(study)
    requeue_interrupted(study)
    if not study.trials:  # trial 0: the preset configuration (the suite preset + the method's own defaults)
        study.enqueue_trial({**preset_shared(plan.preset), **run.method.published_hparams()}, skip_if_exists=True)
    return _Study(run, name, study, attrs, budget)


@dataclass(frozen=True)
class TrialLine:
    """One finished trial, as ``bench tune`` prints it."""

    study: str
    number: int
    state: str  # complete, pruned or failed
    value: float | None  # the last epoch's val200 accuracy of a complete trial
    params: dict[str, Any]


class TrialSource:
    """Optuna trials as engine jobs: ask -> job; epoch -> report, prune -> cancel; end -> tell."""

    def __init__(
        self,
        plan: SweepPlan,
        studies: list[_Study],
        recorder: Recorder,
        storage: str,
        cache_dir: Path,
        compile_cache: Path | None = None,
        trial_done: Callable[[TrialLine], None] | None = None,
    ):
        self.plan, self.recorder, self.storage, self.cache_dir = plan, recorder, storage, cache_dir
        self.compile_cache = None if compile_cache is None else str(compile_cache)
        self.ended: list[RunOutcome] = []  # every trial's outcome, for the command's cost line
        self.trial_done = trial_done
        self.experiment = experiment_name(plan.suite.name, tune=True)
        self.waiting: deque[_Study] = deque(s for s in studies if s.room() > 0)
        self.open: list[_Study] = []
        self.inflight: dict[int, _Trial] = {}
        self.ids = count()
        self.heartbeat = _Heartbeat()
        self._load = TaskLoader(plan, cache_dir)

    def next_job(self) -> Job | None:
        for s in [s for s in self.open if not s.busy]:
            if (job := self._ask(s)) is not None:
                return job
            self._close(s)
        while self.waiting:
            s = self.waiting.popleft()
            s.parent = self._open_parent(s)
            self.open.append(s)
            if (job := self._ask(s)) is not None:
                return job
            self._close(s)
        return None

    def _open_parent(self, s: _Study) -> str:
        import optuna

        run = s.run
        # trials another process is training now: their heartbeat kept them RUNNING through
        # fail_stale_trials in _prepare_study, so their MLflow records stay open too
        running = {str(t.number) for t in s.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))}
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
            params=flatten_params(s.attrs),  # the budget is a metric: a rerun may raise it
            live=lambda record: record.data.tags.get(schema.TRIAL) in running,
        )
        if self.plan.request.sweep_file is not None:
            self.recorder.tracker.log_text(parent, self.plan.request.sweep_file, schema.SWEEP_FILE)
        return parent

    def _ask(self, s: _Study) -> Job | None:
        """The study's next trial as a job, or None when its budget is spent (or held by trials
        running elsewhere)."""
        import optuna

        room = s.room()
        if room <= 0:
            return None
        trials = s.study.get_trials(deepcopy=False)
        retried = retried_numbers(trials)
        index = sum(1 for t in trials if t.state.name != "WAITING" and not is_interrupted(t, retried))
        s.study.sampler = trial_sampler(s.name, index)
        with warnings.catch_warnings():  # Optuna warns that heartbeats are meant for optimize(); this loop keeps them
            warnings.simplefilter("ignore", UserWarning)
            trial = s.study.ask()
        try:
            values = s.run.method.search_space(trial)
            preset, config = split_hparams(s.run.method, s.run.config, self.plan.preset, values)
        except BaseException:
            s.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        room = s.room(exclude=trial.number)
        if room <= 0:  # another process started a trial meanwhile and took what was left: give this one back
            trial.set_user_attr(INTERRUPTED, True)
            s.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            s.study.enqueue_trial(dict(trial.params), user_attrs={RETRY_OF: trial.number})
            return None
        self.heartbeat.add(s.study, trial)
        spec = dataclasses.replace(s.run.spec, hparams=preset.to_dict(), method_config=identity_dict(config))
        run = PlannedRun(spec, s.run.task, s.run.method, config, preset)
        tags = run_tags(spec, **{schema.STUDY: s.name, schema.TRIAL: str(trial.number)})
        if (label := s.run.tags.get(schema.WEIGHTS_LABEL)) is not None:
            tags[schema.WEIGHTS_LABEL] = label
        params = flatten_params({"method": spec.method_config, "hp": spec.hparams, "trial": values})
        resolved = {"run_key": spec.run_key, "spec": spec.to_dict(), "study": s.name, "trial": trial.number}
        record = RunRecord(self.experiment, s.parent, f"trial-{trial.number:03d}", tags, params, resolved)
        work = Work(
            next(self.ids),
            run,
            self.plan.stage,
            self.plan.weights,
            self.plan.request.system_metrics,
            self.compile_cache,
        )
        job = Job(work, record)
        s.busy = True
        self.inflight[job.id] = _Trial(s, trial, min(s.epochs, room))
        return job

    def load(self, job: Job) -> JobData:
        return self._load(job.run)

    def on_epoch(self, job: Job, metrics: Any) -> bool:
        t = self.inflight[job.id]
        t.epochs += 1
        t.seconds += metrics.seconds
        t.trial.report(metrics.eval_acc, metrics.epoch)
        if t.cap < t.study.epochs and t.epochs >= t.cap:  # the study's budget is spent
            t.budget_stop = True
            return True
        return t.trial.should_prune()

    def on_end(self, job: Job, outcome: RunOutcome, end: Any) -> tuple[dict[str, str], dict[str, float]]:
        import optuna

        self.ended.append(outcome)
        t = self.inflight.pop(job.id)
        s, trial = t.study, t.trial
        self.heartbeat.remove(trial)
        State = optuna.trial.TrialState
        metrics: dict[str, float] = {}
        tags: dict[str, str] = {}
        charged, seconds = t.epochs, t.seconds
        if outcome.status == "trained":
            value = end.result.epochs[-1].eval_acc  # the last epoch's val200 accuracy, never the best
            charged, seconds = s.epochs, end.result.train_seconds
            state, told, metrics = "complete", (State.COMPLETE, value), {schema.TUNE_OBJECTIVE: value}
        elif outcome.status == "cancelled":
            state, told = "pruned", (State.PRUNED, None)
            if t.budget_stop:
                tags[schema.TUNE_STOP] = "budget"
        else:
            if outcome.status == "interrupted":  # Ctrl-C: not the method's failure, so it is not charged
                trial.set_user_attr(INTERRUPTED, True)
            else:
                charged = s.epochs  # a failed trial costs a full trial: failing cannot buy more trials
            state, told = "failed", (State.FAIL, None)
        trial.set_user_attr(EPOCHS_CHARGED, charged)
        trial.set_user_attr(TRAIN_SECONDS, seconds)
        try:
            s.study.tell(trial, told[1], state=told[0])
        except optuna.exceptions.UpdateFinishedTrialError:
            tags[schema.TUNE_STOP] = "failed elsewhere"  # another process judged it dead; its retry trains it
        s.busy = False
        if self.trial_done is not None:
            self.trial_done(
                TrialLine(s.name, trial.number, state, metrics.get(schema.TUNE_OBJECTIVE), dict(trial.params))
            )
        return {schema.OPTUNA_STATE: state, **tags}, metrics

    def _close(self, s: _Study) -> None:
        self.open.remove(s)
        effort = effort_used(s.study.get_trials(deepcopy=False), s.epochs)
        self.recorder.tracker.log_metrics(
            s.parent,
            {
                schema.TUNE_BUDGET_EPOCHS: s.budget,
                schema.TUNE_TRIAL_EPOCHS: effort.epochs,
                schema.TUNE_TRAIN_SECONDS: effort.seconds,
                schema.TUNE_TRIALS: effort.trials,
            },
            step=0,
        )
        self.recorder.close_parent(s.parent, "FINISHED", {"trials": len(s.study.trials)})

    def close_all(self) -> None:
        self.heartbeat.stop()
        for s in list(self.open):
            with contextlib.suppress(Exception):
                self._close(s)


def effort_budget(trials: int | None, budget_epochs: int | None, epochs: int) -> int:
    """Each study's effort in trial-epochs: ``--budget-epochs``, or ``--trials`` full trials."""
    if (trials is None) == (budget_epochs is None):
        raise BenchError(
            "give the effort per study once: --trials N (N full trials) or --budget-epochs E (trial-epochs), not "
            + ("both" if trials is not None else "neither")
        )
    if trials is not None:
        if trials < 1:
            raise BenchError(f"--trials {trials} must be at least 1")
        return trials * epochs
    if budget_epochs < epochs:
        raise BenchError(
            f"--budget-epochs {budget_epochs} is less than one full trial ({epochs} epochs); "
            f"give at least {epochs}, e.g. --budget-epochs {10 * epochs}"
        )
    return budget_epochs


def run_tuning(
    request: SweepRequest,
    trials: int | None,
    workdir: Path,
    recorder: Recorder,
    storage: str,
    executor: Executor,
    reporter: Reporter | None = None,
    warn: Callable[[str], None] | None = None,
    trial_done: Callable[[TrialLine], None] | None = None,
    *,
    budget_epochs: int | None = None,
    scheduler: str = DEFAULT_SCHEDULER,
) -> list[StudySummary]:
    """Top every study of the request up to its effort on ``executor``; return each study's state.

    The effort is ``trials`` full trials or ``budget_epochs`` trial-epochs (one of the two), the
    same for every study; ``scheduler`` (none, asha, hyperband) stops trials early. One study per
    (task, method, budget); ``warn`` gets the plan's warnings (budgets a method cannot reach, left
    out) before any trial starts; ``trial_done`` gets each trial as it finishes."""
    check_scheduler(scheduler)
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
    budget = effort_budget(trials, budget_epochs, plan.preset.epochs)
    for warning in plan.warnings if warn is not None else ():
        warn(warning)
    studies = [_prepare_study(plan, run, storage, budget, scheduler) for run in plan.runs]
    source = TrialSource(
        plan, studies, recorder, storage, workdir / "cache" / "images", cache_folder(workdir), trial_done
    )
    started = time.perf_counter()
    try:
        drive(source, executor, recorder, reporter)
    finally:
        source.close_all()
        if reporter is not None:
            reporter.sweep_done(efficiency.measure(source.ended, time.perf_counter() - started, executor.capacity))
    return [summarize_study(s.study, s.run.method.name, s.run.task.name, s.epochs, budget, scheduler) for s in studies]
