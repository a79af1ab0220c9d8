"""Reading NOAH-format list files (``<relative image path> <integer label>`` per line).

Every way a list can be wrong becomes a :class:`DataError` naming the file and line and the
fix: a missing file, a malformed line, a label out of range, a path that escapes its task
folder. Nothing here opens images; ``suites.images`` does that.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .base import DataError


@dataclass(frozen=True)
class ListEntry:
    path: Path  # absolute (lexically normalised; symlinks are allowed and not resolved)
    label: int
    source: str  # "<list file>:<line>" for error messages


def read_list(
    task_dir: Path, list_name: str, num_classes: int | None = None, image_root: Path | None = None
) -> list[ListEntry]:
    """Parse ``task_dir/list_name``; labels must lie in ``0..num_classes-1`` when it is given.

    Paths are relative to ``image_root`` (default: the task folder; the few-shot lists name images
    relative to ``<task>/images/``) and must stay inside the task folder.
    """
    list_path = task_dir / list_name
    if not list_path.is_file():
        raise DataError(
            f"list file {list_path} is missing; a NOAH-format task folder needs {list_name} "
            "(check --data-root and the task name, or run `bench data verify`)"
        )
    _check_list_link(list_path, task_dir)
    root = os.path.normpath(os.path.abspath(task_dir))
    base = os.path.normpath(os.path.abspath(image_root)) if image_root is not None else root
    entries: list[ListEntry] = []
    text = list_path.read_text(encoding="utf-8-sig", errors="replace")
    for line_no, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        where = f"{list_path}:{line_no}"
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not _is_int(parts[1]):
            raise DataError(
                f"{where}: expected '<relative image path> <integer label>', got {line[:80]!r}; fix or delete this line"
            )
        rel, label = parts[0], int(parts[1])
        full = _join_inside(base, root, rel, where)
        if label < 0 or (num_classes is not None and label >= num_classes):
            bound = f"0..{num_classes - 1}" if num_classes is not None else "non-negative"
            raise DataError(
                f"{where}: label {label} is out of range ({bound} for {num_classes} classes); "
                "fix the label, or the class count (for your own data: classes.txt naming every class, one a line)"
            )
        entries.append(ListEntry(Path(full), label, where))
    if not entries:
        raise DataError(f"list file {list_path} has no entries; regenerate it")
    return entries


def inside_folder(base: str | Path, rel: str, where: str, folder: str | Path | None = None) -> str:
    """``base/rel``, lexically normalised, refusing an absolute ``rel`` or one that leaves ``folder``
    (default ``base``) through ``..``; ``where`` names the file and line for the message."""
    base = os.path.normpath(os.path.abspath(base))
    root = os.path.normpath(os.path.abspath(folder)) if folder is not None else base
    return _join_inside(base, root, rel, where)


def _join_inside(base: str, root: str, rel: str, where: str) -> str:
    """:func:`inside_folder` for an already normalised ``base`` and ``root`` (once per list line)."""
    if os.path.isabs(rel):
        raise DataError(f"{where}: path {rel!r} is absolute; list paths must be relative to {base}")
    full = os.path.normpath(os.path.join(base, rel))
    if full != root and not full.startswith(root.rstrip(os.sep) + os.sep):
        raise DataError(f"{where}: path {rel!r} escapes the task folder {root}; list paths must stay inside it")
    return full


def _check_list_link(list_path: Path, task_dir: Path) -> None:
    """Refuse a list file that is a link to a file outside its task folder (as the folder itself
    resolves), before reading a line of it: its lines would be echoed in error messages."""
    real_dir = os.path.realpath(task_dir)
    real = os.path.realpath(list_path)
    if os.path.commonpath([real_dir, real]) != real_dir:
        raise DataError(
            f"list file {list_path} is a link to {real}, outside the task folder {task_dir}; "
            "copy the list into the task folder instead of linking it"
        )


def check_regular_file(entry: ListEntry) -> None:
    """Refuse an image path that is not a regular file (after links): opening a FIFO or a device
    would block or read forever instead of failing."""
    try:
        mode = os.stat(entry.path).st_mode
    except FileNotFoundError:
        raise DataError(
            f"{entry.source}: image {entry.path} does not exist; restore the file or delete its line"
        ) from None
    except OSError as exc:
        raise DataError(
            f"{entry.source}: image {entry.path} cannot be read ({exc.strerror}); fix its permissions or delete its line"
        ) from None
    if not stat.S_ISREG(mode):
        raise DataError(
            f"{entry.source}: image {entry.path} is not a regular file (a FIFO, device or folder); "
            "replace it with the image file or delete its line"
        )


def duplicates(entries: list[ListEntry]) -> int:
    """How many entries repeat an earlier (image, label) pair (NOAH's Oxford-Pets 1-shot lists: half)."""
    return len(entries) - len({(e.path, e.label) for e in entries})


def dedupe(entries: list[ListEntry]) -> list[ListEntry]:
    """The entries without repeats of an earlier (image, label) pair, in list order."""
    seen: set[tuple[Path, int]] = set()
    kept = []
    for e in entries:
        if (e.path, e.label) not in seen:
            seen.add((e.path, e.label))
            kept.append(e)
    return kept


def _is_int(token: str) -> bool:
    return token.lstrip("-").isdigit()


def list_fingerprint(task_dir: Path, list_names: list[str]) -> str:
    """sha256 over the named list files' names and bytes: what a run's data identity is."""
    h = hashlib.sha256()
    for name in sorted(list_names):
        h.update(name.encode() + b"\0")
        h.update((task_dir / name).read_bytes())
        h.update(b"\0")
    return h.hexdigest()
