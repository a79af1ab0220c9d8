"""The Ray executor: jobs on Ray actors, on this host's GPUs or CPUs, or on any Ray cluster.

How a job travels:

* the driver decodes each task's splits once (into the image cache, which also checks every
  image) and puts them in Ray's object store as uint8 arrays; every run of the task reads the
  same objects, and Ray copies them to a worker's node when a run is placed there. Workers
  therefore need neither the data nor a filesystem shared with the driver;
* the backbone checkpoint travels the same way, once per sweep: a worker writes it to its node's
  temporary directory (named by its sha256) the first time a run there needs it;
* each run slot is a Ray actor holding its share of a GPU (or its CPUs) for the whole sweep, so
  a worker process stays on its GPU and keeps its imports and compiled kernels warm between runs;
* a run returns its end event (Done with the result, Failed, Cancelled); Started and Epoch
  events reach the driver through a small mailbox actor as they happen, and the actor's answer to
  each Epoch says whether the driver has cancelled the job;
* a worker process or node that dies fails its run (no restarts, no retries: a run is never
  trained twice behind the driver's back); the driver records the run FAILED, starts a new actor
  in its place and goes on.

Packing: each actor asks for ``1 / runs_per_gpu`` GPU, so Ray places that many runs on each GPU.
The driver stays the only MLflow writer: workers never open the tracking store.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..backbone import Weights
from ..errors import BenchError
from .events import Event, WorkerLost
from .localray import LocalCluster, reload_auth
from .work import Work

POLL_S = 0.2  # how long the driver waits for a job to end before it reads the mailbox again
KEEP_SPLITS = 4  # decoded splits kept in the object store for the next jobs (each task has two)


@dataclass(frozen=True)
class RayPlan:
    """How jobs are shaped on the cluster: the resources of one job, and how many run at once."""

    use_gpu: bool
    capacity: int
    gpus_per_job: float
    cpus_per_job: float


def _plan(resources: dict[str, float], use_gpu: bool | None, runs_per_gpu: int, workers: int | None) -> RayPlan:
    """``use_gpu`` None: the cluster's GPUs if it has any, else its CPUs."""
    gpus, cpus = resources.get("GPU", 0.0), resources.get("CPU", 0.0)
    if use_gpu is None:
        use_gpu = gpus >= 1
    if use_gpu:
        if gpus < 1:
            raise BenchError("the Ray cluster has no GPU; add GPU nodes, or pass --device cpu to train on its CPUs")
        capacity = int(gpus) * runs_per_gpu
        if workers is not None:
            capacity = min(capacity, workers)
        return RayPlan(True, capacity, 1.0 / runs_per_gpu, 1.0)
    if cpus < 1:
        raise BenchError("the Ray cluster has no CPU to train on; check `ray status`")
    capacity = workers or int(cpus)
    return RayPlan(False, capacity, 0.0, max(1.0, float(int(cpus) // capacity)))


def _check_reachable(address: str) -> None:
    """Fail in a second, not after Ray's minutes of retries, when nothing listens at HOST:PORT."""
    import socket

    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        if address == "auto":  # Ray's own lookup of a cluster started on this machine
            return
        raise BenchError(f"--ray-address {address!r} must be HOST:PORT (what `ray start --head` prints), or auto")
    try:
        with socket.create_connection((host, int(port)), timeout=5) as conn:
            speaks_grpc = os.environ.get("RAY_USE_TLS", "0") not in ("0", "") or _answers_http2(conn, timeout=10)
    except OSError as exc:
        raise BenchError(
            f"cannot start or join the Ray cluster at {address} (nothing answers there: {exc.strerror or exc}); "
            "check --ray-address and that `ray start --head` runs there"
        ) from None
    if not speaks_grpc:  # Ray itself would retry for minutes against it
        raise BenchError(
            f"--ray-address {address}: a program listens there but it is not a Ray cluster (no gRPC answer in 10 s); "
            "pass the address `ray start --head` printed (its GCS port, 6379 by default)"
        )


def _answers_http2(conn: Any, timeout: float) -> bool:
    """Whether the listener on ``conn`` speaks HTTP/2, as Ray's GCS and client servers (gRPC) do.

    An HTTP/2 server must answer a client's connection preface with a SETTINGS frame
    (RFC 9113, section 3.4): the first frame header it sends has type 0x4.
    """
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    empty_settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # length 0, type SETTINGS, flags 0, stream 0
    conn.settimeout(timeout)
    try:
        conn.sendall(preface + empty_settings)
        header = b""
        while len(header) < 9:
            chunk = conn.recv(9 - len(header))
            if not chunk:
                return False
            header += chunk
    except OSError:  # a timeout or a reset: no HTTP/2 server
        return False
    return header[3] == 0x4


def _mailbox_class():
    import ray

    @ray.remote(num_cpus=0)
    class Mailbox:
        """Started and Epoch events on their way to the driver, and the jobs it has cancelled."""

        def __init__(self) -> None:
            self.events: list[Any] = []
            self.cancelled: set[int] = set()

        def put(self, event: Any) -> bool:
            self.events.append(event)
            return event.job in self.cancelled

        def take(self) -> list[Any]:
            events, self.events = self.events, []
            return events

        def cancel(self, job: int) -> None:
            self.cancelled.add(job)

    return Mailbox


def _local_weights(weights: Weights, blob: list) -> Weights:
    """The checkpoint as a file on this node: written once per node from the object store."""
    if weights.path is None:
        return weights
    import ray

    digest = weights.checkpoint_id.split(":")[-1]
    path = Path(tempfile.gettempdir()) / "bench-weights" / f"{digest}{weights.path.suffix}"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        partial.write_bytes(ray.get(blob[0]))
        os.replace(partial, path)  # atomic: a run beside this one never reads half a file
    return Weights(path, weights.checkpoint_id)


def _split(arrays: tuple[np.ndarray, np.ndarray]):
    """A SplitData over the object store's read-only arrays (training only reads them)."""
    import warnings

    import torch

    from ..train import SplitData

    images, labels = arrays
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "not writable": the arrays are shared, never written
        return SplitData(torch.from_numpy(images), torch.from_numpy(labels))


def _node_threads_per_gpu_run(node_id: str, runs_per_gpu: int) -> int:
    import ray

    node = next((n for n in ray.nodes() if n.get("NodeID") == node_id), {})
    resources = node.get("Resources", {})
    slots = max(1.0, resources.get("GPU", 1.0) * runs_per_gpu)
    return max(1, int(resources.get("CPU", 1.0) // slots))


class _Trainer:
    """A Ray actor that trains jobs one at a time: one per run slot, kept for the whole sweep.

    An actor keeps its GPU share for its lifetime, so a reused process never finds its CUDA
    context on another GPU than Ray assigned, and its imports, CUDA context and compiled kernels
    stay warm from one run to the next (a plain GPU task is given a fresh process per call).
    """

    def __init__(self, threads: int, runs_per_gpu: int) -> None:
        import ray
        import torch

        self.node_id = ray.get_runtime_context().get_node_id()
        if ray.get_gpu_ids():
            torch.cuda.set_device(0)  # Ray shows the actor its GPU alone, as device 0
            self.device = torch.device("cuda", 0)
            # A GPU run reserves one CPU for scheduling, but building the backbone (weight init),
            # merging and compiling run on the CPU: use this node's CPUs per run slot.
            threads = _node_threads_per_gpu_run(self.node_id, runs_per_gpu)
        else:
            self.device = torch.device("cpu")
        torch.set_num_threads(threads)

    def ready(self) -> str:
        return self.node_id

    def run(self, work: Work, train: tuple, evaluate: tuple, blob: list, mailbox: Any) -> Any:
        import ray

        from .work import placement, run_work

        work = replace(work, weights=_local_weights(work.weights, blob))
        where = placement("ray", self.node_id, self.device)

        def emit(event: Event) -> bool:
            return ray.get(mailbox.put.remote(event))

        return run_work(work, _split(train), _split(evaluate), self.device, where, emit)


class RayExecutor:
    """Ray actors on a local cluster this executor starts (and stops), or on an existing one."""

    name = "ray"

    def __init__(
        self,
        *,
        address: str | None = None,
        gpus: list[str] | None = None,
        use_gpu: bool | None = False,
        runs_per_gpu: int = 1,
        workers: int | None = None,
        object_store_mb: int | None = None,
    ):
        try:
            import ray
        except ImportError:  # pragma: no cover - ray is a dependency; a broken install says so
            raise BenchError("--executor ray needs the ray package; install bench as the README says") from None
        self._ray = ray
        self._mailbox: Any = None
        self._refs: dict[Any, tuple[int, Any]] = {}  # a run's result ref -> (its job, its actor)
        self._idle: list[Any] = []  # actors with no run
        self._splits: OrderedDict[int, tuple[Any, Any]] = OrderedDict()  # id(SplitData) -> (it, its ref)
        self._weights: dict[str, list] = {}  # checkpoint id -> [ref of its bytes]
        self._saved_visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        self._local: LocalCluster | None = None
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
        if address is None:
            self._local = LocalCluster()
            options.update(self._local.init_options())
            if gpus is not None:  # the local cluster sees the chosen GPUs only
                os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
                options["num_gpus"] = len(gpus)
            elif not use_gpu:
                options["num_gpus"] = 0
            options["num_cpus"] = os.cpu_count() or 1
            if object_store_mb:
                options["object_store_memory"] = object_store_mb * 2**20
        else:
            _check_reachable(address)
            options["address"] = address
            reload_auth()  # RAY_AUTH_MODE and RAY_AUTH_TOKEN as they are now, for the cluster joined
        # A local cluster is bench's own, started and stopped with the sweep: Ray's notice that it
        # enabled token authentication for it is not the user's business; joining one, it is.
        notice = logging.getLogger("ray._private.authentication.authentication_token_setup")
        level = notice.level
        if address is None:
            notice.setLevel(logging.ERROR)
        try:
            with self._keep_sigterm_handler(), self._local.loopback() if self._local else contextlib.nullcontext():
                ray.init(**options)
        except Exception as exc:
            self._release()
            where = f"the Ray cluster at {address}" if address else "a local Ray cluster"
            raise BenchError(
                f"cannot start or join {where} ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); "
                + ("check --ray-address and that `ray start --head` runs there" if address else "check `ray status`")
            ) from None
        finally:
            notice.setLevel(level)
        try:
            self.plan = _plan(ray.cluster_resources(), use_gpu, runs_per_gpu, workers)
        except BaseException:
            self.close(graceful=True)
            raise
        self._runs_per_gpu = runs_per_gpu
        self._mailbox = _mailbox_class().remote()
        # max_restarts=0: a dead actor fails its run and is replaced by a new one; Ray never
        # retrains a run behind the driver's back.
        self._trainer = ray.remote(max_restarts=0, max_task_retries=0)(_Trainer).options(
            num_gpus=self.plan.gpus_per_job, num_cpus=self.plan.cpus_per_job
        )
        self._idle = [self._new_trainer() for _ in range(self.plan.capacity)]
        # Wait for every actor to have imported torch and taken its device: a start-up cost paid
        # once per sweep, here, rather than hidden in the first runs.
        try:
            ray.get([actor.ready.remote() for actor in self._idle])
        except ray.exceptions.RayError as exc:  # e.g. a node whose Python environment lacks bench
            self.close(graceful=False)
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            raise BenchError(
                f"a Ray worker could not start ({type(exc).__name__}: {lines[-1][:200] if lines else ''}); "
                "every node needs the same Python environment as this one (bench and its dependencies)"
            ) from None
        except BaseException:
            self.close(graceful=False)
            raise

    @property
    def capacity(self) -> int:
        return self.plan.capacity

    def describe(self) -> str:
        res = self._ray.cluster_resources()
        nodes = len([n for n in self._ray.nodes() if n.get("Alive")])
        unit = f"{self.plan.gpus_per_job:g} GPU" if self.plan.use_gpu else f"{self.plan.cpus_per_job:g} CPU"
        return (
            f"Ray: {nodes} node(s), {res.get('CPU', 0):g} CPU, {res.get('GPU', 0):g} GPU; "
            f"{self.plan.capacity} run(s) at once, {unit} each"
        )

    def _put_split(self, split: Any) -> Any:
        key = id(split)
        if key in self._splits:
            self._splits.move_to_end(key)
            return self._splits[key][1]
        ref = self._ray.put((split.images.numpy(), split.labels.numpy()))
        self._splits[key] = (split, ref)  # the split itself is kept too, so its id is not reused
        while len(self._splits) > KEEP_SPLITS:
            self._splits.popitem(last=False)  # tasks in flight hold their own references
        return ref

    def _put_weights(self, weights: Weights) -> list:
        if weights.path is None:
            return []
        if weights.checkpoint_id not in self._weights:
            self._weights[weights.checkpoint_id] = [self._ray.put(weights.path.read_bytes())]
        return self._weights[weights.checkpoint_id]

    def _new_trainer(self) -> Any:
        return self._trainer.remote(max(1, int(self.plan.cpus_per_job)), self._runs_per_gpu)

    def submit(self, work: Work, train: Any, evaluate: Any) -> None:
        actor = self._idle.pop()
        ref = actor.run.remote(
            work,
            self._put_split(train),
            self._put_split(evaluate),
            self._put_weights(work.weights),  # nested in a list: a worker fetches it only if its node lacks the file
            self._mailbox,
        )
        self._refs[ref] = (work.job, actor)

    def cancel(self, job: int) -> None:
        self._mailbox.cancel.remote(job)

    def wait(self, deliver: Callable[[Event], None]) -> None:
        ray = self._ray
        refs = list(self._refs)
        ready: list[Any] = []
        if refs:
            ready, _ = ray.wait(refs, num_returns=1, timeout=POLL_S)
            if ready:
                ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
        for event in ray.get(self._mailbox.take.remote()):  # before the ends: a job's epochs precede its end
            deliver(event)
        for ref in ready:
            job, actor = self._refs.pop(ref)
            try:
                event = ray.get(ref)
                self._idle.append(actor)
            except ray.exceptions.RayError as exc:  # the worker process or its node died
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                event = WorkerLost(job, f"the Ray worker training it was lost ({type(exc).__name__}: {first[:200]})")
                with contextlib.suppress(Exception):
                    ray.kill(actor)
                self._idle.append(self._new_trainer())
            deliver(event)

    def close(self, graceful: bool) -> None:
        ray = self._ray
        for actor in [*self._idle, *(a for _, a in self._refs.values())]:
            with contextlib.suppress(Exception):
                ray.kill(actor)  # ends a run in flight at once: only after Ctrl-C or a failure is one left
        if self._mailbox is not None:
            with contextlib.suppress(Exception):
                ray.kill(self._mailbox)
        self._refs, self._idle, self._mailbox = {}, [], None
        self._splits.clear()
        self._weights.clear()
        with contextlib.suppress(Exception):
            ray.shutdown()  # stops the cluster this executor started; only disconnects from one it joined
        self._release()

    @staticmethod
    @contextlib.contextmanager
    def _keep_sigterm_handler():
        """``ray.init`` replaces the SIGTERM handler with one that exits at once; bench's own
        (stop the runs in flight, record them, stop the cluster) stays."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handler = signal.getsignal(signal.SIGTERM)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, handler)

    def _release(self) -> None:
        if self._local is not None:
            self._local.stop()
            self._local = None
        if self._saved_visible is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = self._saved_visible
