"""`bench ui` serves the MLflow UI on the work directory's store."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import bench_subprocess

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ui_serves_the_store(workdir: Path, tmp_path: Path):
    port = _free_port()
    log = (tmp_path / "stderr.txt").open("w")
    proc = bench_subprocess("--workdir", str(workdir), "ui", "--port", str(port), stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline, status = time.time() + 90, None
        while time.time() < deadline and status is None:
            assert proc.poll() is None, "the UI exited"
            try:
                url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=10"
                with urllib.request.urlopen(url, timeout=2) as response:
                    status = response.status
            except OSError:
                time.sleep(0.5)
        assert status == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    # the server's workers import a deprecated starlette module: no warning of it reaches the user
    assert "DeprecationWarning" not in (tmp_path / "stderr.txt").read_text()


def test_ui_without_a_store_says_how_to_make_one(cli, workdir: Path):
    (workdir / "mlflow.db").unlink()
    code, _, err = cli("ui")
    assert code == 2 and "no tracking store" in err and "bench run" in err


def _serving(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def test_sigterm_stops_the_server_and_its_workers(workdir: Path):
    import signal

    import psutil

    port = _free_port()
    proc = bench_subprocess(
        "--workdir", str(workdir), "ui", "--port", str(port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.time() + 90
        while not _serving(port):
            assert proc.poll() is None and time.time() < deadline, "the UI never started"
            time.sleep(0.3)
        children = psutil.Process(proc.pid).children(recursive=True)
        assert children, "the server runs in child processes"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, [p.cmdline() for p in alive]
    assert not _serving(port)


def test_ui_refuses_a_damaged_store(cli, workdir: Path):
    (workdir / "mlflow.db").write_bytes(b"")
    code, _, err = cli("ui")
    assert code == 2 and "empty file" in err and (workdir / "mlflow.db").stat().st_size == 0
