"""A sweep: every (task, method, seed) of a request, skipping what is already finished.

Planning (:func:`plan_sweep`) validates everything a user can get wrong (names, data root, list
files, checkpoint, backbone) before any training starts. Running (:func:`run_sweep`) hands every
run without a FINISHED record to the run engine (:mod:`bench.engine`) as a job of a
:class:`SweepSource`; the engine's executor decides where the runs train, and its recorder logs
each to MLflow as it goes, so an error or a kill loses at most the runs in progress, and a run
that fails never stops the others.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import suites
from methods.base import Composite, Method, identity_dict, make_config
from suites.base import Preset, Stage, Suite
from suites.lists import ListEntry
from suites.resolve import ResolvedTask

from . import __version__, efficiency, schema
from .backbone import Weights, backbone_spec, check_weights, resolve_weights
from .budget import UnreachableBudget, check_structure, format_budget
from .cache import load_split
from .claims import RunClaims
from .compile_cache import cache_folder
from .engine import Executor, Job, JobData, Recorder, Reporter, RunOutcome, RunRecord, SilentReporter, Work, drive
from .errors import BenchError
from .hparams import HparamsChoice, has_recipe, missing_recipe, paper_settings, parse_hparams, scale_epochs
from .inspect import built_trainable_params
from .method_entries import choose_entry_for_budget, method_base, resolve_methods, set_bases, set_values
from .provenance import command_line, git_revision
from .sources import DEPRECATION_NOTE, run_sources
from .spec import RunSpec, canonical_json
from .tracking import experiment_name, flatten_params
from .train import SplitData


@dataclass
class SweepRequest:
    suite: str
    methods: list[str]
    seeds: list[int]
    tasks: list[str] | None = None
    stage: str = "final"
    data_root: Path | None = None
    backbone: str | None = None
    checkpoint: Path | None = None
    epochs: int | None = None
    device: str = "auto"
    method_overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    # trainable params (head excluded) each sizeable method is fitted to, one sweep cell per budget
    budgets: list[int] = field(default_factory=list)
    hparams: str = "preset"  # paper (each method's recipe), tuned (each study's best trial), or paper,preset
    storage: str | None = None  # Optuna storage for --hparams tuned
    shots: list[int] | None = None  # few-shot suites: the shot counts (default: all the suite has)
    split_seeds: list[int] | None = None  # few-shot: the training lists' seeds (default: the training seed)
    dedupe: bool = False  # few-shot: drop repeated lines of the training lists (default: keep, as published)
    preset_overrides: dict[str, Any] = field(default_factory=dict)  # --set preset.FIELD=VALUE
    weights_label: str | None = None  # --weights-label: a human name for the weights, recorded per run
    dataset: str | None = None  # suites that load a dataset (hf): a Hub id or a save_to_disk folder
    image_column: str | None = None
    label_column: str | None = None
    system_metrics: bool = True  # GPU/CPU/RAM per epoch where psutil / nvidia-ml-py exist
    sweep_file: str | None = None  # the resolved sweep file (YAML) of `--config`, stored with the sweep

    def __post_init__(self) -> None:
        # `--set preset.lr=…` arrives with the methods' --set values; it sets the preset, not a method
        if "preset" in self.method_overrides:
            self.method_overrides = dict(self.method_overrides)
            self.preset_overrides = {**self.method_overrides.pop("preset"), **self.preset_overrides}


# Preset fields a run may override: the optimiser and regularisation. The rest (image size,
# interpolation, augmentation, normalisation) define the data a run sees and stay the suite's;
# epochs have --epochs, which also scales the warm-up.
PRESET_OVERRIDABLE = (
    "lr",
    "weight_decay",
    "drop_path",
    "label_smoothing",
    "batch_size",
    "warmup_epochs",
    "warmup_lr",
    "min_lr",
)
_PRESET_RANGES = {  # (low, high, low open, high open)
    "lr": (0.0, 1.0, True, False),
    "weight_decay": (0.0, 10.0, False, False),
    "drop_path": (0.0, 1.0, False, True),
    "label_smoothing": (0.0, 1.0, False, True),
    "warmup_lr": (0.0, 1.0, False, False),
    "min_lr": (0.0, 1.0, False, False),
}


def apply_preset_overrides(preset: Preset, overrides: dict[str, Any]) -> Preset:
    """``preset`` with ``--set preset.FIELD=VALUE`` applied: known fields, their types, sane ranges."""
    if not overrides:
        return preset
    import typing

    from methods.base import MethodError, _coerce, check_range

    unknown = sorted(set(overrides) - set(PRESET_OVERRIDABLE))
    if unknown:
        hint = "; epochs are set with --epochs" if "epochs" in unknown else ""
        raise BenchError(
            f"--set preset.{unknown[0]} is not a preset setting a run may change; "
            f"valid: {', '.join(PRESET_OVERRIDABLE)}{hint}"
        )
    hints = typing.get_type_hints(Preset)
    values: dict[str, Any] = {}
    try:
        for key, raw in overrides.items():
            value = _coerce(raw, hints[key], f"preset.{key}") if isinstance(raw, str) else raw
            if key in _PRESET_RANGES:
                check_range("preset", key, float(value), *_PRESET_RANGES[key])
            values[key] = value
    except MethodError as exc:
        raise BenchError(f"--set {exc}") from None
    if values.get("batch_size", 1) < 1:
        raise BenchError(f"--set preset.batch_size={values['batch_size']} must be at least 1")
    result = preset.with_overrides(**values)
    if not 0 <= result.warmup_epochs < result.epochs:
        raise BenchError(
            f"--set preset.warmup_epochs={result.warmup_epochs} must be in 0..{result.epochs - 1} "
            f"(the run has {result.epochs} epochs)"
        )
    return result


def preset_override_tags(overrides: dict[str, Any], preset: Preset) -> dict[str, str]:
    """Tags marking runs trained with --set preset.…: reports keep them apart from preset runs."""
    if not overrides:
        return {}
    text = ",".join(f"{k}={getattr(preset, k)}" for k in sorted(overrides))
    return {schema.HPARAMS: "override", schema.PRESET_OVERRIDES: text}


@dataclass
class PlannedRun:
    spec: RunSpec
    task: ResolvedTask
    method: Method
    config: Any
    preset: Preset  # the suite's preset, with the paper recipe or tuned hyperparameters applied where asked for
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def source(self) -> str:
        """The hyperparameter source the run was planned with: preset, paper, tuned or override."""
        return self.tags.get(schema.HPARAMS, "preset")


@dataclass(frozen=True)
class Unreachable:
    """A (method, budget) cell of a sweep over several budgets that no structure of the method meets."""

    method: str  # the method as the request names it
    budget: int
    reason: str  # the one-line refusal, with the nearest feasible counts

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "budget": self.budget, "reason": self.reason}

    @property
    def warning(self) -> str:
        return f"{self.method} at budget {format_budget(self.budget)} is left out of the sweep: {self.reason}"


CLAIM_POLL_S = 1.0  # how often a sweep waiting on runs another process trains looks again

TAG_LIMIT = 8000  # MLflow's longest tag value


def unreachable_tag(cells: list[Unreachable]) -> str:
    """The ``bench.unreachable`` tag: a JSON list of the cells; reasons shortened if it would not fit a tag."""
    text = json.dumps([c.to_dict() for c in cells])
    if len(text) > TAG_LIMIT:
        text = json.dumps([{**c.to_dict(), "reason": c.reason[:80] + "…"} for c in cells])
    return text


@dataclass
class SweepPlan:
    request: SweepRequest
    suite: Suite
    stage: Stage
    preset: Preset
    backbone: str
    weights: Weights
    device: torch.device
    runs: list[PlannedRun]
    data_root: Path
    warnings: list[str] = field(default_factory=list)  # printed before the sweep starts
    unreachable: list[Unreachable] = field(default_factory=list)  # (method, budget) cells left out

    @property
    def experiment(self) -> str:
        return experiment_name(self.suite.name)

    @property
    def sweep_key(self) -> str:
        keys = sorted(r.spec.run_key for r in self.runs)
        return hashlib.sha256(canonical_json(keys).encode()).hexdigest()[:24]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda"):
        raise BenchError(f"--device {name!r} is not supported; use auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise BenchError("--device cuda was asked for but no CUDA device is visible; use --device cpu")
    return torch.device(name)


def resolve_preset(suite: Suite, epochs: int | None) -> Preset:
    """The suite's preset; ``--epochs`` scales the warm-up with it (10 of 100 stays a tenth)."""
    preset = suite.preset
    if epochs is None:
        return preset
    if epochs < 1:
        raise BenchError(f"--epochs {epochs} must be at least 1")
    return scale_epochs(preset, epochs)


