"""Tuning with equal effort for every method: one Optuna study per (suite, task, method, budget).

Fairness rules (shared notes, tuning §4):

* every study gets the same ``n_trials`` (complete, pruned and failed trials all count, so a
  method that fails cannot buy extra trials), the same sampler settings (TPE, multivariate,
  constant liar, seeded from the study name) and the same pruner (Hyperband over epochs, fed
  with the val200 accuracy of every epoch);
* trial 0 is the method's published configuration, so tuning can only help it;
* the objective is the **last-epoch** val200 accuracy of the ``tune`` stage (train800 -> val200):
  test lists are never read, and need not exist;
* structure is fixed by the budget before tuning; only the search space of each method moves
  (lr, weight decay and drop-path in the same ranges for all, plus method knobs such as alpha).

Studies live in their own storage (default ``sqlite:///<workdir>/optuna.db``, never the MLflow
database) and resume: re-running the command tops every study up to ``n_trials``. Every trial is
an MLflow run in ``bench/<suite>-tune``, logged from the objective.

With several devices (``bench tune --gpus``) studies run in parallel, one per worker process,
while each study's trials stay sequential; see :func:`_tune_parallel`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from methods.base import Method, config_to_dict
from suites.base import Preset
from suites.resolve import ResolvedTask

from .backbone import Weights
from .budget import format_budget
from .errors import BenchError
from .sweep import PlannedRun, SweepPlan, SweepRequest, execute_run, plan_sweep, run_tags, task_data
from .tracking import Tracker, experiment_name, flatten_params

TUNE_SEED = 1000  # the seed of every tuning trial; final runs must use others
FINISHED_STATES = ("COMPLETE", "PRUNED", "FAIL")


class TrialFailed(Exception):
    """A trial that broke (NaN loss, a numerical error): recorded as FAIL, the study goes on."""


def default_storage(workdir: Path) -> str:
    return f"sqlite:///{(workdir / 'optuna.db').resolve()}"


def study_name(suite: str, task: str, method: str, budget: int | None) -> str:
    return f"{suite}/{task}/{method}/" + (f"b{format_budget(budget)}" if budget is not None else "published")


def _sampler_seed(name: str) -> int:
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)


def published_shared(preset: Preset) -> dict[str, Any]:
    return {"lr": preset.lr, "weight_decay": preset.weight_decay, "drop_path": preset.drop_path}


def split_hparams(method: Method, config: Any, preset: Preset, values: dict[str, Any]) -> tuple[Preset, Any]:
    """Apply tuned values: preset fields (lr, weight_decay, drop_path) and the method's config fields."""
    preset_fields = {f.name for f in dataclasses.fields(preset)}
    config_fields = {f.name for f in dataclasses.fields(config)}
    unknown = sorted(set(values) - preset_fields - config_fields)
    if unknown:
        raise BenchError(f"tuned values {unknown} are neither preset settings nor {method.name} config fields")
    preset = preset.with_overrides(**{k: v for k, v in values.items() if k in preset_fields})
    config = dataclasses.replace(config, **{k: v for k, v in values.items() if k in config_fields})
    method.validate(config)
    return preset, config


def _study_attrs(plan: SweepPlan, run: PlannedRun) -> dict[str, Any]:
    """What a study's trials were trained under; a final run must match it to use the results."""
    return {
        "backbone": plan.backbone,
        "checkpoint": plan.weights.checkpoint_id,
        "epochs": plan.preset.epochs,
        "preset": plan.preset.name,
        "data": run.spec.data,
        "config": config_to_dict(run.config),
    }


def open_study(storage: str, name: str, epochs: int, create: bool = True):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        rdb = optuna.storages.RDBStorage(storage)
    except Exception as exc:
        raise BenchError(f"cannot open the Optuna storage {storage} ({type(exc).__name__}); check --storage") from None
    if not create:
        try:
            return optuna.load_study(study_name=name, storage=rdb)
        except KeyError:
            return None
    sampler = optuna.samplers.TPESampler(
        seed=_sampler_seed(name), n_startup_trials=10, multivariate=True, constant_liar=True
    )
    pruner = optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1), reduction_factor=3)
    return optuna.create_study(
        study_name=name, storage=rdb, direction="maximize", sampler=sampler, pruner=pruner, load_if_exists=True
    )


@dataclass
class StudySummary:
    name: str
    method: str
    task: str
    trials: dict[str, int]
    best_value: float | None
    best_trial: int | None
    best_params: dict[str, Any]


@dataclass
class _StudyJob:
    """One study of a tuning request and the trials it still needs."""

    run: PlannedRun
    name: str
    study: Any
    attrs: dict[str, Any]
    remaining: int


