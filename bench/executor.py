"""Several runs at once: one worker process per device, the parent the only MLflow writer.

``bench run --gpus all|0,1|N`` plans the sweep exactly as the one-process path does, then:

* starts one worker per device with the ``spawn`` start method (never ``fork``: CUDA cannot be
  re-initialised in a forked child). Each worker sees only its GPU (``CUDA_VISIBLE_DEVICES`` is set
  in the environment it is started with) and calls ``torch.cuda.set_device(0)`` before any CUDA
  work. Workers ignore Ctrl-C (the parent ends them) and exit if the parent dies, even by SIGKILL;
* sends each worker one planned run at a time over its own queue (``(index, PlannedRun)``, or
  ``None`` to stop). The worker loads the task's splits from the image cache, which the parent has
  filled (and thereby checked every image) before sending the run, builds the model, calls
  :func:`bench.train.train_run` and sends back over one shared result queue:
  ``("started", worker, index, mean, std, gpu_name)``, ``("epoch", worker, index, EpochMetrics)``
  after every epoch, then ``("done", worker, index, RunResult)`` (predictions as a numpy array, the
  trainable tensors as safetensors bytes, so no tensor goes through shared memory) or
  ``("error", worker, index, type, message, traceback, user_error)``. ``bench tune --gpus`` may
  also send ``("cancel", index)`` while a run trains (a pruned trial): the worker stops after the
  current epoch and answers ``("cancelled", worker, index)``;
* logs everything itself, as the one-process path does: the child run is created RUNNING when its
  run is sent, per-epoch metrics as they arrive, and FINISHED is set only after the final metrics
  and every artifact are written. A killed sweep therefore leaves RUNNING records, which the next
  invocation marks KILLED and retrains, exactly as before.

Why one writer: several processes writing one sqlite file contend for its lock (``database is
locked``) and can race on a first migration (shared notes, tracking §3.1). The workers' results are
small (a few metrics per epoch, predictions, the trainable tensors), so funnelling them through the
parent costs nothing next to training, and the store needs no server and no retry logic.

A run that fails in a worker is marked FAILED with its error; no new run is started after it, the
runs in flight finish and are logged, and then the sweep fails like the one-process path does (a
user error stays a one-line error). Ctrl-C marks the runs in flight KILLED and terminates the
workers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import os
import queue
import signal
import threading
import traceback
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from suites.base import Preset, Stage

from .backbone import Weights
from .errors import BenchError
from .train import RunResult, train_run

POLL_S = 0.5  # how often the parent checks that its workers are alive while it waits
STOP_GRACE_S = 30.0
CANCEL = "cancel"  # parent -> worker: stop the run in progress after its current epoch


@dataclass(frozen=True)
class Slot:
    """One worker's device: ``label`` as the user named it (``cuda:1``, ``cpu``), and the
    ``CUDA_VISIBLE_DEVICES`` value that shows the worker that GPU alone (None for a CPU worker)."""

    label: str
    visible: str | None = None


class WorkerRunError(RuntimeError):
    """A run failed inside a worker with an error that is not the user's; the worker's traceback is
    chained as the cause, so the CLI's crash file shows where it happened."""


class RemoteTraceback(Exception):
    def __init__(self, text: str):
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return "\n" + self.text


# ---------------------------------------------------------------------------------------
# Choosing devices


def parse_gpus(text: str) -> list[Slot]:
    """``all`` -> every visible GPU; ``N`` -> the first N; ``0,1`` -> those (``1,`` is GPU 1 alone)."""
    if not torch.cuda.is_available():
        raise BenchError(f"--gpus {text} needs CUDA devices, but none is visible; drop --gpus to run on the CPU")
    count = torch.cuda.device_count()
    value = text.strip().lower()
    try:
        if value == "all":
            indices = list(range(count))
        elif "," in value:
            indices = [int(v) for v in value.split(",") if v.strip()]
        else:
            n = int(value)
            if n < 1:
                raise ValueError
            if n > count:
                raise BenchError(f"--gpus {text} asks for {n} GPUs but {count} are visible; use --gpus all")
            indices = list(range(n))
    except ValueError:
        raise BenchError(
            f"--gpus {text!r} is neither all, a count (2 means GPUs 0 and 1) nor a list of GPU indices "
            "(0,1; GPU k alone is written k,)"
        ) from None
    bad = [i for i in indices if not 0 <= i < count]
    if bad or not indices or len(set(indices)) != len(indices):
        raise BenchError(f"--gpus {text!r} must list distinct GPU indices between 0 and {count - 1} ({count} visible)")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    names = [v.strip() for v in visible.split(",")] if visible else [str(i) for i in range(count)]
    return [Slot(f"cuda:{i}", names[i]) for i in indices]


