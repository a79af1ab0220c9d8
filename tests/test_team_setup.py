"""The team setup with real servers: a shared `mlflow server` and Optuna on PostgreSQL.

Both servers are started here on 127.0.0.1 (free ports, throwaway stores) and stopped afterwards.
The PostgreSQL test is skipped only where the server binaries are absent (CI installs them from
Debian's ``postgresql`` package in ``.ci/run``).
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {seconds} s")


def _stop_group(proc: subprocess.Popen) -> None:
    """Stop the server we started and its workers (its own process group)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=3)
            return
        except subprocess.TimeoutExpired:
            continue


@pytest.fixture
def mlflow_server(tmp_path: Path, mlflow_template: Path):
    """`mlflow server` on 127.0.0.1 with its own backend store, serving artifacts itself."""
    store = tmp_path / "server"
    store.mkdir()
    shutil.copy(mlflow_template, store / "mlflow.db")  # migrated already: the server starts in seconds
    port = _free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    cmd += ["--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}"]
    cmd += ["--serve-artifacts", "--artifacts-destination", str(store / "artifacts")]
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_http(f"http://127.0.0.1:{port}/health", proc)
        yield f"http://127.0.0.1:{port}", store / "artifacts"
    finally:
        _stop_group(proc)
        log.close()


@pytest.mark.slow
def test_a_demo_sweep_against_a_live_mlflow_server_resumes_and_exports(cli, workdir: Path, mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    uri, artifacts = mlflow_server
    (workdir / "mlflow.db").unlink()  # the workdir keeps data and caches only; runs go to the server
    base = ("run", "--suite", "demo", "--methods", "linear", "--epochs", "1", "--device", "cpu", "--tracking-uri", uri)
    code, out, err = cli(*base, "--seeds", "0,")
    assert code == 0, err
    assert "1 run(s) trained, 0 already finished" in out
    code, out, err = cli(*base, "--seeds", "2")  # resumed: seed 0 is reused from the server
    assert code == 0, err
    assert "1 run(s) trained, 1 already finished and reused" in out

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("bench/demo")
    assert exp.artifact_location.startswith("mlflow-artifacts:")  # uploads go through the server
    runs = client.search_runs([exp.experiment_id], "tags.`bench.kind` = 'run'")
    assert sorted(r.data.tags["bench.seed"] for r in runs) == ["0", "1"]
    assert all(r.info.status == "FINISHED" for r in runs)
    stored = {p.name for p in artifacts.rglob("*") if p.is_file()}
    assert {"predictions.csv", "trainable.safetensors", "resolved.json"} <= stored  # in the server's store
    assert not (workdir / "mlflow.db").exists() and not (workdir / "artifacts").exists()  # nothing local

    code, out, err = cli("export", "linear/digits/s1", "--tracking-uri", uri, "--verify", "--out", str(tmp_path / "x"))
    assert code == 0, err
    assert "797 of 797 test predictions equal" in out  # the run's artifacts, downloaded through the server


# ---------------------------------------------------------------------------------------------
# PostgreSQL


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _as_owner(cmd: list[str], owner: str | None) -> list[str]:
    """PostgreSQL refuses to run as root: as root, run its commands as ``owner``."""
    return ["runuser", "-u", owner, "--", *cmd] if owner else cmd


@pytest.fixture(scope="session")
def postgres_url():
    """A throwaway PostgreSQL cluster on 127.0.0.1 (trust auth, a free port) with a database ``optuna``."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip(
            "PostgreSQL server binaries (initdb, pg_ctl) are not installed; .ci/run installs Debian's postgresql"
        )
    pytest.importorskip("psycopg", reason="psycopg (the dev extra) is needed to reach PostgreSQL")
    owner = None
    if os.geteuid() == 0:
        import pwd

        owner = next((u for u in ("postgres", "nobody") if _has_user(pwd, u)), None)
        if owner is None or shutil.which("runuser") is None:
            pytest.skip("running as root without a postgres/nobody user or runuser to start PostgreSQL as")
    base = Path(tempfile.mkdtemp(prefix="bench-pg-", dir="/tmp"))  # a short socket path, readable by the owner
    if owner:
        shutil.chown(base, owner)
    data, port = base / "data", _free_port()
    run = lambda *cmd: subprocess.run(_as_owner(list(cmd), owner), check=True, capture_output=True, text=True)  # noqa: E731
    try:
        run(initdb, "-D", str(data), "-U", "bench", "--auth=trust", "-E", "UTF8", "--no-sync")
        options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
        run(pg_ctl, "-D", str(data), "-o", options, "-l", str(base / "log"), "-w", "-t", "60", "start")
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=port, user="bench", dbname="postgres", autocommit=True) as con:
            con.execute("CREATE DATABASE optuna")
        yield f"postgresql://bench@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run(_as_owner([pg_ctl, "-D", str(data), "-m", "immediate", "stop"], owner), capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def _has_user(pwd, name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


@pytest.mark.slow
def test_a_two_trial_study_on_live_postgresql_resumes(cli, postgres_url: str, noah_root: Path):
    import optuna

    base = ("tune", "--suite", "tinyfolder", "--methods", "linear", "--data-root", str(noah_root), "--tasks", "alpha")
    base += ("--scheduler", "none")  # every trial trains to the end: two trials spend the budget of two
    code, out, err = cli(*base, "--trials", "1", "--storage", postgres_url)
    assert code == 0, err
    assert f"optuna-dashboard {postgres_url}" in out.replace("\n", "")
    [summary] = optuna.get_all_study_summaries(postgres_url)
    [first] = optuna.load_study(study_name=summary.study_name, storage=postgres_url).get_trials()
    code, out, err = cli(*base, "--trials", "2", "--storage", postgres_url)  # resumed: tops the study up
    assert code == 0, err
    trials = optuna.load_study(study_name=summary.study_name, storage=postgres_url).get_trials()
    assert len(trials) == 2 and all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    assert trials[0].datetime_complete == first.datetime_complete  # trial 0 kept, not trained again
