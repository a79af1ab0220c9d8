"""Compiled training steps are built once per kind and reused: across seeds, across tasks with other
class counts, and across processes (a resumed sweep, the background compilation)."""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path

import pytest
import timm
import torch
from torch._dynamo.utils import counters

from bench.compile_cache import Ledger, StepCache, cache_folder, step_kind
from bench.efficiency import measure
from bench.engine import Recorder, make_executor
from bench.engine.driver import RunOutcome, RunTiming
from bench.engine.executors import ExecutorOptions
from bench.engine.work import COMPILE_MODE_ENV, Work, build_model, step_cache
from bench.sweep import SweepRequest, plan_sweep, run_sweep
from bench.tracking import Tracker
from bench.train import Headless, SplitData, _WarmUpClock, classifier_slot, train_run


def _kind(**change):
    base = dict(
        method="lora",
        method_config={"r": 8},
        backbone="vit_base_patch16_224",
        img_size=224,
        batch_size=64,
        drop_path=0.0,
        mode="step-cudagraphs",
        frozen_bf16=True,
        device="NVIDIA H100 80GB HBM3",
    )
    return step_kind(**{**base, **change})


def test_a_kind_of_step_names_what_its_graph_depends_on_and_not_the_class_count():
    assert _kind() == _kind()
    for change in ({"method": "karst"}, {"method_config": {"r": 4}}, {"batch_size": 32}, {"mode": "step"}):
        assert _kind(**change) != _kind(), change
    assert "num_classes" not in _kind().description


def test_the_compile_cache_folder_is_the_work_directory_s_unless_the_environment_names_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.delenv("BENCH_COMPILE_CACHE", raising=False)
    assert cache_folder(tmp_path) == tmp_path / "cache" / "compile"
    monkeypatch.setenv("BENCH_COMPILE_CACHE", str(tmp_path / "shared"))
    assert cache_folder(tmp_path) == tmp_path / "shared"


def test_one_process_compiles_a_kind_at_a_time_and_a_dead_one_s_claim_is_taken_over(tmp_path: Path):
    ledger, kind = Ledger(tmp_path), _kind()
    assert ledger.claim(kind)
    assert not ledger.claim(kind)  # this process holds it (alive)
    ledger.release(kind)
    (tmp_path / "kinds" / f"{kind.key}.lock").write_text("999999999")  # no such process
    assert ledger.claim(kind)
    assert not ledger.is_warm(kind)
    ledger.record(kind, 12.5, by="test")
    assert ledger.is_warm(kind) and ledger.compile_seconds(kind) == 12.5


