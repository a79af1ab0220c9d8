"""Where a run's code came from: the git revision of the checkout ``bench`` runs from, if any.

Recorded as a tag (``bench.git_sha``), never in the run key: a new commit must not make finished
runs look unfinished. A tree with uncommitted changes is marked ``-dirty``; an installed copy
without a ``.git`` (a wheel, a copied tree) records nothing rather than a guess.
"""

from __future__ import annotations

import functools
import shlex
import subprocess
from pathlib import Path

SOURCE_ROOT = Path(__file__).resolve().parent.parent


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(SOURCE_ROOT), *args], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):  # no git, not a checkout, or a hung filesystem
        return None
    return out.stdout.strip()


@functools.cache
def git_revision() -> str | None:
    """``<sha>`` or ``<sha>-dirty`` for the checkout holding ``bench``; None outside a git checkout."""
    if not (SOURCE_ROOT / ".git").exists():
        return None
    sha = _git("rev-parse", "HEAD")
    if not sha:
        return None
    # Only the code counts as dirty: untracked work folders (runs/, mlflow.db) are not code.
    status = _git("status", "--porcelain", "--untracked-files=no")
    return f"{sha}-dirty" if status else sha


_COMMAND: list[str] = []


def set_command(args: list[str]) -> None:
    """Remember the command line of this process's ``bench`` invocation (set by the CLI)."""
    _COMMAND[:] = ["bench", *args]


def command_line() -> str | None:
    """``bench run …`` as typed, for the ``bench.command`` tag; None outside the CLI."""
    return shlex.join(_COMMAND) if _COMMAND else None