def plan_sweep(request: SweepRequest, workdir: Path) -> SweepPlan:
    suite = suites.get_suite(request.suite)
    stage = suites.get_stage(request.stage)
    if not request.methods:
        raise BenchError("no methods given; pass e.g. --methods lora,linear (see `bench methods list`)")
    if not request.seeds:
        raise BenchError("no seeds given; pass e.g. --seeds 3")
    device = resolve_device(request.device)
    entries = resolve_methods(request.methods)  # names, fields and values, before anything else
    stray = sorted(set(request.method_overrides) - set_bases(entries))
    if stray:
        raise BenchError(
            f"--set names method(s) {', '.join(stray)} that are not in --methods; add them or drop the --set"
        )
    choice = parse_hparams(request.hparams)
    _check_fewshot_options(suite, request)

    preset = apply_preset_overrides(resolve_preset(suite, request.epochs), request.preset_overrides)
    if request.preset_overrides and choice.source == "tuned":
        raise BenchError(
            "--set preset.… and --hparams tuned both set the hyperparameters; drop one "
            "(tune with the preset override instead: `bench tune --set preset.…`)"
        )
    if request.preset_overrides and choice.source == "paper":
        raise BenchError(
            "--set preset.… and --hparams paper both set the hyperparameters; drop one (a recipe of your own "
            "goes in a folder named by BENCH_RECIPES)"
        )
    if choice.source == "paper" and request.budgets:
        raise BenchError(
            "--hparams paper trains each method at its paper's own structure; drop --budget, or use "
            "--hparams preset or tuned with --budget"
        )
    override_tags = {schema.HPARAMS: "preset", **preset_override_tags(request.preset_overrides, preset)}
    if request.weights_label:
        override_tags = {**override_tags, schema.WEIGHTS_LABEL: request.weights_label}
    backbone = request.backbone or suite.default_backbone
    # an unknown backbone, or a method that does not support its family, fails before data is prepared
    spec_bb = backbone_spec(backbone, preset.img_size)
    chosen, unreachable = _sized_cells(entries, request, spec_bb)
    for method, config, _ in chosen:  # a config that does not fit the backbone fails before any training
        _check_on_meta(method, config, backbone, preset.img_size, workdir)
        _check_composition(method, config, spec_bb.family, choice.source, workdir)
    paper = _paper_methods(chosen, suite.name, choice)
    data_root = _dataset_root(suite, request, workdir)
    if suite.prepare is not None:
        data_root = data_root or workdir / "data" / suite.name
        suite.prepare(data_root)
    tasks = suites.resolve_tasks(suite, data_root, request.tasks, stage)

    weights = resolve_weights(backbone, request.checkpoint, pretrained=suite.backbone_pretrained)
    check_weights(weights, backbone, preset.img_size)

    runs, warnings = [], [cell.warning for cell in unreachable]
    checked: set[tuple[str, str]] = set()
    if choice.deprecated:
        warnings.append(DEPRECATION_NOTE)
    fallback = [m.name for m, _, _ in chosen if choice.source == "paper" and m.name not in paper]
    if fallback:
        warnings.append(f"no paper recipe for suite {suite.name!r}: {', '.join(fallback)} train with the suite preset")
    if choice.source != "tuned":  # one caveat per method trained with the preset, however many budgets it is fitted to
        warnings += list(
            dict.fromkeys(
                c for m, _, _ in chosen if m.name not in paper and (c := m.preset_caveat(preset.lr)) is not None
            )
        )
    for task, task_seeds, task_preset in _run_groups(suite, tasks, stage, request, preset, warnings):
        fingerprint = task.fingerprint(stage)
        for method, config, budget in chosen:
            run_preset, run_config, tags = task_preset, config, override_tags
            if method.name in paper:
                settings = paper_settings(
                    method,
                    config,
                    suite.name,
                    task.name,
                    _unscaled(task_preset, suite.preset),
                    set_values(method, request.method_overrides),
                    request.epochs,
                )
                run_preset, run_config = settings.preset, settings.config
                built = (method.name, canonical_json(identity_dict(run_config)))
                if built not in checked:  # a recipe's config that does not fit the backbone fails before training
                    check_structure(method, spec_bb, run_config)
                    _check_on_meta(method, run_config, backbone, preset.img_size, workdir)
                    checked.add(built)
                tags = {**override_tags, **settings.tags}
            elif choice.source == "tuned":
                from .studies import TUNE_SEED, tuned_settings

                if TUNE_SEED in request.seeds:
                    raise BenchError(f"seed {TUNE_SEED} trained the tuning trials; final runs need other seeds")
                run_preset, run_config, tags = tuned_settings(
                    request.storage, suite.name, task, method, config, budget, task_preset, backbone, weights
                )
                if request.weights_label:
                    tags = {**tags, schema.WEIGHTS_LABEL: request.weights_label}
            tags = {**tags, schema.HPARAMS_SOURCES: tags[schema.HPARAMS]}
            for seed in task_seeds:
                spec = RunSpec(
                    suite=suite.name,
                    task=task.name,
                    stage=stage.name,
                    method=method.name,
                    method_config=identity_dict(run_config),
                    hparams=run_preset.to_dict(),
                    seed=seed,
                    preset=run_preset.name,
                    backbone=backbone,
                    checkpoint=weights.checkpoint_id,
                    data=fingerprint,
                    num_classes=task.num_classes,
                    budget=budget,
                    extra=task.extra,
                )
                runs.append(PlannedRun(spec, task, method, run_config, run_preset, dict(tags)))
    return SweepPlan(
        request, suite, stage, preset, backbone, weights, device, runs, Path(data_root), warnings, unreachable
    )


