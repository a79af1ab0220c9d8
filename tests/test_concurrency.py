"""Several `bench` processes on one work directory, and signals: a finished run is never
downgraded, each run is trained by one process, and Ctrl-C ends a sweep the same way every time."""

from __future__ import annotations

from pathlib import Path

from bench import schema
from bench.engine import Recorder, RunRecord
from bench.tracking import Tracker, default_tracking_uri


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
