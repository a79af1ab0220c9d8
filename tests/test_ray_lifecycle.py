"""A local Ray cluster started by `bench run --executor ray`: where it listens, and what is left of
it when bench is stopped by SIGTERM, SIGINT or SIGKILL.

Each test runs bench in a fresh interpreter, as a user would, with its own RAY_TMPDIR; the
cluster's processes are found by that folder (a command line naming it, or an open file in it,
such as a worker's log), never by their names.
"""

from __future__ import annotations

import ipaddress
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from bench.tracking import Tracker, default_tracking_uri
from tests.conftest import RAY_SMALL, bench_subprocess

pytestmark = pytest.mark.slow

ARGS = (
    "run", "--suite", "demo", "--methods", "linear", "--seeds", "1", "--epochs", "40",
    "--executor", "ray", "--workers", "1", *RAY_SMALL,
)  # fmt: skip


def _of_cluster(process: psutil.Process, folder: str) -> bool:
    try:
        if any(folder in arg for arg in process.cmdline()):
            return True
        return any(f.path.startswith(folder) for f in process.open_files())
    except psutil.Error:
        return False


def _cluster_processes(folder: str) -> list[psutil.Process]:
    return [p for p in psutil.process_iter() if _of_cluster(p, folder)]


def _start_and_wait_for_training(workdir: Path) -> subprocess.Popen:
    tracker = Tracker(default_tracking_uri(workdir))
    proc = bench_subprocess(
        "--workdir", str(workdir), *ARGS, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )  # fmt: skip
    deadline = time.time() + 300
    while time.time() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        runs = tracker.search("bench/demo")
        if any(r.info.status == "RUNNING" and "train/loss" in r.data.metrics for r in runs):
            return proc
        time.sleep(0.3)
    proc.kill()
    raise AssertionError("the Ray sweep never started training")


def _listening(processes: list[psutil.Process]) -> list[tuple[str, str, int]]:
    found = []
    for process in processes:
        try:
            for conn in process.net_connections(kind="inet"):
                if conn.status == psutil.CONN_LISTEN:
                    found.append((process.name(), conn.laddr.ip, conn.laddr.port))
        except psutil.Error:
            continue
    return found


def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1, a dual-stack socket bound to loopback
    return (mapped or address).is_loopback


def _assert_nothing_left(ray_tmp: str) -> None:
    deadline = time.time() + 20  # the watchdog's grace period for a process that ignores SIGTERM
    while time.time() < deadline and (_cluster_processes(ray_tmp) or list(Path(ray_tmp).iterdir())):
        time.sleep(0.5)
    assert _cluster_processes(ray_tmp) == []
    assert list(Path(ray_tmp).iterdir()) == []  # the cluster's session folder is gone


def test_a_local_ray_cluster_listens_on_loopback_only_and_sigterm_stops_it_cleanly(workdir: Path, ray_tmp: str):
    proc = _start_and_wait_for_training(workdir)
    try:
        started = [proc, *psutil.Process(proc.pid).children(recursive=True)]
        ours = {p.pid: p for p in [*started, *_cluster_processes(ray_tmp)]}
        listening = _listening(list(ours.values()))
        names = {name for name, _, _ in listening}
        assert {"gcs_server", "raylet"} <= names, listening  # the cluster was seen, listening
        assert [entry for entry in listening if not _is_loopback(entry[1])] == []

        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.strip().splitlines()[-1] == "terminated; finished runs are kept, runs in progress will be trained again"
    for noise in ("Traceback", "ERROR", "(raylet)", "SIGTERM", "core_worker"):
        assert noise not in err, err
    _assert_nothing_left(ray_tmp)
    [run] = [r for r in Tracker(default_tracking_uri(workdir)).search("bench/demo")]
    assert run.info.status == "KILLED"  # recorded, and trained again by the next command


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_no_ray_process_or_folder_outlives_bench(sig: signal.Signals, workdir: Path, ray_tmp: str):
    proc = _start_and_wait_for_training(workdir)
    try:
        assert len(_cluster_processes(ray_tmp)) >= 3  # GCS, raylet, a worker at least: the count is real
        proc.send_signal(sig)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 130)
    _assert_nothing_left(ray_tmp)