def _paper_methods(chosen: list[tuple[Method, Any, int | None]], suite: str, choice: HparamsChoice) -> set[str]:
    """The methods that train with their paper recipe; without one, ``paper`` alone is refused in one line."""
    if choice.source != "paper":
        return set()
    found = {m.name for m, _, _ in chosen if has_recipe(m, suite)}
    if choice.fallback is None:
        for method, _, _ in chosen:
            if method.name not in found:
                raise BenchError(missing_recipe(method, suite))
    return found


def _unscaled(task_preset: Preset, suite_preset: Preset) -> Preset:
    """The task's preset before ``--epochs``: a recipe's schedule is scaled from its own epochs."""
    return task_preset.with_overrides(epochs=suite_preset.epochs, warmup_epochs=suite_preset.warmup_epochs)


def _dataset_root(suite: Suite, request: SweepRequest, workdir: Path) -> Path | None:
    """The data root: --data-root, or for a suite that loads a dataset (hf), the folder it writes."""
    if suite.from_dataset is None:
        for flag, value in (
            ("--dataset", request.dataset),
            ("--image-column", request.image_column),
            ("--label-column", request.label_column),
        ):
            if value is not None:
                raise BenchError(f"{flag} applies to suite hf only; suite {suite.name!r} reads --data-root")
        return request.data_root
    if request.dataset is None:
        raise BenchError(
            f"suite {suite.name!r} needs --dataset: a Hugging Face Hub dataset (e.g. beans) or a folder written by "
            "save_to_disk"
        )
    if request.data_root is not None:
        raise BenchError(f"suite {suite.name!r} reads --dataset, not --data-root; drop --data-root")
    options = suites.DatasetOptions(request.dataset, request.image_column, request.label_column)
    return suite.from_dataset(options, workdir / "data" / suite.name)


