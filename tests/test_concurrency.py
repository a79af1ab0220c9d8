"""Several `bench` processes on one work directory, and signals: a finished run is never
downgraded, each run is trained by one process, and Ctrl-C ends a sweep the same way every time."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from bench import interrupts, schema
from bench.claims import RunClaims
from bench.engine import ExecutorOptions, Recorder, RunRecord, SilentReporter, make_executor
from bench.sweep import SweepRequest, plan_sweep, run_record, run_sweep
from bench.tracking import Tracker, default_tracking_uri
from tests.conftest import bench_subprocess


def _record(key: str, stale: list | None = None) -> RunRecord:
    tags = {schema.RUN_KEY: key}
    return RunRecord("bench/demo", None, f"run-{key}", tags, {}, {}, stale or [])


def test_a_finished_run_seen_running_earlier_is_never_marked_killed(workdir: Path):
    # Another process's run, RUNNING when this process planned its sweep, FINISHED since.
    tracker = Tracker(default_tracking_uri(workdir))
    recorder = Recorder(tracker)
    other = recorder.start(_record("k1"))
    snapshot = tracker.search("bench/demo")
    assert [r.info.status for r in snapshot] == ["RUNNING"]
    recorder.end(other, "FINISHED")

    recorder.start(_record("k1", stale=snapshot))  # this process now trains the run again
    assert tracker.client.get_run(other).info.status == "FINISHED"
    assert schema.INTERRUPTED not in tracker.client.get_run(other).data.tags


def test_a_run_left_running_is_closed_as_killed(workdir: Path):
    tracker = Tracker(default_tracking_uri(workdir))
    recorder = Recorder(tracker)
    left = recorder.start(_record("k2"))
    recorder.start(_record("k2", stale=tracker.search("bench/demo")))
    closed = tracker.client.get_run(left)
    assert closed.info.status == "KILLED" and closed.data.tags[schema.INTERRUPTED] == "true"


# ---------------------------------------------------------------------------------------
# Claims: sweeps sharing a work directory divide the runs


def test_a_claim_excludes_other_holders_until_released_and_leaves_no_file(tmp_path: Path):
    mine, theirs = RunClaims(tmp_path / "claims"), RunClaims(tmp_path / "claims")
    assert mine.claim("k") and mine.claim("k")  # a holder may ask again
    assert not theirs.claim("k")
    mine.release("k")
    assert not (tmp_path / "claims" / "k.lock").exists()
    assert theirs.claim("k") and not mine.claim("k")
    theirs.release_all()
    assert mine.claim("k")


class _Order(SilentReporter):
    def __init__(self) -> None:
        self.started: list[int] = []

    def run_started(self, run, epochs) -> None:
        self.started.append(run.spec.seed)


def _two_run_plan(workdir: Path, noah_root: Path):
    request = SweepRequest(
        suite="tinyfolder",
        methods=["linear"],
        seeds=[0, 1],
        tasks=["alpha"],
        data_root=noah_root,
        device="cpu",
        epochs=1,
        system_metrics=False,
    )
    return plan_sweep(request, workdir)


def test_a_run_another_process_holds_is_trained_once_it_lets_go(workdir: Path, noah_root: Path):
    plan = _two_run_plan(workdir, noah_root)
    held = plan.runs[0].spec.run_key
    other = RunClaims(workdir / "claims")  # another process's claim on the sweep's first run
    assert other.claim(held)
    threading.Timer(3.0, other.release, args=(held,)).start()
    tracker = Tracker(default_tracking_uri(workdir), artifact_root=workdir / "artifacts")
    order = _Order()
    outcomes = run_sweep(plan, Recorder(tracker), make_executor(ExecutorOptions(kind="inline"), "cpu"), workdir, order)
    assert order.started == [1, 0]  # the free run first, the held one once it was let go
    assert [o.status for o in outcomes] == ["trained", "trained"]
    statuses = Counter(r.info.status for rs in tracker.runs_by_key(plan.experiment).values() for r in rs)
    assert statuses == {"FINISHED": 2}
    assert not list((workdir / "claims").iterdir())


def test_a_run_another_process_finished_meanwhile_is_reused_not_trained_again(workdir: Path, noah_root: Path):
    plan = _two_run_plan(workdir, noah_root)
    run = plan.runs[0]
    tracker = Tracker(default_tracking_uri(workdir), artifact_root=workdir / "artifacts")
    other = RunClaims(workdir / "claims")
    assert other.claim(run.spec.run_key)
    theirs = Recorder(tracker).start(run_record(run, plan.stage, plan.experiment, None, []))

    def finish() -> None:
        tracker.client.log_metric(theirs, schema.TEST_ACC, 0.5)
        tracker.end_child(theirs, "FINISHED")
        other.release(run.spec.run_key)

    threading.Timer(3.0, finish).start()
    order = _Order()
    outcomes = run_sweep(plan, Recorder(tracker), make_executor(ExecutorOptions(kind="inline"), "cpu"), workdir, order)
    assert order.started == [1]
    assert [(o.status, o.run_id) for o in outcomes][0] == ("skipped", theirs)
    assert outcomes[0].eval_acc == 0.5 and outcomes[1].status == "trained"
    records = tracker.runs_by_key(plan.experiment)
    assert [r.info.status for r in records[run.spec.run_key]] == ["FINISHED"]


@pytest.mark.slow
def test_two_sweeps_started_at_once_on_a_new_work_directory_train_each_run_once(tmp_path: Path):
    workdir = tmp_path / "shared"  # no store, no demo data yet: both processes create them
    args = ("--workdir", str(workdir), "run", "--suite", "demo", "--methods", "linear", "--seeds", "4", "--epochs", "1")
    procs = [
        bench_subprocess(*args, "--no-system-metrics", stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [p.communicate(timeout=600) for p in procs]
    for proc, (_, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err
        assert "Traceback" not in err and "internal error" not in err
    trained = [int(re.search(r"(\d+) run\(s\) trained, (\d+) already", out).group(1)) for out, _ in results]
    assert sum(trained) == 4, [out for out, _ in results]
    records = Tracker(default_tracking_uri(workdir)).runs_by_key("bench/demo")
    assert len(records) == 4
    assert all([r.info.status for r in rs] == ["FINISHED"] for rs in records.values()), {
        k: [r.info.status for r in rs] for k, rs in records.items()
    }


# ---------------------------------------------------------------------------------------
# Ctrl-C


class _SwallowCtrlC(SilentReporter):
    """A Ctrl-C caught and dropped by code the sweep calls, as a finaliser run by the garbage
    collector does with any exception."""

    def __init__(self) -> None:
        self.swallowed = 0

    def run_started(self, run, epochs) -> None:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1.0)
        except KeyboardInterrupt:
            self.swallowed += 1


def test_a_swallowed_ctrl_c_still_ends_the_sweep_and_kills_the_run(workdir: Path, noah_root: Path):
    plan = _two_run_plan(workdir, noah_root)
    tracker = Tracker(default_tracking_uri(workdir), artifact_root=workdir / "artifacts")
    reporter = _SwallowCtrlC()
    with interrupts.handling():
        with pytest.raises(KeyboardInterrupt):
            run_sweep(plan, Recorder(tracker), make_executor(ExecutorOptions(kind="inline"), "cpu"), workdir, reporter)
        assert interrupts.received()
    assert reporter.swallowed == 1
    statuses = [r.info.status for rs in tracker.runs_by_key(plan.experiment).values() for r in rs]
    assert statuses == ["KILLED"]  # ended at its first epoch; the second run never started


def test_ctrl_c_while_a_run_end_is_written_waits_for_it(workdir: Path):
    tracker = Tracker(default_tracking_uri(workdir))
    recorder = Recorder(tracker)
    run_id = recorder.start(_record("k3"))
    with interrupts.handling(), pytest.raises(KeyboardInterrupt), interrupts.deferred():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.2)  # the signal arrives here and is held back
        recorder.end(run_id, "FINISHED")
    assert tracker.client.get_run(run_id).info.status == "FINISHED"


def test_a_process_started_to_ignore_ctrl_c_keeps_ignoring_it():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a shell starts `bench run … &`
    try:
        with interrupts.handling():
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
            assert not interrupts.received()
    finally:
        signal.signal(signal.SIGINT, previous)


def _statuses(tracker: Tracker) -> list[str]:
    return [r.info.status for r in tracker.search("bench/demo")]


def _moment_reached(tracker: Tracker, moment: str) -> bool:
    runs = tracker.search("bench/demo")
    if moment == "sweep opened":
        return bool(tracker.search("bench/demo", kind="sweep"))
    if moment == "mid-run":
        return any(r.info.status == "RUNNING" and "train/loss" in r.data.metrics for r in runs)
    return any(r.info.status == "FINISHED" for r in runs)  # "a run finished"


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["sweep opened", "mid-run", "a run finished"])
def test_ctrl_c_prints_one_interrupted_line_exits_130_and_loses_nothing(workdir: Path, moment: str, cli):
    args = ("run", "--suite", "demo", "--methods", "linear", "--seeds", "2", "--epochs", "2", "--no-system-metrics")
    tracker = Tracker(default_tracking_uri(workdir))
    proc = bench_subprocess("--workdir", str(workdir), *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        while not _moment_reached(tracker, moment):
            assert proc.poll() is None and time.time() < deadline, "the sweep ended before it could be interrupted"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1] == "interrupted; finished runs are kept, runs in progress will be trained again", err
    assert sum("interrupted" in line for line in lines) == 1 and "Traceback" not in err and "Aborted" not in err
    before = _statuses(tracker)
    assert set(before) <= {"FINISHED", "KILLED"}, before  # nothing left RUNNING
    finished = {r.info.run_id for r in tracker.search("bench/demo") if r.info.status == "FINISHED"}

    code, out, err = cli(*args)
    assert code == 0, err
    assert f"{2 - len(finished)} run(s) trained, {len(finished)} already finished and reused" in out
    records = tracker.runs_by_key("bench/demo")
    assert all(sum(r.info.status == "FINISHED" for r in rs) == 1 for rs in records.values()) and len(records) == 2
    assert finished <= {r.info.run_id for rs in records.values() for r in rs if r.info.status == "FINISHED"}


# ---------------------------------------------------------------------------------------
# Tuning trials left RUNNING by a killed `bench tune`


def test_reopening_a_study_closes_its_trials_left_running_and_keeps_finished_ones(workdir: Path):
    tracker = Tracker(default_tracking_uri(workdir))
    recorder = Recorder(tracker)
    study_tags = {schema.STUDY: "demo-digits-lora", schema.SWEEP_NAME: "study/demo-digits-lora"}
    parent = recorder.open_parent("bench/demo-tune", "study-key", study_tags, {})
    trial = RunRecord("bench/demo-tune", parent, "trial-000", {schema.RUN_KEY: "t0"}, {}, {})
    done = recorder.start(trial)
    recorder.end(done, "FINISHED")
    left = recorder.start(dataclasses.replace(trial, name="trial-001", tags={schema.RUN_KEY: "t1"}))
    # a trial another `bench tune` is training now (its Optuna trial RUNNING, heartbeat fresh)
    elsewhere = recorder.start(dataclasses.replace(trial, name="trial-002", tags={schema.RUN_KEY: "t2"}))
    assert (
        recorder.open_parent(
            "bench/demo-tune", "study-key", study_tags, {}, live=lambda r: r.data.tags[schema.RUN_KEY] == "t2"
        )
        == parent
    )
    assert tracker.client.get_run(elsewhere).info.status == "RUNNING"  # left to the process training it
    assert tracker.client.get_run(left).info.status == "KILLED"
    sweep = recorder.open_parent("bench/demo", "sweep-key", {schema.SWEEP_NAME: "sweep"}, {})
    in_flight = recorder.start(RunRecord("bench/demo", sweep, "run", {schema.RUN_KEY: "r"}, {}, {}))

    assert recorder.open_parent("bench/demo-tune", "study-key", study_tags, {}) == parent  # the next `bench tune`
    assert tracker.client.get_run(done).info.status == "FINISHED"
    killed = tracker.client.get_run(left)
    assert killed.info.status == "KILLED" and killed.data.tags[schema.INTERRUPTED] == "true"
    recorder.open_parent("bench/demo", "sweep-key", {schema.SWEEP_NAME: "sweep"}, {})
    assert tracker.client.get_run(in_flight).info.status == "RUNNING"  # a sweep's runs wait for their claims
