"""Optuna studies: names, storage, samplers, the preset trial 0, and the tuned settings that
final runs take. A leaf: it knows Optuna and the method interface, not sweeps or the engine.

Fairness rules (see ``docs/guide/tuning.md``):

* every study gets the same ``n_trials``; complete, pruned and failed trials all count, so a
  method that fails cannot buy extra trials. A trial cut short by Ctrl-C or a killed driver process is
  marked failed *and interrupted*, and does not count: a rerun trains it again;
* the same sampler (TPE, multivariate, constant liar, seeded from the study name) and the same
  pruner (Hyperband over epochs, fed the val200 accuracy of every epoch) for every study;
* trial 0 is the suite preset with the method's own defaults (the ``preset`` run), so tuning can only help it.
"""

from __future__ import annotations

import dataclasses
import hashlib
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
INTERRUPTED = "interrupted"  # a trial's user attribute: cut short by Ctrl-C or a killed driver


def counts_toward_effort(trial: Any) -> bool:
    """Whether a trial uses up one of its study's ``n_trials``: finished, and not interrupted."""
    return trial.state.name in FINISHED_STATES and not trial.user_attrs.get(INTERRUPTED)


def default_storage(workdir: Path) -> str:
    return f"sqlite:///{(workdir / 'optuna.db').resolve()}"


def study_name(suite: str, task: str, method: str, budget: int | None) -> str:
    return f"{suite}/{task}/{method}/" + (f"b{format_budget(budget)}" if budget is not None else "published")


def _sampler_seed(name: str) -> int:
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)


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


def open_study(storage: str, name: str, epochs: int, create: bool = True):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        rdb = optuna.storages.RDBStorage(storage)
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


def summarize_study(study, method: str, task: str) -> StudySummary:
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        state = INTERRUPTED if t.user_attrs.get(INTERRUPTED) else t.state.name.lower()
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
