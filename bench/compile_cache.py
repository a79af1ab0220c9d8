"""Compiled training steps across runs and processes: where they are kept, which kinds are warm,
and a background compilation for a kind that is not.

A *kind* of step is everything its compiled graph depends on: the method and its configuration,
the backbone, the image and batch size, the drop-path rate, the compile mode, whether frozen
weights are held in bf16, the torch version and the device model. The task's class count is not
part of it: the classifier runs outside the graph (:mod:`bench.train`), so one graph serves every
task and seed of a method and backbone.

The graphs themselves are Inductor's: its FX-graph and AOTAutograd caches, kept in one folder
(``<workdir>/cache/compile`` by default; the environment variable ``BENCH_COMPILE_CACHE`` names
another, for example a folder that every node of a cluster mounts). A resumed sweep, a second
process and a new Ray worker then load a compiled step instead of compiling it. Beside them,
``kinds/<key>.json`` records each kind compiled into that folder and what compiling it cost.

The first run of a kind that is not warm does not wait for a compiler: it trains eagerly while a
separate process compiles the same step into the folder (:func:`bench.engine.warm.warm_step`),
and switches to the compiled step at the next epoch once the kind is warm. A run too short to
profit ends eagerly, as fast as it can, and leaves the cache warm for the next run of its kind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ENV = "BENCH_COMPILE_CACHE"


def cache_folder(workdir: Path | None) -> Path | None:
    """The folder compiled steps live in: ``$BENCH_COMPILE_CACHE``, else ``<workdir>/cache/compile``."""
    named = os.environ.get(ENV)
    if named:
        return Path(named).expanduser()
    return None if workdir is None else Path(workdir) / "cache" / "compile"


def use_cache_folder(folder: Path) -> None:
    """Point this process's Inductor at ``folder`` and make sure both of its caches are on.

    Inductor reads ``TORCHINDUCTOR_CACHE_DIR`` when it next needs the folder; its in-memory caches
    are cleared when the folder changes, so a process never mixes two folders' graphs."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    inductor_config.fx_graph_cache = True
    functorch_config.enable_autograd_cache = True
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR") != str(folder):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(folder)
        from torch._inductor.utils import clear_caches

        clear_caches()


@dataclass(frozen=True)
class StepKind:
    key: str
    description: dict[str, Any] = field(hash=False, compare=False)


def step_kind(
    *,
    method: str,
    method_config: dict[str, Any],
    backbone: str,
    img_size: int,
    batch_size: int,
    drop_path: float,
    mode: str,
    frozen_bf16: bool,
    device: str,
) -> StepKind:
    import torch

    description = {
        "method": method,
        "method_config": method_config,
        "backbone": backbone,
        "img_size": img_size,
        "batch_size": batch_size,
        "drop_path": drop_path,
        "mode": mode,
        "frozen_bf16": frozen_bf16,
        "device": device,
        "torch": torch.__version__,
    }
    text = json.dumps(description, sort_keys=True, default=str)
    return StepKind(hashlib.sha256(text.encode()).hexdigest()[:20], description)


class Ledger:
    """Which kinds of step a cache folder holds, and who is compiling one now."""

    def __init__(self, folder: Path):
        self.folder = Path(folder) / "kinds"

    def _entry(self, kind: StepKind) -> Path:
        return self.folder / f"{kind.key}.json"

    def is_warm(self, kind: StepKind) -> bool:
        return self._entry(kind).is_file()

    def record(self, kind: StepKind, compile_seconds: float, by: str) -> None:
        """Mark ``kind`` warm (written whole, then renamed: a reader never sees half an entry)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        entry = {**kind.description, "compile_s": round(compile_seconds, 3), "by": by, "when": time.time()}
        tmp = self._entry(kind).with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(entry, indent=1, default=str))
        os.replace(tmp, self._entry(kind))

    def compile_seconds(self, kind: StepKind) -> float | None:
        try:
            return float(json.loads(self._entry(kind).read_text())["compile_s"])
        except (OSError, ValueError, KeyError):
            return None

    def claim(self, kind: StepKind) -> bool:
        """Claim the compilation of ``kind`` for this process: False while a live process holds it.

        The claim is a lock file naming its process; one left by a process that died is taken over."""
        self.folder.mkdir(parents=True, exist_ok=True)
        lock = self.folder / f"{kind.key}.lock"
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if (pid := _pid_in(lock)) is not None and psutil.pid_exists(pid):
                    return False
                lock.unlink(missing_ok=True)  # its process is gone: the claim is stale
                continue
            with os.fdopen(fd, "w") as f:
                f.write(str(os.getpid()))
            return True
        return False

    def release(self, kind: StepKind) -> None:
        (self.folder / f"{kind.key}.lock").unlink(missing_ok=True)


def _pid_in(lock: Path) -> int | None:
    try:
        return int(lock.read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None


# The background compilations this process started, by kind (subprocess.Popen): a sweep that runs the
# same kind again before the first compilation has finished waits for it instead of starting another.
_WARMERS: dict[str, Any] = {}


@dataclass(frozen=True)
class WarmRequest:
    """What a background compilation (:mod:`bench.engine.warm`) needs to build a run's step."""

    run: Any  # a planned run: .spec, .method, .config, .preset
    mode: str  # the compile mode (bench.train.COMPILE_MODES, not eager)
    frozen_bf16: bool
    device: str


@dataclass
class StepCache:
    """What :func:`bench.train.train_run` needs to reuse compiled steps: the ledger of the cache
    folder, the run's kind, and how to compile that kind in the background."""

    folder: Path
    kind: StepKind
    warm_request: WarmRequest

    @property
    def ledger(self) -> Ledger:
        return Ledger(self.folder)

    def is_warm(self) -> bool:
        for key, process in list(_WARMERS.items()):  # reap finished compilations (no zombie processes)
            if process.poll() is not None:
                del _WARMERS[key]
        return self.ledger.is_warm(self.kind)

    def warm_in_background(self) -> None:
        """Start compiling this kind in another process, unless one (here or elsewhere) already is.

        The process is a fresh interpreter (``python -m bench.engine.warm``), not a fork or a
        multiprocessing spawn: a spawned child re-imports the caller's main module, which a script
        without a ``__main__`` guard, a notebook or a Ray worker cannot afford. Its request goes
        through a file of this process's own in the cache folder; it ends with its parent."""
        running = _WARMERS.get(self.kind.key)
        if running is not None and running.poll() is None:
            return
        if not self.ledger.claim(self.kind):
            return  # another process compiles it; the ledger says when it is done
        import pickle
        import subprocess
        import sys

        request = self.ledger.folder / f"{self.kind.key}.request"
        with open(os.open(request, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o600), "wb") as f:
            pickle.dump((self.warm_request, str(self.folder), self.kind), f)
        with open(self.ledger.folder / f"{self.kind.key}.log", "ab") as log:
            _WARMERS[self.kind.key] = subprocess.Popen(
                [sys.executable, "-m", "bench.engine.warm", str(request)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                preexec_fn=_end_with_parent if sys.platform == "linux" else None,
            )


def _end_with_parent() -> None:
    """In the child, before it runs: ask Linux to send it SIGTERM when its parent dies."""
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
