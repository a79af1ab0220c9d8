"""The ``bench`` command line (typer). Every listing takes ``--json``; every user error is one line.

Heavy imports (torch, timm, mlflow) happen inside the commands, so ``bench --help`` is quick.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import traceback
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .errors import BenchError
from .method_entries import split_methods
from .seeds import parse_seeds


def examples(*commands: str) -> str:
    """A help epilog listing example commands, one per line (typer keeps lines ending in two spaces);
    escaped, so a method entry's brackets (karst[rescale=none]) are not read as rich markup."""
    return "Examples:  \n" + "  \n".join(escape(c) for c in commands)


app = typer.Typer(
    help="Benchmark parameter-efficient fine-tuning methods for vision transformers.",
    epilog=examples(
        "bench run --suite demo --methods lora,linear --seeds 3",
        "bench report --suite demo --reference linear --out report",
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
methods_app = typer.Typer(
    help="List, describe and check PEFT methods.",
    epilog=examples("bench methods list", "bench methods info karst --backbone vit_small_patch16_224"),
    no_args_is_help=True,
)
suites_app = typer.Typer(
    help="List and describe benchmark suites.",
    epilog=examples("bench suites list", "bench suites info vtab1k"),
    no_args_is_help=True,
)
data_app = typer.Typer(
    help="Verify and fetch suite data.",
    epilog=examples("bench data verify --suite vtab1k --data-root ~/data/vtab-1k"),
    no_args_is_help=True,
)
analyze_app = typer.Typer(
    help="Diagnostics of finished runs.",
    epilog=examples("bench analyze shift karst/digits/s0"),
    no_args_is_help=True,
)
app.add_typer(methods_app, name="methods")
app.add_typer(suites_app, name="suites")
app.add_typer(data_app, name="data")
app.add_typer(analyze_app, name="analyze")

# emoji off: a message or label quoting ":x:" or ":smile:" (a file name, a method label) is text
out = Console(emoji=False)
err = Console(stderr=True, emoji=False)


class State:
    workdir: Path = Path("runs")
    tracking_uri: str | None = None  # the store a command opened (for a full disk's message)


def _print_version(value: bool) -> None:
    if value:
        from . import __version__

        out.print(f"bench {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _global(
    workdir: Path = typer.Option(
        Path("runs"),
        "--workdir",
        envvar="BENCH_WORKDIR",
        help="Holds the MLflow store, caches and the Optuna store.",
    ),
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print bench's version and exit."
    ),
) -> None:
    State.workdir = workdir


def _split(value: str | None) -> list[str] | None:
    if value is None:
        return None
    items = [v.strip() for v in value.split(",") if v.strip()]
    return items or None


def parse_int_list(value: str | None, flag: str, example: str) -> list[int] | None:
    """``"1,2,4"`` -> [1, 2, 4]: distinct non-negative integers, for --shots and --split-seeds."""
    if value is None:
        return None
    try:
        items = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        items = []
    if not items or len(set(items)) != len(items) or any(i < 0 for i in items):
        raise BenchError(
            f"{flag} {value!r} must be a comma-separated list of distinct non-negative integers, e.g. {example}"
        )
    return items


def _tracker(tracking_uri: str | None):
    from .diskfull import quiet_store_errors
    from .tracking import Tracker, default_tracking_uri

    quiet_store_errors()
    workdir = State.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    State.tracking_uri = tracking_uri
    if tracking_uri:
        return Tracker(tracking_uri)
    return Tracker(default_tracking_uri(workdir), artifact_root=workdir / "artifacts")


def _existing_tracker(tracking_uri: str | None):
    """The store of a command that only reads runs: one that does not exist is an error, not
    created empty (nor is the work directory)."""
    from .tracking import default_tracking_uri, sqlite_path

    path = sqlite_path(tracking_uri or default_tracking_uri(State.workdir))
    if path is not None and not path.exists():
        where = f"--tracking-uri {tracking_uri}" if tracking_uri else f"work directory {State.workdir}"
        raise BenchError(
            f"no tracking store at {path}: nothing has run in {where}; run `bench run` there first, "
            "or pass the --workdir (or --tracking-uri) that holds the runs"
        )
    return _tracker(tracking_uri)


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def _method_overrides(items: list[str]) -> dict[str, dict[str, str]]:
    """``--set lora.rank=4`` -> ``{"lora": {"rank": "4"}}``."""
    from methods.base import parse_set_options

    grouped: dict[str, list[str]] = {}
    for item in items:
        method, dot, rest = item.partition(".")
        if not dot or "=" not in rest:
            raise BenchError(f"--set {item!r} must be METHOD.FIELD=VALUE or preset.FIELD=VALUE, e.g. --set lora.rank=4")
        grouped.setdefault(method, []).append(rest)
    return {m: parse_set_options(v) for m, v in grouped.items()}


# ---------------------------------------------------------------------------------------
# bench run / bench runs

# Options that `run` and `tune` share, declared once.
DataRootOpt = Annotated[Path | None, typer.Option(help="Folder holding the suite's task folders.")]
BackboneOpt = Annotated[str | None, typer.Option(help="timm ViT or Swin name (default: the suite's).")]
CheckpointOpt = Annotated[Path | None, typer.Option(help="Local weights (.safetensors, .pth, .npz): runs offline.")]
WeightsLabelOpt = Annotated[
    str | None,
    typer.Option(
        help='A human name for the weights, recorded on every run and shown in reports, e.g. "ViT-S/14, DINOv2 init".'
    ),
]
EpochsOpt = Annotated[int | None, typer.Option(help="Override the preset's epochs (warm-up scales with it).")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu or cuda.")]
TrackingOpt = Annotated[str | None, typer.Option(help="MLflow tracking URI (default: sqlite in the workdir).")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override METHOD.FIELD=VALUE, or preset.FIELD=VALUE (lr, weight_decay, …); repeatable."),
]
FieldSetOpt = Annotated[list[str] | None, typer.Option("--set", help="Config override FIELD=VALUE, repeatable.")]
TasksOpt = Annotated[str | None, typer.Option(help="Comma-separated task names (default: all of the suite's).")]
ExecutorOpt = Annotated[
    str,
    typer.Option(
        help="Where runs train: inline (this process), ray (Ray workers: this host's GPUs, --workers CPU workers, "
        "or --ray-address), or auto (ray with several GPUs or any Ray option, else inline)."
    ),
]
RayAddressOpt = Annotated[
    str | None, typer.Option(help="Join this Ray cluster (HOST:PORT of `ray start --head`) instead of starting one.")
]
GpusOpt = Annotated[
    str | None, typer.Option(help="GPUs of this host for a local Ray cluster: all, a count (2) or indices (0,1).")
]
RunsPerGpuOpt = Annotated[
    int | None, typer.Option(help="Runs packed on each GPU at once (Ray fractional GPUs); default 1.")
]
WorkersOpt = Annotated[
    int | None,
    typer.Option(help="Ray: N CPU worker runs on this host; with --ray-address, at most N runs at once."),
]
ObjectStoreOpt = Annotated[
    int | None, typer.Option(hidden=True, help="Object store size (MiB) of a local Ray cluster.")
]
DatasetOpt = Annotated[
    str | None,
    typer.Option(help="Suite hf: a Hugging Face Hub dataset (beans) or a folder written by save_to_disk."),
]
ImageColumnOpt = Annotated[
    str | None, typer.Option(help="Suite hf: the image column (default: the one Image feature).")
]
LabelColumnOpt = Annotated[
    str | None, typer.Option(help="Suite hf: the label column (default: the one ClassLabel feature).")
]
SystemMetricsOpt = Annotated[
    bool,
    typer.Option(
        "--system-metrics/--no-system-metrics",
        help="Log GPU utilisation and memory, CPU and RAM per epoch (MLflow's system metrics, sampled where the run trains).",
    ),
]
BudgetOpt = Annotated[
    str | None,
    typer.Option(
        help="Fit every sizeable method to this many trainable params, head excluded (0.3M), or to each of a list "
        "(0.1M,0.3M,1M)."
    ),
]


ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="A sweep file (YAML) holding these options; options given on the command line replace its values.",
    ),
]


