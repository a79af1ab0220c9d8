"""MLflow tracking: where runs live, how a finished run is recognised, and what a run stores.

Layout: one experiment per suite (``bench/<suite>``), a parent run per sweep, one
child run per run. Children carry ``bench.*`` tags, ``bench.run_key`` among them; a run is done
when a child with its key is FINISHED. FINISHED is written last, after every metric and artifact,
so a process killed at any point leaves RUNNING (or FAILED) behind, never FINISHED. A later
sweep marks such leftovers KILLED and trains the run again.

Everything goes through ``MlflowClient`` with explicit run ids: no fluent "active run" state,
which would not survive several runs per process or several processes per store.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from . import schema
from .errors import BenchError

KIND_RUN = schema.KIND_RUN
KIND_SWEEP = schema.KIND_SWEEP


def default_tracking_uri(workdir: Path) -> str:
    return f"sqlite:///{(workdir / 'mlflow.db').resolve()}"


def experiment_name(suite: str, tune: bool = False) -> str:
    return f"bench/{suite}-tune" if tune else f"bench/{suite}"


def _flatten(prefix: str, value: Any, out: dict[str, str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = json.dumps(value) if isinstance(value, list | tuple) else str(value)


def flatten_params(values: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    _flatten("", values, out)
    return out


SQLITE_HEADER = b"SQLite format 3\x00"


def sqlite_path(tracking_uri: str) -> Path | None:
    """The file behind a ``sqlite:///`` URI (None for other stores and in-memory databases)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    rest = tracking_uri.removeprefix("sqlite:///").split("?", 1)[0]
    return Path(rest) if rest and rest != ":memory:" else None


def _move_aside(path: Path) -> str:
    return f"move it aside (mv {path} {path}.broken) and run the command again to start a new store"


def check_sqlite_store(path: Path) -> None:
    """Refuse a store file that is not a whole MLflow database, with the way out, in one line.

    MLflow itself would treat a file without its tables as a fresh store and migrate it in place,
    so a truncated or emptied store would silently restart from nothing (and a store whose
    creation was interrupted fails every command with an alembic error).
    """
    import sqlite3

    try:
        with path.open("rb") as f:
            header = f.read(len(SQLITE_HEADER))
    except OSError as exc:
        raise BenchError(f"tracking store {path} cannot be read ({exc.strerror}); check its permissions") from None
    if not header:
        raise BenchError(
            f"tracking store {path} is an empty file (0 bytes), not an MLflow database; it holds no runs, so "
            "delete it and run the command again (a new store is created), or point --workdir elsewhere"
        )
    if header != SQLITE_HEADER:
        raise BenchError(
            f"tracking store {path} is not an SQLite database (its header is damaged or it is another file); "
            f"restore it from a backup or {_move_aside(path)}"
        )
    try:
        # read-write, so that SQLite rolls back a journal left by a killed writer before checking
        con = sqlite3.connect(str(path))
        try:
            problem = con.execute("PRAGMA quick_check(1)").fetchone()[0]
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            runs = con.execute("SELECT count(*) FROM runs").fetchone()[0] if "runs" in tables else 0
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:
        problem = " ".join(str(exc).split())
    if problem != "ok":
        raise BenchError(
            f"tracking store {path} is corrupt (SQLite: {problem[:80]}); restore it from a backup or {_move_aside(path)}"
        )
    leftovers = sorted(t for t in tables if t.startswith("_alembic_tmp_"))
    if leftovers or "alembic_version" not in tables:
        what = (
            f"was left half-created by an interrupted command (leftover table {leftovers[0]})"
            if leftovers
            else "holds no MLflow schema"
        )
        fix = (
            f"it holds no runs, so delete it ({path}) and run the command again"
            if not runs
            else f"it holds {runs} run(s): {_move_aside(path)}"
        )
        raise BenchError(f"tracking store {path} {what}; {fix}")
    _check_schema_revision(path)


