"""Optuna studies: names, storage, samplers, schedulers, the effort a study has used, the preset
trial 0, and the tuned settings that final runs take. A leaf: it knows Optuna and the method
interface, not sweeps or the engine.

Fairness rules (see ``docs/guide/budgets-and-tuning.md``):

* every study gets the same effort, a budget in **trial-epochs** (``--trials N`` is N full trials:
  N x epochs). A completed trial is charged its epochs; a pruned one the epochs it trained, so the
  epochs a scheduler saves buy more trials; a failed one a full trial, so a method that fails
  cannot buy extra trials. A trial cut short by Ctrl-C or a killed process is *interrupted*: it is
  not charged, and its configuration is queued to train again;
* the same sampler (TPE, multivariate, constant liar) for every study, seeded per trial from the
  study name and the trial's place in the study, so a resumed study draws what an uninterrupted one
  would, never a replay of its first draws; the same scheduler (pruner) for every study of a storage;
* trial 0 is the suite preset with the method's own defaults (the ``preset`` run), so tuning can only help it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from methods.base import Method
from suites.base import Preset
from suites.resolve import ResolvedTask

from . import schema
from .backbone import Weights
from .budget import format_budget
from .errors import BenchError

TUNE_SEED = 1000  # the seed of every tuning trial; final runs must use others
FINISHED_STATES = ("COMPLETE", "PRUNED", "FAIL")
# Trial user attributes:
INTERRUPTED = "interrupted"  # cut short by Ctrl-C or a killed process (or never started): not charged
RETRY_OF = "retry_of"  # on a queued trial: the number of the interrupted trial whose configuration it trains
EPOCHS_CHARGED = "epochs"  # the trial-epochs a finished trial is charged
TRAIN_SECONDS = "train_s"  # the training seconds of its epochs (evaluation excluded)
BEATING = "heartbeat"  # the trial's process records heartbeats (so a stale heartbeat means it died)

# Schedulers: how trials are stopped early, epochs being the resource. Every one has the same
# smallest resource (1 epoch) and reduction factor (3), so they differ only in the rule.
SCHEDULERS = ("none", "asha", "hyperband")
DEFAULT_SCHEDULER = "hyperband"
LEGACY_SCHEDULER = "hyperband"  # what a study made before schedulers could be chosen was tuned with
MIN_RESOURCE, REDUCTION_FACTOR = 1, 3

# A process tuning a study records a heartbeat for its running trial every HEARTBEAT_S seconds; a
# RUNNING trial whose heartbeat is older than STALE_AFTER_S was left by a process that died.
HEARTBEAT_S = 10
STALE_AFTER_S = 60


def is_interrupted(trial: Any, retried: set[int] | None = None) -> bool:
    """Cut short by Ctrl-C, a killed process, or a second process: not charged, trained again.
    ``retried``: the numbers of trials a queued retry names (a trial failed for a stale heartbeat
    carries no mark of its own; its retry does)."""
    return bool(trial.user_attrs.get(INTERRUPTED)) or (retried is not None and trial.number in retried)


def retried_numbers(trials: list[Any]) -> set[int]:
    return {int(t.user_attrs[RETRY_OF]) for t in trials if RETRY_OF in t.user_attrs}


def counts_toward_effort(trial: Any, retried: set[int] | None = None) -> bool:
    """Whether a trial is charged to its study's budget: finished, and not interrupted."""
    return trial.state.name in FINISHED_STATES and not is_interrupted(trial, retried)


def epochs_charged(trial: Any, epochs: int) -> int:
    """The trial-epochs a finished trial is charged (see the module docstring). Trials stored
    before the charge was recorded: a failed one a full trial, others the epochs they reported."""
    if EPOCHS_CHARGED in trial.user_attrs:
        return int(trial.user_attrs[EPOCHS_CHARGED])
    if trial.state.name == "FAIL":
        return epochs
    return len(trial.intermediate_values) or epochs


@dataclass(frozen=True)
class Effort:
    """What a study has spent: trial-epochs charged and the training seconds of those trials."""

    trials: int  # trials charged
    epochs: int
    seconds: float


def effort_used(trials: list[Any], epochs: int) -> Effort:
    retried = retried_numbers(trials)
    charged = [t for t in trials if counts_toward_effort(t, retried)]
    return Effort(
        len(charged),
        sum(epochs_charged(t, epochs) for t in charged),
        float(sum(t.user_attrs.get(TRAIN_SECONDS, 0.0) for t in charged)),
    )


def check_scheduler(scheduler: str) -> str:
    if scheduler not in SCHEDULERS:
        raise BenchError(f"--scheduler {scheduler!r} must be one of {', '.join(SCHEDULERS)}")
    return scheduler


def make_pruner(scheduler: str, epochs: int):
    """The pruner of a scheduler, over epochs ``0 .. epochs - 1`` (the step a trial reports)."""
    import optuna

    if scheduler == "none":
        return optuna.pruners.NopPruner()
    if scheduler == "asha":  # asynchronous successive halving: rungs at 1, 3, 9, ... epochs
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=MIN_RESOURCE, reduction_factor=REDUCTION_FACTOR, min_early_stopping_rate=0
        )
    return optuna.pruners.HyperbandPruner(
        min_resource=MIN_RESOURCE, max_resource=max(epochs, 1), reduction_factor=REDUCTION_FACTOR
    )


