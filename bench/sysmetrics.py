"""System metrics of a run, sampled where it trains: GPU utilisation and memory, CPU, RAM.

The samplers are MLflow's own system-metrics monitors (``mlflow.system_metrics``: ``CPUMonitor``
through psutil, ``GPUMonitor`` through nvidia-ml-py), so the metrics carry MLflow's names
(``system/cpu_utilization_percentage``, ``system/gpu_0_utilization_percentage``, …) and appear in
the MLflow UI's system-metrics view. What bench does not use is MLflow's logging thread: a run
trains in a worker (this process, or a Ray worker on another machine), and the worker never
writes to MLflow. The worker samples its own machine in a background thread, averages the
samples of each epoch, and sends the averages with the epoch's event; the recorder in the
``bench`` process logs them at the epoch's step. So every figure describes the machine and the
GPU that trained the run, whichever executor ran it.

The GPU figures are the run's own GPU only (``gpu_0`` is the GPU named in ``bench.gpu``), found
by its UUID among the GPUs NVML sees. CPU and RAM figures are the whole host's. Runs packed on
one GPU (``--runs-per-gpu``) share it: each sees the GPU's total utilisation.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

GPU_UTILIZATION = "gpu_0_utilization_percentage"  # MLflow's name, for the run's GPU


def _monitors(device: Any) -> list[Any]:
    """MLflow's monitors available here: CPU/RAM with psutil, the run's GPU with nvidia-ml-py."""
    monitors: list[Any] = []
    try:
        from mlflow.system_metrics.metrics.cpu_monitor import CPUMonitor

        monitors.append(CPUMonitor())
    except ImportError:  # no psutil
        pass
    if getattr(device, "type", "cpu") == "cuda":
        gpu = _gpu_monitor(device)
        if gpu is not None:
            monitors.append(gpu)
    return monitors


def _gpu_monitor(device: Any) -> Any | None:
    """MLflow's GPU monitor narrowed to ``device`` (NVML lists every GPU of the host)."""
    import torch

    logging.getLogger("mlflow.system_metrics").setLevel(logging.ERROR)
    try:
        import pynvml  # MLflow's GPUMonitor works only once it is imported
        from mlflow.system_metrics.metrics.gpu_monitor import GPUMonitor

        monitor = GPUMonitor()
        uuid = str(torch.cuda.get_device_properties(device).uuid).removeprefix("GPU-")
        mine = [h for h in monitor.gpu_handles if _uuid(pynvml, h).removeprefix("GPU-") == uuid]
    except Exception:  # no nvidia-ml-py, no driver access, a GPU NVML does not list
        return None
    if len(mine) != 1:
        return None
    monitor.gpu_handles, monitor.num_gpus = mine, 1
    return monitor


def _uuid(nvml: Any, handle: Any) -> str:
    value = nvml.nvmlDeviceGetUUID(handle)
    return value.decode() if isinstance(value, bytes) else str(value)


class SystemSampler:
    """Samples this machine every ``interval`` seconds; :meth:`take` returns the averages since the last take.

    ``interval`` defaults to ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` or 2 s. An epoch shorter
    than that still gets one sample, taken when the epoch ends.
    """

    def __init__(self, device: Any, interval: float | None = None):
        env = os.environ.get("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL")
        self.interval = interval or (float(env) if env else 2.0)
        self.monitors = _monitors(device)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._fresh = False

    @property
    def available(self) -> bool:
        return bool(self.monitors)

    def __enter__(self) -> SystemSampler:
        if self.monitors:
            self._collect()  # primes psutil's CPU counter (its first reading is meaningless)
            self._clear()
            self._thread = threading.Thread(target=self._loop, name="bench-system-metrics", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 1)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._collect()

    def _collect(self) -> None:
        with self._lock:
            for m in self.monitors:
                try:
                    m.collect_metrics()
                except Exception:  # a failing sensor never fails a run
                    continue
            self._fresh = True

    def _clear(self) -> None:
        with self._lock:
            for m in self.monitors:
                m.clear_metrics()
            self._fresh = False

    def take(self) -> dict[str, float]:
        """The mean of every metric since the last call (MLflow's names, without ``system/``)."""
        if not self.monitors:
            return {}
        if not self._fresh:
            self._collect()
        with self._lock:
            out: dict[str, float] = {}
            for m in self.monitors:
                if any(m.metrics.values()):
                    out.update({k: float(v) for k, v in m.aggregate_metrics().items()})
                m.clear_metrics()
            self._fresh = False
        return out
