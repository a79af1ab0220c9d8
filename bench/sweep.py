"""A sweep: every (task, method, seed) of a request, skipping what is already finished.

Planning (:func:`plan_sweep`) validates everything a user can get wrong (names, data root, list
files, checkpoint, backbone) before any training starts. Running (:func:`run_sweep`) trains each
run that has no FINISHED record, one at a time, logging each to MLflow as it completes, so an
error or a kill loses at most the run in progress.
"""

from __future__ import annotations

import hashlib
import math
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

import methods
import suites
from methods.base import Method, config_to_dict, make_config
from suites.base import Preset, Stage, Suite
from suites.lists import ListEntry
from suites.resolve import ResolvedTask

from . import __version__
from .backbone import Weights, backbone_spec, build_backbone, check_weights, normalization, resolve_weights
from .budget import check_structure, choose_for_budget
from .cache import load_split
from .errors import BenchError
from .inspect import built_trainable_params
from .provenance import git_revision
from .spec import RunSpec, canonical_json
from .tracking import Tracker, csv_text, experiment_name, flatten_params
from .train import EpochMetrics, RunResult, SplitData, default_compile_mode, train_run


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
    budget: int | None = None  # trainable parameters (head excluded) every sizeable method is fitted to
    hparams: str = "published"  # or "tuned": the best trial of each (task, method, budget) study
    storage: str | None = None  # Optuna storage for --hparams tuned
    shots: list[int] | None = None  # few-shot suites: the shot counts (default: all the suite has)
    split_seeds: list[int] | None = None  # few-shot: the training lists' seeds (default: the training seed)
    dedupe: bool = False  # few-shot: drop repeated lines of the training lists (default: keep, as published)
    preset_overrides: dict[str, Any] = field(default_factory=dict)  # --set preset.FIELD=VALUE

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
    """Tags marking runs trained with --set preset.…: reports keep them apart from published runs."""
    if not overrides:
        return {}
    text = ",".join(f"{k}={getattr(preset, k)}" for k in sorted(overrides))
    return {"bench.hparams": "override", "bench.preset_overrides": text}


@dataclass
class PlannedRun:
    spec: RunSpec
    task: ResolvedTask
    method: Method
    config: Any
    preset: Preset  # the suite's preset, with tuned hyperparameters applied where asked for
    tags: dict[str, str] = field(default_factory=dict)


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

    @property
    def experiment(self) -> str:
        return experiment_name(self.suite.name)

    @property
    def sweep_key(self) -> str:
        keys = sorted(r.spec.run_key for r in self.runs)
        return hashlib.sha256(canonical_json(keys).encode()).hexdigest()[:24]


@dataclass
class RunOutcome:
    spec: RunSpec
    status: str  # "trained" | "skipped"
    run_id: str
    eval_acc: float | None


class Reporter(Protocol):
    """What the sweep tells its caller (the CLI draws a progress bar from it)."""

    def sweep_started(self, plan: SweepPlan, todo: int) -> None: ...
    def run_started(self, run: PlannedRun, epochs: int) -> None: ...
    def epoch_done(self, run: PlannedRun, metrics: EpochMetrics) -> None: ...
    def run_done(self, run: PlannedRun, outcome: RunOutcome) -> None: ...


class SilentReporter:
    def sweep_started(self, plan: SweepPlan, todo: int) -> None:
        pass

    def run_started(self, run: PlannedRun, epochs: int) -> None:
        pass

    def epoch_done(self, run: PlannedRun, metrics: EpochMetrics) -> None:
        pass

    def run_done(self, run: PlannedRun, outcome: RunOutcome) -> None:
        pass


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
    warmup = round(preset.warmup_epochs * epochs / preset.epochs)
    return preset.with_overrides(epochs=epochs, warmup_epochs=min(warmup, epochs - 1))


