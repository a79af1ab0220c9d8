"""Wall time of one sweep (default 8 runs: LoRA x 8 seeds, VTAB-1K final stage) on one GPU and on two.

The sweep goes through bench's own ``plan_sweep`` / ``run_sweep``: once the one-process way (the
default of ``bench run``) and once with the multi-device executor (``bench run --gpus 2``). The data
is one generated VTAB-1K-shaped task (1,000 training images and ``--test`` test images, JPEG at
224 px, 100 classes) whose split cache is filled before anything is timed (a warm cache, as the
issue's target assumes); the backbone is ViT-B/16 with random weights (no download). MLflow is used
when it is installed (a fresh sqlite store in the work folder); otherwise an in-memory tracker
stands in, with the same calls, so the figure measures the executor, not the store. Run from the
repository root on a machine with 2 GPUs:

    PYTHONPATH=$PWD python benchmarks/multi_gpu_sweep.py --out benchmarks/results_multi_gpu_sweep.json

Modes: ``sequential`` (one process, one GPU), ``gpus1`` (the executor with one worker), ``gpus2``
(the executor on GPUs 0 and 1). Each mode can run in its own invocation: with the same ``--out``
and settings, the file collects the modes and the ratios. ``--cpu-workers 2`` runs the same script
on the CPU with the demo's tiny ViT, to check it without a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from bench.executor import cpu_slots, parse_gpus
from bench.speed import synthetic_images, write_jpegs
from bench.sweep import SweepRequest, plan_sweep, run_sweep, task_data
from suites.base import Suite, available_suites, register_suite
from suites.demo import DEMO_PRESET
from suites.vtab1k import VTAB1K_PRESET

NUM_CLASSES = 100


class MemoryTracker:
    """The calls ``run_sweep`` makes on ``bench.tracking.Tracker``, kept in memory (no MLflow)."""

    def __init__(self) -> None:
        self.ids = itertools.count()
        self.status: dict[str, str] = {}
        self.client = self

    def runs_by_key(self, experiment: str) -> dict[str, list[Any]]:
        return {}

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

    @contextlib.contextmanager
    def child_run(self, experiment: str, parent_id: Any, name: str, tags: dict, params: dict):
        run_id = self.start_child(experiment, parent_id, name, tags, params)
        yield run_id
        self.end_child(run_id, "FINISHED")

    def log_metrics(self, run_id: str, values: dict, step: int = 0) -> None:
        pass

    def log_json(self, run_id: str, obj: Any, artifact_file: str) -> None:
        json.dumps(obj, default=str)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        pass

    def log_bytes(self, run_id: str, data: bytes, artifact_file: str) -> None:
        pass

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        pass


def make_tracker(workdir: Path, kind: str):
    if kind == "memory":
        return MemoryTracker(), "in-memory (no MLflow)"
    try:
        from bench.tracking import Tracker, default_tracking_uri

        return Tracker(default_tracking_uri(workdir), artifact_root=workdir / "artifacts"), "MLflow sqlite"
    except Exception as exc:  # mlflow missing on the GPU machine
        if kind == "mlflow":
            raise
        return MemoryTracker(), f"in-memory (MLflow unavailable: {type(exc).__name__})"


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
    parser.add_argument("--seeds", type=int, default=8, help="runs = methods x seeds")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--test", type=int, default=2000, help="test images per run (VTAB-1K: 500 to 32,768)")
    parser.add_argument("--backbone", default=None, help="default: vit_base_patch16_224 (random weights)")
    parser.add_argument("--modes", default="gpus2,sequential", help="comma-separated: sequential, gpus1, gpus2")
    parser.add_argument("--tracker", choices=["auto", "mlflow", "memory"], default="auto")
    parser.add_argument("--cpu-workers", type=int, default=0, help="check the script on the CPU with N workers")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary folder")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    cpu = args.cpu_workers > 0
    preset = DEMO_PRESET.with_overrides(name="demo-sweep", batch_size=16) if cpu else VTAB1K_PRESET
    backbone = args.backbone or ("vit_demo_tiny" if cpu else "vit_base_patch16_224")
    if "sweepbench" not in available_suites():
        register_suite(
            Suite(
                name="sweepbench",
                description="benchmarks/multi_gpu_sweep.py: one generated VTAB-1K-shaped task",
                preset=preset,
                default_backbone=backbone,
                backbone_pretrained=False,
            )
        )
    with contextlib.ExitStack() as stack:
        work = args.workdir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-sweep-")))
        data = work / "data"
        if not (data / "task" / "test.txt").exists():
            write_task(data, preset.img_size, 1000, args.test)
        request = SweepRequest(
            suite="sweepbench",
            methods=args.methods.split(","),
            seeds=list(range(args.seeds)),
            data_root=data,
            backbone=backbone,
            epochs=args.epochs,
            device="cpu" if cpu else "cuda",
        )
        result: dict[str, Any] = {
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if not cpu else [],
            "torch": torch.__version__,
            "python": platform.python_version(),
            "backbone": backbone,
            "methods": args.methods,
            "runs": len(request.methods) * args.seeds,
            "epochs": args.epochs,
            "train_images": 1000,
            "test_images": args.test,
            "modes": {},
        }
        for mode in args.modes.split(","):
            plan = plan_sweep(request, work)
            cache = work / "cache" / "images"
            task_data(plan.runs[0].task, plan, cache, {})  # a warm cache before anything is timed
            slots = {
                "sequential": None,
                "gpus1": cpu_slots(1) if cpu else parse_gpus("1"),
                "gpus2": cpu_slots(args.cpu_workers) if cpu else parse_gpus("2"),
            }[mode]
            store = work / f"store-{mode}-{time.time_ns()}"
            store.mkdir(parents=True)
            tracker, tracker_kind = make_tracker(store, args.tracker)
            t0 = time.perf_counter()
            outcomes = run_sweep(plan, tracker, work, devices=slots)
            seconds = time.perf_counter() - t0
            assert all(o.status == "trained" for o in outcomes), [o.status for o in outcomes]
            result["modes"][mode] = {"seconds": round(seconds, 2), "tracker": tracker_kind}
            print(json.dumps({mode: result["modes"][mode]}), flush=True)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        if args.out and args.out.exists():  # modes measured by an earlier invocation with the same settings
            earlier = json.loads(args.out.read_text())
            same = all(earlier.get(k) == result[k] for k in ("gpus", "backbone", "methods", "runs", "epochs"))
            if same:
                result["modes"] = {**earlier.get("modes", {}), **result["modes"]}
        modes = result["modes"]
        if "sequential" in modes and "gpus2" in modes:
            result["ratio_gpus2_vs_sequential"] = round(modes["gpus2"]["seconds"] / modes["sequential"]["seconds"], 3)
        if "gpus1" in modes and "gpus2" in modes:
            result["ratio_gpus2_vs_gpus1"] = round(modes["gpus2"]["seconds"] / modes["gpus1"]["seconds"], 3)
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