def _check_schema_revision(path: Path) -> None:
    """A store whose schema this MLflow does not have: say which MLflow wrote it and the whole fix.

    MLflow's own message suggests ``mlflow db upgrade`` for any mismatch, which cannot help a store
    written by a newer MLflow (this one does not know its revision).
    """
    import sqlite3

    import mlflow
    from alembic.script import ScriptDirectory
    from mlflow.store.db.utils import _get_alembic_config

    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        row = con.execute("SELECT version_num FROM alembic_version").fetchone()
    finally:
        con.close()
    revision = row[0] if row else None
    script = ScriptDirectory.from_config(_get_alembic_config(db_url=""))
    head = script.get_current_head()
    if revision is None or revision == head:
        return
    known = {r.revision for r in script.walk_revisions()}
    if revision not in known:
        raise BenchError(
            f"tracking store {path} was written by a newer MLflow than this one ({mlflow.__version__}): its schema "
            f"revision {revision} is unknown here, where the newest is {head}; install the MLflow version that "
            "wrote it (pip install -U mlflow), or point --workdir/--tracking-uri at another store"
        )
    raise BenchError(
        f"tracking store {path} was written by an older MLflow (schema revision {revision}; this MLflow, "
        f"{mlflow.__version__}, uses {head}); back it up, then upgrade it in place with: "
        f"mlflow db upgrade sqlite:///{path.resolve()}"
    )