def _check_fewshot_options(suite: Suite, request: SweepRequest) -> None:
    """--shots, --split-seeds and --dedupe: valid values, and only for few-shot suites (checked before any data is read)."""
    if suite.fewshot is not None:
        from suites.fewshot import check_request

        check_request(suite, request.shots, request.split_seeds, request.seeds)
        return
    for flag, value in (
        ("--shots", request.shots),
        ("--split-seeds", request.split_seeds),
        ("--dedupe", request.dedupe),
    ):
        if value:
            fewshot = [s.name for s in suites.available_suites().values() if s.fewshot is not None]
            raise BenchError(
                f"{flag} applies to few-shot suites only ({', '.join(fewshot)}); suite {suite.name!r} has no shots"
            )


def _run_groups(
    suite: Suite, tasks: list[ResolvedTask], stage: Stage, request: SweepRequest, preset: Preset, warnings: list[str]
) -> list[tuple[ResolvedTask, list[int], Preset]]:
    """(task, its training seeds, its preset) to plan: each task, or each (task, shots, split seed).

    Few-shot runs train with batch min(preset batch, training list size): NOAH's few-shot recipe's
    "64, or the dataset size if smaller", recorded as such in the run's hyperparameters.
    """
    if suite.fewshot is None:
        return [(task, request.seeds, preset) for task in tasks]
    from suites.fewshot import check_request, split_runs

    shots, split_seeds = check_request(suite, request.shots, request.split_seeds, request.seeds)
    groups = []
    for task in tasks:
        repeated = []
        for g in split_runs(task, stage, shots, request.seeds, split_seeds, request.dedupe):
            if g.repeated:
                repeated.append(f"k{g.task.split[0]}/split{g.task.split[1]}: {g.repeated} repeated")
            groups.append(
                (g.task, list(g.seeds), preset.with_overrides(batch_size=min(preset.batch_size, g.train_size)))
            )
        if repeated:
            action = "dropped (--dedupe)" if request.dedupe else "kept, as published; --dedupe drops them"
            warnings.append(f"{task.name}: training lists repeat lines ({'; '.join(repeated)}); {action}")
    return groups


