"""The recorder: the only code that writes runs to MLflow.

The driver calls it for every event of every job, whichever executor ran the job, so a run's
record is the same from ``inline`` and from Ray: tags and params when the run starts, the
resolved config once the worker has built the model, metrics after every epoch, then the result.
FINISHED is written last, after every metric and artifact, so a process killed at any point
leaves RUNNING, FAILED or KILLED behind, never FINISHED; a later sweep closes RUNNING leftovers
as KILLED and trains those runs again.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import __version__, schema
from ..tracking import Tracker, csv_text
from .events import Placement, Started


@dataclass
class RunRecord:
    """How a job appears in MLflow; made by its job source, written by the recorder."""

    experiment: str
    parent: str | None
    name: str
    tags: dict[str, str]
    params: dict[str, str]
    resolved: dict[str, Any]  # the resolved config, less what only the worker knows
    stale: list[Any] = field(default_factory=list)  # RUNNING records of the same run left by a killed process


def epoch_metrics(m: Any) -> dict[str, float | None]:
    """What every epoch logs (``val/acc`` only in the tune stage)."""
    return {schema.TRAIN_LOSS: m.train_loss, schema.TRAIN_ACC: m.train_acc, schema.LR: m.lr, schema.VAL_ACC: m.eval_acc}


def placement_tags(where: Placement, train_step: str) -> dict[str, str]:
    tags = {
        schema.EXECUTOR: where.executor,
        schema.NODE_ID: where.node_id,
        schema.HOST: where.host,
        schema.DEVICE: where.device.split(":")[0],  # a worker's own index says nothing outside it
        schema.TRAIN_STEP: train_step,
    }
    if where.gpu:
        tags[schema.GPU] = where.gpu
    return tags


class Recorder:
    def __init__(self, tracker: Tracker):
        self.tracker = tracker
        self._gpu_utilization: dict[str, list[float]] = {}  # run id -> per-epoch GPU utilisation

    @property
    def client(self):
        return self.tracker.client

    # -- parents: a sweep, or a tuning study ----------------------------------------------

    def open_parent(
        self,
        experiment: str,
        key: str,
        tags: dict[str, str],
        params: dict[str, str],
        live: Callable[[Any], bool] | None = None,
    ) -> str:
        """Open (or reopen) a sweep's or a study's parent run.

        A reopened study's trial records still RUNNING are closed as KILLED, except those ``live``
        says another process is still training (its Optuna trial is RUNNING, with a fresh heartbeat).
        (A sweep's runs are closed run by run, under their claims: another sweep may be training them.)
        """
        parent = self.tracker.open_sweep(experiment, key, tags, params)
        if schema.STUDY in tags:
            running = self.tracker.running_children(experiment, parent)
            self.tracker.close_interrupted([r for r in running if live is None or not live(r)])
        return parent

    def close_parent(
        self, run_id: str, status: str, counts: dict[str, int], metrics: dict[str, float] | None = None
    ) -> None:
        if metrics:
            self.tracker.log_metrics(run_id, metrics)
        self.tracker.close_sweep(run_id, status, counts)

    # -- one job's run ----------------------------------------------------------------------

    def start(self, record: RunRecord) -> str:
        """Close what a killed process left of this run, then open its record (RUNNING)."""
        self.tracker.close_interrupted(record.stale)
        return self.tracker.start_child(record.experiment, record.parent, record.name, record.tags, record.params)

    def started(self, run_id: str, record: RunRecord, event: Started) -> None:
        where = event.placement
        for key, value in placement_tags(where, event.train_step).items():
            self.client.set_tag(run_id, key, value)
        resolved = {
            **record.resolved,
            "normalization": {"mean": list(event.mean), "std": list(event.std)},
            "environment": {
                "bench": __version__,
                "torch": where.torch,
                "python": where.python,
                "timm": where.timm,
                "peft": where.peft,
                "executor": where.executor,
                "node_id": where.node_id,
                "host": where.host,
                "device": where.device,
                "gpu": where.gpu,
            },
        }
        self.tracker.log_json(run_id, resolved, schema.RESOLVED_CONFIG)

    def epoch(self, run_id: str, metrics: Any) -> None:
        system = {schema.SYSTEM_PREFIX + k: v for k, v in getattr(metrics, "system", {}).items()}
        self.tracker.log_metrics(run_id, {**epoch_metrics(metrics), **system}, step=metrics.epoch)
        if schema.GPU_UTILIZATION in system:
            self._gpu_utilization.setdefault(run_id, []).append(system[schema.GPU_UTILIZATION])

    def result(self, run_id: str, result: Any, *, stage: str, step: int, entries: list, root: Path) -> None:
        """A finished run's metrics and artifacts (not its end state: see :meth:`end`)."""
        from safetensors.torch import save

        metrics = {
            schema.PARAMS_TRAINABLE: result.trainable_params,
            schema.PARAMS_HEAD: result.head_params,
            schema.TRAIN_IMG_S: result.train_images_per_s,
            schema.INFER_IMG_S: result.infer_images_per_s,
            schema.TRAIN_SECONDS: result.train_seconds,
            schema.WARMUP_SECONDS: result.warmup_seconds,
            schema.STEADY_SECONDS: result.steady_seconds,
            schema.PEAK_MEMORY_MB: result.peak_memory_mb,
            schema.EVAL_EXAMPLES: len(entries),
        }
        if math.isfinite(result.steady_train_images_per_s):  # runs of two or more epochs
            metrics[schema.TRAIN_IMG_S_STEADY] = result.steady_train_images_per_s
        if stage == "final":
            metrics[schema.TEST_ACC] = result.eval_acc  # scored once, after the last epoch
        utilization = self._gpu_utilization.pop(run_id, [])
        if utilization:
            metrics[schema.GPU_UTILIZATION_MEAN] = sum(utilization) / len(utilization)
        self.tracker.log_metrics(run_id, metrics, step=step)
        rows = [
            [i, str(e.path.relative_to(root)), e.label, int(p)]
            for i, (e, p) in enumerate(zip(entries, result.predictions.tolist(), strict=True))
        ]
        self.tracker.log_text(run_id, csv_text(["index", "path", "label", "prediction"], rows), schema.PREDICTIONS)
        state = {k: v.contiguous() for k, v in result.trainable_state.items()}
        self.tracker.log_bytes(run_id, save(state), schema.TRAINABLE_TENSORS)
        self.client.set_tag(run_id, schema.MERGED_EVAL, str(result.merged).lower())
        self.client.set_tag(run_id, schema.TRAIN_STEP, result.train_step)  # the mode may change mid-run

    def end(
        self,
        run_id: str,
        status: str,
        *,
        error: str | None = None,
        traceback: str | None = None,
        tags: dict[str, str] | None = None,
        metrics: dict[str, float] | None = None,
        step: int = 0,
    ) -> None:
        """The run's end state, written last; ``tags`` and ``metrics`` are the job source's own."""
        self._gpu_utilization.pop(run_id, None)
        for key, value in (tags or {}).items():
            self.client.set_tag(run_id, key, value)
        if metrics:
            self.tracker.log_metrics(run_id, metrics, step=step)
        if traceback:
            self.tracker.log_text(run_id, traceback, schema.TRACEBACK)
        self.tracker.end_child(run_id, status, error)