@contextmanager
def quiet_migrations() -> Iterator[None]:
    """MLflow logs each step of creating and migrating a store at INFO ("Creating initial MLflow
    database tables...", alembic's "Running upgrade …"): bench's own business, not the user's."""
    loggers = [logging.getLogger(name) for name in ("mlflow.store.db.utils", "alembic")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def create_sqlite_store(path: Path) -> None:
    """Create and migrate a new sqlite store beside ``path``, then move it into place in one step.

    Migrating takes seconds; done in place, an interrupt in that window leaves a half-migrated
    file that no later command can open. A store only ever appears at ``path`` complete.
    """
    from mlflow.tracking import MlflowClient

    if not path.parent.is_dir():
        raise BenchError(
            f"cannot create the tracking store {path}: folder {path.parent} does not exist; "
            "create it or pass another --tracking-uri"
        )
    prefix = f".{path.name}.creating-"
    for stale in path.parent.glob(prefix + "*"):  # left by a creator that was killed
        pid = stale.name.removeprefix(prefix).split("-")[0]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            stale.unlink(missing_ok=True)
    tmp = path.parent / f"{prefix}{os.getpid()}"
    try:
        tmp.unlink(missing_ok=True)
        with quiet_migrations():
            client = MlflowClient(tracking_uri=f"sqlite:///{tmp}")
            client.search_experiments(max_results=1)  # runs every migration
        store = getattr(getattr(client, "_tracking_client", None), "store", None)
        if store is not None and hasattr(store, "engine"):
            store.engine.dispose()  # no connection may outlive the rename
        try:
            os.link(tmp, path)  # never replaces a store another process finished first
        except FileExistsError:
            pass
        except OSError:  # a file system without hard links
            os.replace(tmp, path)
    except Exception as exc:
        detail = " ".join(str(exc).split())[:160]
        raise BenchError(
            f"cannot create the tracking store {path} ({type(exc).__name__}: {detail}); "
            "check that its folder is writable, or pass --workdir/--tracking-uri"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)


def experiment_artifacts(artifact_root: Path, experiment: str) -> str:
    """Where the runs of ``experiment`` keep their artifacts under a work directory's artifact folder."""
    return (artifact_root.resolve() / experiment.replace("/", "_")).as_uri()


def follow_moved_artifacts(store: Path, artifact_root: Path) -> int:
    """Re-point the experiments of a moved or copied work directory at its artifact folder; return how many.

    MLflow stores absolute artifact locations (a relative one is resolved against the current
    folder), so after ``mv runs runs2`` the store in ``runs2`` would still send new artifacts to
    ``runs/artifacts`` and read old ones from there. An experiment whose location is
    ``<another folder>/artifacts/<experiment>``, the shape this tracker gives them, is moved to the
    same place under ``artifact_root``, with the artifact location of every run in it.
    """
    import sqlite3

    moved = 0
    con = sqlite3.connect(str(store), timeout=60)
    try:
        with con:  # one transaction: every experiment and its runs, or nothing
            rows = con.execute("SELECT experiment_id, name, artifact_location FROM experiments").fetchall()
            for exp_id, name, old in rows:
                new = experiment_artifacts(artifact_root, name)
                tail = new.removeprefix(artifact_root.resolve().parent.as_uri())  # /artifacts/<experiment>
                if not old or old == new or not old.startswith("file://") or not old.endswith(tail):
                    continue
                con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?", (new, exp_id))
                con.execute(
                    "UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) "
                    "WHERE experiment_id = ? AND substr(artifact_uri, 1, ?) = ?",
                    (new, len(old) + 1, exp_id, len(old), old),
                )
                moved += 1
    finally:
        con.close()
    return moved


class Tracker:
    """A tracking store (any MLflow URI) with the harness's conventions on top."""

    def __init__(self, tracking_uri: str, artifact_root: Path | None = None):
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri
        self.artifact_root = artifact_root
        path = sqlite_path(tracking_uri)
        if path is not None:
            if path.exists():
                check_sqlite_store(path)
                if artifact_root is not None:
                    follow_moved_artifacts(path, artifact_root)
            else:
                create_sqlite_store(path)
        try:
            with quiet_migrations():  # a new PostgreSQL or MySQL store is migrated here
                self.client = MlflowClient(tracking_uri=tracking_uri)
                self.client.search_experiments(max_results=1)  # opens the store now, not mid-sweep
        except Exception as exc:
            detail = " ".join(str(exc).split())[:160]
            raise BenchError(
                f"cannot open the tracking store {tracking_uri} ({type(exc).__name__}: {detail}); "
                "check --tracking-uri or --workdir"
            ) from None
        self._experiments: dict[str, str] = {}

    # -- experiments ---------------------------------------------------------------------

    def experiment_id(self, name: str, create: bool = True) -> str | None:
        if name in self._experiments:
            return self._experiments[name]
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            if not create:
                return None
            location = None
            if self.artifact_root is not None:
                location = experiment_artifacts(self.artifact_root, name)
            exp_id = self.client.create_experiment(name, artifact_location=location)
        else:
            exp_id = exp.experiment_id
        self._experiments[name] = exp_id
        return exp_id

    # -- finding runs ----------------------------------------------------------------------

    #: Up to this many run keys are looked up one query each; more read the experiment whole.
    #: One query costs about as much as reading 5 runs (MLflow loads every run's tags, params
    #: and metrics), so a small sweep's start-up no longer grows with the store (docs/performance.md).
    KEYED_LOOKUP_MAX = 100

    def runs_by_key(self, experiment: str, keys: list[str] | None = None) -> dict[str, list[Any]]:
        """The runs of ``experiment`` grouped by ``bench.run_key``; with ``keys``, at least those
        keys' runs (every status: the caller reuses FINISHED ones and closes RUNNING leftovers)."""
        grouped: dict[str, list[Any]] = {}
        wanted = sorted(set(keys)) if keys is not None else None
        if wanted is not None and len(wanted) <= self.KEYED_LOOKUP_MAX:
            for key in wanted:
                found = self.runs_of_key(experiment, key)
                if found:
                    grouped[key] = found
            return grouped
        for run in self.search(experiment):
            grouped.setdefault(run.data.tags.get(schema.RUN_KEY, ""), []).append(run)
        return grouped

    def runs_of_key(self, experiment: str, run_key: str) -> list[Any]:
        """The records of one run key, read now (a sweep reads them again before training it)."""
        return self.search(experiment, extra_filter=f"tags.`{schema.RUN_KEY}` = '{run_key}'")

    def running_children(self, experiment: str, parent_id: str) -> list[Any]:
        """The runs of a parent (a sweep or a study) whose record is RUNNING now."""
        flt = f"tags.`mlflow.parentRunId` = '{parent_id}' and attributes.status = 'RUNNING'"
        return self.search(experiment, extra_filter=flt)

    @staticmethod
    def finished(runs: list[Any]) -> Any | None:
        """The newest FINISHED run among ``runs`` (the records of one run key), if any."""
        done = [r for r in runs if r.info.status == "FINISHED"]
        return max(done, key=lambda r: r.info.end_time or 0) if done else None

    def close_interrupted(self, runs: list[Any]) -> int:
        """Mark records left RUNNING by a killed process as KILLED; return how many.

        ``runs`` may be old snapshots: each status is read again just before, so a record that
        has ended since (FINISHED by the process that trained it) is never downgraded.
        """
        closed = 0
        for r in runs:
            if r.info.status != "RUNNING" or self.client.get_run(r.info.run_id).info.status != "RUNNING":
                continue
            self.client.set_terminated(r.info.run_id, status="KILLED")
            self.client.set_tag(r.info.run_id, schema.INTERRUPTED, "true")
            closed += 1
        return closed

    def search(self, experiment: str, kind: str = KIND_RUN, extra_filter: str = "") -> list[Any]:
        exp_id = self.experiment_id(experiment, create=False)
        if exp_id is None:
            return []
        flt = f"tags.`{schema.KIND}` = '{kind}'" + (f" and {extra_filter}" if extra_filter else "")
        runs, token = [], None
        while True:
            page = self.client.search_runs([exp_id], filter_string=flt, max_results=5000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    # -- sweeps ----------------------------------------------------------------------------

    def open_sweep(self, experiment: str, sweep_key: str, tags: dict[str, str], params: dict[str, str]) -> str:
        """The parent run of a sweep; a re-run of the same sweep reopens the same parent."""
        exp_id = self.experiment_id(experiment)
        found = self.client.search_runs(
            [exp_id],
            filter_string=f"tags.`{schema.SWEEP_KEY}` = '{sweep_key}' and tags.`{schema.KIND}` = '{KIND_SWEEP}'",
            max_results=1,
        )
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(
            exp_id,
            run_name=tags.get(schema.SWEEP_NAME),
            tags={**tags, schema.KIND: KIND_SWEEP, schema.SWEEP_KEY: sweep_key},
        )
        self._log_params(run.info.run_id, params)
        return run.info.run_id

    def close_sweep(self, run_id: str, status: str, counts: dict[str, int]) -> None:
        for k, v in counts.items():
            self.client.set_tag(run_id, f"bench.{k}", str(v))
        self.client.set_terminated(run_id, status=status)

    # -- runs ------------------------------------------------------------------------------

    def start_child(
        self, experiment: str, parent_id: str | None, name: str, tags: dict[str, str], params: dict[str, str]
    ) -> str:
        """Create a child run (RUNNING) with its tags and params; :meth:`end_child` ends it.

        The engine's recorder keeps several children open at once (one per run in flight).
        """
        exp_id = self.experiment_id(experiment)
        all_tags = {**tags, schema.KIND: KIND_RUN}
        if parent_id:
            all_tags["mlflow.parentRunId"] = parent_id
        run_id = self.client.create_run(exp_id, run_name=name, tags=all_tags).info.run_id
        try:
            self._log_params(run_id, params)
        except BaseException as exc:
            self.end_child(run_id, "FAILED", f"{type(exc).__name__}: {exc}")
            raise
        return run_id

    def end_child(self, run_id: str, status: str, error: str | None = None) -> None:
        """FINISHED only after every metric and artifact is written; FAILED carries ``bench.error``."""
        if error is not None:
            self.client.set_tag(run_id, schema.ERROR, error[:400])
        self.client.set_terminated(run_id, status=status)

    def _log_params(self, run_id: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        items = [Param(k, v[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow's batch limit
            self.client.log_batch(run_id, params=items[i : i + 100])

    def log_metrics(self, run_id: str, values: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items() if v is not None]
        if metrics:
            self.client.log_batch(run_id, metrics=metrics)

    def log_json(self, run_id: str, obj: Any, artifact_file: str) -> None:
        self.client.log_dict(run_id, obj, artifact_file)

    def log_bytes(self, run_id: str, data: bytes, artifact_file: str) -> None:
        directory, _, filename = artifact_file.rpartition("/")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / filename
            path.write_bytes(data)
            self.client.log_artifact(run_id, str(path), artifact_path=directory or None)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)


def csv_text(header: list[str], rows: list[list[Any]]) -> str:
    import csv

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()