def _sized_cells(
    entries: list[Method], request: SweepRequest, spec_bb
) -> tuple[list[tuple[Method, Any, int | None]], list[Unreachable]]:
    """Every (method, budget) cell the sweep trains, and the cells no structure of the method meets.

    A reference (not budget-adjustable) is one cell at its own size, serving every budget. With one
    budget an unreachable cell is refused as before; with several it is left out and reported, unless
    no sizeable method reaches any of the budgets.
    """
    cells: list[tuple[Method, Any, int | None]] = []
    unreachable: list[Unreachable] = []
    for method in entries:
        if not request.budgets or not method.budget_adjustable:
            cells.append(_sized_method(method, request, spec_bb, None))
            continue
        for budget in request.budgets:
            try:
                cells.append(_sized_method(method, request, spec_bb, budget))
            except UnreachableBudget as exc:
                if len(request.budgets) == 1:
                    raise
                unreachable.append(Unreachable(method.name, budget, " ".join(str(exc).splitlines())))
    if unreachable and all(budget is None for _, _, budget in cells):
        shown = ",".join(format_budget(b) for b in request.budgets)
        raise BenchError(
            f"no method reaches any of the budgets {shown} on {spec_bb.name} (e.g. {unreachable[0].reason}); "
            "choose budgets the methods can meet (see `bench methods budget`)"
        )
    return cells, unreachable


def _sized_method(method: Method, request: SweepRequest, spec_bb, budget: int | None) -> tuple[Method, Any, int | None]:
    """The method with its config: its defaults (plus --set and its brackets), or fitted to ``budget``."""
    overrides = set_values(method, request.method_overrides)
    if budget is None or not method.budget_adjustable:
        # a reference keeps its size under --budget: its runs serve every budget's sweep
        config = make_config(method, overrides)
        check_structure(method, spec_bb, config)
        return method, config, None
    method.check_backbone(spec_bb)  # an unsupported backbone stops the sweep; it is not an unreachable budget
    config = choose_entry_for_budget(method, spec_bb, budget, overrides).config
    return method, config, budget


def _check_composition(method: Method, config: Any, family: str, source: str, workdir: Path) -> None:
    """A composition's parts must all act and, where every part merges, merge to the same outputs
    (colliding parts were refused when it was built); it has no tuning study to take
    hyperparameters from. A configuration that passed is not checked again (:func:`_once`)."""
    if not isinstance(method, Composite):
        return
    if source == "tuned":
        raise BenchError(f"composition {method.name!r} cannot be tuned yet; run it with --hparams preset")
    _once(
        workdir,
        ["composition", method.name, identity_dict(config), family],
        lambda: method.check_parts_act(config, family),
    )


def _check_on_meta(method: Method, config: Any, backbone: str, img_size: int, workdir: Path) -> None:
    """The method applies to the backbone as configured (built on the meta device): a config that
    does not fit fails here, before any data is prepared. Not checked again once passed."""
    _once(
        workdir,
        ["meta build", method.name, identity_dict(config), backbone, img_size],
        lambda: built_trainable_params(method, config, backbone, img_size=img_size),
    )


def _once(workdir: Path, what: list[Any], check: Callable[[], Any]) -> None:
    """Run ``check`` unless it passed before for ``what`` with the same bench, torch and peft.

    Passes are remembered in ``<workdir>/cache/checks/`` (one small file each), so a resumed sweep
    plans without building its models again; a failing check raises and is not remembered."""
    import peft

    key = canonical_json([*what, __version__, torch.__version__, peft.__version__])
    passed = workdir / "cache" / "checks" / hashlib.sha256(key.encode()).hexdigest()[:24]
    if passed.is_file():
        return
    check()
    passed.parent.mkdir(parents=True, exist_ok=True)
    passed.write_text(key + "\n")