def run_tuning(
    request: SweepRequest,
    trials: int,
    workdir: Path,
    tracker: Tracker,
    storage: str,
    reporter=None,
    devices: list | None = None,
) -> list[StudySummary]:
    """Top every study of the request up to ``trials`` trials; return each study's state.

    ``devices`` (slots from :func:`bench.executor.parse_gpus`) tunes several studies at once, one
    per device in worker processes; the trials of one study still run one after another, so each
    study proposes, prunes and ends exactly as it does in one process.
    """
    if trials < 1:
        raise BenchError(f"--trials {trials} must be at least 1")
    import suites

    if suites.get_suite(request.suite).fewshot is not None:
        raise BenchError(
            f"`bench tune` does not tune few-shot suites yet ({request.suite!r}); run them with the published "
            "recipe (`bench run`), or pick settings on the val lists with `bench run --stage tune`"
        )
    request = dataclasses.replace(request, stage="tune", seeds=[TUNE_SEED], hparams="published")
    plan = plan_sweep(request, workdir)
    experiment = experiment_name(plan.suite.name, tune=True)
    jobs = [_prepare_study(plan, run, storage, trials) for run in plan.runs]
    todo = [job for job in jobs if job.remaining > 0]
    memo: dict = {}
    if devices and todo:
        _tune_parallel(todo, plan, tracker, experiment, workdir, memo, reporter, devices, storage, trials)
    else:
        for job in todo:
            data = task_data(job.run.task, plan, workdir / "cache" / "images", memo)
            parent = _open_study_run(tracker, experiment, plan, job, storage, trials)
            objective = _objective(job.run, plan, tracker, experiment, parent, job.name, data, reporter)
            try:
                job.study.optimize(objective, n_trials=job.remaining, catch=(TrialFailed,))
            finally:
                tracker.close_sweep(parent, "FINISHED", {"trials": len(job.study.trials)})
    return [_summary(job.study, job.run) for job in jobs]


def _prepare_study(plan: SweepPlan, run: PlannedRun, storage: str, trials: int) -> _StudyJob:
    """Open (or create) the study of ``run``, check it was tuned under the same settings, fail
    trials a killed process left RUNNING, and enqueue trial 0 (the published configuration)."""
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
    # One process tunes a study at a time, so a RUNNING trial found now was left by a killed run.
    # Optuna's public fail_stale_trials needs heartbeats and a grace period; this needs neither.
    for stale in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study._storage.set_trial_state_values(stale._trial_id, optuna.trial.TrialState.FAIL)
    if not study.trials:  # trial 0: the published configuration (the preset's recipe + the method's own)
        study.enqueue_trial({**published_shared(plan.preset), **run.method.published_hparams()}, skip_if_exists=True)
    done = sum(t.state.name in FINISHED_STATES for t in study.get_trials(deepcopy=False))
    return _StudyJob(run, name, study, attrs, max(0, trials - done))


def _open_study_run(tracker: Tracker, experiment: str, plan: SweepPlan, job: _StudyJob, storage: str, trials: int):
    """The study's parent run in MLflow (reopened when the study is topped up)."""
    run = job.run
    return tracker.open_sweep(
        experiment,
        hashlib.sha256(job.name.encode()).hexdigest()[:24],
        tags={
            "bench.suite": plan.suite.name,
            "bench.task": run.task.name,
            "bench.method": run.method.name,
            "bench.budget": str(run.spec.budget) if run.spec.budget is not None else "none",
            "bench.study": job.name,
            "bench.sweep_name": f"study/{job.name}",
            "optuna.storage": storage,
        },
        params=flatten_params({"n_trials": trials, **job.attrs}),
    )


def _trial_setup(run: PlannedRun, plan: SweepPlan, trial, name: str):
    """The planned run of one trial: its suggested values applied; the tags and params it logs."""
    values = run.method.search_space(trial)
    preset, config = split_hparams(run.method, run.config, plan.preset, values)
    spec = dataclasses.replace(run.spec, hparams=preset.to_dict(), method_config=config_to_dict(config))
    trial_run = PlannedRun(spec, run.task, run.method, config, preset)
    tags = run_tags(spec, **{"bench.study": name, "bench.trial": str(trial.number)})
    params = flatten_params({"method": spec.method_config, "hp": spec.hparams, "trial": values})
    return trial_run, tags, params