def plan_sweep(request: SweepRequest, workdir: Path) -> SweepPlan:
    suite = suites.get_suite(request.suite)
    stage = suites.get_stage(request.stage)
    if not request.methods:
        raise BenchError("no methods given; pass e.g. --methods lora,linear (see `bench methods list`)")
    if not request.seeds:
        raise BenchError("no seeds given; pass e.g. --seeds 3")
    device = resolve_device(request.device)
    stray = sorted(set(request.method_overrides) - set(request.methods))
    if stray:
        raise BenchError(
            f"--set names method(s) {', '.join(stray)} that are not in --methods; add them or drop the --set"
        )
    if request.hparams not in ("published", "tuned"):
        raise BenchError(f"--hparams {request.hparams!r} must be published or tuned")
    _check_fewshot_options(suite, request)

    data_root = request.data_root
    if suite.prepare is not None:
        data_root = data_root or workdir / "data" / suite.name
        suite.prepare(data_root)
    tasks = suites.resolve_tasks(suite, data_root, request.tasks, stage)

    preset = apply_preset_overrides(resolve_preset(suite, request.epochs), request.preset_overrides)
    if request.preset_overrides and request.hparams == "tuned":
        raise BenchError(
            "--set preset.… and --hparams tuned both set the hyperparameters; drop one "
            "(tune with the preset override instead: `bench tune --set preset.…`)"
        )
    override_tags = preset_override_tags(request.preset_overrides, preset)
    backbone = request.backbone or suite.default_backbone
    spec_bb = backbone_spec(backbone, preset.img_size)  # fails early on an unknown or non-ViT name
    chosen = [_sized_method(name, request, spec_bb) for name in request.methods]
    for method, config, _ in chosen:  # a config that does not fit the backbone fails before any training
        built_trainable_params(method, config, backbone, img_size=preset.img_size)
    weights = resolve_weights(backbone, request.checkpoint, pretrained=suite.backbone_pretrained)
    check_weights(weights, backbone, preset.img_size)

    runs, warnings = [], []
    if request.hparams == "published":
        warnings += [c for m, _, _ in chosen if (c := m.preset_caveat(preset.lr)) is not None]
    for task, task_seeds, task_preset in _run_groups(suite, tasks, stage, request, preset, warnings):
        fingerprint = task.fingerprint(stage)
        for method, config, budget in chosen:
            run_preset, run_config, tags = task_preset, config, override_tags
            if request.hparams == "tuned":
                from .tune import TUNE_SEED, tuned_settings

                if TUNE_SEED in request.seeds:
                    raise BenchError(f"seed {TUNE_SEED} trained the tuning trials; final runs need other seeds")
                run_preset, run_config, tags = tuned_settings(
                    request, suite.name, task, method, config, budget, task_preset, backbone, weights
                )
            for seed in task_seeds:
                spec = RunSpec(
                    suite=suite.name,
                    task=task.name,
                    stage=stage.name,
                    method=method.name,
                    method_config=config_to_dict(run_config),
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
    return SweepPlan(request, suite, stage, preset, backbone, weights, device, runs, Path(data_root), warnings)


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

    Few-shot runs train with batch min(preset batch, training list size): the published recipe's
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


def _sized_method(name: str, request: SweepRequest, spec_bb) -> tuple[Method, Any, int | None]:
    """The method with its config: published (plus --set), or fitted to --budget."""
    method = methods.get_method(name)
    overrides = request.method_overrides.get(name)
    if request.budget is None or not method.budget_adjustable:
        # a reference keeps its size under --budget: its runs serve every budget's sweep
        config = make_config(method, overrides)
        check_structure(method, spec_bb, config)
        return method, config, None
    fitted = choose_for_budget(method, spec_bb, request.budget).config
    if not overrides:
        return method, fitted, request.budget
    # --set may change how the fitted method computes (e.g. karst.mode), never its size
    config = make_config(method, {**config_to_dict(fitted), **overrides})
    if method.count(spec_bb, config) != method.count(spec_bb, fitted):
        raise BenchError(
            f"--set {name}.… and --budget both size method {name!r}; drop one of them "
            f"(a --set that keeps the size, such as karst.mode, works with --budget)"
        )
    return method, config, request.budget


def run_sweep(
    plan: SweepPlan,
    tracker: Tracker,
    workdir: Path,
    reporter: Reporter | None = None,
    devices: list[Any] | None = None,
) -> list[RunOutcome]:
    """Train every planned run without a FINISHED record. ``devices`` (slots from
    :func:`bench.executor.parse_gpus`) trains one run per device in worker processes at once;
    without it, the runs train one after another in this process."""
    reporter = reporter or SilentReporter()
    experiment = plan.experiment
    records = tracker.runs_by_key(experiment)  # one query for the whole sweep
    done = {r.spec.run_key: tracker.finished(records.get(r.spec.run_key, [])) for r in plan.runs}
    todo = sum(1 for r in plan.runs if done[r.spec.run_key] is None)
    reporter.sweep_started(plan, todo)
    parent = tracker.open_sweep(
        experiment,
        plan.sweep_key,
        tags={
            "bench.suite": plan.suite.name,
            "bench.stage": plan.stage.name,
            "bench.methods": ",".join(plan.request.methods),
            "bench.seeds": ",".join(map(str, plan.request.seeds)),
            "bench.shots": ",".join(map(str, sorted({r.spec.extra["shots"] for r in plan.runs})))
            if plan.suite.fewshot is not None
            else "none",
            "bench.sweep_name": f"sweep/{plan.suite.name}/{plan.stage.name}/{plan.sweep_key[:8]}",
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
    outcomes: list[RunOutcome] = []
    cache_dir = workdir / "cache" / "images"
    data_memo: dict[str, TaskData] = {}
    status = "FAILED"
    try:
        if devices:  # the same records, in worker processes; this process stays the only MLflow writer
            from .executor import run_parallel

            run_parallel(plan, tracker, parent, records, done, reporter, devices, cache_dir, outcomes)
            status = "FINISHED"
            return outcomes
        for run in plan.runs:
            previous = done[run.spec.run_key]
            if previous is not None:
                acc = previous.data.metrics.get(eval_metric(plan.stage))
                outcome = RunOutcome(run.spec, "skipped", previous.info.run_id, acc)
            else:
                tracker.close_interrupted(records.get(run.spec.run_key, []))
                data = task_data(run.task, plan, cache_dir, data_memo)
                outcome = _train_and_log(run, plan, tracker, parent, data, reporter)
            outcomes.append(outcome)
            reporter.run_done(run, outcome)
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        tracker.close_sweep(
            parent,
            status,
            {
                "trained": sum(o.status == "trained" for o in outcomes),
                "reused": sum(o.status == "skipped" for o in outcomes),
            },
        )
    return outcomes


def eval_metric(stage: Stage) -> str:
    return "test/acc" if stage.name == "final" else "val/acc"


@dataclass
class TaskData:
    """A task's decoded splits for one stage, and the eval list (its paths go into the predictions)."""

    train: SplitData
    evaluate: SplitData
    eval_entries: list[ListEntry]
    eval_key: tuple[Any, ...] = ()  # (task, eval list): few-shot splits of a task share their eval split


def task_data(task: ResolvedTask, plan: SweepPlan, cache_dir: Path, memo: dict[Any, TaskData]) -> TaskData:
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
        "bench.run_key": spec.run_key,
        "bench.suite": spec.suite,
        "bench.task": spec.task,
        "bench.method": spec.method,
        "bench.seed": str(spec.seed),
        "bench.stage": spec.stage,
        "bench.preset": spec.preset,
        "bench.budget": str(spec.budget) if spec.budget is not None else "none",
        "bench.shots": str(spec.extra.get("shots", "none")),  # reports group few-shot results by this
        "bench.split_seed": str(spec.extra.get("split_seed", "none")),
        "bench.dedupe": str(spec.extra["dedupe"]).lower() if "dedupe" in spec.extra else "none",
        "bench.backbone": spec.backbone,
        "bench.checkpoint": spec.checkpoint,
        "bench.data_fingerprint": spec.data,
        "bench.version": __version__,
        **extra,
    }


def run_record(run: PlannedRun, device: str) -> tuple[dict[str, str], dict[str, str]]:
    """The tags and params a run's record is created with, in this process or by the executor.

    Besides the run's identity they say how it was computed, for readers of its cost figures:
    ``bench.device``, ``bench.train_step`` (the training step's compile mode on that device) and,
    in a git checkout, ``bench.git_sha``.
    """
    spec = run.spec
    provenance = {"bench.device": device, "bench.train_step": default_compile_mode(torch.device(device))}
    if (revision := git_revision()) is not None:
        provenance["bench.git_sha"] = revision
    tags = run_tags(spec, **{"bench.group": run.task.task.group, **provenance})
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
    return {**tags, **run.tags}, params


def epoch_metrics(m: EpochMetrics) -> dict[str, float | None]:
    """What every epoch logs (``val/acc`` only in the tune stage)."""
    return {"train/loss": m.train_loss, "train/acc": m.train_acc, "lr": m.lr, "val/acc": m.eval_acc}


def _train_and_log(
    run: PlannedRun,
    plan: SweepPlan,
    tracker: Tracker,
    parent: str,
    data: TaskData,
    reporter: Reporter,
) -> RunOutcome:
    spec = run.spec
    tags, params = run_record(run, str(plan.device))
    with tracker.child_run(plan.experiment, parent, spec.label, tags, params) as run_id:
        reporter.run_started(run, run.preset.epochs)

        def on_epoch(m: EpochMetrics) -> None:
            reporter.epoch_done(run, m)

        result = execute_run(run, plan, tracker, run_id, data, on_epoch)
        _log_result(tracker, run_id, run, plan, result, data.eval_entries)
    return RunOutcome(spec, "trained", run_id, result.eval_acc)


def execute_run(
    run: PlannedRun,
    plan: SweepPlan,
    tracker: Tracker,
    run_id: str,
    data: TaskData,
    on_epoch=None,
) -> RunResult:
    """Build the backbone, apply the method, train, logging the resolved config and every epoch."""
    spec = run.spec
    model, mean, std = build_model(run, plan.weights)
    tracker.log_json(run_id, _resolved_config(spec, run, plan, mean, std), "config/resolved.json")

    def log_epoch(m: EpochMetrics) -> None:
        tracker.log_metrics(run_id, epoch_metrics(m), step=m.epoch)
        if on_epoch is not None:
            on_epoch(m)

    return train_run(
        model,
        run.method,
        run.preset,
        plan.stage,
        data.train,
        data.evaluate,
        seed=spec.seed,
        device=plan.device,
        mean=mean,
        std=std,
        on_epoch=log_epoch,
    )


def build_model(run: PlannedRun, weights: Weights) -> tuple[torch.nn.Module, tuple[float, ...], tuple[float, ...]]:
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


def _resolved_config(spec: RunSpec, run: PlannedRun, plan: SweepPlan, mean, std) -> dict[str, Any]:
    return {
        "run_key": spec.run_key,
        "spec": spec.to_dict(),
        "normalization": {"mean": list(mean), "std": list(std)},
        "data": {
            "task_dir": str(run.task.directory),
            "train_list": run.task.list_names(plan.stage)[0],
            "eval_list": run.task.list_names(plan.stage)[1],
            "image_root": str(run.task.image_root or run.task.directory),
        },
        "environment": {
            "bench": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "device": str(plan.device),
            "gpu": torch.cuda.get_device_name(plan.device) if plan.device.type == "cuda" else None,
        },
    }


def _log_result(
    tracker: Tracker, run_id: str, run: PlannedRun, plan: SweepPlan, result: RunResult, entries: list[ListEntry]
) -> None:
    from safetensors.torch import save

    metrics = {
        "params/trainable": result.trainable_params,
        "params/head": result.head_params,
        "throughput/train_img_s": result.train_images_per_s,
        "throughput/infer_img_s": result.infer_images_per_s,
        "time/train_s": result.train_seconds,
        "mem/peak_mb": result.peak_memory_mb,
    }
    if math.isfinite(result.steady_train_images_per_s):  # runs of two or more epochs
        metrics["throughput/train_img_s_steady"] = result.steady_train_images_per_s
    if plan.stage.name == "final":
        metrics["test/acc"] = result.eval_acc  # scored once, after the last epoch
    tracker.log_metrics(run_id, metrics, step=run.preset.epochs)
    rows = [
        [i, str(e.path.relative_to(run.task.directory)), e.label, int(p)]
        for i, (e, p) in enumerate(zip(entries, result.predictions.tolist(), strict=True))
    ]
    tracker.log_text(run_id, csv_text(["index", "path", "label", "prediction"], rows), "eval/predictions.csv")
    state = {k: v.contiguous() for k, v in result.trainable_state.items()}
    tracker.log_bytes(run_id, save(state), "checkpoints/trainable.safetensors")
    tracker.client.set_tag(run_id, "bench.merged_eval", str(result.merged).lower())
