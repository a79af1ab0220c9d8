"""Run claims: which of the `bench` processes sharing a work directory trains which run.

A process trains a run only while it holds that run's claim, an exclusive ``flock`` on
``<workdir>/claims/<run key>.lock``. The kernel drops the lock when the process exits, however it
exits (even SIGKILL), so a claim can never outlive its holder. Two sweeps started at once on one
work directory therefore divide the runs between them, and a RUNNING record whose claim nobody
holds was left by a process that is gone.

Each lock file is removed by its holder while still locked; a process that opened the old file
sees that the path no longer names it and tries again (``filelock`` leaves one file per key
behind instead, which for a sweep is one file per run, forever).
"""

from __future__ import annotations

import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: every claim succeeds, as before claims existed
    fcntl = None  # type: ignore[assignment]


class RunClaims:
    def __init__(self, folder: Path):
        self.folder = folder
        self._held: dict[str, int] = {}  # run key -> the locked file's descriptor

    def _path(self, key: str) -> Path:
        return self.folder / f"{key}.lock"

    def claim(self, key: str) -> bool:
        """Claim ``key`` for this process; False if another process holds it now (never waits)."""
        if key in self._held:
            return True
        if fcntl is None:
            self._held[key] = -1
            return True
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self._path(key)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                return False
            try:
                current = os.stat(path).st_ino
            except FileNotFoundError:
                current = None
            if current == os.fstat(fd).st_ino:
                self._held[key] = fd
                return True
            os.close(fd)  # its holder removed the file between our open and our lock: try the new one

    def release(self, key: str) -> None:
        fd = self._held.pop(key, None)
        if fd is None or fd < 0:
            return
        self._path(key).unlink(missing_ok=True)  # still locked: no other process holds this file
        os.close(fd)

    def release_all(self) -> None:
        for key in list(self._held):
            self.release(key)