def _objective(run, plan, tracker, experiment, parent, name, data, reporter):
    import optuna

    def objective(trial) -> float:
        trial_run, tags, params = _trial_setup(run, plan, trial, name)
        preset = trial_run.preset
        state, value = "complete", math.nan
        with tracker.child_run(experiment, parent, f"trial-{trial.number:03d}", tags, params) as run_id:

            def report(m) -> None:
                trial.report(m.eval_acc, m.epoch)
                if reporter is not None:
                    reporter.epoch_done(trial_run, m)
                if trial.should_prune():
                    raise optuna.TrialPruned()

            if reporter is not None:
                reporter.run_started(trial_run, preset.epochs)
            try:
                result = execute_run(trial_run, plan, tracker, run_id, data, report)
                value = result.epochs[-1].eval_acc  # the last epoch's val200 accuracy, never the best
            except optuna.TrialPruned:
                state = "pruned"
            except (BenchError, KeyboardInterrupt):
                raise
            except Exception as exc:  # NaN loss, numerical failure: this trial fails, the study goes on
                tracker.client.set_tag(run_id, "optuna.state", "failed")
                raise TrialFailed(f"{type(exc).__name__}: {exc}") from exc
            tracker.client.set_tag(run_id, "optuna.state", state)
            if state == "complete":
                tracker.log_metrics(run_id, {"tune/objective": value}, step=preset.epochs)
        if state == "pruned":
            raise optuna.TrialPruned()
        return value

    return objective


@dataclass
class _ActiveTrial:
    index: int
    job: _StudyJob
    trial: Any
    run: PlannedRun
    run_id: str
    pruned: bool = False