@dataclass
class TaskData:
    """A task's decoded splits for one stage, and the eval list (its paths go into the predictions)."""

    train: SplitData
    evaluate: SplitData
    eval_entries: list[ListEntry]
    eval_key: tuple[Any, ...] = ()  # (task, eval list): few-shot splits of a task share their eval split


def task_data(task: ResolvedTask, plan: Any, cache_dir: Path, memo: dict[Any, TaskData]) -> TaskData:
    """The task's splits, decoded once and kept for the task's runs (one task in memory at a time).

    A few-shot task's (shots, split seed) variants each have their own training split and share
    the evaluation split, which stays in memory from one variant to the next.
    """
    if task.cache_id not in memo:
        previous = next(iter(memo.values()), None)
        memo.clear()
        interp = plan.preset.interpolation
        size, crop = plan.preset.decode(training=True)
        train = SplitData(*load_split(task.train_entries(plan.stage), size, interp, cache_dir, crop=crop))
        eval_key = (task.name, task.list_names(plan.stage)[1])
        if previous is not None and previous.eval_key == eval_key:
            evaluate, eval_entries = previous.evaluate, previous.eval_entries
        else:
            eval_entries = task.eval_entries(plan.stage)
            size, crop = plan.preset.decode(training=False)
            evaluate = SplitData(*load_split(eval_entries, size, interp, cache_dir, crop=crop))
        memo[task.cache_id] = TaskData(train, evaluate, eval_entries, eval_key)
    return memo[task.cache_id]


def run_tags(spec: RunSpec, **extra: str) -> dict[str, str]:
    """The ``bench.*`` tags every run carries, final or tuning trial."""
    return {
        schema.RUN_KEY: spec.run_key,
        schema.SUITE: spec.suite,
        schema.TASK: spec.task,
        schema.METHOD: spec.method,
        schema.METHOD_BASE: method_base(spec.method),
        schema.SEED: str(spec.seed),
        schema.STAGE: spec.stage,
        schema.PRESET: spec.preset,
        schema.BUDGET: str(spec.budget) if spec.budget is not None else "none",
        schema.SHOTS: str(spec.extra.get("shots", "none")),  # reports group few-shot results by this
        schema.SPLIT_SEED: str(spec.extra.get("split_seed", "none")),
        schema.DEDUPE: str(spec.extra["dedupe"]).lower() if "dedupe" in spec.extra else "none",
        schema.BACKBONE: spec.backbone,
        schema.CHECKPOINT: spec.checkpoint,
        schema.DATA_FINGERPRINT: spec.data,
        schema.VERSION: __version__,
        **extra,
    }


def run_record(run: PlannedRun, stage: Stage, experiment: str, parent: str | None, stale: list) -> RunRecord:
    """How a planned run appears in MLflow: its identity as tags, its full config as params.

    Where and how it was computed (``bench.device``, ``bench.train_step``, the Ray node) is added
    when a worker starts it; ``bench.git_sha`` here, in a git checkout.
    """
    spec = run.spec
    provenance = {}
    if (revision := git_revision()) is not None:
        provenance[schema.GIT_SHA] = revision
    if (command := command_line()) is not None:
        provenance[schema.COMMAND] = command
    tags = run_tags(spec, **{schema.GROUP: run.task.task.group, **provenance})
    params = flatten_params(
        {
            "method": spec.method_config,
            "hp": spec.hparams,
            "backbone": spec.backbone,
            "checkpoint": spec.checkpoint,
            "seed": spec.seed,
            "num_classes": spec.num_classes,
            "data.fingerprint": spec.data,
            "data.task_dir": str(run.task.directory),
            "extra": spec.extra,
        }
    )
    train_list, eval_list = run.task.list_names(stage)
    resolved = {
        "run_key": spec.run_key,
        "spec": spec.to_dict(),
        "data": {
            "task_dir": str(run.task.directory),
            "train_list": train_list,
            "eval_list": eval_list,
            "image_root": str(run.task.image_root or run.task.directory),
        },
    }
    return RunRecord(experiment, parent, spec.label, {**tags, **run.tags}, params, resolved, stale)


