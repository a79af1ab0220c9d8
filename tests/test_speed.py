"""`bench speed` (our path vs the reference-style loop) and the multi-device executor, on the CPU.

The executor tests run real worker processes (spawned, two on the CPU) against a real MLflow
store, and compare what they log with the one-process path on the same plan.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import bench.speed
import methods
from bench.cli import run_cli
from bench.executor import WorkerRunError, cpu_slots, parse_gpus
from bench.sweep import SilentReporter, SweepRequest, plan_sweep, run_sweep
from bench.tracking import Tracker, default_tracking_uri
from methods.base import BackboneSpec, Method, freeze_all_but, register_method

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# ---------------------------------------------------------------------------------------
# bench speed


def test_speed_json_on_cpu_measures_both_paths(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    opened: Counter[str] = Counter()
    real_open = bench.speed.open_image

    def counting_open(path):
        opened[Path(path).name] += 1
        return real_open(path)

    monkeypatch.setattr(bench.speed, "open_image", counting_open)  # the reference loader reads in-process (0 workers)
    out_file = tmp_path / "speed.json"
    code, out, err = cli("speed", "--methods", "lora,linear", "--steps", "3", "--json", "--out", str(out_file))
    assert code == 0, err
    report = json.loads(out)
    assert json.loads(out_file.read_text()) == report
    assert report["device"] == "cpu" and report["backbone"] == "vit_demo_tiny" and report["batch_size"] == 8
    assert report["steps"] == 3 and report["reference_workers"] == 0 and report["torch"] == torch.__version__
    assert "bench speed --methods lora,linear" in report["command"]
    train_images, eval_images = 3 * 8, report["eval_images"]
    assert [row["method"] for row in report["methods"]] == ["lora", "linear"]
    for row in report["methods"]:
        ours, ref = row["ours"], row["reference"]
        for figures in (ours, ref):
            assert figures["train_images_per_s"] > 0 and figures["eval_images_per_s"] > 0
            assert figures["peak_memory_mb"] is None  # CPU
        assert ours["merged_eval"] is True and ref["merged_eval"] is False
        assert row["ratio"]["train"] == pytest.approx(ours["train_images_per_s"] / ref["train_images_per_s"])
        assert row["ratio"]["eval"] > 0
        # warm-up epoch + timed epoch over every training file, then every eval file once
        assert ref["files_decoded"] == 2 * train_images + eval_images
    train_reads = [n for name, n in opened.items() if name.startswith("t")]
    eval_reads = [n for name, n in opened.items() if name.startswith("e")]
    assert len(train_reads) == train_images and set(train_reads) == {2 * 2}  # 2 epochs x 2 methods
    assert len(eval_reads) == eval_images and set(eval_reads) == {2}


def test_speed_table_and_user_errors(cli):
    code, out, err = cli("speed", "--methods", "linear", "--steps", "1", "--no-reference")
    assert code == 0, err
    assert "linear" in out and "ours:" in out
    for args, fragment in (
        (("--methods", "lora,nope"), "unknown method 'nope'"),
        (("--backbone", "vit_nope"), "unknown backbone 'vit_nope'"),
        (("--steps", "0"), "--steps 0 must be at least 1"),
    ):
        code, out, err = cli("speed", *args)
        assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_speed_module_imports_neither_mlflow_nor_optuna():
    """`bench speed` runs where only torch, timm, peft and the CLI's packages are installed: its
    modules are imported afresh here with mlflow and optuna made unimportable."""
    saved = dict(sys.modules)
    ours = ("bench", "methods", "suites", "reports")
    for name in [n for n in sys.modules if n.split(".")[0] in (*ours, "mlflow", "optuna")]:
        del sys.modules[name]
    sys.modules.update({"mlflow": None, "optuna": None})  # what Python does for a package that is not installed
    try:
        importlib.import_module("bench.speed")
        importlib.import_module("bench.cli")
    finally:
        sys.modules.clear()
        sys.modules.update(saved)


def _head_sha() -> str:
    root = Path(__file__).resolve().parent.parent
    return subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()


@pytest.mark.gpu
@gpu
def test_speed_on_gpu(cli):
    code, out, err = cli("speed", "--methods", "lora", "--steps", "5", "--eval-images", "512", "--json")
    assert code == 0, err
    row = json.loads(out)["methods"][0]
    assert row["ours"]["peak_memory_mb"] > 0 and row["ratio"]["train"] > 1


# ---------------------------------------------------------------------------------------
# --gpus parsing


def test_gpus_option(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    assert [s.label for s in parse_gpus("all")] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert [(s.label, s.visible) for s in parse_gpus("2")] == [("cuda:0", "4"), ("cuda:1", "5")]
    assert [(s.label, s.visible) for s in parse_gpus("1,3")] == [("cuda:1", "5"), ("cuda:3", "7")]
    assert [s.label for s in parse_gpus("2,")] == ["cuda:2"]
    for bad in ("5", "0,4", "1,1", "x", "0"):
        with pytest.raises(Exception, match="--gpus"):
            parse_gpus(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_gpus_without_cuda_is_one_line_error(cli, noah_root: Path):
    code, _, err = cli(
        "run", "--suite", "tinyfolder", "--methods", "linear", "--data-root", str(noah_root), "--gpus", "all"
    )
    assert code == 2 and "--gpus all needs CUDA devices" in err and len(err.strip().splitlines()) == 1, err


# ---------------------------------------------------------------------------------------
# The executor: two CPU worker processes against the one-process path


ARGS = ("--suite", "tinyfolder", "--methods", "lora,linear", "--seeds", "2", "--tasks", "alpha")


class _InterruptAtSecondDispatch(SilentReporter):
    """Ctrl-C once two runs are in flight (the workers are still starting: no time is spent training)."""

    def __init__(self) -> None:
        self.started = 0

    def run_started(self, run, epochs) -> None:
        self.started += 1
        if self.started == 2:
            raise KeyboardInterrupt


def _by_key(workdir: Path) -> dict[str, list]:
    return Tracker(default_tracking_uri(workdir)).runs_by_key("bench/tinyfolder")


def _history(workdir: Path, run_id: str) -> list[float]:
    client = Tracker(default_tracking_uri(workdir)).client
    return [m.value for m in sorted(client.get_metric_history(run_id, "train/loss"), key=lambda m: m.step)]


@pytest.mark.slow
def test_parallel_sweep_logs_what_the_one_process_path_logs(
    cli, workdir: Path, tmp_path: Path, noah_root: Path, mlflow_template: Path
):
    # the reference: the one-process path, in its own store
    single = tmp_path / "single"
    single.mkdir()
    shutil.copy(mlflow_template, single / "mlflow.db")
    assert run_cli(["--workdir", str(single), "run", *ARGS, "--data-root", str(noah_root)]) == 0

    request = SweepRequest(
        suite="tinyfolder", methods=["lora", "linear"], seeds=[0, 1], tasks=["alpha"], data_root=noah_root, device="cpu"
    )
    tracker = Tracker(default_tracking_uri(workdir), artifact_root=workdir / "artifacts")

    # 1. a run that fails in its worker: FAILED with its error; the run in flight beside it is finished and
    # logged; a third run starts only if a worker was free before the failure arrived; then the sweep fails
    plan = plan_sweep(request, workdir)
    bad = plan.runs[0]
    plan.runs[:] = [dataclasses.replace(bad, preset=bad.preset.with_overrides(label_smoothing=2.0)), *plan.runs[1:3]]
    with pytest.raises(WorkerRunError, match="label_smoothing") as info:
        run_sweep(plan, tracker, workdir, devices=cpu_slots(2))
    assert "Traceback" in str(info.value.__cause__)  # the worker's traceback, for the crash file
    records = _by_key(workdir)
    failed = records[bad.spec.run_key]
    assert [r.info.status for r in failed] == ["FAILED"] and "label_smoothing" in failed[0].data.tags["bench.error"]
    assert [r.info.status for r in records[plan.runs[1].spec.run_key]] == ["FINISHED"]
    assert [r.info.status for r in records.get(plan.runs[2].spec.run_key, [])] in ([], ["FINISHED"])
    finished = 1 + len(records.get(plan.runs[2].spec.run_key, []))

    # 2. Ctrl-C while runs are in flight: those become KILLED, the workers end, nothing is left RUNNING
    plan = plan_sweep(request, workdir)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(plan, tracker, workdir, _InterruptAtSecondDispatch(), devices=cpu_slots(2))
    records = _by_key(workdir)
    statuses = Counter(r.info.status for rs in records.values() for r in rs)
    assert statuses == {"FAILED": 1, "FINISHED": finished, "KILLED": 2}, statuses
    sweeps = {s.data.tags["bench.sweep_key"]: s.info.status for s in tracker.search("bench/tinyfolder", kind="sweep")}
    assert sweeps[plan.sweep_key] == "KILLED" and list(sweeps.values()).count("FAILED") == 1  # phase 1's
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("bench-worker")]

    # 3. resume through the CLI with two CPU workers: only the unfinished runs train
    code, out, err = cli("run", *ARGS, "--data-root", str(noah_root), "--workers-cpu", "2")
    assert code == 0, err
    assert f"{4 - finished} run(s) trained, {finished} already finished and reused" in out

    ours, theirs = _by_key(workdir), _by_key(single)
    assert set(ours) == set(theirs) and len(ours) == 4
    for key, records in ours.items():
        finished = [r for r in records if r.info.status == "FINISHED"]
        assert len(finished) == 1
        mine, ref = finished[0], theirs[key][0]
        assert mine.data.metrics["test/acc"] == ref.data.metrics["test/acc"]  # same seeds, same result
        assert mine.data.metrics["params/trainable"] == ref.data.metrics["params/trainable"]
        assert _history(workdir, mine.info.run_id) == pytest.approx(_history(single, ref.info.run_id), rel=1e-4)
        assert mine.data.tags["bench.device"] == "cpu" and mine.data.tags["bench.merged_eval"] == "true"
        assert mine.data.tags["bench.train_step"] == "eager"  # what train_run uses on that device
        sha = mine.data.tags.get("bench.git_sha")  # present in a git checkout (CI's clone is one)
        assert sha is None or sha.removesuffix("-dirty") == _head_sha()
        artifacts = {f.path for f in tracker.client.list_artifacts(mine.info.run_id)}
        assert {"config", "eval", "checkpoints"} <= artifacts


@dataclass
class _DyingConfig:
    exit_code: int = 7


def _exit_process(module, args, output):
    os._exit(_DyingConfig.exit_code)  # what a segfault or the OOM killer does to a worker: no goodbye


class _Dying(Method):
    """Test-only: the first forward pass ends the process that runs it."""

    name = "_dying"
    Config = _DyingConfig
    budget_adjustable = False

    def apply(self, model, config):
        model.head.register_forward_hook(_exit_process)
        freeze_all_but(model, [])
        return model

    def count(self, spec: BackboneSpec, config) -> int:
        return 0


@pytest.fixture
def dying_method():
    register_method(_Dying)
    yield
    methods.base._REGISTRY.pop("_dying")


@pytest.mark.slow
def test_a_worker_that_dies_fails_its_run_and_the_sweep(dying_method, workdir: Path, noah_root: Path):
    request = SweepRequest(
        suite="tinyfolder", methods=["_dying"], seeds=[0], tasks=["alpha"], data_root=noah_root, device="cpu"
    )
    tracker = Tracker(default_tracking_uri(workdir), artifact_root=workdir / "artifacts")
    plan = plan_sweep(request, workdir)
    with pytest.raises(WorkerRunError, match=r"the worker on cpu died \(exit code 7\) while training _dying/alpha/s0"):
        run_sweep(plan, tracker, workdir, devices=cpu_slots(1))
    [record] = _by_key(workdir)[plan.runs[0].spec.run_key]
    assert record.info.status == "FAILED" and "died (exit code 7)" in record.data.tags["bench.error"]