def _tune_parallel(jobs, plan, tracker, experiment, workdir, memo, reporter, slots, storage, trials) -> None:
    """The studies of ``jobs`` on ``slots`` worker processes: each worker takes one study at a time
    and trains its trials one after another (ask, train, tell); this process stays the only writer
    of MLflow and of the Optuna storage. A trial Hyperband prunes is cancelled in its worker after
    the epoch that decided it; epochs the worker trained before the cancel arrived are not logged."""
    import os
    from collections import deque
    from itertools import count

    import optuna

    from .executor import WorkerPool, WorkerRunError, WorkerSetup, _unpack, log_started
    from .sweep import epoch_metrics

    cache_dir = workdir / "cache" / "images"
    waiting: deque[_StudyJob] = deque(jobs)
    slots = slots[: len(jobs)]
    setup = WorkerSetup(plan.stage, plan.preset, plan.weights, cache_dir, max(1, (os.cpu_count() or 1) // len(slots)))
    studies: dict[int, tuple[_StudyJob, str]] = {}  # worker -> (its study, the study's parent run)
    active: dict[int, _ActiveTrial] = {}
    numbers = count()
    failure: BaseException | None = None
    pool = WorkerPool(slots, setup)

    def end_trial(wid: int, state: str, value: float | None = None, error: str | None = None) -> None:
        a = active.pop(wid)
        tracker.client.set_tag(a.run_id, "optuna.state", state)
        if state == "complete":
            tracker.log_metrics(a.run_id, {"tune/objective": value}, step=a.run.preset.epochs)
        tracker.end_child(a.run_id, "FAILED" if state == "failed" else "FINISHED", error)
        states = {"complete": optuna.trial.TrialState.COMPLETE, "pruned": optuna.trial.TrialState.PRUNED}
        a.job.study.tell(
            a.trial, value if state == "complete" else None, state=states.get(state, optuna.trial.TrialState.FAIL)
        )

    def start_trial(wid: int) -> None:
        job, parent = studies[wid]
        trial = job.study.ask()
        try:
            trial_run, tags, params = _trial_setup(job.run, plan, trial, job.name)
        except BaseException:
            job.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        run_id = tracker.start_child(experiment, parent, f"trial-{trial.number:03d}", tags, params)
        job.remaining -= 1
        active[wid] = _ActiveTrial(next(numbers), job, trial, trial_run, run_id)
        if reporter is not None:
            reporter.run_started(trial_run, trial_run.preset.epochs)
        pool.send(wid, active[wid].index, trial_run)

    graceful = False
    try:
        pool.start()
        while True:
            for wid in range(len(slots)):
                if wid in active or wid in pool.broken or failure is not None:
                    continue
                if wid in studies and studies[wid][0].remaining == 0:
                    job, parent = studies.pop(wid)
                    tracker.close_sweep(parent, "FINISHED", {"trials": len(job.study.trials)})
                if wid not in studies:
                    if not waiting:
                        continue
                    job = waiting.popleft()
                    try:
                        task_data(job.run.task, plan, cache_dir, memo)  # checks every image, fills the cache
                    except BenchError as exc:
                        failure = exc
                        break
                    studies[wid] = (job, _open_study_run(tracker, experiment, plan, job, storage, trials))
                start_trial(wid)
            if not active:
                if failure is None and (waiting or any(j.remaining for j, _ in studies.values())):
                    failure = WorkerRunError("no worker is left to train the remaining tuning trials")
                break
            msg = pool.receive()
            if msg is None:
                continue
            kind, wid = msg[0], msg[1]
            if kind == "died":
                if wid in active:
                    text = f"the worker on {slots[wid].label} died (exit code {msg[2]})"
                    end_trial(wid, "failed", error=text)
                    failure = failure or WorkerRunError(text)
                continue
            if kind == "fatal":
                text = f"the worker on {slots[wid].label} could not start: {msg[2]}"
                if wid in active:
                    end_trial(wid, "failed", error=text)
                failure = failure or WorkerRunError(text)
                continue
            a = active.get(wid)
            if a is None or a.index != msg[2]:
                continue
            if kind == "started":
                log_started(tracker, a.run_id, a.run, plan, slots[wid], msg)
            elif kind == "epoch" and not a.pruned:
                m = msg[3]
                tracker.log_metrics(a.run_id, epoch_metrics(m), step=m.epoch)
                a.trial.report(m.eval_acc, m.epoch)
                if reporter is not None:
                    reporter.epoch_done(a.run, m)
                if a.trial.should_prune():
                    a.pruned = True
                    pool.cancel(wid, a.index)
            elif kind == "cancelled" or (kind == "done" and a.pruned):
                end_trial(wid, "pruned")
            elif kind == "done":
                result = _unpack(msg[3])
                end_trial(wid, "complete", result.epochs[-1].eval_acc)  # the last epoch's, never the best
            elif kind == "error":
                _, _, _, name, message, _tb, user_error = msg
                end_trial(wid, "failed", error=f"{name}: {message}")
                if user_error:  # the user's to fix (bad settings): stop, as the one-process path does
                    failure = failure or BenchError(message)
                # else: NaN loss or another failure of this trial alone: it counts, the study goes on
        graceful = True
    except BaseException as exc:  # Ctrl-C or a failure of this process: the trials in flight end here
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        for a in active.values():
            with contextlib.suppress(Exception):
                tracker.end_child(a.run_id, status, None if status == "KILLED" else f"tuning stopped: {exc!r}"[:400])
                a.job.study.tell(a.trial, state=optuna.trial.TrialState.FAIL)
        active.clear()
        raise
    finally:
        for job, parent in studies.values():
            with contextlib.suppress(Exception):
                tracker.close_sweep(parent, "FINISHED", {"trials": len(job.study.trials)})
        pool.stop(graceful=graceful)
    if failure is not None:
        raise failure


def _summary(study, run: PlannedRun) -> StudySummary:
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    best = max(complete, key=lambda t: t.value) if complete else None
    return StudySummary(
        study.study_name,
        run.method.name,
        run.task.name,
        counts,
        best.value if best else None,
        best.number if best else None,
        dict(best.params) if best else {},
    )


def tuned_settings(
    request: SweepRequest,
    suite: str,
    task: ResolvedTask,
    method: Method,
    config: Any,
    budget: int | None,
    preset: Preset,
    backbone: str,
    weights: Weights,
) -> tuple[Preset, Any, dict[str, str]]:
    """The best trial of the (task, method, budget) study, applied to the preset and config."""
    storage = request.storage
    name = study_name(suite, task.name, method.name, budget)
    study = open_study(storage, name, preset.epochs, create=False) if storage else None
    hint = f"run `bench tune --suite {suite} --methods {method.name}" + (
        f" --budget {budget}`" if budget is not None else "`"
    )
    if study is None:
        raise BenchError(f"no tuning study {name} in {storage}; {hint} first, with the same options")
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if not complete:
        raise BenchError(f"study {name} has no completed trial; {hint} with more --trials")
    attrs = study.user_attrs
    for key, value in (("backbone", backbone), ("checkpoint", weights.checkpoint_id), ("epochs", preset.epochs)):
        if attrs.get(key) != value:
            raise BenchError(
                f"study {name} was tuned with {key}={attrs.get(key)!r}, this run uses {value!r}; "
                "tune again with the same settings or run with --hparams published"
            )
    best = max(complete, key=lambda t: t.value)
    tuned_preset, tuned_config = split_hparams(method, config, preset, best.params)
    return tuned_preset, tuned_config, {"bench.study": name, "bench.trial": str(best.number), "bench.hparams": "tuned"}
