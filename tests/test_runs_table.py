"""`bench runs` stays readable in an 80-column terminal."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

import bench.cli
from bench.tracking import Tracker, default_tracking_uri


def test_status_is_never_cut_at_80_columns(workdir: Path, monkeypatch):
    tracker = Tracker(default_tracking_uri(workdir))
    exp = tracker.experiment_id("bench/demo")
    for seed, status in enumerate(["FINISHED", "KILLED", "FAILED"]):
        tags = {
            "bench.kind": "run",
            "bench.run_key": "f" * 64,
            "bench.method": "sparse_tuning",
            "bench.task": "diabetic_retinopathy",
            "bench.seed": str(seed),
            "bench.stage": "final",
        }
        run = tracker.client.create_run(exp, tags=tags)
        tracker.log_metrics(run.info.run_id, {"test/acc": 0.9123, "params/trainable": 1_234_567})
        tracker.client.set_terminated(run.info.run_id, status)
    buffer = io.StringIO()
    monkeypatch.setattr(bench.cli, "out", Console(file=buffer, width=80))
    assert bench.cli.run_cli(["--workdir", str(workdir), "runs", "--suite", "demo"]) == 0
    text = buffer.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    for word in ("FINISHED", "KILLED", "FAILED", "91.23", "1,234,567"):
        assert word in text, text
