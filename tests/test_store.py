"""The MLflow store survives what users do to it: interrupted creation, emptied, truncated or
damaged files end in a working store or in one line that says how to recover, never in
MLflow's alembic or SQL messages."""

from __future__ import annotations

import shutil
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from bench.cli import run_cli
from bench.errors import BenchError
from bench.tracking import Tracker, default_tracking_uri
from tests.conftest import bench_subprocess
from tests.test_cli_errors import _assert_one_line_error


def _store_error(path: Path) -> str:
    with pytest.raises(BenchError) as info:
        Tracker(f"sqlite:///{path}")
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_an_empty_store_file_is_refused_not_recreated(tmp_path: Path):
    store = tmp_path / "mlflow.db"
    store.write_bytes(b"")
    message = _store_error(store)
    assert "empty file" in message and "delete it" in message
    assert store.stat().st_size == 0, "the file must be left as it was"


def test_a_truncated_store_is_one_line(workdir: Path, cli):
    store = workdir / "mlflow.db"
    store.write_bytes(store.read_bytes()[:100_000])
    code, _, err = cli("runs", "--suite", "demo")
    _assert_one_line_error(code, err, str(store), "is corrupt", "restore it from a backup", "mv ")
    assert "sqlalchemy" not in err.lower()


def test_a_store_with_a_zeroed_header_is_one_line(workdir: Path, cli):
    store = workdir / "mlflow.db"
    data = bytearray(store.read_bytes())
    data[:4096] = bytes(4096)
    store.write_bytes(bytes(data))
    code, _, err = cli("runs", "--suite", "demo")
    _assert_one_line_error(code, err, str(store), "not an SQLite database", "restore it from a backup")


def test_a_half_created_store_says_how_to_recover(tmp_path: Path, mlflow_template: Path):
    store = tmp_path / "mlflow.db"
    shutil.copy(mlflow_template, store)
    with sqlite3.connect(store) as con:
        con.execute("CREATE TABLE _alembic_tmp_trace_tags (key TEXT)")
    message = _store_error(store)
    assert "half-created" in message and "_alembic_tmp_trace_tags" in message
    assert "holds no runs, so delete it" in message


def test_a_half_created_store_with_runs_is_moved_aside_not_deleted(tmp_path: Path, mlflow_template: Path):
    store = tmp_path / "mlflow.db"
    shutil.copy(mlflow_template, store)
    tracker = Tracker(f"sqlite:///{store}")
    tracker.client.create_run(tracker.experiment_id("bench/demo"))
    with sqlite3.connect(store) as con:
        con.execute("CREATE TABLE _alembic_tmp_trace_tags (key TEXT)")
    message = _store_error(store)
    assert "holds 1 run(s)" in message and "move it aside" in message and "delete" not in message


def test_a_sqlite_file_of_another_program_is_refused(tmp_path: Path):
    store = tmp_path / "mlflow.db"
    with sqlite3.connect(store) as con:
        con.execute("CREATE TABLE notes (text TEXT)")
    assert "holds no MLflow schema" in _store_error(store)


def test_a_new_store_appears_complete_and_leaves_nothing_beside_it(tmp_path: Path):
    store = tmp_path / "new" / "mlflow.db"
    store.parent.mkdir()
    Tracker(f"sqlite:///{store}")
    assert sorted(p.name for p in store.parent.iterdir()) == ["mlflow.db"]
    with sqlite3.connect(store) as con:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert "alembic_version" in tables and not any(t.startswith("_alembic_tmp_") for t in tables)


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "delay"), [(signal.SIGINT, 0.3), (signal.SIGKILL, 0.3), (signal.SIGKILL, 1.5)])
def test_interrupting_the_first_command_during_store_creation(tmp_path: Path, sig: int, delay: float, capsys):
    workdir = tmp_path / "fresh"
    proc = bench_subprocess(
        "--workdir",
        str(workdir),
        *("run", "--suite", "demo", "--methods", "linear", "--seeds", "1", "--epochs", "1"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.time() + 120
        while not list(workdir.glob(".mlflow.db.creating-*")):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.time() < deadline, "the store was never created"
            time.sleep(0.02)
        time.sleep(delay)
        proc.send_signal(sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    first_err = proc.stderr.read().decode()
    assert "alembic" not in first_err and "bug in bench" not in first_err

    capsys.readouterr()
    code = run_cli(["--workdir", str(workdir), "runs", "--suite", "demo"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "alembic" not in err
    assert not list(workdir.glob(".mlflow.db.creating-*")), "a killed creator's file is cleaned up"
    statuses = {r.info.status for r in Tracker(default_tracking_uri(workdir)).search("bench/demo")}
    assert "FINISHED" not in statuses  # a run the kill interrupted is never taken as done


def _set_schema_revision(store: Path, revision: str) -> None:
    with sqlite3.connect(store) as con:
        con.execute("UPDATE alembic_version SET version_num = ?", (revision,))
    con.close()


def test_a_store_of_a_newer_mlflow_names_both_versions_and_the_whole_fix(workdir: Path, cli):
    import mlflow

    store = workdir / "mlflow.db"
    _set_schema_revision(store, "0123456789ab")  # a revision this MLflow has never seen
    code, _, err = cli("runs", "--suite", "demo")
    _assert_one_line_error(code, err, str(store), "written by a newer MLflow", mlflow.__version__, "0123456789ab")
    assert err.rstrip().endswith("or point --workdir/--tracking-uri at another store")  # not cut mid-word


def test_a_store_of_an_older_mlflow_gives_the_whole_upgrade_command(workdir: Path, cli):
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    script = ScriptDirectory.from_config(_get_alembic_config(db_url=""))
    older = script.get_revision(script.get_current_head()).down_revision
    store = workdir / "mlflow.db"
    _set_schema_revision(store, older)
    code, _, err = cli("runs", "--suite", "demo")
    _assert_one_line_error(code, err, str(store), "written by an older MLflow", older)
    assert err.rstrip().endswith(f"mlflow db upgrade sqlite:///{store.resolve()}")


@pytest.mark.parametrize(
    "command",
    [
        ("report", "--suite", "demo"),
        ("analyze", "shift", "--suite", "demo"),
        ("export", "0123abcd"),
    ],
)
def test_a_reading_command_on_a_work_directory_without_runs_creates_nothing(tmp_path: Path, command, capsys):
    workdir = tmp_path / "never-used"
    capsys.readouterr()
    code = run_cli(["--workdir", str(workdir), *command])
    err = capsys.readouterr().err
    _assert_one_line_error(code, err, f"no tracking store at {workdir / 'mlflow.db'}", "run `bench run` there first")
    assert not workdir.exists()  # no empty store, no folder