def cpu_slots(n: int) -> list[Slot]:
    """``n`` CPU workers: the executor's test configuration (hidden ``--workers-cpu N``)."""
    if n < 1:
        raise BenchError(f"--workers-cpu {n} must be at least 1")
    return [Slot("cpu") for _ in range(n)]


# ---------------------------------------------------------------------------------------
# The worker process


@dataclass(frozen=True)
class WorkerSetup:
    """What every run of a sweep shares; duck-types the ``stage``/``preset`` of a SweepPlan for
    :func:`bench.sweep.task_data` (the cache key needs the sweep preset's size and filter)."""

    stage: Stage
    preset: Preset
    weights: Weights
    cache_dir: Path
    threads: int


def _exit_with_parent() -> None:
    """A daemon thread that ends this worker as soon as the parent is gone (even after SIGKILL),
    so no orphan keeps training on a GPU."""
    import multiprocessing

    parent = multiprocessing.parent_process()
    if parent is None:
        return

    def watch() -> None:
        parent.join()
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="bench-parent-watch").start()


def worker_main(wid: int, cuda: bool, setup: WorkerSetup, jobs: Any, results: Any) -> None:
    """Train the runs sent on ``jobs`` one at a time; report on ``results``; stop on ``None``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; the parent decides
    _exit_with_parent()
    try:
        torch.set_num_threads(setup.threads)
        if cuda:  # CUDA_VISIBLE_DEVICES shows this worker its one GPU, as device 0
            torch.cuda.set_device(0)
            device, gpu = torch.device("cuda", 0), torch.cuda.get_device_name(0)
        else:
            device, gpu = torch.device("cpu"), None
    except Exception as exc:
        results.put(("fatal", wid, f"{type(exc).__name__}: {exc}"))
        return
    memo: dict[str, Any] = {}
    while True:
        job = jobs.get()
        if job is None:
            return
        if job[0] == CANCEL:  # a cancel that arrived after its run had ended: nothing to stop
            continue
        index, run = job
        try:
            result = _train(wid, index, run, setup, device, gpu, memo, results, jobs)
            results.put(("done", wid, index, _pack(result)))
        except _Cancelled:
            results.put(("cancelled", wid, index))
        except Exception as exc:
            user_error = isinstance(exc, BenchError)
            results.put(("error", wid, index, type(exc).__name__, str(exc), traceback.format_exc(), user_error))
        finally:
            result = None
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()


class _Cancelled(Exception):
    """The parent cancelled the run in progress (a pruned tuning trial)."""


def _train(wid, index, run, setup: WorkerSetup, device, gpu, memo, results, jobs) -> RunResult:
    from .sweep import build_model, task_data

    data = task_data(run.task, setup, setup.cache_dir, memo)  # a cache hit: the parent decoded it
    model, mean, std = build_model(run, setup.weights)
    results.put(("started", wid, index, mean, std, gpu))

    def on_epoch(m) -> None:
        results.put(("epoch", wid, index, m))
        # While a run trains, the parent sends this worker nothing but a cancel for it.
        try:
            message = jobs.get_nowait()
        except queue.Empty:
            return
        if message is None:  # a stop: leave it for the worker's loop, which ends after this run
            jobs.put(None)
        elif message[0] == CANCEL and message[1] == index:
            raise _Cancelled
        # else: a cancel for an earlier run that ended before it arrived

    return train_run(
        model,
        run.method,
        run.preset,
        setup.stage,
        data.train,
        data.evaluate,
        seed=run.spec.seed,
        device=device,
        mean=mean,
        std=std,
        on_epoch=on_epoch,
    )


def _pack(result: RunResult) -> tuple[RunResult, Any, bytes]:
    """The result without torch tensors, which would travel through shared memory (fd limits,
    lifetime rules): predictions as numpy, the trainable tensors as safetensors bytes."""
    from safetensors.torch import save

    state = save({k: v.contiguous() for k, v in result.trainable_state.items()})
    bare = dataclasses.replace(result, predictions=None, trainable_state={})
    return bare, result.predictions.numpy(), state


def _unpack(packed: tuple[RunResult, Any, bytes]) -> RunResult:
    from safetensors.torch import load

    bare, predictions, state = packed
    return dataclasses.replace(bare, predictions=torch.from_numpy(predictions), trainable_state=load(state))


# ---------------------------------------------------------------------------------------
# The pool, seen from the parent


@contextmanager
def _visible(value: str | None):
    """The environment a spawned worker starts with: its one GPU (or, for a CPU worker, none)."""
    old = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = value if value is not None else ""
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = old


@contextmanager
def _sigint_ignored():
    """Workers start with Ctrl-C ignored (the disposition survives exec), so a Ctrl-C while they
    import torch prints no traceback from them; the parent handles it and ends them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