class TaskLoader:
    """The splits of a plan's runs for the engine, decoded here once per task from the image cache.

    One task stays in memory at a time (the sources hand out runs task by task). A task whose data
    cannot be read is decoded once: its other runs fail with the same error at once, instead of
    each decoding every image up to the bad one again.
    """

    def __init__(self, plan: Any, cache_dir: Path):
        self.plan, self.cache_dir = plan, cache_dir
        self._memo: dict[Any, TaskData] = {}
        self._unreadable: dict[Any, str] = {}  # task cache id -> its data error

    def __call__(self, run: PlannedRun) -> JobData:
        key = run.task.cache_id
        if key in self._unreadable:
            raise BenchError(self._unreadable[key])
        try:
            data = task_data(run.task, self.plan, self.cache_dir, self._memo)
        except BenchError as exc:
            self._unreadable[key] = str(exc)
            raise
        return JobData(data.train, data.evaluate, data.eval_entries, run.task.directory)


def record_source(client: Any, previous: Any, run: PlannedRun) -> None:
    """Record on a reused run that it also serves ``run``'s hyperparameter source.

    The source is not part of the run key: a ``paper`` or ``tuned`` run whose resolved setup equals
    a finished ``preset`` run would train identically, so that run is reused, and its
    ``bench.hparams_sources`` lists both, for a report to select it under either. The tags naming
    the study trial or the recipe are added where the run has none.
    """
    tags = previous.data.tags
    sources = run_sources(tags)
    if run.source in sources:
        return
    client.set_tag(previous.info.run_id, schema.HPARAMS_SOURCES, ",".join([*sources, run.source]))
    for key in (schema.STUDY, schema.TRIAL, schema.RECIPE):
        if key in run.tags and key not in tags:
            client.set_tag(previous.info.run_id, key, run.tags[key])


class SweepSource:
    """The runs of a sweep as engine jobs, in plan order: finished ones reused, the rest trained.

    Each run is trained under its claim (:mod:`bench.claims`), so sweeps started at once on one
    work directory divide the runs: a run another process is training is put back and taken up
    again when that process lets it go, then reused if it ended FINISHED or trained here if not.
    """

    def __init__(
        self,
        plan: SweepPlan,
        recorder: Recorder,
        parent: str,
        cache_dir: Path,
        reporter: Reporter,
        claims: RunClaims,
        compile_cache: Path | None = None,
    ):
        self.plan, self.parent, self.cache_dir, self.reporter = plan, parent, cache_dir, reporter
        self.compile_cache = None if compile_cache is None else str(compile_cache)
        self.tracker = recorder.tracker
        self.claims = claims
        records = self.tracker.runs_by_key(plan.experiment, [run.spec.run_key for run in plan.runs])
        self.outcomes: dict[int, RunOutcome] = {}
        self.pending: deque[int] = deque()
        self.elsewhere: deque[int] = deque()  # runs another process held the claim of, to try again
        for index, run in enumerate(plan.runs):
            previous = self.tracker.finished(records.get(run.spec.run_key, []))
            if previous is None:
                self.pending.append(index)
            else:
                self.outcomes[index] = self._reused(run, previous)
        self._load = TaskLoader(plan, cache_dir)

    def _reused(self, run: PlannedRun, previous: Any) -> RunOutcome:
        record_source(self.tracker.client, previous, run)  # it now serves this sweep's source too
        acc = previous.data.metrics.get(schema.eval_metric(self.plan.stage.name))
        return RunOutcome(run.spec, "skipped", previous.info.run_id, acc)

    @property
    def todo(self) -> int:
        return len(self.pending)

    def report_reused(self) -> None:
        for index, outcome in sorted(self.outcomes.items()):
            self.reporter.run_done(self.plan.runs[index], outcome)

    def next_job(self) -> Job | None:
        if not self.pending:
            self.pending, self.elsewhere = self.elsewhere, self.pending
        for _ in range(len(self.pending)):
            index = self.pending.popleft()
            run = self.plan.runs[index]
            key = run.spec.run_key
            if not self.claims.claim(key):
                self.elsewhere.append(index)
                continue
            # read again under the claim: another process may have finished the run since planning,
            # and what it left RUNNING is stale now that nobody holds the claim
            records = self.tracker.runs_of_key(self.plan.experiment, key)
            previous = self.tracker.finished(records)
            if previous is not None:
                self.claims.release(key)
                self.outcomes[index] = self._reused(run, previous)
                self.reporter.run_done(run, self.outcomes[index])
                continue
            record = run_record(run, self.plan.stage, self.plan.experiment, self.parent, records)
            work = Work(
                index, run, self.plan.stage, self.plan.weights, self.plan.request.system_metrics, self.compile_cache
            )
            return Job(work, record)
        return None

    def idle(self) -> bool:
        """Nothing of ours is in flight: wait a moment if other processes hold runs still to do."""
        if not self.elsewhere and not self.pending:
            return False
        time.sleep(CLAIM_POLL_S)
        return True

    def load(self, job: Job) -> JobData:
        return self._load(job.run)

    def on_epoch(self, job: Job, metrics: Any) -> bool:
        return False

    def on_end(self, job: Job, outcome: RunOutcome, end: Any) -> tuple[dict[str, str], dict[str, float]]:
        self.outcomes[job.id] = outcome
        return {}, {}

    def ended(self, job: Job) -> None:
        """The run's end is recorded: another process may take it up now."""
        self.claims.release(job.run.spec.run_key)

    def results(self) -> list[RunOutcome]:
        """Every run's outcome, in plan order (runs never started after a Ctrl-C are left out)."""
        return [self.outcomes[i] for i in sorted(self.outcomes)]