@app.command(
    epilog=examples(
        "bench run --suite demo --methods lora,linear --seeds 3",
        "bench run --config configs/demo_budget_curve.yaml --epochs 3",
    )
)
def run(
    ctx: typer.Context,
    config: ConfigOpt = None,
    suite: str | None = typer.Option(None, help="Suite name (see `bench suites list`); required, here or in --config."),
    methods: str | None = typer.Option(
        None,
        help="Comma-separated methods, e.g. lora,linear; a variant karst[rescale=none]; a composition "
        "karst+bitfit; required, here or in --config.",
    ),
    seeds: str = typer.Option("3", help="Number of seeds (3 -> 0,1,2) or an explicit list (0,5,7)."),
    tasks: TasksOpt = None,
    stage: str = typer.Option("final", help="final: train800val200 -> test once; tune: train800 -> val200."),
    data_root: DataRootOpt = None,
    dataset: DatasetOpt = None,
    image_column: ImageColumnOpt = None,
    label_column: LabelColumnOpt = None,
    backbone: BackboneOpt = None,
    checkpoint: CheckpointOpt = None,
    weights_label: WeightsLabelOpt = None,
    epochs: EpochsOpt = None,
    device: DeviceOpt = "auto",
    tracking_uri: TrackingOpt = None,
    set_: SetOpt = None,
    budget: BudgetOpt = None,
    hparams: str = typer.Option(
        "preset",
        help="preset (the suite's shared preset), paper (each method's own recipe; paper,preset falls back to the "
        "preset for methods without one), or tuned (each study's best trial, `bench tune`).",
    ),
    storage: str | None = typer.Option(None, help="Optuna storage URL for --hparams tuned (default: the workdir's)."),
    shots: str | None = typer.Option(None, help="Few-shot suites: shot counts, e.g. 1,2,4,8,16 (default: all)."),
    split_seeds: str | None = typer.Option(
        None, help="Few-shot suites: training-list seeds, each run with every --seeds (default: split seed = seed)."
    ),
    dedupe: bool = typer.Option(False, "--dedupe", help="Few-shot: drop repeated lines of the training lists."),
    executor: ExecutorOpt = "auto",
    ray_address: RayAddressOpt = None,
    gpus: GpusOpt = None,
    runs_per_gpu: RunsPerGpuOpt = None,
    workers: WorkersOpt = None,
    ray_object_store_mb: ObjectStoreOpt = None,
    system_metrics: SystemMetricsOpt = True,
) -> None:
    """Train every (task, method, budget, seed) not yet finished, log each to MLflow, print a summary.

    A run that fails is recorded FAILED and the others go on; the command then exits 1 and lists
    the failed runs. Rerunning the same command (or the same --config file) trains only what is
    not FINISHED. With several budgets (--budget 0.1M,0.3M,1M), a method that cannot reach one is
    left out at that budget, with a warning.
    """
    from .engine import Recorder
    from .sweep import plan_sweep, run_sweep

    opts, sources = _command_options(ctx, "run")
    request = _sweep_request(opts, "run", sources)
    plan = plan_sweep(request, State.workdir)
    for warning in plan.warnings:
        err.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False, soft_wrap=True)
    _announce_sweep_file(request, f"the sweep's parent run, {plan.sweep_key[:8]}", plan.sweep_key)
    recorder = Recorder(_tracker(opts["tracking_uri"]))
    with _executor(_executor_options(opts), opts["device"]) as pool:
        from .progress import RichReporter

        with RichReporter(err, slots=pool.capacity) as reporter:
            outcomes = run_sweep(plan, recorder, pool, State.workdir, reporter)
    _print_summary(outcomes, plan.stage.name)
    _exit_on_failures(outcomes, "run")


# Options a sweep file sets and the command line replaces; `--set` entries merge key by key.
_EXPLICIT = ("COMMANDLINE", "ENVIRONMENT", "PROMPT")


def _command_options(ctx: typer.Context, command: str) -> tuple[dict[str, Any], list[str]]:
    """The command's option values: ``--config``'s file under the options given on the command
    line, and where they came from (for the resolved file's header)."""
    opts = dict(ctx.params)
    given = {name for name in opts if _given(ctx, name)}
    on_command_line = set(given)
    sources = ["the command line"]
    if opts.get("config") is not None:
        from .sweepfile import file_options, find_sweep_file, load_sweep_file

        sweep_file = load_sweep_file(opts["config"])
        found = find_sweep_file(opts["config"])  # a shipped config may be found in the checkout
        sources = [str(found), *(["command-line options"] if given - {"config"} else [])]
        for name, value in file_options(sweep_file, command).items():
            if name == "set_":  # the command line's --set of the same key comes later, so it wins
                opts["set_"] = [*value, *(opts.get("set_") or [])]
            elif name not in given:
                opts[name] = value
            given.add(name)
    opts["_given"] = given
    for name, flag in (("suite", "--suite"), ("methods", "--methods")):
        if name in opts and opts[name] is None:
            raise BenchError(f"Missing option '{flag}': pass {flag}, or --config FILE with a {name}: key")
    if command == "tune":
        _effort_options(opts, on_command_line)
    return opts, sources


def _effort_options(opts: dict[str, Any], on_command_line: set[str]) -> None:
    """``bench tune``'s effort is --trials or --budget-epochs: one given on the command line replaces
    the other from a sweep file; neither is an error (naming both)."""
    effort = ("trials", "budget_epochs")
    if all(opts[k] is not None for k in effort):
        for name in effort:
            if name in on_command_line and not on_command_line.issuperset(effort):
                other = effort[1 - effort.index(name)]
                opts[other] = None
                opts["_given"].discard(other)
    if all(opts[k] is None for k in effort):
        raise BenchError(
            "Missing option '--trials': pass --trials N (N full trials per study) or --budget-epochs E, "
            "or --config FILE with a trials: or budget_epochs: key"
        )