class WorkerPool:
    def __init__(self, slots: list[Slot], setup: WorkerSetup):
        import torch.multiprocessing as mp

        self.ctx = mp.get_context("spawn")
        self.slots = slots
        self.setup = setup
        self.results = self.ctx.Queue()
        self.jobs: list[Any] = []
        self.processes: list[Any] = []
        self.broken: set[int] = set()  # workers that died or could not start: never sent another run
        self._lost: deque[tuple] = deque()  # "died" messages not yet handed out

    def start(self) -> None:
        for wid, slot in enumerate(self.slots):
            jobs = self.ctx.Queue()
            with _visible(slot.visible), _sigint_ignored():
                p = self.ctx.Process(
                    target=worker_main,
                    args=(wid, slot.visible is not None, self.setup, jobs, self.results),
                    name=f"bench-worker-{wid}-{slot.label}",
                    daemon=True,
                )
                p.start()
            self.jobs.append(jobs)
            self.processes.append(p)

    def send(self, wid: int, index: int, run: Any) -> None:
        self.jobs[wid].put((index, run))

    def cancel(self, wid: int, index: int) -> None:
        """Stop run ``index`` on worker ``wid`` after its current epoch; it answers ``cancelled``
        (or ``done``, if it ended first)."""
        self.jobs[wid].put((CANCEL, index))

    def receive(self) -> tuple | None:
        """The next message from a worker, None after ``POLL_S`` of silence. A worker that could
        not start (``("fatal", worker, text)``) or has died since the last call (reported as
        ``("died", worker, exit_code)``) is marked broken and never sent another run."""
        if self._lost:
            return self._lost.popleft()
        try:
            message = self.results.get(timeout=POLL_S)
        except queue.Empty:
            dead = [(w, p.exitcode) for w, p in enumerate(self.processes) if w not in self.broken and not p.is_alive()]
            self.broken.update(w for w, _ in dead)
            self._lost.extend(("died", w, code) for w, code in dead)
            return self._lost.popleft() if self._lost else None
        if message[0] == "fatal":
            self.broken.add(message[1])
        return message

    def stop(self, graceful: bool) -> None:
        """Graceful: every worker is idle; tell them to stop and wait. Otherwise terminate them now."""
        for wid, p in enumerate(self.processes):
            if graceful and p.is_alive():
                self.jobs[wid].put(None)
            elif p.is_alive():
                p.terminate()
        for p in self.processes:
            p.join(timeout=STOP_GRACE_S if graceful else 5.0)
            if p.is_alive():
                p.kill()
                p.join(timeout=5.0)
        for q in [*self.jobs, self.results]:
            q.cancel_join_thread()  # never block the parent's exit on a queue no one reads any more
            q.close()


def log_started(tracker: Any, run_id: str, run: Any, plan: Any, slot: Slot, message: tuple) -> None:
    """Log a worker's ``("started", worker, index, mean, std, gpu)`` as the run's resolved config."""
    from .sweep import _resolved_config

    _, _, _, mean, std, gpu = message
    cpu_plan = dataclasses.replace(plan, device=torch.device("cpu"))  # never initialise CUDA here
    resolved = _resolved_config(run.spec, run, cpu_plan, mean, std)
    resolved["environment"].update(device=slot.label, gpu=gpu)
    tracker.log_json(run_id, resolved, "config/resolved.json")


# ---------------------------------------------------------------------------------------
# The parallel sweep


@dataclass
class _Active:
    index: int
    run: Any
    run_id: str
    slot: Slot
    eval_entries: list