def record_sweep_inputs(recorder: Recorder, parent: str, plan: SweepPlan) -> None:
    """What a sweep's parent run keeps beside its runs: the cells left out as unreachable, and the
    resolved sweep file of ``--config``. Set on every (re)opening: a rerun of the same runs may come
    from a file or a budget list that differs only in those."""
    if plan.request.budgets:
        recorder.client.set_tag(parent, schema.UNREACHABLE, unreachable_tag(plan.unreachable))
    if plan.request.sweep_file is not None:
        recorder.tracker.log_text(parent, plan.request.sweep_file, schema.SWEEP_FILE)


def run_sweep(
    plan: SweepPlan, recorder: Recorder, executor: Executor, workdir: Path, reporter: Reporter | None = None
) -> list[RunOutcome]:
    """Train every planned run without a FINISHED record on ``executor``; return every run's outcome.

    A run that fails is recorded FAILED and the sweep goes on; the sweep's parent run ends FAILED
    if any run failed (the CLI then exits non-zero and lists them), KILLED on Ctrl-C.
    """
    reporter = reporter or SilentReporter()
    parent = recorder.open_parent(
        plan.experiment,
        plan.sweep_key,
        tags={
            schema.SUITE: plan.suite.name,
            schema.STAGE: plan.stage.name,
            schema.METHODS: ",".join(plan.request.methods),
            schema.SEEDS: ",".join(map(str, plan.request.seeds)),
            schema.SHOTS: ",".join(map(str, sorted({r.spec.extra["shots"] for r in plan.runs})))
            if plan.suite.fewshot is not None
            else "none",
            schema.SWEEP_NAME: f"sweep/{plan.suite.name}/{plan.stage.name}/{plan.sweep_key[:8]}",
            schema.BUDGETS: ",".join(map(str, plan.request.budgets)) or "none",
        },
        params=flatten_params(
            {
                "backbone": plan.backbone,
                "checkpoint": plan.weights.checkpoint_id,
                "hp": plan.preset.to_dict(),
                "runs": len(plan.runs),
            }
        ),
    )
    record_sweep_inputs(recorder, parent, plan)
    claims = RunClaims(workdir / "claims")
    source = SweepSource(plan, recorder, parent, workdir / "cache" / "images", reporter, claims, cache_folder(workdir))
    reporter.sweep_started(plan, source.todo)
    source.report_reused()
    status = "FAILED"
    started = time.perf_counter()
    try:
        drive(source, executor, recorder, reporter)
        status = "FAILED" if any(o.status == "failed" for o in source.outcomes.values()) else "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        claims.release_all()
        outcomes = source.results()
        cost = efficiency.measure(outcomes, time.perf_counter() - started, executor.capacity)
        recorder.close_parent(
            parent,
            status,
            {
                "trained": sum(o.status == "trained" for o in outcomes),
                "reused": sum(o.status == "skipped" for o in outcomes),
                "failed": sum(o.status == "failed" for o in outcomes),
            },
            cost.metrics() if cost.runs else None,
        )
        reporter.sweep_done(cost)
    return outcomes
