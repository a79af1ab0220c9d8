"""Wall time of one sweep through bench's run engine, under several executors, in one process.

The sweep goes through ``plan_sweep`` / ``run_sweep`` exactly as ``bench run`` does; only the
executor differs between modes:

* ``inline``: this process, one run at a time (``--executor inline``);
* ``ray-gN-kK``: a local Ray cluster on N GPUs with K runs packed per GPU (``--gpus N --runs-per-gpu K``);
* ``ray-wN``: a local Ray cluster with N CPU workers (``--executor ray --workers N``).

The data is one generated VTAB-1K-shaped task (``--train`` training images, ``--test`` test
images, JPEG, 100 classes) whose split cache is filled before anything is timed; the backbone has
random weights (speed does not depend on them). Starting a Ray cluster is timed apart from the
sweep (``startup_s``), since a long sweep pays it once. MLflow is used when it is installed (a
fresh sqlite store per mode); otherwise an in-memory recorder stands in with the same calls, so the
figure measures the executor, not the store. Examples (run from the repository root):

    # one H200: packing ViT-S/14 realmini-sized runs
    PYTHONPATH=$PWD python benchmarks/engine_sweep.py --backbone vit_small_patch14_dinov2 --runs 4 \
        --modes ray-g1-k1,ray-g1-k2,ray-g1-k4 --out benchmarks/results_packing_h200.json
    # two H200s: an 8-run ViT-B/16 sweep on one GPU and on two
    PYTHONPATH=$PWD python benchmarks/engine_sweep.py --runs 8 --modes ray-g1-k1,ray-g2-k1
    # the CPU: the Ray executor's per-run overhead against inline
    PYTHONPATH=$PWD python benchmarks/engine_sweep.py --cpu --runs 8 --epochs 2 --modes inline,ray-w1
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from bench.engine import ExecutorOptions, Recorder, make_executor
from bench.speed import synthetic_images, write_jpegs
from bench.sweep import SweepRequest, TaskLoader, plan_sweep, run_sweep
from suites.base import Suite, available_suites, register_suite
from suites.demo import DEMO_PRESET
from suites.vtab1k import VTAB1K_PRESET

NUM_CLASSES = 100


class MemoryTracker:
    """The calls the recorder and the sweep make on ``bench.tracking.Tracker``, kept in memory."""

    def __init__(self) -> None:
        self.ids = itertools.count()
        self.status: dict[str, str] = {}
        self.metrics: dict[str, dict[str, float]] = {}
        self.client = self

    def runs_by_key(self, experiment: str, keys: list[str] | None = None) -> dict[str, list[Any]]:
        return {}

    def runs_of_key(self, experiment: str, run_key: str) -> list[Any]:
        return []

    @staticmethod
    def finished(runs: list[Any]) -> Any:
        return None

    def close_interrupted(self, runs: list[Any]) -> int:
        return 0

    def open_sweep(self, experiment: str, sweep_key: str, tags: dict, params: dict) -> str:
        return f"sweep-{next(self.ids)}"

    def close_sweep(self, run_id: str, status: str, counts: dict) -> None:
        self.status[run_id] = status

    def start_child(self, experiment: str, parent_id: Any, name: str, tags: dict, params: dict) -> str:
        run_id = f"run-{next(self.ids)}"
        self.status[run_id] = "RUNNING"
        return run_id

    def end_child(self, run_id: str, status: str, error: str | None = None) -> None:
        self.status[run_id] = status

    def log_metrics(self, run_id: str, values: dict, step: int = 0) -> None:
        self.metrics.setdefault(run_id, {}).update({k: v for k, v in values.items() if v is not None})

    def log_json(self, run_id: str, obj: Any, artifact_file: str) -> None:
        json.dumps(obj, default=str)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        pass

    def log_bytes(self, run_id: str, data: bytes, artifact_file: str) -> None:
        pass

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        pass


def make_tracker(workdir: Path):
    try:
        from bench.tracking import Tracker, default_tracking_uri

        return Tracker(default_tracking_uri(workdir), artifact_root=workdir / "artifacts"), "MLflow sqlite"
    except Exception as exc:  # mlflow missing on the GPU machine
        return MemoryTracker(), f"in-memory (MLflow unavailable: {type(exc).__name__})"


def _metric(tracker: Any, run_id: str, name: str) -> float:
    if isinstance(tracker, MemoryTracker):
        return tracker.metrics.get(run_id, {}).get(name, float("nan"))
    return tracker.client.get_run(run_id).data.metrics.get(name, float("nan"))


def executor_options(mode: str) -> tuple[ExecutorOptions, str]:
    """``inline`` | ``ray-gN-kK`` | ``ray-wN`` -> the options ``bench run`` would build, and the device."""
    if mode == "inline":
        return ExecutorOptions(kind="inline"), "auto"
    parts = dict((p[0], int(p[1:])) for p in mode.split("-")[1:])
    if "w" in parts:
        return ExecutorOptions(kind="ray", workers=parts["w"]), "cpu"
    gpus = ",".join(str(i) for i in range(parts["g"])) + ","
    return ExecutorOptions(kind="ray", gpus=gpus, runs_per_gpu=parts.get("k", 1)), "cuda"


def write_task(root: Path, img_size: int, n_train: int, n_test: int) -> None:
    """One NOAH-format task folder with VTAB-1K's split sizes."""
    task = root / "task"
    labels = torch.randint(0, NUM_CLASSES, (n_train + n_test,), generator=torch.Generator().manual_seed(0))
    labels[:NUM_CLASSES] = torch.arange(NUM_CLASSES)  # every class present: the class count is read from labels
    images = synthetic_images(n_train + n_test, img_size, seed=0)
    paths = write_jpegs(images, task / "images", "i")
    lines = [f"{p.relative_to(task)} {int(y)}" for p, y in zip(paths, labels.tolist(), strict=True)]
    train, test = lines[:n_train], lines[n_train:]
    split = n_train * 4 // 5
    for name, rows in {
        "train800": train[:split],
        "val200": train[split:],
        "train800val200": train,
        "test": test,
    }.items():
        (task / f"{name}.txt").write_text("\n".join(rows) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="lora")
    parser.add_argument("--runs", type=int, default=8, help="seeds per method")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--train", type=int, default=1000, help="training images (VTAB-1K and realmini: 1,000)")
    parser.add_argument("--test", type=int, default=2000, help="test images per run (realmini: 2,000)")
    parser.add_argument("--img-size", type=int, default=None, help="default: the preset's (224)")
    parser.add_argument("--backbone", default=None, help="default: vit_base_patch16_224 (random weights)")
    parser.add_argument("--modes", default="inline,ray-g1-k1")
    parser.add_argument("--cpu", action="store_true", help="the demo's tiny ViT and preset on the CPU")
    parser.add_argument(
        "--warmup", action="store_true", help="train one 2-epoch run inline first, untimed: a warm compilation cache"
    )
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    preset = DEMO_PRESET.with_overrides(name="demo-sweep", batch_size=16) if args.cpu else VTAB1K_PRESET
    if args.img_size:
        preset = preset.with_overrides(img_size=args.img_size)
    backbone = args.backbone or ("vit_demo_tiny" if args.cpu else "vit_base_patch16_224")
    if "sweepbench" not in available_suites():
        register_suite(
            Suite(
                name="sweepbench",
                description="benchmarks/engine_sweep.py: one generated VTAB-1K-shaped task",
                preset=preset,
                default_backbone=backbone,
                backbone_pretrained=False,
            )
        )
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "command": "python benchmarks/engine_sweep.py "
        + " ".join(
            f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}")
            for k, v in vars(args).items()
            if v not in (None, False) and k != "out"
        ),
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "backbone": backbone,
        "img_size": preset.img_size,
        "methods": args.methods,
        "runs": len(args.methods.split(",")) * args.runs,
        "epochs": args.epochs,
        "train_images": args.train,
        "test_images": args.test,
        "modes": {},
    }
    with contextlib.ExitStack() as stack:
        work = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-sweep-")))
        data = work / "data"
        if not (data / "task" / "test.txt").exists():
            write_task(data, preset.img_size, args.train, args.test)
        request = SweepRequest(
            suite="sweepbench",
            methods=args.methods.split(","),
            seeds=list(range(args.runs)),
            data_root=data,
            backbone=backbone,
            epochs=args.epochs,
            device="cpu" if args.cpu else "cuda",
        )
        if args.warmup:
            warm = plan_sweep(replace(request, seeds=[0], epochs=2), work)
            executor = make_executor(ExecutorOptions(kind="inline"), "cpu" if args.cpu else "cuda")
            run_sweep(warm, Recorder(MemoryTracker()), executor, work)
        for mode in args.modes.split(","):
            plan = plan_sweep(request, work)
            TaskLoader(plan, work / "cache" / "images")(plan.runs[0])  # a warm cache before anything is timed
            store = work / f"store-{mode}-{time.time_ns()}"
            store.mkdir(parents=True)
            tracker, tracker_kind = make_tracker(store)
            options, device = executor_options(mode)
            t0 = time.perf_counter()
            executor = make_executor(options, device)
            startup = time.perf_counter() - t0
            graceful = False
            try:
                t0 = time.perf_counter()
                outcomes = run_sweep(plan, Recorder(tracker), executor, work)
                seconds = time.perf_counter() - t0
                graceful = True
            finally:
                executor.close(graceful)
            assert all(o.status == "trained" for o in outcomes), [(o.status, o.error) for o in outcomes]
            result["modes"][mode] = {
                "startup_s": round(startup, 2),
                "sweep_s": round(seconds, 2),
                "runs_per_hour": round(3600 * len(outcomes) / seconds, 1),
                "tracker": tracker_kind,
                "test_acc": [o.eval_acc for o in outcomes],
                # per run, from what the recorder logged: time in training epochs, and steady images/s
                "train_s": [round(_metric(tracker, o.run_id, "time/train_s"), 2) for o in outcomes],
                "train_img_s_steady": [
                    round(_metric(tracker, o.run_id, "throughput/train_img_s_steady")) for o in outcomes
                ],
            }
            print(json.dumps({mode: result["modes"][mode]}), flush=True)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    modes = result["modes"]
    base = next(iter(modes))
    result["ratios_to_" + base] = {
        m: {
            "sweep_time": round(v["sweep_s"] / modes[base]["sweep_s"], 3),
            "runs_per_hour": round(v["runs_per_hour"] / modes[base]["runs_per_hour"], 3),
        }
        for m, v in modes.items()
    }
    if "inline" in modes:
        result["overhead_per_run_s_vs_inline"] = {
            m: round((v["sweep_s"] - modes["inline"]["sweep_s"]) / result["runs"], 3) for m, v in modes.items()
        }
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