@pytest.mark.parametrize(
    "backbone, path", [("vit_tiny_patch16_224", "head"), ("swin_tiny_patch4_window7_224", "head.fc")]
)
def test_headless_takes_the_classifier_out_and_puts_it_back(backbone: str, path: str):
    kwargs = {"img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 16, "num_heads": 1}
    if backbone.startswith("swin"):
        kwargs = {"img_size": 32, "patch_size": 4, "window_size": 2, "depths": (1,), "num_heads": (1,), "embed_dim": 8}
    model = timm.create_model(backbone, num_classes=5, **kwargs).eval()
    parent, name = classifier_slot(model)
    head = getattr(parent, name)
    assert model.get_submodule(path) is head
    x = torch.randn(2, 3, 32, 32)
    logits = model(x)
    with Headless(model) as headless:
        features = model(x)
        assert features.shape[-1] == head.in_features
        torch.testing.assert_close(headless.head(features), logits)
    assert model.get_submodule(path) is head


def test_warm_up_is_the_timed_first_steps_less_their_steady_cost():
    clock = _WarmUpClock(torch.device("cpu"))
    clock.seconds, clock.steps = 5.0, 2  # two first steps took 5 s
    warm, steady = clock.split(train_seconds=14.0, total_steps=11)  # the other 9 took 9 s: 1 s a step
    assert warm == pytest.approx(3.0) and steady == pytest.approx(11.0)
    clock.seconds, clock.steps = 2.0, 2
    assert clock.split(train_seconds=2.0, total_steps=2) == (2.0, 0.0)  # no steady step at all


def test_sweep_efficiency_is_steady_training_over_wall_time_and_slots():
    def trained(steady: float) -> RunOutcome:
        return RunOutcome(None, "trained", "r", 0.5, timing=RunTiming(steady + 1.0, 2.0, steady))

    outcomes = [trained(6.0), trained(9.0), RunOutcome(None, "skipped", "s", 0.4)]
    cost = measure(outcomes, wall_s=30.0, slots=1)
    assert (cost.runs, cost.train_s, cost.warmup_s, cost.steady_s) == (2, 17.0, 4.0, 15.0)
    assert cost.efficiency == pytest.approx(0.5)
    assert measure(outcomes, wall_s=30.0, slots=2).efficiency == pytest.approx(0.25)
    assert "2 runs trained in 30.0 s" in cost.line() and "efficiency 50%" in cost.line()


def _assert_loaded_not_compiled() -> None:
    """Dynamo traced a graph, and AOTAutograd and Inductor found it in the cache: nothing was compiled."""
    seen = {k: dict(v) for k, v in counters.items() if k in ("inductor", "aot_autograd", "stats")}
    assert counters["stats"]["unique_graphs"] >= 1, seen
    assert counters["aot_autograd"]["autograd_cache_hit"] >= 1, seen
    assert counters["aot_autograd"]["autograd_cache_miss"] == 0 and counters["inductor"]["fxgraph_cache_miss"] == 0, (
        seen
    )


def _wait_warm(cache: StepCache, seconds: float = 600) -> None:
    deadline = time.monotonic() + seconds
    while not cache.is_warm():
        assert time.monotonic() < deadline, f"the background compilation did not finish: {cache.folder}/kinds"
        time.sleep(1)


@pytest.mark.slow
def test_a_kind_is_compiled_once_then_reused_by_a_resumed_sweep_and_another_class_count(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
):
    """The first run of a cold kind trains eagerly while another process compiles its step; a resumed
    sweep (a new seed) and a run on a task with another class count then load that compiled step
    from the cache: Inductor's cache hits, no miss."""
    monkeypatch.setenv(COMPILE_MODE_ENV, "step")  # compiled on the CPU, as on CUDA by default
    monkeypatch.delenv("BENCH_COMPILE_CACHE", raising=False)
    tracker = Tracker(f"sqlite:///{workdir / 'mlflow.db'}", artifact_root=workdir / "artifacts")
    request = SweepRequest(suite="demo", methods=["lora"], seeds=[0], epochs=1, device="cpu")

    def sweep(seeds: list[int]) -> RunOutcome:
        plan = plan_sweep(dataclasses.replace(request, seeds=seeds), workdir)
        executor = make_executor(ExecutorOptions(kind="inline"), "cpu")
        try:
            (outcome,) = [o for o in run_sweep(plan, Recorder(tracker), executor, workdir) if o.status == "trained"]
        finally:
            executor.close(True)
        return outcome, plan

    first, plan = sweep([0])
    assert tracker.client.get_run(first.run_id).data.tags["bench.train_step"].startswith("eager")
    cache = step_cache(
        Work(0, plan.runs[0], plan.stage, plan.weights, compile_cache=str(cache_folder(workdir))),
        torch.device("cpu"),
        "step",
    )
    _wait_warm(cache)
    assert (workdir / "cache" / "compile" / "kinds" / f"{cache.kind.key}.json").is_file()

    counters.clear()
    resumed, _ = sweep([0, 1])  # seed 0 is reused, seed 1 trains
    assert tracker.client.get_run(resumed.run_id).data.tags["bench.train_step"] == "step"
    _assert_loaded_not_compiled()

    # the same method and backbone on a 3-class task: same kind, same graph
    run = plan.runs[0]
    three = dataclasses.replace(run, spec=dataclasses.replace(run.spec, num_classes=3, seed=2))
    other = step_cache(
        Work(0, three, plan.stage, plan.weights, compile_cache=str(cache_folder(workdir))), torch.device("cpu"), "step"
    )
    assert other.kind == cache.kind
    model, mean, std = build_model(three, plan.weights)
    g = torch.Generator().manual_seed(0)
    n = 4 * three.preset.batch_size  # full batches run the compiled step; two of them are its warm-up
    data = SplitData(
        torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.randint(0, 3, (n,), generator=g)
    )
    counters.clear()
    result = train_run(
        model,
        three.method,
        three.preset,
        plan.stage,
        data,
        data,
        seed=2,
        device=torch.device("cpu"),
        mean=mean,
        std=std,
        compile_mode="step",
        step_cache=other,
    )
    assert result.train_step == "step" and result.trainable_state["head.weight"].shape[0] == 3
    _assert_loaded_not_compiled()
    assert result.warmup_seconds > 0 and result.steady_seconds > 0
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str((workdir / "cache" / "compile").resolve())
