"""What a VTAB-1K-shaped sweep costs on one GPU, and what the full tuned comparison would cost.

One process, bench's own planner and run engine (``plan_sweep`` / ``run_sweep``, the inline
executor), a fresh compile cache:

1. **planning**: ``plan_sweep`` for every registered method on the 19 tasks, timed twice (a
   cold plan, then the same plan again as a resumed sweep makes it);
2. **final runs**: the chosen methods on VTAB-1K-shaped tasks (each task's class count and
   train800val200 size; synthetic JPEG images; the test split capped at ``--test-cap`` images),
   ``--seeds`` seeds of ``--epochs`` epochs, ViT-B/16 with random weights (speed does not depend
   on them);
3. **tuning trials**: the tune stage (train800, val200 scored every epoch) once per method;
4. **old settings** (``--legacy-methods``): the same runs as bench trained them before compiled
   steps were shared, emulated by compiling at the first step into an empty cache folder for
   every task (a new class count used to mean a new graph).

Every run's ``time/train_s``, ``time/warmup_s``, ``time/steady_s`` and images/s are read back
from what the recorder logged. MLflow is used where installed, else an in-memory recorder with
the same calls (the per-run cost of writing to MLflow is then taken from ``--record-s``, measured
on a CPU with ``benchmarks/sweep_cost.py --cpu``).

From these figures ``project`` computes the GPU-hours of the full comparison: 19 tasks x every
method x 5 seeds of 100 epochs, plus an equal-effort tuning study per (task, method), under the
old settings (every (task, method) compiles anew; each study runs every trial to the end) and the
new ones (one compilation per method; ASHA over the same trials). Methods not run here take their
steady images/s from ``--speed-table`` (``bench speed`` over every method), scaled by the median
ratio of the methods measured in both.

    # one H100 or H200 (about 9 minutes)
    PYTHONPATH=$PWD python benchmarks/sweep_cost.py --tasks 5 --out benchmarks/results_sweep_cost_h100.json
    # the CPU: the demo's tiny ViT, and the cost of recording a run in MLflow
    PYTHONPATH=$PWD python benchmarks/sweep_cost.py --cpu --methods lora,linear --tasks 2 --seeds 1
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_sweep import MemoryTracker  # noqa: E402  (a benchmark beside this one)

import bench.engine.work as engine_work  # noqa: E402
from bench.compile_cache import Ledger, cache_folder  # noqa: E402
from bench.engine import ExecutorOptions, Recorder, make_executor  # noqa: E402
from bench.speed import synthetic_images, write_jpegs  # noqa: E402
from bench.sweep import SweepRequest, plan_sweep, run_sweep  # noqa: E402
from methods.base import available_methods  # noqa: E402
from suites.base import Suite, Task, available_suites, register_suite  # noqa: E402
from suites.demo import DEMO_PRESET  # noqa: E402
from suites.vtab1k import VTAB1K_PRESET, VTAB1K_TASKS  # noqa: E402

DEFAULT_METHODS = "karst,lora,ssf,vpt_deep,adaptformer,fact_tt,bitfit,linear"
# VTAB-1K's tasks ordered so the first few already span its class counts (2 to 397) and groups
ORDER = (
    "sun397", "patch_camelyon", "dsprites_loc", "cifar", "kitti", "dtd", "eurosat", "clevr_count", "smallnorb_azi",
    "caltech101", "oxford_flowers102", "oxford_iiit_pet", "svhn", "resisc45", "diabetic_retinopathy", "clevr_dist",
    "dmlab", "dsprites_ori", "smallnorb_ele",
)  # fmt: skip
FULL = {"tasks": 19, "seeds": 5, "epochs": 100, "train": 1000, "tune_train": 800, "val": 200}


class TaggedMemoryTracker(MemoryTracker):
    """The in-memory recorder of engine_sweep.py, keeping tags too (the training step's mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: dict[str, dict[str, str]] = {}

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self.tags.setdefault(run_id, {})[key] = value


def make_tracker(store: Path) -> tuple[Any, str]:
    try:
        from bench.tracking import Tracker, default_tracking_uri

        return Tracker(default_tracking_uri(store), artifact_root=store / "artifacts"), "MLflow sqlite"
    except Exception as exc:  # mlflow missing on the GPU machine
        return TaggedMemoryTracker(), f"in-memory (MLflow unavailable: {type(exc).__name__})"


def run_figures(tracker: Any, run_id: str) -> tuple[dict[str, float], dict[str, str]]:
    if isinstance(tracker, TaggedMemoryTracker):
        return tracker.metrics.get(run_id, {}), tracker.tags.get(run_id, {})
    data = tracker.client.get_run(run_id).data
    return dict(data.metrics), dict(data.tags)


def write_tasks(root: Path, tasks: list[Task], jpeg_size: int, test_cap: int) -> None:
    """NOAH-format folders with each task's class count and split sizes (test capped), sharing one
    pool of synthetic JPEGs (hard-linked into each): the tasks differ only in their labels."""
    pool = 1000 + test_cap
    images = root / "pool"
    if not images.is_dir():
        write_jpegs(synthetic_images(pool, jpeg_size, seed=0), images, "i")
    for task in tasks:
        folder = root / task.name
        if (folder / "test.txt").is_file():
            continue
        (folder / "images").mkdir(parents=True, exist_ok=True)
        for image in images.iterdir():  # hard links: list paths may not leave their task folder
            os.link(image, folder / "images" / image.name)
        g = torch.Generator().manual_seed(len(task.name))
        labels = torch.randint(0, task.num_classes, (pool,), generator=g)
        labels[: task.num_classes] = torch.arange(task.num_classes)  # every class present
        lines = [f"images/i{i:06d}.jpg {int(y)}" for i, y in enumerate(labels.tolist())]
        splits = {"train800": lines[:800], "val200": lines[800:1000], "train800val200": lines[:1000]}
        splits["test"] = lines[1000 : 1000 + min(test_cap, task.split_sizes["test.txt"])]
        for name, rows in splits.items():
            (folder / f"{name}.txt").write_text("\n".join(rows) + "\n")


def register(preset: Any, backbone: str, tasks: list[Task], test_cap: int) -> None:
    if "vtabshape" in available_suites():
        return
    capped = [
        replace(t, split_sizes={**t.split_sizes, "test.txt": min(test_cap, t.split_sizes["test.txt"])}, aliases=())
        for t in tasks
    ]
    register_suite(
        Suite(
            name="vtabshape",
            description="benchmarks/sweep_cost.py: VTAB-1K-shaped tasks of synthetic images",
            preset=preset,
            default_backbone=backbone,
            backbone_pretrained=False,
            tasks=tuple(capped),
        )
    )


def sweep(request: SweepRequest, work: Path, label: str) -> dict[str, Any]:
    """Plan and run one sweep inline; the runs' logged figures and the sweep's cost."""
    t0 = time.perf_counter()
    plan = plan_sweep(request, work)
    plan_s = time.perf_counter() - t0
    store = work / f"store-{label}-{time.time_ns()}"
    store.mkdir(parents=True)
    tracker, kind = make_tracker(store)
    executor = make_executor(ExecutorOptions(kind="inline"), request.device)
    t0 = time.perf_counter()
    try:
        outcomes = run_sweep(plan, Recorder(tracker), executor, work)
    finally:
        executor.close(True)
    wall = time.perf_counter() - t0
    runs = []
    for run, outcome in zip(plan.runs, outcomes, strict=True):
        assert outcome.status == "trained", (outcome.status, outcome.error)
        metrics, tags = run_figures(tracker, outcome.run_id)
        spec = run.spec
        runs.append(
            {
                "method": spec.method,
                "task": spec.task,
                "classes": spec.num_classes,
                "seed": spec.seed,
                "stage": spec.stage,
                "train_step": tags.get("bench.train_step"),
                **{k: metrics.get(k) for k in ("time/train_s", "time/warmup_s", "time/steady_s")},
                "train_img_s_steady": metrics.get("throughput/train_img_s_steady"),
                "infer_img_s": metrics.get("throughput/infer_img_s"),
                "eval_images": metrics.get("eval/examples"),
            }
        )
        print(json.dumps({label: runs[-1]}), flush=True)
    steady = sum(r["time/steady_s"] for r in runs)
    return {
        "tracker": kind,
        "plan_s": round(plan_s, 2),
        "wall_s": round(wall, 2),
        "train_s": round(sum(r["time/train_s"] for r in runs), 2),
        "warmup_s": round(sum(r["time/warmup_s"] for r in runs), 2),
        "steady_s": round(steady, 2),
        "efficiency": round(steady / wall, 4),
        "runs": runs,
    }


@contextlib.contextmanager
def old_settings(folder: Path):
    """Compile at the first step, into ``folder`` (empty): no shared compiled steps, no background
    compilation, as every new class count used to mean."""
    from bench.compile_cache import use_cache_folder

    kept = engine_work.step_cache
    engine_work.step_cache = lambda *args: None
    use_cache_folder(folder)
    try:
        yield
    finally:
        engine_work.step_cache = kept


def planning_times(base: SweepRequest, work: Path, args: argparse.Namespace) -> dict[str, float]:
    """``plan_sweep`` for every registered method on all 19 tasks: in this process, the first plan
    of a new work directory; then, as a resume plans it, in a new process (imports timed apart)."""
    everything = sorted(available_methods())
    request = replace(base, methods=everything, seeds=[0], tasks=None)
    t0 = time.perf_counter()
    plan = plan_sweep(request, work)
    out = {"methods": len(everything), "runs": len(plan.runs), "first_s": round(time.perf_counter() - t0, 2)}
    command = [sys.executable, __file__, "--plan-once", str(work), "--backbone", base.backbone]
    t0 = time.perf_counter()
    resumed = subprocess.run(command + (["--cpu"] if args.cpu else []), capture_output=True, text=True, check=True)
    out["resume_process_s"] = round(time.perf_counter() - t0, 2)  # interpreter, imports and plan
    out["resume_plan_s"] = json.loads(resumed.stdout.strip().splitlines()[-1])["plan_s"]
    return out


def plan_once(args: argparse.Namespace) -> None:
    """``--plan-once WORKDIR``: plan every method on all 19 tasks there and print the time it took."""
    preset = DEMO_PRESET.with_overrides(name="demo-sweep", batch_size=16) if args.cpu else VTAB1K_PRESET
    by_name = {t.name: t for t in VTAB1K_TASKS}
    register(preset, args.backbone, [by_name[n] for n in ORDER], args.test_cap)
    device = "cpu" if args.cpu or not torch.cuda.is_available() else "cuda"
    request = SweepRequest(
        suite="vtabshape", methods=sorted(available_methods()), seeds=[0], data_root=args.plan_once / "data",
        backbone=args.backbone, epochs=args.epochs, device=device,
    )  # fmt: skip
    t0 = time.perf_counter()
    plan_sweep(request, args.plan_once)
    print(json.dumps({"plan_s": round(time.perf_counter() - t0, 2)}))


def first_runs(base: SweepRequest, work: Path, method: str, epochs: int) -> dict[str, Any]:
    """One run of ``method`` with nothing compiled yet, trained eagerly throughout, then as bench
    trains it by default (eagerly while its step compiles in the background): their wall times."""
    out: dict[str, Any] = {"method": method, "epochs": epochs}
    for label, mode in (("eager", "eager"), ("default", None)):
        os.environ["BENCH_COMPILE_CACHE"] = str(work / f"first-{label}-cache")  # empty: nothing compiled
        if mode:
            os.environ[engine_work.COMPILE_MODE_ENV] = mode
        try:
            request = replace(base, methods=[method], tasks=base.tasks[:1], seeds=[0], epochs=epochs)
            figures = sweep(request, work, f"first-{label}")
        finally:
            os.environ.pop("BENCH_COMPILE_CACHE", None)
            os.environ.pop(engine_work.COMPILE_MODE_ENV, None)
        out[label] = {"wall_s": figures["wall_s"], **figures["runs"][0]}
    out["ratio"] = round(out["default"]["wall_s"] / out["eager"]["wall_s"], 3)
    return out


def asha_epochs_per_trial(max_epochs: int, min_epochs: int, eta: int) -> float:
    """Expected epochs a trial trains under successive halving (Optuna's SuccessiveHalvingPruner with
    ``min_resource`` epochs and ``reduction_factor`` eta): a trial passes rung k (at min·eta^k epochs)
    with probability eta^-k, and the top rung trains to the end."""
    rungs, r = [], min_epochs
    while r < max_epochs:
        rungs.append(r)
        r *= eta
    edges = [0, *rungs, max_epochs]
    return sum((edges[k + 1] - edges[k]) * eta ** (-k) for k in range(len(edges) - 1))


def project(result: dict[str, Any], speed_table: dict[str, Any] | None, args: argparse.Namespace) -> dict[str, Any]:
    """GPU-hours of the full tuned comparison, under the old and the new settings, from the figures
    measured here (and ``speed_table`` for the methods not run here)."""
    final = result["sweeps"].get("final", {}).get("runs", [])  # none: the speed table alone
    measured = sorted({r["method"] for r in final})
    epochs = result["epochs"]

    def rate(r: dict) -> float:  # the second epoch's images/s, or (one epoch) the steady part's
        return r["train_img_s_steady"] or epochs * FULL["train"] / max(r["time/steady_s"], 1e-9)

    def typical(m: str) -> list[dict]:  # runs of a warm kind where there are any: what most runs are
        runs = [r for r in final if r["method"] == m]
        return [r for r in runs if not str(r["train_step"]).startswith("eager")] or runs

    steady = {m: statistics.median(rate(r) for r in typical(m)) for m in measured}
    infer = {m: statistics.median(r["infer_img_s"] for r in typical(m)) for m in measured}
    # warm-up of a run whose kind is warm (not the first run of its method), and the cold compile
    warm_runs = [r["time/warmup_s"] for r in final if not str(r["train_step"]).startswith("eager")]
    # terms this result did not measure count as 0 and are named in the assumptions
    warm = statistics.median(warm_runs) if warm_runs else 0.0
    compile_s = result.get("compile_s") or {}
    cold = statistics.median(compile_s.values()) if compile_s else 0.0
    legacy = result["sweeps"].get("old_settings", {}).get("runs", [])
    old_first = [r["time/warmup_s"] for r in legacy if r["seed"] == 0]
    cold_old = statistics.median(old_first) if old_first else cold
    # the other methods, from the speed table, scaled to this GPU
    table = {row["method"]: row["ours"] for row in (speed_table or {}).get("methods", [])}
    both = [m for m in measured if m in table]
    scale_train = statistics.median(steady[m] / table[m]["train_images_per_s"] for m in both) if both else 1.0
    scale_eval = statistics.median(infer[m] / table[m]["eval_images_per_s"] for m in both) if both else 1.0
    everything = sorted(set(measured) | set(table))
    rates = {
        m: (steady[m], infer[m])
        if m in steady
        else (table[m]["train_images_per_s"] * scale_train, table[m]["eval_images_per_s"] * scale_eval)
        for m in everything
    }
    test_sizes = [t.split_sizes["test.txt"] for t in VTAB1K_TASKS]
    overhead = args.record_s  # writing one run to MLflow (metrics, predictions, tensors)
    trials, epochs = args.tune_trials, FULL["epochs"]
    asha = asha_epochs_per_trial(epochs, args.asha_min_epochs, args.asha_eta)
    # the CPU's demo runs have the demo's sizes; the projection is for VTAB-1K's either way
    per_method = {}
    for m, (r_train, r_eval) in rates.items():
        train_run = FULL["epochs"] * FULL["train"] / r_train
        tests = sum(n / r_eval for n in test_sizes)
        finals = FULL["seeds"] * (FULL["tasks"] * (train_run + overhead) + tests)  # seconds, all tasks and seeds
        trial_epoch = FULL["tune_train"] / r_train + FULL["val"] / r_eval
        full_trials = FULL["tasks"] * trials * (epochs * trial_epoch + overhead)
        asha_trials = FULL["tasks"] * trials * (asha * trial_epoch + overhead)
        runs = FULL["tasks"] * (FULL["seeds"] + trials)
        per_method[m] = {
            "measured_here": m in steady,
            "train_img_s": round(r_train),
            "infer_img_s": round(r_eval),
            "finals_h": finals / 3600,
            "tuning_old_h": full_trials / 3600,
            "tuning_new_h": asha_trials / 3600,
            "old_h": (finals + full_trials + FULL["tasks"] * cold_old + runs * warm) / 3600,
            "new_h": (finals + asha_trials + cold + runs * warm) / 3600,
        }
    old = sum(v["old_h"] for v in per_method.values())
    new = sum(v["new_h"] for v in per_method.values())
    parts = {k: round(sum(v[k] for v in per_method.values()), 1) for k in ("finals_h", "tuning_old_h", "tuning_new_h")}
    return {
        "assumptions": {
            "comparison": f"19 tasks x {len(per_method)} methods x 5 seeds x 100 epochs; a study of {trials} trials per (task, method)",
            "old": "every (task, method) compiles cold; every trial trains 100 epochs",
            "new": f"one compilation per method; ASHA (min {args.asha_min_epochs} epochs, eta {args.asha_eta}): "
            f"{asha:.1f} epochs a trial on average",
            "warm_run_warmup_s": round(warm, 2) if warm_runs else "not measured (0)",
            "cold_compile_s": round(cold, 2) if compile_s else "not measured (0)",
            "cold_compile_old_settings_s": round(cold_old, 2) if (old_first or compile_s) else "not measured (0)",
            "record_s_per_run": overhead,
            "steady_rates": "measured here" if measured else "the speed table's, unscaled",
            "speed_table_scale": {"train": round(scale_train, 3), "eval": round(scale_eval, 3)},
        },
        "gpu_hours_finals": parts["finals_h"],
        "gpu_hours_tuning_old": parts["tuning_old_h"],
        "gpu_hours_tuning_new": parts["tuning_new_h"],
        "gpu_hours_old": round(old, 1),
        "gpu_hours_new": round(new, 1),
        "ratio": round(old / new, 2),
        "per_method": {
            m: {k: round(v, 2) if isinstance(v, float) else v for k, v in d.items()} for m, d in per_method.items()
        },
    }


def combine(args: argparse.Namespace) -> None:
    """One results file from several (each holding some phases), with the projection made anew."""
    parts = [json.loads(path.read_text()) for path in args.combine]
    gpus = {p["gpu"] for p in parts}
    if len(gpus) > 1:
        raise SystemExit(f"the files were measured on different GPUs ({', '.join(map(str, gpus))}); combine one GPU's")
    result = {**parts[0], "sweeps": {}, "command": [p["command"] for p in parts], "date": [p["date"] for p in parts]}
    for part in parts:
        result["sweeps"].update(part.get("sweeps", {}))
        for key in ("planning", "first_run", "compile_s"):
            if part.get(key):
                result[key] = part[key]
    table = json.loads(args.speed_table.read_text()) if args.speed_table and args.speed_table.is_file() else None
    result["projection"] = project(result, table, args)
    text = json.dumps(result, indent=1) + "\n"
    if args.out:
        args.out.write_text(text)
    print(json.dumps(result["projection"], indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=DEFAULT_METHODS)
    parser.add_argument(
        "--tasks", type=int, default=19, help="the first N VTAB-1K tasks (of a list spanning class counts)"
    )
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2, help="epochs a run trains here (the projection takes 100)")
    parser.add_argument(
        "--test-cap", type=int, default=1000, help="test images per task here (the projection takes VTAB's)"
    )
    parser.add_argument("--tune-tasks", type=int, default=1, help="tasks with one tune-stage run per method")
    parser.add_argument("--legacy-methods", default="lora,karst", help="methods also run with the old settings")
    parser.add_argument("--legacy-tasks", type=int, default=2)
    parser.add_argument("--tune-trials", type=int, default=20, help="trials of each study in the projection")
    parser.add_argument("--asha-min-epochs", type=int, default=11)
    parser.add_argument("--asha-eta", type=int, default=3)
    parser.add_argument(
        "--phases",
        default="planning,final,tune,old,first",
        help="which measurements to make; project: the projection even without final runs (the speed table's rates)",
    )
    parser.add_argument("--first-method", default="lora", help="phase first: the method of the cold first run")
    parser.add_argument("--first-epochs", type=int, default=100)
    parser.add_argument("--record-s", type=float, default=0.35, help="seconds to record a run in MLflow (CPU figure)")
    parser.add_argument("--backbone", default=None, help="default: vit_base_patch16_224 (random weights)")
    parser.add_argument("--jpeg-size", type=int, default=64, help="size of the synthetic JPEGs on disk")
    parser.add_argument("--speed-table", type=Path, default=Path(__file__).parent / "results_speed_vit_base_h200.json")
    parser.add_argument("--cpu", action="store_true", help="the demo's tiny ViT and preset on the CPU")
    parser.add_argument("--plan-once", type=Path, default=None, help=argparse.SUPPRESS)  # the resume, timed
    parser.add_argument(
        "--combine",
        type=Path,
        nargs="+",
        default=None,
        help="measure nothing: combine these results files (phases run in separate calls) and project",
    )
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    args.backbone = args.backbone or ("vit_demo_tiny" if args.cpu else "vit_base_patch16_224")

    if args.combine:
        combine(args)
        return
    if args.plan_once:
        plan_once(args)
        return
    device = "cpu" if args.cpu or not torch.cuda.is_available() else "cuda"  # planning alone needs no GPU
    preset = DEMO_PRESET.with_overrides(name="demo-sweep", batch_size=16) if args.cpu else VTAB1K_PRESET
    backbone = args.backbone
    by_name = {t.name: t for t in VTAB1K_TASKS}
    tasks = [by_name[n] for n in ORDER[: args.tasks]]
    register(preset, backbone, [by_name[n] for n in ORDER], args.test_cap)
    methods = args.methods.split(",")
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python benchmarks/sweep_cost.py " + " ".join(sys.argv[1:]),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() and not args.cpu else None,
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "backbone": backbone,
        "methods": methods,
        "tasks": [t.name for t in tasks],
        "seeds": args.seeds,
        "epochs": args.epochs,
        "test_cap": args.test_cap,
        "sweeps": {},
    }
    with contextlib.ExitStack() as stack:
        work = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-cost-")))
        os.environ.pop("BENCH_COMPILE_CACHE", None)
        data = work / "data"
        t0 = time.perf_counter()
        write_tasks(data, [by_name[n] for n in ORDER], args.jpeg_size, args.test_cap)
        result["write_data_s"] = round(time.perf_counter() - t0, 2)
        base = SweepRequest(
            suite="vtabshape", methods=methods, seeds=list(range(args.seeds)), data_root=data,
            tasks=[t.name for t in tasks], backbone=backbone, epochs=args.epochs, device=device,
        )  # fmt: skip
        phases = set(args.phases.split(","))
        if "planning" in phases:
            result["planning"] = planning_times(base, work, args)
            print(json.dumps({"planning": result["planning"]}), flush=True)

        def save() -> None:
            if args.out:
                args.out.write_text(json.dumps(result, indent=1) + "\n")

        if "final" in phases:
            result["sweeps"]["final"] = sweep(base, work, "final")
            save()
        if "tune" in phases:
            tune = replace(base, stage="tune", seeds=[0], tasks=[t.name for t in tasks[: args.tune_tasks]])
            result["sweeps"]["tune"] = sweep(tune, work, "tune")
            save()
        ledger = Ledger(cache_folder(work))
        result["compile_s"] = {
            json.loads(p.read_text())["method"]: json.loads(p.read_text())["compile_s"]
            for p in sorted(ledger.folder.glob("*.json"))
        }
        if "old" in phases and args.legacy_methods:
            legacy_runs = []
            for task in tasks[: args.legacy_tasks]:
                with old_settings(work / "old-cache" / task.name):
                    request = replace(base, methods=args.legacy_methods.split(","), tasks=[task.name], seeds=[0, 1])
                    legacy_runs.append(sweep(request, work / "old", f"old-{task.name}"))
            result["sweeps"]["old_settings"] = {
                "runs": [r for s in legacy_runs for r in s["runs"]],
                "wall_s": round(sum(s["wall_s"] for s in legacy_runs), 2),
                "efficiency": round(sum(s["steady_s"] for s in legacy_runs) / sum(s["wall_s"] for s in legacy_runs), 4),
            }
            save()
        if "first" in phases:
            result["first_run"] = first_runs(base, work, args.first_method, args.first_epochs)
            print(json.dumps({"first_run": {k: v for k, v in result["first_run"].items() if k != "runs"}}), flush=True)
            save()
        table = json.loads(args.speed_table.read_text()) if args.speed_table and args.speed_table.is_file() else None
        if "final" in result["sweeps"] or ("project" in phases and table):
            result["projection"] = project(result, table, args)
        save()
    print(json.dumps({k: result.get(k) for k in ("planning", "compile_s", "first_run", "projection")}, indent=1))


if __name__ == "__main__":
    main()