def run_parallel(
    plan: Any,
    tracker: Any,
    parent: str,
    records: dict[str, list[Any]],
    done: dict[str, Any],
    reporter: Any,
    slots: list[Slot],
    cache_dir: Path,
    outcomes: list[Any],
) -> None:
    """The loop of :func:`bench.sweep.run_sweep` over ``slots`` workers; appends to ``outcomes``
    (in plan order at the end) and raises the first failure after logging every run in flight."""
    from .sweep import RunOutcome, _log_result, epoch_metrics, eval_metric, run_record, task_data

    order = {id(r.spec): i for i, r in enumerate(plan.runs)}
    pending: deque[int] = deque()
    for i, run in enumerate(plan.runs):
        previous = done[run.spec.run_key]
        if previous is None:
            pending.append(i)
            continue
        acc = previous.data.metrics.get(eval_metric(plan.stage))
        outcome = RunOutcome(run.spec, "skipped", previous.info.run_id, acc)
        outcomes.append(outcome)
        reporter.run_done(run, outcome)
    if not pending:
        return
    slots = slots[: len(pending)]
    threads = max(1, (os.cpu_count() or 1) // len(slots))
    setup = WorkerSetup(plan.stage, plan.preset, plan.weights, cache_dir, threads)
    memo: dict[str, Any] = {}
    active: dict[int, _Active] = {}
    failure: BaseException | None = None
    pool = WorkerPool(slots, setup)

    def fail(wid: int, message: str, exc: BaseException) -> None:
        nonlocal failure
        a = active.pop(wid)
        tracker.end_child(a.run_id, "FAILED", message)
        failure = failure or exc

    graceful = False
    try:
        pool.start()
        while active or (pending and failure is None):
            idle = [w for w in range(len(slots)) if w not in active and w not in pool.broken]
            while idle and pending and failure is None:
                wid, index = idle.pop(0), pending.popleft()
                run = plan.runs[index]
                tracker.close_interrupted(records.get(run.spec.run_key, []))
                try:
                    data = task_data(run.task, plan, cache_dir, memo)  # checks every image, fills the cache
                except BenchError as exc:
                    failure = exc
                    break
                slot = slots[wid]
                tags, params = run_record(run, slot.label)
                run_id = tracker.start_child(plan.experiment, parent, run.spec.label, tags, params)
                active[wid] = _Active(index, run, run_id, slot, data.eval_entries)
                reporter.run_started(run, run.preset.epochs)
                pool.send(wid, index, run)
            if not active:
                if pending and failure is None:  # every worker has died or failed to start
                    failure = WorkerRunError(f"no worker is left to train the remaining {len(pending)} run(s)")
                break
            msg = pool.receive()
            if msg is None:
                continue
            kind, wid = msg[0], msg[1]
            if kind == "died":
                if wid in active:
                    a = active[wid]
                    text = f"the worker on {a.slot.label} died (exit code {msg[2]}) while training {a.run.spec.label}"
                    fail(wid, text, WorkerRunError(text))
                continue
            if kind == "fatal":
                text = f"the worker on {slots[wid].label} could not start: {msg[2]}"
                if wid in active:
                    fail(wid, text, WorkerRunError(text))
                else:
                    failure = failure or WorkerRunError(text)
                continue
            a = active.get(wid)
            if a is None or a.index != msg[2]:
                continue  # a message about a run already failed here
            try:
                if kind == "started":
                    log_started(tracker, a.run_id, a.run, plan, a.slot, msg)
                elif kind == "epoch":
                    m = msg[3]
                    tracker.log_metrics(a.run_id, epoch_metrics(m), step=m.epoch)
                    reporter.epoch_done(a.run, m)
                elif kind == "done":
                    result = _unpack(msg[3])
                    _log_result(tracker, a.run_id, a.run, plan, result, a.eval_entries)
                    tracker.end_child(a.run_id, "FINISHED")  # last: after every metric and artifact
                    del active[wid]
                    outcome = RunOutcome(a.run.spec, "trained", a.run_id, result.eval_acc)
                    outcomes.append(outcome)
                    reporter.run_done(a.run, outcome)
                elif kind == "error":
                    _, _, _, name, message, tb, user_error = msg
                    text = f"run {a.run.spec.label} failed on {a.slot.label}: {name}: {message}"
                    if user_error:
                        exc: BaseException = BenchError(message)
                    else:
                        exc = WorkerRunError(text)
                        exc.__cause__ = RemoteTraceback(tb)
                    fail(wid, f"{name}: {message}", exc)
            except KeyboardInterrupt:
                raise
            except Exception as exc:  # logging this run failed (the store, a disk): it fails, the rest goes on
                if wid in active:
                    fail(wid, f"{type(exc).__name__}: {exc}", exc)
        graceful = True
    except BaseException as exc:  # Ctrl-C (KILLED, as in the one-process path) or a failure of this process
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        for a in active.values():
            with contextlib.suppress(Exception):
                tracker.end_child(a.run_id, status, None if status == "KILLED" else f"sweep stopped: {exc!r}"[:400])
        active.clear()
        raise
    finally:
        pool.stop(graceful=graceful)
        outcomes.sort(key=lambda o: order.get(id(o.spec), len(order)))
    if failure is not None:
        raise failure
