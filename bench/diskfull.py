"""Recognising a full disk behind any exception, so the CLI can say so in one line.

A full disk reaches bench in two forms: an ``OSError`` with errno ENOSPC (or EDQUOT, a quota)
from a file write, and sqlite's "database or disk is full", which SQLAlchemy and MLflow wrap in
exceptions whose text quotes the SQL statement. Both are found by walking the exception chain.
"""

from __future__ import annotations

import errno
import logging
import shutil
from pathlib import Path

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_SQLITE_FULL = "database or disk is full"


def quiet_store_errors() -> None:
    """MLflow logs every SQLAlchemy error with its traceback before raising it; bench reports the
    error itself (one line, the traceback in a crash file), so that logger stays silent."""
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)


def _full_disk_cause(exc: BaseException) -> BaseException | None:
    """The exception in ``exc``'s chain that says a disk is full, if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _FULL_ERRNOS:
            return current
        if _SQLITE_FULL in str(current):
            return current
        current = current.__cause__ or current.__context__
    return None


def is_full_disk(exc: BaseException) -> bool:
    return _full_disk_cause(exc) is not None


def full_disk_path(exc: BaseException, store: Path) -> Path | None:
    """The path whose disk is full if ``exc`` (or an exception it wraps) says a disk is full:
    the file named by the OSError, else ``store`` (the sqlite store that could not grow)."""
    cause = _full_disk_cause(exc)
    if cause is None:
        return None
    if isinstance(cause, OSError) and isinstance(cause.filename, str | Path):
        return Path(cause.filename)
    return store


def full_disk_message(path: Path) -> str:
    """One line: which disk is full, how much is free, what to do."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = f"{shutil.disk_usage(probe).free / 2**20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    return (
        f"the disk holding {path} is full ({free}); free space there or move the work directory to a larger disk "
        "(--workdir), then rerun the same command: finished runs are kept and only the rest are trained"
    )
