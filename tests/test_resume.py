"""A sweep killed with SIGKILL resumes: finished runs are skipped, the interrupted run is trained
again, and the interrupted record is never left FINISHED."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from bench.tracking import Tracker, default_tracking_uri
from tests.conftest import bench_subprocess

pytestmark = pytest.mark.slow

ARGS = ("run", "--suite", "demo", "--methods", "linear", "--seeds", "2", "--epochs", "8")


def _wait_until_second_run_is_training(tracker: Tracker, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, "the sweep ended before it could be killed"
        runs = tracker.search("bench/demo")
        finished = [r for r in runs if r.info.status == "FINISHED"]
        running = [r for r in runs if r.info.status == "RUNNING" and "train/loss" in r.data.metrics]
        if finished and running:
            return
        time.sleep(0.2)
    raise AssertionError("the sweep never reached its second run")


def test_killed_sweep_resumes(workdir: Path, tmp_path: Path, cli):
    tracker = Tracker(default_tracking_uri(workdir))
    proc = bench_subprocess("--workdir", str(workdir), *ARGS, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_until_second_run_is_training(tracker, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = {r.info.run_id: r for r in tracker.search("bench/demo")}
    finished = [r for r in before.values() if r.info.status == "FINISHED"]
    interrupted = [r for r in before.values() if r.info.status == "RUNNING"]
    assert len(finished) == 1 and len(interrupted) == 1

    code, out, err = cli(*ARGS)
    assert code == 0, err
    assert "1 run(s) trained, 1 already finished and reused" in out

    after = {r.info.run_id: r for r in tracker.search("bench/demo")}
    assert after[finished[0].info.run_id].info.status == "FINISHED"  # kept, not retrained
    killed = after[interrupted[0].info.run_id]
    assert killed.info.status == "KILLED" and killed.data.tags["bench.interrupted"] == "true"
    new = [r for rid, r in after.items() if rid not in before]
    assert len(new) == 1 and new[0].info.status == "FINISHED"
    assert new[0].data.tags["bench.run_key"] == killed.data.tags["bench.run_key"]
    assert "test/acc" in new[0].data.metrics
    # every run key now has exactly one FINISHED record
    keys = [r.data.tags["bench.run_key"] for r in after.values() if r.info.status == "FINISHED"]
    assert len(keys) == len(set(keys)) == 2
