"""`bench runs` stays readable in an 80-column terminal."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

import bench.cli
from bench.tracking import Tracker, default_tracking_uri


def _runs(workdir: Path, epochs: dict[int, str]) -> None:
    tracker = Tracker(default_tracking_uri(workdir))
    exp = tracker.experiment_id("bench/demo")
    for seed, status in enumerate(["FINISHED", "KILLED", "FAILED"]):
        tags = {
            "bench.kind": "run",
            "bench.run_key": "f" * 64,
            "bench.method": "karst[rescale=none]" if seed else "sparse_tuning",
            "bench.task": "diabetic_retinopathy",
            "bench.seed": str(seed),
            "bench.stage": "final",
        }
        run = tracker.client.create_run(exp, tags=tags)
        tracker.log_metrics(run.info.run_id, {"test/acc": 0.9123, "params/trainable": 1_234_567})
        tracker.client.log_param(run.info.run_id, "hp.epochs", epochs[seed])
        tracker.client.set_terminated(run.info.run_id, status)


def _render(workdir: Path, monkeypatch, width: int) -> str:
    buffer = io.StringIO()
    monkeypatch.setattr(bench.cli, "out", Console(file=buffer, width=width))
    assert bench.cli.run_cli(["--workdir", str(workdir), "runs", "--suite", "demo"]) == 0
    text = buffer.getvalue()
    assert max(len(line) for line in text.splitlines()) <= width
    return text


def test_status_and_names_are_never_cut_at_80_columns(workdir: Path, monkeypatch):
    _runs(workdir, {0: "20", 1: "20", 2: "100"})
    text = _render(workdir, monkeypatch, 80)
    for word in ("FINISHED", "KILLED", "FAILED", "91.23", "epochs"):
        assert word in text, text
    lines = text.splitlines()
    for name in ("sparse_tuning", "karst[rescale=none]"):  # each on one line
        assert any(name in line for line in lines), text
    assert any(" 100 " in line and "FAILED" in line for line in lines), text  # the epochs of each run
    # the trainable-parameter count gives way at 80 columns; a wide terminal shows it
    assert "1,234,567" not in text and "1,234,567" in _render(workdir, monkeypatch, 120)


def test_a_value_every_run_shares_is_in_the_title(workdir: Path, monkeypatch):
    _runs(workdir, {0: "20", 1: "20", 2: "20"})
    text = _render(workdir, monkeypatch, 80)
    title = text.splitlines()[0]
    assert "stage final" in title and "20 epochs" in title, text
    assert any("karst[rescale=none]" in line and "diabetic_retinopathy" in line for line in text.splitlines()), text