def _given(ctx: typer.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source.name in _EXPLICIT


def _sweep_request(opts: dict[str, Any], command: str, sources: list[str]):
    """The sweep a ``run`` or ``tune`` command asks for, from its (merged) option values."""
    from .studies import default_storage
    from .sweep import SweepRequest

    request = SweepRequest(
        suite=opts["suite"],
        methods=split_methods(opts["methods"]) or [],
        seeds=parse_seeds(opts["seeds"]) if command == "run" else [0],
        tasks=_split(opts["tasks"]),
        stage=opts.get("stage", "final"),
        data_root=opts["data_root"],
        backbone=opts["backbone"],
        checkpoint=opts["checkpoint"],
        epochs=opts["epochs"],
        device=_executor_device(opts["device"], opts["gpus"], opts["runs_per_gpu"]),
        method_overrides=_method_overrides(opts["set_"] or []),
        budgets=_budgets(opts["budget"]),
        hparams=opts.get("hparams", "preset"),
        storage=opts["storage"] or default_storage(State.workdir),
        shots=parse_int_list(opts.get("shots"), "--shots", "1,2,4,8,16"),
        split_seeds=parse_int_list(opts.get("split_seeds"), "--split-seeds", "0,1,2"),
        dedupe=opts.get("dedupe", False),
        weights_label=_weights_label(opts["weights_label"]),
        dataset=opts["dataset"],
        image_column=opts["image_column"],
        label_column=opts["label_column"],
        system_metrics=opts["system_metrics"],
    )
    if opts.get("config") is not None:
        from .sweepfile import resolved_file

        run_flags = ("trials", "budget_epochs", "scheduler", "storage", "device", "tracking_uri", "executor")
        run_flags += ("ray_address", "gpus")
        run_flags += ("runs_per_gpu", "workers", "system_metrics")
        extra = {k: opts[k] for k in run_flags if k in opts["_given"] and k in opts}
        request.sweep_file = resolved_file(request, command, extra, sources)
    return request


def _announce_sweep_file(request, where: str, key: str | None = None) -> None:
    """Keep a copy of the resolved sweep file in the work directory, named by the sweep's key (or
    its own hash), and say where both copies are."""
    if request.sweep_file is None:
        return
    import hashlib

    key = key or hashlib.sha256(request.sweep_file.encode()).hexdigest()
    folder = State.workdir / "sweeps"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{key[:12]}.yaml"
    path.write_text(request.sweep_file)
    err.print(f"resolved sweep file: {escape(str(path))} (also stored on {where})", highlight=False, soft_wrap=True)


def _executor_options(opts: dict[str, Any]):
    from .engine import ExecutorOptions

    return ExecutorOptions(
        opts["executor"],
        opts["ray_address"],
        opts["gpus"],
        opts["runs_per_gpu"],
        opts["workers"],
        opts["ray_object_store_mb"],
    )


def _executor_device(device: str, gpus: str | None, runs_per_gpu: int | None) -> str:
    """The plan's device: ``--gpus`` and ``--runs-per-gpu`` imply CUDA (and ``--gpus`` is checked
    against this host's GPUs before anything is planned)."""
    if gpus is not None:
        from .engine.executors import parse_gpus

        parse_gpus(gpus)
    if (gpus is not None or runs_per_gpu is not None) and device == "auto":
        return "cuda"
    return device


@contextmanager
def _executor(options, device: str):
    """The executor for a command, started here and always stopped (a local Ray cluster too)."""
    from .engine import make_executor

    pool = make_executor(options, device)
    if hasattr(pool, "describe"):
        err.print(pool.describe(), highlight=False)
    graceful = False
    try:
        yield pool
        graceful = True
    finally:
        pool.close(graceful)


def _exit_on_failures(outcomes, command: str) -> None:
    """When runs failed: list each with its one-line reason, then one ``error:`` line naming the
    first. Exit 2 when every failure was the user's input (bad data, bad settings), else 1;
    finished runs are kept either way."""
    failed = [o for o in outcomes if o.status == "failed"]
    if not failed:
        return
    for o in failed:
        err.print(f"[red]failed:[/] {escape(o.spec.label)}: {escape(str(o.error))}", highlight=False, soft_wrap=True)
    first = failed[0]
    err.print(
        f"[red]error:[/] {len(failed)} of {len(outcomes)} run(s) failed, each recorded FAILED in MLflow; "
        f"the first, {first.spec.label}: {first.error} — fix the cause and rerun the same `bench {command}`: "
        "finished runs are reused",
        highlight=False,
        soft_wrap=True,
    )
    raise typer.Exit(2 if all(o.user_error for o in failed) else 1)


def _weights_label(text: str | None) -> str | None:
    """The --weights-label, stripped; a blank or multi-line label is refused (it is one table cell)."""
    if text is None:
        return None
    label = text.strip()
    if not label or "\n" in label:
        raise BenchError(f'--weights-label {text!r} must be one non-empty line, e.g. --weights-label "ViT-B/16, MAE"')
    return label


def _budget(text: str | None) -> int | None:
    from .budget import parse_budget

    return parse_budget(text) if text is not None else None


def _budgets(text: str | None) -> list[int]:
    """--budget: one budget (0.3M) or several (0.1M,0.3M,1M); none without the option."""
    from .budget import parse_budgets

    return parse_budgets(text) if text is not None else []


@app.command(
    epilog=examples(
        "bench tune --suite demo --methods karst,lora --budget 8k,16k --trials 4",
        "bench tune --suite demo --methods lora --scheduler asha --budget-epochs 200",
    )
)
def tune(
    ctx: typer.Context,
    config: ConfigOpt = None,
    suite: str | None = typer.Option(None, help="Suite name; required, here or in --config."),
    methods: str | None = typer.Option(
        None, help="Comma-separated methods; variants as karst[rescale=none]; required, here or in --config."
    ),
    trials: int | None = typer.Option(
        None,
        help="The effort per study, in full trials: N x epochs trial-epochs, the same for every method (with a "
        "scheduler, pruned trials leave room for more). This or --budget-epochs, here or in --config.",
    ),
    budget_epochs: int | None = typer.Option(
        None, help="The effort per study in trial-epochs (a pruned trial is charged the epochs it trained)."
    ),
    scheduler: str = typer.Option(
        "hyperband",
        help="How trials stop early, epochs being the resource: none, asha (successive halving) or hyperband.",
    ),
    budget: BudgetOpt = None,
    tasks: TasksOpt = None,
    storage: str | None = typer.Option(None, help="Optuna storage URL (default: sqlite in the workdir's optuna.db)."),
    data_root: DataRootOpt = None,
    dataset: DatasetOpt = None,
    image_column: ImageColumnOpt = None,
    label_column: LabelColumnOpt = None,
    backbone: BackboneOpt = None,
    checkpoint: CheckpointOpt = None,
    weights_label: WeightsLabelOpt = None,
    epochs: EpochsOpt = None,
    device: DeviceOpt = "auto",
    tracking_uri: TrackingOpt = None,
    set_: SetOpt = None,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    executor: ExecutorOpt = "auto",
    ray_address: RayAddressOpt = None,
    gpus: GpusOpt = None,
    runs_per_gpu: RunsPerGpuOpt = None,
    workers: WorkersOpt = None,
    ray_object_store_mb: ObjectStoreOpt = None,
    system_metrics: SystemMetricsOpt = True,
) -> None:
    """Tune every (task, method, budget) on train800 -> val200 with the same effort in trial-epochs.

    The trials of one study run one after another; with room for several runs (Ray), several
    studies tune at once, each exactly as it would alone. Rerunning tops each study up to the
    effort asked for.
    """
    from .engine import Recorder
    from .studies import default_storage
    from .tune import run_tuning

    opts, sources = _command_options(ctx, "tune")
    request = _sweep_request(opts, "tune", sources)
    url = opts["storage"] or default_storage(State.workdir)
    _announce_sweep_file(request, "each study's parent run")
    recorder = Recorder(_tracker(opts["tracking_uri"]))

    def warn(text: str) -> None:
        err.print(f"[yellow]warning:[/] {escape(text)}", highlight=False, soft_wrap=True)

    with _executor(_executor_options(opts), opts["device"]) as pool:
        from .progress import RichReporter, trial_line

        def trial_done(trial) -> None:
            err.print(trial_line(trial), highlight=False, soft_wrap=True)

        with RichReporter(err, slots=pool.capacity) as reporter:
            summaries = run_tuning(
                request,
                opts["trials"],
                State.workdir,
                recorder,
                url,
                pool,
                reporter,
                warn,
                trial_done,
                budget_epochs=opts["budget_epochs"],
                scheduler=opts["scheduler"],
            )
    dashboard = dashboard_command(url)
    if as_json:
        _print_json([s.__dict__ for s in summaries])
        err.print(f"browse the studies: {dashboard}", highlight=False, soft_wrap=True)
        return
    table = Table(title=f"tuning studies in {url}")
    # the study name is what users look up (in the dashboard, in --hparams tuned): never cut it
    table.add_column("study", no_wrap=True)
    table.add_column("trials", overflow="fold")
    table.add_column("trial-epochs", justify="right")
    table.add_column("train s", justify="right")
    table.add_column("best val acc", justify="right")
    table.add_column("best trial", justify="right")
    table.add_column("best params", overflow="fold")
    for s in summaries:
        table.add_row(
            escape(s.name),
            ", ".join(f"{k} {v}" for k, v in sorted(s.trials.items())),
            f"{s.epochs_used} of {s.budget_epochs}",
            f"{s.train_seconds:,.1f}",
            f"{100 * s.best_value:.2f}" if s.best_value is not None else "–",
            str(s.best_trial),
            ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in s.best_params.items()),
        )
    out.print(table)
    out.print(f"browse the studies (pip install optuna-dashboard): {dashboard}", highlight=False, soft_wrap=True)


def dashboard_command(storage: str) -> str:
    """The ``optuna-dashboard`` command line that opens ``storage``."""
    import shlex

    return shlex.join(["optuna-dashboard", storage])


def _print_summary(outcomes, stage: str) -> None:
    import pandas as pd

    from reports.summary import summarize

    df = pd.DataFrame(
        [
            {"task": _task_label(o.spec), "method": o.spec.method_label, "seed": o.spec.seed, "acc": o.eval_acc}
            for o in outcomes
        ]
    ).dropna()
    table = Table(title=f"{'test' if stage == 'final' else 'val'} accuracy over seeds (%)")
    for col in ("task", "method", "seeds", "mean", "sd", "±95% CI", "min", "max"):
        table.add_column(col, justify="left" if col in ("task", "method") else "right")
    for row in summarize(df).itertuples():
        table.add_row(
            escape(row.task),
            escape(row.method),
            str(row.n),
            f"{100 * row.mean:.2f}",
            _pct(row.sd),
            _pct(row.ci95),
            f"{100 * row.min:.2f}",
            f"{100 * row.max:.2f}",
        )
    out.print(table)
    trained = sum(o.status == "trained" for o in outcomes)
    reused = sum(o.status == "skipped" for o in outcomes)
    failed = sum(o.status == "failed" for o in outcomes)
    out.print(
        f"{trained} run(s) trained, {reused} already finished and reused" + (f", {failed} failed." if failed else ".")
    )


def _task_label(spec) -> str:
    """The task, with its shot count for few-shot runs (seeds and split seeds are averaged over)."""
    return f"{spec.task} {spec.extra['shots']}-shot" if "shots" in spec.extra else spec.task


def _pct(x: float) -> str:
    return "–" if x != x else f"{100 * x:.2f}"