def trial_sampler(name: str, index: int):
    """The sampler that proposes the ``index``-th trial of study ``name`` (interrupted trials not
    counted). Its seed depends on both, so every start of a process draws new values, and a study
    resumed after interruptions draws what it would have drawn without them."""
    import optuna

    seed = int(hashlib.sha256(f"{name}#{index}".encode()).hexdigest()[:8], 16)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=10, multivariate=True, constant_liar=True)


def _retry_stale_trial(study: Any, trial: Any) -> None:
    """Optuna's heartbeat callback: a trial failed for a stale heartbeat is trained again."""
    if trial.params:
        study.enqueue_trial(dict(trial.params), user_attrs={RETRY_OF: trial.number})


def fail_stale_trials(study: Any) -> None:
    """Fail (and queue again) the RUNNING trials of processes that died: those whose heartbeat is
    stale (Optuna's rule), and those that never beat and started more than STALE_AFTER_S ago.
    The trials of a live process, here or elsewhere, are left alone."""
    import time

    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    now = time.time()
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        started = t.datetime_start.timestamp() if t.datetime_start else now
        if not t.user_attrs.get(BEATING) and now - started > STALE_AFTER_S:
            try:
                study._storage.set_trial_user_attr(t._trial_id, INTERRUPTED, True)
                study._storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:
                pass  # another process got there first


def requeue_interrupted(study: Any) -> list[int]:
    """Queue the configuration of every interrupted trial not queued yet, so it trains again
    (trial 0, the preset configuration, included); return the numbers queued for."""
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    queued = []
    for t in trials:
        if t.state.name == "FAIL" and t.user_attrs.get(INTERRUPTED) and t.number not in retried and t.params:
            study.enqueue_trial(dict(t.params), user_attrs={RETRY_OF: t.number})
            queued.append(t.number)
    return queued


def default_storage(workdir: Path) -> str:
    return f"sqlite:///{(workdir / 'optuna.db').resolve()}"


def study_name(suite: str, task: str, method: str, budget: int | None) -> str:
    return f"{suite}/{task}/{method}/" + (f"b{format_budget(budget)}" if budget is not None else "published")


def preset_shared(preset: Preset) -> dict[str, Any]:
    """The preset's values of the shared tuned settings: trial 0 starts from them."""
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


def open_study(storage: str, name: str, epochs: int, create: bool = True, scheduler: str = DEFAULT_SCHEDULER):
    """The study ``name`` (None if absent and not ``create``), with its storage's heartbeat on and
    ``scheduler``'s pruner; its sampler is set per trial (:func:`trial_sampler`)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with warnings.catch_warnings():  # the heartbeat is marked experimental, and has been since Optuna 2.9
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            rdb = optuna.storages.RDBStorage(
                storage,
                heartbeat_interval=HEARTBEAT_S,
                grace_period=STALE_AFTER_S,
                heartbeat_stale_trial_callback=_retry_stale_trial,
            )
    except ImportError as exc:  # the URL's database driver (postgresql:// needs psycopg, mysql:// a MySQL driver)
        raise BenchError(
            f"cannot open the Optuna storage {storage}: its database driver is not installed ({exc}); install it, "
            'e.g. pip install "psycopg[binary]" for postgresql://'
        ) from None
    except Exception as exc:
        raise BenchError(f"cannot open the Optuna storage {storage} ({type(exc).__name__}); check --storage") from None
    if not create:
        try:
            return optuna.load_study(study_name=name, storage=rdb)
        except KeyError:
            return None
    return optuna.create_study(
        study_name=name,
        storage=rdb,
        direction="maximize",
        sampler=trial_sampler(name, 0),
        pruner=make_pruner(scheduler, epochs),
        load_if_exists=True,
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
    scheduler: str = DEFAULT_SCHEDULER
    budget_epochs: int = 0  # the effort every study of the command was given
    epochs_used: int = 0  # trial-epochs charged so far
    train_seconds: float = 0.0  # training seconds of the charged trials


def summarize_study(
    study, method: str, task: str, epochs: int, budget_epochs: int = 0, scheduler: str = DEFAULT_SCHEDULER
) -> StudySummary:
    counts: dict[str, int] = {}
    trials = study.get_trials(deepcopy=False)
    retried = retried_numbers(trials)
    for t in trials:
        state = INTERRUPTED if is_interrupted(t, retried) else t.state.name.lower()
        counts[state] = counts.get(state, 0) + 1
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    best = max(complete, key=lambda t: t.value) if complete else None
    return StudySummary(
        study.study_name,
        method,
        task,
        counts,
        best.value if best else None,
        best.number if best else None,
        dict(best.params) if best else {},
        scheduler,
        budget_epochs,
        (effort := effort_used(trials, epochs)).epochs,
        effort.seconds,
    )


def tuned_settings(
    storage: str | None,
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
                "tune again with the same settings or run with --hparams preset"
            )
    best = max(complete, key=lambda t: t.value)
    tuned_preset, tuned_config = split_hparams(method, config, preset, best.params)
    return tuned_preset, tuned_config, {schema.STUDY: name, schema.TRIAL: str(best.number), schema.HPARAMS: "tuned"}
