"""From a suite, a data root and task names to validated task folders.

Everything that can be checked without opening images is checked here, before any training
starts: the folder exists, each task has its lists, every line parses, every label is in range.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .base import DataError, Stage, Suite, Task
from .lists import ListEntry, list_fingerprint, read_list

NOAH_LISTS = ("train800.txt", "val200.txt", "train800val200.txt", "test.txt")


def _norm(name: str) -> str:
    return name.lower().replace("-", "_")


@dataclass(frozen=True)
class ResolvedTask:
    task: Task
    directory: Path
    num_classes: int

    @property
    def name(self) -> str:
        return self.task.name

    def stage_lists(self, stage: Stage) -> tuple[list[ListEntry], list[ListEntry]]:
        return (
            read_list(self.directory, stage.train_list, self.num_classes),
            read_list(self.directory, stage.eval_list, self.num_classes),
        )

    def fingerprint(self, stage: Stage) -> str:
        return list_fingerprint(self.directory, [stage.train_list, stage.eval_list])


def check_data_root(data_root: Path | None, suite: Suite) -> Path:
    if data_root is None:
        raise DataError(
            f"suite {suite.name!r} needs --data-root DIR: the folder that holds its task folders ({suite.source})"
        )
    if not data_root.is_dir():
        raise DataError(
            f"data root {data_root} does not exist or is not a folder; pass --data-root DIR with the task folders"
        )
    return data_root.absolute()  # list entries are absolute, so task folders must be too


def find_task_folder(data_root: Path, task: Task) -> Path | None:
    """The task's folder under ``data_root``, by its name or an alias (case and -/_ insensitive)."""
    wanted = [_norm(task.name), *(_norm(a) for a in task.aliases)]
    folders = {_norm(p.name): p for p in sorted(data_root.iterdir()) if p.is_dir()}
    for key in wanted:
        if key in folders:
            return folders[key]
    return None


def _has_lists(folder: Path) -> bool:
    return any((folder / name).is_file() for name in NOAH_LISTS)


def discover_tasks(data_root: Path) -> list[tuple[Task, Path]]:
    """Task folders under ``data_root`` (or ``data_root`` itself if it is one task folder)."""
    if _has_lists(data_root):
        return [(Task(name=data_root.name), data_root)]
    found = [(Task(name=p.name), p) for p in sorted(data_root.iterdir()) if p.is_dir() and _has_lists(p)]
    if not found:
        raise DataError(
            f"no task folders under {data_root}: a task folder holds train800.txt, val200.txt, "
            "train800val200.txt and test.txt; point --data-root at the folder that contains them"
        )
    return found


def count_classes(folder: Path, lists: list[str]) -> int:
    """``classes.txt`` if present, else one more than the largest label in the lists."""
    names = folder / "classes.txt"
    if names.is_file():
        return sum(1 for line in names.read_text().splitlines() if line.strip())
    present = [name for name in lists if (folder / name).is_file()]
    if not present:
        raise DataError(f"task folder {folder} has none of {', '.join(lists)}")
    return 1 + max(e.label for name in present for e in read_list(folder, name))


def resolve_tasks(suite: Suite, data_root: Path | None, names: list[str] | None, stage: Stage) -> list[ResolvedTask]:
    """Validated tasks of ``suite`` to run at ``stage``; ``names=None`` means all of them."""
    root = check_data_root(data_root, suite)
    if suite.discovers_tasks:
        candidates = discover_tasks(root)
        by_name = {_norm(t.name): (t, p) for t, p in candidates}
        if names:
            missing = [n for n in names if _norm(n) not in by_name]
            if missing:
                raise DataError(
                    f"unknown task {', '.join(map(repr, missing))} in {root}; "
                    f"task folders found: {', '.join(t.name for t, _ in candidates)}"
                )
            candidates = [by_name[_norm(n)] for n in names]
        chosen = [(t, p, count_classes(p, [stage.train_list, stage.eval_list])) for t, p in candidates]
    else:
        tasks = select_tasks(suite, names)
        chosen, missing = [], []
        for task in tasks:
            folder = find_task_folder(root, task)
            if folder is None:
                missing.append(task.name)
            else:
                chosen.append((task, folder, task.num_classes or count_classes(folder, [stage.train_list])))
        if missing:
            raise DataError(
                f"no folder for task {', '.join(missing)} under {root}; "
                f"get the data (`bench data fetch --suite {suite.name}`), fix --data-root, or choose tasks with --tasks"
            )
    resolved = [ResolvedTask(task, folder, n) for task, folder, n in chosen]
    for rt in resolved:  # parse every list now: a bad line fails the sweep before any training
        rt.stage_lists(stage)
    return resolved


def select_tasks(suite: Suite, names: list[str] | None) -> list[Task]:
    """The suite's tasks by name or alias, in the order given (all of them when ``names`` is empty)."""
    if not names:
        return list(suite.tasks)
    index = {}
    for task in suite.tasks:
        for key in (task.name, *task.aliases):
            index[_norm(key)] = task
    unknown = [n for n in names if _norm(n) not in index]
    if unknown:
        raise DataError(
            f"unknown task {', '.join(map(repr, unknown))} for suite {suite.name!r}; "
            f"its tasks are: {', '.join(t.name for t in suite.tasks)}"
        )
    return [index[_norm(n)] for n in names]