@app.command("runs", epilog=examples("bench runs --suite demo", "bench runs --suite vtab1k --json"))
def runs_cmd(
    suite: str = typer.Option(..., help="Suite whose runs to list."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    tracking_uri: TrackingOpt = None,
) -> None:
    """One row per run in tracking: key, method, task, seed, stage, epochs, status, accuracy, trainable
    params, and where a wide terminal allows, the run's warm-up and steady training time (seconds)."""
    from . import schema
    from .tracking import experiment_name

    tracker = _tracker(tracking_uri)
    rows = []
    for r in tracker.search(experiment_name(suite)):
        t, m = r.data.tags, r.data.metrics
        rows.append(
            {
                "run_key": t.get(schema.RUN_KEY),
                "method": t.get(schema.METHOD),
                "task": t.get(schema.TASK),
                "seed": int(t.get(schema.SEED, -1)),
                "stage": t.get(schema.STAGE),
                "shots": t.get(schema.SHOTS, "none"),
                "split_seed": t.get(schema.SPLIT_SEED, "none"),
                "status": r.info.status,
                "test_acc": m.get(schema.TEST_ACC),
                "val_acc": m.get(schema.VAL_ACC),
                "trainable_params": int(m[schema.PARAMS_TRAINABLE]) if schema.PARAMS_TRAINABLE in m else None,
                "epochs": int(r.data.params["hp.epochs"]) if "hp.epochs" in r.data.params else None,
                "train_s": m.get(schema.TRAIN_SECONDS),
                "warmup_s": m.get(schema.WARMUP_SECONDS),
                "steady_s": m.get(schema.STEADY_SECONDS),
                "run_id": r.info.run_id,
            }
        )
    rows.sort(key=lambda x: (x["task"] or "", x["method"] or "", x["seed"], x["status"]))
    if as_json:
        _print_json(rows)
        return
    out.print(runs_table(rows, suite, out.width))


def runs_table(rows: list[dict[str, Any]], suite: str, width: int) -> Table:
    """``bench runs``'s table for a terminal ``width`` columns wide.

    A value every row shares (the stage, the epochs) goes into the title instead of a column, and
    below 100 columns the trainable-parameter count is left out (it is in ``--json``), so that
    method names, what users read the table for, keep one line each; a task name folds only when
    the terminal has no room left for it.
    """
    from rich import box
    from rich.text import Text

    title = [f"runs of suite {suite} ({len(rows)})"]
    shared = {}
    for key, label in (("stage", "stage {}"), ("epochs", "{} epochs")):
        values = {x[key] for x in rows}
        if len(values) == 1 and None not in values:
            shared[key] = True
            title.append(label.format(values.pop()))
    columns: list[tuple[str, Any]] = [
        ("key", lambda x: (x["run_key"] or "")[:8]),
        ("method", lambda x: escape(x["method"] or "")),
        ("task", lambda x: escape(x["task"] or "")),
        ("seed", lambda x: str(x["seed"])),
    ]
    if "stage" not in shared:
        columns.append(("stage", lambda x: x["stage"] or ""))
    if "epochs" not in shared:
        columns.append(("epochs", lambda x: str(x["epochs"]) if x["epochs"] is not None else "–"))
    columns.append(("status", lambda x: x["status"]))
    columns.append(("test acc", lambda x: f"{100 * x['test_acc']:.2f}" if x["test_acc"] is not None else "–"))
    if width >= 100:
        columns.append(
            ("trainable", lambda x: f"{x['trainable_params']:,}" if x["trainable_params"] is not None else "–")
        )
    if width >= 120:  # where the time of a run went: warm-up (building, compiling) and steady training
        for name, key in (("warm-up s", "warmup_s"), ("steady s", "steady_s")):
            columns.append((name, lambda x, key=key: f"{x[key]:.1f}" if x.get(key) is not None else "–"))
    table = Table(title=" · ".join(title), box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    longest = {name: max([len(name), *(len(Text.from_markup(cell(x))) for x in rows)]) for name, cell in columns}
    # the names get what the other columns leave; the method its whole name first, the task the rest
    # (two columns between cells and one at each edge)
    free = width - sum(w for name, w in longest.items() if name not in ("method", "task")) - 2 * len(columns)
    method_width = max(6, min(longest["method"], free - min(longest["task"], 8)))
    task_width = max(4, min(longest["task"], free - method_width))
    for name, _ in columns:
        if name in ("method", "task"):
            table.add_column(name, width=method_width if name == "method" else task_width, overflow="fold")
        else:
            numeric = name in ("test acc", "trainable", "epochs", "warm-up s", "steady s")
            table.add_column(name, no_wrap=True, justify="right" if numeric else "left")
    for x in rows:
        table.add_row(*(cell(x) for _, cell in columns))
    return table


def _run_selection(
    suite: str, stage: str, methods: str | None, budget: str | None, hparams: str | None
) -> dict[str, Any]:
    """The finished runs ``bench report`` and ``bench analyze shift --suite`` select, as
    :func:`reports.runs.load_runs` keywords; each bad option refused in one line."""
    import suites

    suites.get_suite(suite)  # an unknown suite name fails with the list of suites
    if stage not in ("final", "tune"):
        raise BenchError(f"--stage {stage!r} must be final or tune")
    from .sources import DEPRECATED, DEPRECATION_NOTE, REPORT_SOURCES

    if hparams in DEPRECATED:
        err.print(f"[yellow]warning:[/] {escape(DEPRECATION_NOTE)}", highlight=False, soft_wrap=True)
        hparams = DEPRECATED[hparams]
    if hparams not in (None, *REPORT_SOURCES):
        raise BenchError(f"--hparams {hparams!r} must be one of {', '.join(REPORT_SOURCES)}")
    selected_budget: int | str | None = None
    if budget is not None:
        selected_budget = "published" if budget.strip().lower() == "published" else _budget(budget)
    return {"methods": split_methods(methods), "budget": selected_budget, "hparams": hparams}


@app.command(
    "report",
    epilog=examples(
        "bench report --suite demo --reference linear --out report",
        "bench report --suite vtab1k --budget 0.3M --reference lora --out paper",
    ),
)
def report_cmd(
    suite: str = typer.Option(..., help="Suite whose finished runs to report."),
    methods: str | None = typer.Option(None, help="Comma-separated methods (default: every method with runs)."),
    reference: str | None = typer.Option(None, help="Method every other is compared with (default: the first)."),
    budget: str | None = typer.Option(
        None, help="Report the runs fitted to this budget (0.3M), or 'published'; references join every budget."
    ),
    stage: str = typer.Option("final", help="final (test accuracy) or tune (validation accuracy)."),
    hparams: str | None = typer.Option(
        None,
        help="Report the runs of one hyperparameter source: preset, paper, tuned or override (--set preset.…); "
        "default: the one source every run serves, else refuse a mix.",
    ),
    mix_hparams: bool = typer.Option(
        False,
        "--mix-hparams",
        help="Rank rows trained with different hyperparameter sources in one table (each row names its source).",
    ),
    format_: str = typer.Option("md,latex,csv", "--format", help="Any of md, latex, csv, comma-separated."),
    out_dir: Path = typer.Option(Path("report"), "--out", help="Folder for the report files and figures."),
    tracking_uri: TrackingOpt = None,
    resample_tasks: bool = typer.Option(
        False,
        "--resample-tasks",
        help="Aggregate intervals treat the tasks as a sample of similar tasks (t over tasks within each group); needs 10 or more tasks and 2 in every group.",
    ),
    latex_width: str = typer.Option(
        "fit", help="LaTeX tables: fit (shrink to the line when wider), natural, or wide (table*, two-column papers)."
    ),
    results_csv: Path | None = typer.Option(
        None, help="Rebuild from an earlier report's results.csv instead of the MLflow store."
    ),
    weights_label: str | None = typer.Option(
        None,
        "--weights-label",
        help="A name for the weights of runs that recorded none (runs made before bench run --weights-label); "
        "runs with a label keep theirs.",
    ),
) -> None:
    """Tables (Markdown, LaTeX, CSV) and figures with CIs and significance tests from finished runs."""
    from reports.report import build_report, write_report
    from reports.runs import load_runs, runs_from_results_csv

    selection = _run_selection(suite, stage, methods, budget, hparams)
    selection["mix_hparams"] = mix_hparams
    formats = tuple(_split(format_) or [])
    if results_csv is not None:
        runs = runs_from_results_csv(results_csv, suite, stage, **selection)
    else:
        runs = load_runs(_existing_tracker(tracking_uri), suite, stage, **selection)
    if weights_label is not None:
        label = _weights_label(weights_label)
        runs.frame.loc[runs.frame["weights_label"] == "", "weights_label"] = label
    report = build_report(runs, reference, resample_tasks=resample_tasks)
    files = write_report(report, out_dir, formats, latex_width=latex_width)
    for line in runs.missing:
        err.print(f"[yellow]missing:[/] {line}")
    out.print(f"wrote {len(files)} files to {out_dir}: " + ", ".join(p.name for p in files))


# ---------------------------------------------------------------------------------------
# bench export


@app.command(
    "export",
    # the help's examples, in the form every command's help ends with
    epilog="Examples:  \nbench export lora/digits/s0 --format peft  \nbench export karst/digits/s0 --verify --out exports/karst",
)
def export_cmd(
    run: str = typer.Argument(
        ..., help="Run key (or its first 8+ characters), label (lora/digits/s0) or MLflow run id."
    ),
    format_: str | None = typer.Option(
        None,
        "--format",
        help="peft (methods that run through peft), merged (mergeable methods: a plain timm state dict) or bench "
        "(any method: trainable tensors + config); default merged where the method merges, else bench.",
    ),
    out_dir: Path | None = typer.Option(None, "--out", help="Folder to write (default: exports/<label>-<format>)."),
    checkpoint: CheckpointOpt = None,
    verify: bool = typer.Option(
        False, "--verify", help="Load the export as its model card says and compare with the run's stored predictions."
    ),
    push_to_hub: str | None = typer.Option(
        None, "--push-to-hub", help="Also upload the folder to this Hub repo (OWNER/NAME)."
    ),
    tracking_uri: TrackingOpt = None,
) -> None:
    """Take a finished run out as a peft adapter, a merged timm checkpoint or bench's own format, with a model card."""
    from . import export, schema
    from .method_entries import resolve_entry

    tracker = _existing_tracker(tracking_uri)
    found = export.find_run(tracker.client, run)
    label = found.info.run_name or found.info.run_id
    fmt = format_ or ("merged" if resolve_entry(found.data.tags.get(schema.METHOD, "")).mergeable else "bench")
    folder = out_dir or Path("exports") / f"{label.replace('/', '-')}-{fmt}"
    result = export.export_run(tracker.client, run, folder, format_, checkpoint, verify)
    out.print(f"exported {escape(result.run.label)} as {result.format} to {result.folder}: {', '.join(result.files)}")
    if result.verified is not None:
        same, total = result.verified
        out.print(f"{same} of {total} test predictions equal the run's stored ones")
        if same != total:
            raise BenchError(
                f"the export of {result.run.label} reproduces {same} of {total} stored predictions; "
                "see the model card's note on precision (runs scored under bf16 on CUDA differ slightly in fp32)"
            )
    if push_to_hub:
        url = export.push_to_hub(result.folder, push_to_hub)
        out.print(f"pushed to {url}")


# ---------------------------------------------------------------------------------------
# bench analyze


@analyze_app.command(
    "shift",
    epilog=examples(
        "bench analyze shift karst/digits/s0 --against lora/digits/s0 --images 256",
        "bench analyze shift --suite demo --methods 'karst,karst[rescale=none]'",
    ),
)
def analyze_shift_cmd(
    run: str | None = typer.Argument(
        None,
        help="Run key (or its first 8+ characters), label (karst/digits/s0) or MLflow run id; "
        "leave out with --suite to summarise many runs.",
    ),
    against: str | None = typer.Option(
        None, "--against", help="A second run of the same task and backbone to compare with (e.g. an ablation)."
    ),
    suite: str | None = typer.Option(
        None, help="Summarise the finished runs of this suite (selected as `bench report` selects them)."
    ),
    methods: str | None = typer.Option(
        None, help="With --suite: comma-separated method entries (default: every method with runs)."
    ),
    reference: str | None = typer.Option(
        None, help="With --suite: the method every other is compared with (default: the first)."
    ),
    budget: str | None = typer.Option(None, help="With --suite: the runs fitted to this budget, or 'published'."),
    hparams: str | None = typer.Option(None, help="With --suite: preset, paper, tuned or override."),
    stage: str = typer.Option("final", help="With --suite: final (test split) or tune (validation split)."),
    images: int = typer.Option(512, help="Evaluation images to use, evenly spaced over the split (0: all)."),
    tokens_per_image: int = typer.Option(
        8, help="Token positions per image sampled for W1, evenly spaced (0: all tokens)."
    ),
    batch_size: int = typer.Option(64, help="Images per forward pass."),
    device: DeviceOpt = "auto",
    out_dir: Path | None = typer.Option(
        None,
        "--out",
        help="Folder to write (default: analysis/shift-<label>, or analysis/shift-<suite> with --suite, in the workdir).",
    ),
    checkpoint: CheckpointOpt = None,
    data_root: Path | None = typer.Option(
        None, help="Folder holding the run's task folder, when the images have moved since training."
    ),
    tracking_uri: TrackingOpt = None,
) -> None:
    """Per-block feature shift against the frozen backbone: of one run (and a second), or of a suite's
    runs summarised per method with intervals over seeds and tasks."""
    from .shift import ShiftSettings

    settings = ShiftSettings(images, tokens_per_image, batch_size, device, checkpoint, data_root)
    if run is not None:
        given = [f"--{n}" for n, v in (("suite", suite), ("methods", methods), ("reference", reference),
                                       ("budget", budget), ("hparams", hparams)) if v is not None]  # fmt: skip
        if given:
            raise BenchError(
                f"{given[0]} selects many runs but RUN {run!r} names one; drop RUN to summarise a suite, "
                f"or drop {given[0]}"
            )
        _analyze_one_run(run, against, out_dir, tracking_uri, settings)
        return
    if suite is None:
        raise BenchError("name a RUN to analyze, or pass --suite to summarise a suite's runs")
    if against is not None:
        raise BenchError("--against compares two runs; with --suite every method is compared with --reference instead")
    selection = _run_selection(suite, stage, methods, budget, hparams)
    _analyze_suite(suite, stage, selection, reference, out_dir, tracking_uri, settings)


def _analyze_one_run(run: str, against: str | None, out_dir: Path | None, tracking_uri: str | None, settings) -> None:
    from .shift import analyze_shift, summary_table

    result = analyze_shift(
        _existing_tracker(tracking_uri), run, against=against, out=out_dir, workdir=State.workdir, settings=settings
    )
    out.print(summary_table(result))
    out.print(
        f"wrote {', '.join(result.files)} to {result.folder}; logged to run {result.run.label} "
        f"under {result.artifact_dir}/"
    )


def _analyze_suite(suite, stage, selection, reference, out_dir, tracking_uri, settings) -> None:
    from .shift_runs import analyze_shift_runs, summary_table

    result = analyze_shift_runs(
        _existing_tracker(tracking_uri),
        suite,
        stage=stage,
        selection=selection,
        reference=reference,
        out=out_dir,
        workdir=State.workdir,
        settings=settings,
        progress=lambda line: err.print(escape(line), highlight=False, soft_wrap=True),
    )
    out.print(summary_table(result))
    for line in result.skipped:
        err.print(f"[yellow]left out:[/] {escape(line)}", soft_wrap=True)
    out.print(
        f"{result.runs_from('computed')} run(s) measured, {result.runs_from('reused')} read back from their "
        f"logged analysis; wrote {', '.join(result.files)} to {result.folder}"
    )


# ---------------------------------------------------------------------------------------
# bench methods


@methods_app.command(
    "list", epilog=examples("bench methods list", "bench methods list --backbone swin_base_patch4_window7_224 --json")
)
def methods_list(
    backbone: str = typer.Option(
        "vit_base_patch16_224.orig_in21k", help="Count each method's default configuration on this timm backbone."
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Every registered method (built-in and from plugins), grouped by how it adapts the backbone."""
    from methods.base import CATEGORIES, available_methods, config_to_dict, make_config
    from methods.recipe import get_recipe

    from .backbone import backbone_spec

    spec = backbone_spec(backbone)
    rows = []
    for name, cls in available_methods().items():
        m = cls()
        config = make_config(m)
        supported = spec.family in cls.families
        recipe = get_recipe(name)
        rows.append(
            {
                "name": name,
                "category": cls.category,
                "paper": cls.paper,
                "paper_recipe": recipe.source if recipe else "",
                "paper_recipe_suites": list(recipe.suites) if recipe else [],
                "published_params": cls.published_params,
                "trainable_params": m.count(spec, config) if supported else None,
                "budget_params": m.budget_count(spec, config) if supported else None,
                "description": cls.description,
                "module": cls.__module__,
                "mergeable": cls.mergeable,
                "identity_at_init": cls.identity_at_init,
                "backbones": list(cls.families),
                "defaults": config_to_dict(config),
            }
        )
    order = {c: i for i, c in enumerate(CATEGORIES)}
    rows.sort(key=lambda r: (order.get(r["category"], len(order)), r["name"]))
    if as_json:
        _print_json(rows)
        return
    for category in dict.fromkeys(r["category"] for r in rows):
        table = Table(title=f"{category} methods (bench default counted on {spec.name})", title_justify="left")
        for col in ("name", "paper", "published (ViT-B/16)", "bench default", "backbones", "merge", "paper recipe"):
            table.add_column(col)
        for r in (r for r in rows if r["category"] == category):
            count = "unsupported" if r["trainable_params"] is None else f"{r['trainable_params']:,}"
            table.add_row(
                r["name"],
                r["paper"] or "baseline",
                r["published_params"] or "—",
                count,
                ", ".join(r["backbones"]),
                "yes" if r["mergeable"] else "no",
                ", ".join(r["paper_recipe_suites"]) or "—",
            )
        out.print(table)
    out.print(
        "published: the paper's VTAB-1K figure as printed; bench default: the exact trainable count, head excluded "
        "(`bench methods info NAME` gives the formula and defaults); paper recipe: the suites with the method's own "
        "training recipe (`bench run --hparams paper`)."
    )


@methods_app.command(
    "info",
    epilog=examples(
        "bench methods info lora --set rank=4 --backbone vit_small_patch16_224",
        "bench methods info karst --backbone swin_base_patch4_window7_224.ms_in22k",
    ),
)
def methods_info(
    name: str = typer.Argument(..., help="Method, variant (karst[kernels=4]) or composition (karst+bitfit)."),
    backbone: str = typer.Option("vit_base_patch16_224.orig_in21k", help="timm ViT or Swin name (never downloads)."),
    img_size: int | None = typer.Option(
        None, help="Input size the runs use (a suite's preset: 224); changes the position embedding's size."
    ),
    set_: FieldSetOpt = None,
    memory: bool = typer.Option(
        False, "--memory", help="Also measure saved activations per image vs LoRA (CPU, seconds)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """A method's config and trainable parameters (head excluded) on a backbone, built without weights."""
    from methods.base import config_to_dict

    from .backbone import backbone_spec
    from .inspect import built_trainable_params

    method, config = _entry_with_set(name, set_)
    spec = backbone_spec(backbone, img_size)
    method.check_backbone(spec)
    info = {
        "method": name,
        "backbone": backbone,
        "backbone_family": spec.family,
        "img_size": img_size or "the backbone's default",
        "config": config_to_dict(config),
        "trainable_params": method.count(spec, config),
        "trainable_params_built": built_trainable_params(method, config, backbone, img_size=img_size),
        # what a --budget charges: the free parameters (BOFT stores full blocks of which only the skew part is free)
        "budget_params": method.budget_count(spec, config),
        "head_params_per_class": spec.feature_dim + 1,
        "backbone_params": spec.backbone_params,
        "mergeable": method.mergeable,
        "identity_at_init": method.identity_at_init,
    }
    if getattr(method, "pooling", None):
        info["pooling"] = method.pooling
    info["paper_recipe"] = _recipe_info(method)
    from .inspect import macs_per_image

    # counted on the meta device: the deployed model (merged where possible) and the training forward
    info["train_macs_per_image"] = macs_per_image(method, config, backbone, img_size=img_size)
    info["macs_per_image"] = (
        macs_per_image(method, config, backbone, merged=True, img_size=img_size)
        if method.mergeable
        else info["train_macs_per_image"]
    )
    info["backbone_macs_per_image"] = macs_per_image(None, None, backbone, img_size=img_size)
    info["macs_ratio"] = round(info["macs_per_image"] / info["backbone_macs_per_image"], 4)
    if memory:
        from .inspect import activation_bytes_per_image

        measured = activation_bytes_per_image(method, config, backbone)
        info["saved_activation_mb_per_image"] = {k: round(v / 2**20, 3) for k, v in measured.items()}
    if as_json:
        _print_json(info)
        return
    table = Table(title=escape(f"{method.name} on {backbone}"), show_header=False)
    for k, v in info.items():
        table.add_row(k, f"{v:,}" if isinstance(v, int) and not isinstance(v, bool) else json.dumps(v))
    out.print(table)
    out.print("Trainable parameters exclude the head, which adds (feature width + 1) × classes for every method.")


def _recipe_info(method: Any) -> dict[str, Any] | str:
    """Where the method's paper recipe comes from and its suites, or one line saying it has none."""
    from methods.base import Composite
    from methods.composition import base_name
    from methods.recipe import get_recipe

    recipe = None if isinstance(method, Composite) else get_recipe(base_name(method))
    if recipe is None:
        return "none: `bench run --hparams paper` refuses it; --hparams paper,preset trains it with the suite preset"
    suites_ = {
        name: ("per task: " + ", ".join(r.tasks)) if r.per_task else "every task" for name, r in recipe.suites.items()
    }
    return {"source": recipe.source, "suites": suites_, "file": str(recipe.path)}


def _entry_with_set(name: str, set_: list[str] | None) -> tuple[Any, Any]:
    """The method an entry names and its config with ``--set FIELD=VALUE`` (a variant's bracket values win)."""
    from methods.base import Composite, make_config, parse_set_options

    from .method_entries import resolve_entry

    method = resolve_entry(name)
    if set_ and isinstance(method, Composite):
        raise BenchError(
            f"--set does not say which part of {method.name!r} it sets; write the values in brackets, "
            "e.g. lora[rank=4]+bitfit"
        )
    values = {k: v for k, v in parse_set_options(set_ or []).items() if k not in method.config_defaults}
    return method, make_config(method, values)


@methods_app.command(
    "budget",
    epilog=examples(
        "bench methods budget --budget 0.3M",
        "bench methods budget --budget 8k --backbone vit_demo_tiny --methods karst,lora",
    ),
)
def methods_budget(
    budget: str = typer.Option(..., help="Trainable parameters, head excluded: 300000, 300k or 0.3M."),
    backbone: str = typer.Option("vit_base_patch16_224.orig_in21k", help="timm ViT or Swin name (never downloads)."),
    methods: str | None = typer.Option(
        None,
        help="Comma-separated methods, variants (karst[kernels=4]) or compositions (default: every method that "
        "supports the backbone).",
    ),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """The structure every method uses at a budget, and its exact trainable-parameter count."""
    from methods.base import available_methods

    from .backbone import backbone_spec
    from .budget import parse_budget
    from .method_entries import choose_entry_for_budget, resolve_entry

    target = parse_budget(budget)
    spec = backbone_spec(backbone)
    registered = available_methods()
    names = split_methods(methods) or [n for n, cls in registered.items() if spec.family in cls.families]
    rows, unreachable = [], []
    for n in names:
        try:
            rows.append(choose_entry_for_budget(resolve_entry(n), spec, target).to_dict())
        except BenchError:
            if methods:  # a method the user named: its refusal is the answer
                raise
            unreachable.append(n)  # listing every method: one that cannot reach the budget is named below
    unreachable_note = (
        f"Not shown, no configuration within ±5% of {target:,}: {', '.join(unreachable)} "
        "(`bench methods budget --methods NAME` says why)."
    )
    if as_json:
        _print_json(rows)
        if unreachable:
            err.print(unreachable_note)
        return
    table = Table(title=f"budget {target:,} trainable parameters (head excluded) on {backbone}")
    for col in ("method", "structure", "trainable", "deviation"):
        table.add_column(col)
    for r in rows:
        dev = f"{100 * r['deviation']:+.1f}%" if r["adjustable"] else "reference (fixed size)"
        table.add_row(escape(r["method"]), escape(json.dumps(r["config"])), f"{r['trainable_params']:,}", dev)
    out.print(table)
    unsupported = [n for n, cls in registered.items() if spec.family not in cls.families and not methods]
    if unsupported:
        out.print(f"Not shown, they do not support {spec.family} backbones: {', '.join(unsupported)}.")
    if unreachable:
        out.print(unreachable_note)


@methods_app.command(
    "check",
    epilog=examples(
        "bench methods check lora --set rank=4",
        "bench methods check karst --backbone swin_base_patch4_window7_224.ms_in22k",
    ),
)
def methods_check(
    name: str = typer.Argument(..., help="Method, variant (karst[rescale=none]) or composition (karst+bitfit)."),
    backbone: str = typer.Option(
        "vit_base_patch16_224.orig_in21k",
        help="Check on a tiny random backbone of this one's family (a ViT or a Swin); never downloads.",
    ),
    set_: FieldSetOpt = None,
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Run the conformance checks on a tiny ViT (or Swin); exit 0 only if all pass."""
    from methods.conformance import run_checks

    from .backbone import backbone_spec

    method, config = _entry_with_set(name, set_)
    family = backbone_spec(backbone).family
    method.check_backbone(backbone_spec(backbone))
    results = run_checks(method, config, family=family)
    if as_json:
        _print_json([r.__dict__ for r in results])
    else:
        table = Table(title=escape(f"conformance of {method.name} on a tiny {family}"))
        for col in ("check", "result", "detail"):
            table.add_column(col)
        for r in results:
            table.add_row(r.name, {True: "[green]pass", False: "[red]FAIL", None: "skip"}[r.passed], r.detail)
        out.print(table)
    if any(r.passed is False for r in results):
        raise typer.Exit(1)


# ---------------------------------------------------------------------------------------
# bench suites


def _suite_info(suite) -> dict[str, Any]:
    return {
        "name": suite.name,
        "description": suite.description,
        "default_backbone": suite.default_backbone,
        "source": suite.source,
        "needs_data_root": suite.needs_data_root,
        "preset": suite.preset.to_dict(),
        "tasks": [
            {
                "name": t.name,
                "group": t.group,
                "num_classes": t.num_classes,
                "split_sizes": t.split_sizes,
                "aliases": list(t.aliases),
            }
            for t in suite.tasks
        ],
    }


@suites_app.command("list", epilog=examples("bench suites list", "bench suites list --json"))
def suites_list(as_json: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """Every registered suite."""
    import suites

    infos = [_suite_info(s) for s in suites.available_suites().values()]
    if as_json:
        _print_json(infos)
        return
    table = Table(title="suites")
    for col in ("name", "tasks", "default backbone", "description"):
        table.add_column(col)
    for s in infos:
        table.add_row(s["name"], str(len(s["tasks"]) or "from data"), s["default_backbone"], s["description"])
    out.print(table)


@suites_app.command("info", epilog=examples("bench suites info vtab1k", "bench suites info fgvc_fewshot --json"))
def suites_info(
    name: str = typer.Argument(..., help="Suite name."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """A suite's tasks, preset and data source."""
    import suites

    info = _suite_info(suites.get_suite(name))
    if as_json:
        _print_json(info)
        return
    out.print(f"[bold]{info['name']}[/]: {info['description']}")
    out.print(f"data: {info['source']}\ndefault backbone: {info['default_backbone']}")
    out.print("preset: " + ", ".join(f"{k}={v}" for k, v in info["preset"].items()))
    if info["tasks"]:
        table = Table()
        for col in ("task", "group", "classes", "test size", "aliases"):
            table.add_column(col)
        for t in info["tasks"]:
            table.add_row(
                t["name"],
                t["group"],
                str(t["num_classes"]),
                str(t["split_sizes"].get("test.txt", t["split_sizes"].get("test_meta.list", ""))),
                ", ".join(t["aliases"]),
            )
        out.print(table)


# ---------------------------------------------------------------------------------------
# bench data


@data_app.command(
    "verify",
    epilog=examples(
        "bench data verify --suite vtab1k --data-root ~/data/vtab-1k",
        "bench data verify --suite fgvc_fewshot --data-root ~/data/fgvc --dedupe",
    ),
)
def data_verify(
    suite: str = typer.Option(..., help="Suite name."),
    data_root: Path = typer.Option(..., help="Folder holding the suite's task folders."),
    tasks: TasksOpt = None,
    dedupe: bool = typer.Option(False, "--dedupe", help="Few-shot: check as runs with --dedupe see the lists."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Check list files, line counts, labels, class counts and that every image opens."""
    import suites
    from suites.verify import verify_suite

    reports = verify_suite(suites.get_suite(suite), data_root, _split(tasks), dedupe_lines=dedupe)
    if as_json:
        _print_json([r.to_dict() for r in reports])
    else:
        table = Table(title=f"{suite} data under {data_root}")
        for col in ("task", "folder", "lists", "images", "classes", "fingerprint", "problems"):
            table.add_column(col)
        for r in reports:
            table.add_row(
                r.task,
                r.folder.name if r.folder else "–",
                ", ".join(f"{k}:{v}" for k, v in r.lines.items())
                if len(r.lines) <= 4
                else f"{len(r.lines)} lists, {sum(r.lines.values()):,} lines",  # few-shot: 17 lists a task
                str(r.images_checked),
                str(r.num_classes or "–"),
                " ".join(f"{k}:{v[:8]}" for k, v in r.fingerprints.items())
                if len(r.fingerprints) <= 2
                else f"{len(r.fingerprints)} (see --json)",
                ("[green]ok" if r.ok else "[red]" + escape("\n".join(r.problems[:8])))
                + (f"\n[yellow]{len(r.warnings)} warning(s)" if r.warnings else ""),
            )
        out.print(table)
        for r in reports:
            for w in r.warnings:
                out.print(f"[yellow]warning:[/] {r.task}: {w}", highlight=False, soft_wrap=True)
    if not all(r.ok for r in reports):
        raise typer.Exit(1)


@data_app.command(
    "imagefolder",
    epilog=examples("bench data imagefolder ~/data/pets"),
)
def data_imagefolder(
    path: Path = typer.Argument(..., help="An ImageFolder tree: train/<class>/<image> and test/ (or val/) beside it."),
) -> None:
    """Make an ImageFolder tree a task folder of the folder suite: write its NOAH lists in place.

    Classes are train/'s folders in sorted order; test.txt is every image of test/ (else val/);
    train800 and val200 are 1,000 images of train/ drawn class-balanced with seed 0, every fifth
    to val200 (all of train/, 4:1, when it has fewer). The same tree always gives the same lists.
    """
    from suites.imagefolder import convert_imagefolder

    counts = convert_imagefolder(path)
    sizes = ", ".join(f"{name}: {n}" for name, n in counts.items())
    out.print(
        f"wrote the lists of {path} ({sizes}) and classes.txt; run it with --suite folder --data-root {path}",
        highlight=False,
        soft_wrap=True,
    )


@data_app.command(
    "fetch",
    epilog=examples(
        "bench data fetch --suite vtab1k --to ~/data/vtab-1k",
        "bench data fetch --suite fgvc_fewshot --to ~/data/fgvc",
    ),
)
def data_fetch(
    suite: str = typer.Option(..., help="Suite name (vtab1k)."),
    to: Path = typer.Option(..., help="Folder to put the task folders in."),
    revision: str | None = typer.Option(None, help="Hub revision (commit) to pin; default: the one bench pins."),
) -> None:
    """Download a suite's data from its pinned public source, then verify it."""
    from suites.fetch import fetch_notes, fetch_suite

    root = fetch_suite(suite, to, revision)
    for line in fetch_notes(suite):  # what fetch could not download (few-shot images)
        out.print(line, highlight=False, soft_wrap=True)
    out.print(f"data for {suite} is in {root}; check it with `bench data verify --suite {suite} --data-root {root}`")


# ---------------------------------------------------------------------------------------
# bench ui


@app.command(epilog=examples("bench ui", "bench --workdir runs-vtab ui --port 5001"))
def ui(
    port: int = typer.Option(5000, help="Port of the MLflow UI."),
    host: str = typer.Option("127.0.0.1", help="Interface to listen on."),
    tracking_uri: TrackingOpt = None,
) -> None:
    """Start the MLflow UI on the work directory's tracking store."""
    from .tracking import check_sqlite_store, default_tracking_uri, sqlite_path

    uri = tracking_uri or default_tracking_uri(State.workdir)
    path = sqlite_path(uri)
    if path is not None:
        if not path.exists():
            raise BenchError(f"no tracking store at {uri}; run `bench run` first or pass --workdir/--tracking-uri")
        check_sqlite_store(path)  # the server would otherwise migrate a damaged file in place
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--backend-store-uri",
        uri,
        "--host",
        host,
        "--port",
        str(port),
    ]
    err.print(f"MLflow UI on http://{host}:{port} (store {uri}); Ctrl-C stops it")
    raise typer.Exit(_serve(cmd))


def _serve(cmd: list[str]) -> int:
    """Run the server in a process group of its own and stop the whole group on SIGTERM or SIGINT.

    The MLflow server starts uvicorn workers of its own; signalling only the process we started
    would leave them holding the port.
    """
    import signal
    import subprocess

    # MLflow's server imports starlette's deprecated WSGI middleware, and each of its workers warns
    # about it (a StarletteDeprecationWarning, matched by its message): MLflow's business, not the
    # user's. A PYTHONWARNINGS of their own is kept.
    quiet = "ignore::DeprecationWarning,ignore:starlette.middleware.wsgi is deprecated"
    env = {**os.environ, "PYTHONWARNINGS": os.environ.get("PYTHONWARNINGS", quiet)}
    proc = subprocess.Popen(cmd, start_new_session=True, env=env)

    def stop(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return proc.wait()
    except KeyboardInterrupt:
        _stop_group(proc)
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if proc.poll() is None:
            _stop_group(proc)


def _stop_group(proc) -> None:
    """SIGTERM the server's process group, SIGKILL whatever is left of it after a grace period."""
    import signal

    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:  # the group is gone already
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            proc.poll()  # reap the leader, or the group never empties
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


# ---------------------------------------------------------------------------------------
# bench speed


@app.command(
    epilog=examples(
        "bench speed --methods lora,linear --steps 3",
        "bench speed --methods lora,karst,full --out speed.json",
    )
)
def speed(
    methods: str | None = typer.Option(None, help="Comma-separated method names (default: every registered one)."),
    backbone: str | None = typer.Option(
        None,
        help="timm ViT or Swin name, random weights (default: vit_base_patch16_224 on CUDA, vit_demo_tiny on CPU).",
    ),
    batch_size: int | None = typer.Option(None, help="Training batch size (default 64 on CUDA, 8 on CPU)."),
    steps: int | None = typer.Option(None, help="Timed training steps per loop, after as many warm-up steps."),
    img_size: int | None = typer.Option(None, help="Input size (default: the backbone's own)."),
    eval_images: int | None = typer.Option(None, help="Images scored by each loop (default 4096 on CUDA, 64 on CPU)."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    workers: int | None = typer.Option(
        None, help="DataLoader workers of the reference loop (default 4 on CUDA, 0 on CPU)."
    ),
    reference: bool = typer.Option(True, "--reference/--no-reference", help="Also measure the reference-style loop."),
    as_json: bool = typer.Option(False, "--json", help="Machine-readable output."),
    out_file: Path | None = typer.Option(None, "--out", help="Also write the JSON result to this file."),
) -> None:
    """Training and evaluation images/s of bench's run path vs a reference-style loop, in one process."""
    from .speed import SpeedConfig, format_rate, run_speed

    config = SpeedConfig(
        methods=_split(methods) or [],
        backbone=backbone,
        batch_size=batch_size,
        steps=steps,
        img_size=img_size,
        eval_images=eval_images,
        device=device,
        workers=workers,
        reference=reference,
    )
    report = run_speed(config, progress=lambda text: err.print(text, highlight=False))
    if out_file is not None:
        out_file.parent.mkdir(parents=True, exist_ok=True)
        out_file.write_text(json.dumps(report, indent=2) + "\n")
    if as_json:
        _print_json(report)
        return
    table = Table(
        title=f"{report['backbone']} at {report['img_size']} px, batch {report['batch_size']}, "
        f"{report['steps']} timed steps, on {report['device_name']}"
    )
    columns = (
        "method",
        "train img/s",
        "GPU %",
        "ref train",
        "×",
        "eval img/s",
        "ref eval",
        "×",
        "peak MB",
        "ref peak MB",
    )
    for col in columns:
        table.add_column(col, justify="left" if col == "method" else "right")
    for row in report["methods"]:
        ours, ref, ratio = row["ours"], row["reference"] or {}, row.get("ratio") or {}
        table.add_row(
            row["method"],
            format_rate(ours["train_images_per_s"]),
            f"{ours['gpu_utilization']:.0f}" if ours.get("gpu_utilization") is not None else "–",
            format_rate(ref.get("train_images_per_s")),
            f"{ratio['train']:.1f}" if ratio.get("train") else "–",
            format_rate(ours["eval_images_per_s"]) + ("*" if ours["merged_eval"] else ""),
            format_rate(ref.get("eval_images_per_s")),
            f"{ratio['eval']:.1f}" if ratio.get("eval") else "–",
            format_rate(ours["peak_memory_mb"]),
            format_rate(ref.get("peak_memory_mb")),
        )
    out.print(table)
    out.print(
        "ours: bench's train_run (uint8 images on the device, bf16 autocast on CUDA, fused AdamW; * merged eval); "
        "ref: fp32, JPEG files decoded every epoch by a DataLoader, eager, unmerged eval. "
        "GPU %: our training's mean GPU utilisation over the timed epochs (nvidia-ml-py; – without it). "
        "Ratios are ours / ref, measured in this process; the warm-up epoch is excluded from training images/s."
    )


# ---------------------------------------------------------------------------------------
# entry point


def run_cli(args: list[str] | None = None) -> int:
    """Run the CLI; user errors print one line and return 2, bugs write a crash file and return 3.

    Typer runs in standalone mode: it prints usage errors itself and exits through SystemExit.
    """
    from . import interrupts
    from .provenance import set_command

    set_command(list(sys.argv[1:] if args is None else args))
    terminated: list[bool] = []  # SIGTERM came (see _sigterm_stops_like_ctrl_c)
    with interrupts.handling():
        code = _run_command(args, terminated)
        # typer turns Ctrl-C into a silent exit 130; a Ctrl-C swallowed on its way up still counts
        if terminated or interrupts.received() or code == 130:
            return _stopped(bool(terminated))
    return code


def _run_command(args: list[str] | None, terminated: list[bool]) -> int:
    try:
        with _sigterm_stops_like_ctrl_c(terminated):
            click_command()(args=args, prog_name="bench")
        return 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        # typer ends a command stopped by KeyboardInterrupt (Ctrl-C, or SIGTERM below) with exit 130
        return code
    except BenchError as exc:
        one_line = " ".join(str(exc).splitlines())  # a message quoting a file or a library may span lines
        # a message may quote a method entry such as karst[rescale=none]: not rich markup
        err.print(f"[red]error:[/] {escape(one_line)}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        from .diskfull import full_disk_message, full_disk_path

        full = full_disk_path(exc, _store_path())
        if full is not None:  # not a bug, and no room for a crash file either
            err.print(f"[red]error:[/] {escape(full_disk_message(full))}", highlight=False, soft_wrap=True)
            return 2
        crash = _write_crash(exc)
        err.print(
            f"[red]internal error:[/] {escape(f'{type(exc).__name__}: {exc}')}. This is a bug in bench; "
            f"the traceback is in {crash}. Finished runs are kept.",
            highlight=False,
            soft_wrap=True,
        )
        return 3


def _stopped(terminated: bool) -> int:
    """Ctrl-C or SIGTERM: one line, and the exit status a shell gives a process the signal ended."""
    err.print(
        f"{'terminated' if terminated else 'interrupted'}; finished runs are kept, runs in progress will be trained again"
    )
    return 128 + (signal.SIGTERM if terminated else signal.SIGINT)


@contextmanager
def _sigterm_stops_like_ctrl_c(terminated: list[bool]):
    """SIGTERM stops the command as Ctrl-C does: runs in flight recorded KILLED, workers and a local
    Ray cluster stopped. ``terminated`` gets an entry when it came."""

    def terminate(signum: int, frame: Any) -> None:
        from . import interrupts

        terminated.append(True)
        interrupts.on_signal(signum, frame)  # held back while a run's end is written, as Ctrl-C is

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def click_command() -> Any:
    """The click command typer builds from ``app``, its help made literal and flags shown without a
    type column.

    typer renders help through rich, which would read a method entry such as ``karst[rescale=none]``
    as markup and print ``karst``: every command's and option's help is escaped (the epilogs are
    escaped where they are written). typer prints ``<bool>`` beside every flag (``--json``,
    ``--help``); a flag takes no value, so the column is left empty. The CLI reference in the docs is
    generated from this same command.
    """
    command = typer.main.get_command(app)
    _prepare_help(command)
    return command


def _prepare_help(command: Any) -> None:
    if command.help:
        command.help = escape(command.help)
    if command.short_help:
        command.short_help = escape(command.short_help)
    for param in command.params:
        if getattr(param, "help", None):
            param.help = escape(param.help)
        if getattr(param, "is_flag", False):
            param.metavar = ""
    make_help_option = command.get_help_option

    def get_help_option(ctx: Any) -> Any:
        option = make_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option

    command.get_help_option = get_help_option  # type: ignore[method-assign]
    for sub in getattr(command, "commands", {}).values():
        _prepare_help(sub)


def _store_path() -> Path:
    """The tracking store file this command used: its --tracking-uri's sqlite file, else the work
    directory's."""
    from .tracking import default_tracking_uri, sqlite_path

    uri = State.tracking_uri or default_tracking_uri(State.workdir)
    return sqlite_path(uri) or State.workdir


def _write_crash(exc: BaseException) -> Path:
    logs = State.workdir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    path = logs / f"crash-{datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}.txt"
    path.write_text("".join(traceback.format_exception(exc)))
    return path


def main() -> None:
    sys.exit(run_cli())
