"""MLflow tracking: where runs live, how a finished run is recognised, and what a run stores.

Layout (DESIGN §5): one experiment per suite (``bench/<suite>``), a parent run per sweep, one
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
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import BenchError

KIND_RUN = "run"
KIND_SWEEP = "sweep"


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


class Tracker:
    """A tracking store (any MLflow URI) with the harness's conventions on top."""

    def __init__(self, tracking_uri: str, artifact_root: Path | None = None):
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        from mlflow.tracking import MlflowClient

        self.uri = tracking_uri
        self.artifact_root = artifact_root
        try:
            self.client = MlflowClient(tracking_uri=tracking_uri)
            self.client.search_experiments(max_results=1)  # creates/migrates a sqlite store now, not mid-sweep
        except Exception as exc:
            raise BenchError(
                f"cannot open the tracking store {tracking_uri} ({type(exc).__name__}: {str(exc)[:160]}); "
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
                location = (self.artifact_root.resolve() / name.replace("/", "_")).as_uri()
            exp_id = self.client.create_experiment(name, artifact_location=location)
        else:
            exp_id = exp.experiment_id
        self._experiments[name] = exp_id
        return exp_id

    # -- finding runs ----------------------------------------------------------------------

    def runs_by_key(self, experiment: str) -> dict[str, list[Any]]:
        """Every run of ``experiment`` grouped by ``bench.run_key``: one query for a whole sweep."""
        grouped: dict[str, list[Any]] = {}
        for run in self.search(experiment):
            grouped.setdefault(run.data.tags.get("bench.run_key", ""), []).append(run)
        return grouped

    @staticmethod
    def finished(runs: list[Any]) -> Any | None:
        """The newest FINISHED run among ``runs`` (the records of one run key), if any."""
        done = [r for r in runs if r.info.status == "FINISHED"]
        return max(done, key=lambda r: r.info.end_time or 0) if done else None

    def close_interrupted(self, runs: list[Any]) -> int:
        """Mark records left RUNNING by a killed process as KILLED; return how many."""
        stale = [r for r in runs if r.info.status == "RUNNING"]
        for r in stale:
            self.client.set_terminated(r.info.run_id, status="KILLED")
            self.client.set_tag(r.info.run_id, "bench.interrupted", "true")
        return len(stale)

    def search(self, experiment: str, kind: str = KIND_RUN, extra_filter: str = "") -> list[Any]:
        exp_id = self.experiment_id(experiment, create=False)
        if exp_id is None:
            return []
        flt = f"tags.`bench.kind` = '{kind}'" + (f" and {extra_filter}" if extra_filter else "")
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
            filter_string=f"tags.`bench.sweep_key` = '{sweep_key}' and tags.`bench.kind` = '{KIND_SWEEP}'",
            max_results=1,
        )
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(
            exp_id,
            run_name=tags.get("bench.sweep_name"),
            tags={**tags, "bench.kind": KIND_SWEEP, "bench.sweep_key": sweep_key},
        )
        self._log_params(run.info.run_id, params)
        return run.info.run_id

    def close_sweep(self, run_id: str, status: str, counts: dict[str, int]) -> None:
        for k, v in counts.items():
            self.client.set_tag(run_id, f"bench.{k}", str(v))
        self.client.set_terminated(run_id, status=status)

    # -- runs ------------------------------------------------------------------------------

    @contextmanager
    def child_run(
        self, experiment: str, parent_id: str | None, name: str, tags: dict[str, str], params: dict[str, str]
    ) -> Iterator[str]:
        """A child run that ends FINISHED only if the body returns; FAILED or KILLED otherwise."""
        run_id = self.start_child(experiment, parent_id, name, tags, params)
        try:
            yield run_id
        except KeyboardInterrupt:
            self.end_child(run_id, "KILLED")
            raise
        except BaseException as exc:
            self.end_child(run_id, "FAILED", f"{type(exc).__name__}: {exc}")
            raise
        else:
            self.end_child(run_id, "FINISHED")

    def start_child(
        self, experiment: str, parent_id: str | None, name: str, tags: dict[str, str], params: dict[str, str]
    ) -> str:
        """Create a child run (RUNNING) with its tags and params; :meth:`end_child` ends it.

        The explicit pair serves the multi-device executor, which keeps several children open at
        once; :meth:`child_run` is the one-at-a-time form.
        """
        exp_id = self.experiment_id(experiment)
        all_tags = {**tags, "bench.kind": KIND_RUN}
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
            self.client.set_tag(run_id, "bench.error", error[:400])
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
