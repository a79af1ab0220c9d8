"""From a suite, a data root and task names to validated task folders.

Everything that can be checked without opening images is checked here, before any training
starts: the folder exists, each task has its lists, every line parses, every label is in range.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .base import DataError, FewShotLayout, Stage, Suite, Task
from .lists import ListEntry, dedupe, list_fingerprint, read_list

NOAH_LISTS = ("train800.txt", "val200.txt", "train800val200.txt", "test.txt")


def _norm(name: str) -> str:
    return name.lower().replace("-", "_")


@dataclass(frozen=True)
class ResolvedTask:
    """A task folder ready to run. For a few-shot suite, one (shots, split seed) of it: ``split``."""

    task: Task
    directory: Path
    num_classes: int
    image_root: Path | None = None  # list paths are relative to this (default: the task folder)
    layout: FewShotLayout | None = None
    split: tuple[int, int] | None = None  # (shots, split seed): which few-shot training list
    dedupe: bool = False  # drop repeated lines of the training list (Oxford-Pets 1-shot)

    @property
    def name(self) -> str:
        return self.task.name

    def list_names(self, stage: Stage) -> tuple[str, str]:
        """The (training, evaluation) list files, relative to the task folder, that ``stage`` reads."""
        if self.layout is None:
            return stage.train_list, stage.eval_list
        if self.split is None:
            raise ValueError(f"few-shot task {self.name} has no (shots, split seed) chosen")
        return self.layout.train_list(*self.split), self.layout.eval_list(stage.name)

    def stage_lists(self, stage: Stage) -> tuple[list[ListEntry], list[ListEntry]]:
        return self.train_entries(stage), self.eval_entries(stage)

    def train_entries(self, stage: Stage) -> list[ListEntry]:
        train = read_list(self.directory, self.list_names(stage)[0], self.num_classes, self.image_root)
        return dedupe(train) if self.dedupe else train

    def eval_entries(self, stage: Stage) -> list[ListEntry]:
        return read_list(self.directory, self.list_names(stage)[1], self.num_classes, self.image_root)

    def fingerprint(self, stage: Stage) -> str:
        return list_fingerprint(self.directory, list(self.list_names(stage)))

    def with_split(self, shots: int, split_seed: int, dedupe: bool = False) -> ResolvedTask:
        return dataclasses.replace(self, split=(shots, split_seed), dedupe=dedupe)

    @property
    def extra(self) -> dict[str, Any]:
        """What a run's identity gains from the split: shots, split seed, de-duplication."""
        if self.split is None:
            return {}
        return {"shots": self.split[0], "split_seed": self.split[1], "dedupe": self.dedupe}

    @property
    def cache_id(self) -> tuple[Any, ...]:
        return (self.name, self.split, self.dedupe)


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
        from .imagefolder import is_imagefolder

        tree = next((p for p in [data_root, *sorted(data_root.iterdir())] if p.is_dir() and is_imagefolder(p)), None)
        if tree is not None:
            raise DataError(
                f"{tree} is an ImageFolder tree (train/<class>/<image>), not a NOAH task folder; make it one with "
                f"`bench data imagefolder {tree}` (it writes the list files, the images stay), then run again"
            )
        raise DataError(
            f"no task folders under {data_root}: a task folder holds train800.txt, val200.txt, "
            "train800val200.txt and test.txt; point --data-root at the folder that contains them"
        )
    return found


def count_classes(folder: Path, lists: list[str]) -> int:
    """``classes.txt`` if present, else one more than the largest label of the training lists.

    Without ``classes.txt`` the labels must be 0..C-1 with every class in training: one stray
    label (a test label 999) would otherwise size the head and leave the task unlearnable. Eval
    labels beyond the training classes are then refused by :func:`read_list` with their line.
    """
    names = folder / "classes.txt"
    if names.is_file():
        return _at_least_two(sum(1 for line in names.read_text().splitlines() if line.strip()), names)
    present = [name for name in lists if (folder / name).is_file()]
    if not present:
        raise DataError(f"task folder {folder} has none of {', '.join(lists)}")
    training = [name for name in present if name.startswith("train")] or present
    entries = [e for name in training for e in read_list(folder, name)]
    top = max(entries, key=lambda e: e.label)
    seen = {e.label for e in entries}
    absent = [c for c in range(top.label) if c not in seen]
    if absent:
        shown = ", ".join(map(str, absent[:5])) + (" …" if len(absent) > 5 else "")
        raise DataError(
            f"{top.source}: label {top.label} implies {top.label + 1} classes, but {' and '.join(training)} "
            f"{'has' if len(training) == 1 else 'have'} no example of class {shown}; labels must be 0..C-1 with "
            "every class in training, or classes.txt in the task folder must name the C classes, one a line"
        )
    return _at_least_two(top.label + 1, folder / " and ".join(training))


def _at_least_two(classes: int, source: Path) -> int:
    """A task of one class has nothing to classify: every method would score 100 %."""
    if classes < 2:
        raise DataError(
            f"{source} defines {classes} class{'es' if classes != 1 else ''}; a task needs at least 2 "
            "(labels 0..C-1, or classes.txt naming every class, one a line)"
        )
    return classes


def resolve_tasks(suite: Suite, data_root: Path | None, names: list[str] | None, stage: Stage) -> list[ResolvedTask]:
    """Validated tasks of ``suite`` to run at ``stage``; ``names=None`` means all of them.

    Few-shot suites return one entry per dataset without a split; :func:`fewshot_variants` makes
    the (shots, split seed) variants and parses their lists.
    """
    root = check_data_root(data_root, suite)
    if suite.fewshot is not None:
        return _resolve_fewshot(suite, root, names, stage)
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


def find_image_root(folder: Path, task: Task, probe: list[str]) -> Path:
    """The sub-folder the task's list paths are relative to: the first of ``task.image_dirs`` that
    holds the first listed image (``probe``: list files to take it from), else the first that exists."""
    candidates = [folder / d if d not in ("", ".") else folder for d in task.image_dirs] or [folder]
    first = None
    for name in probe:
        path = folder / name
        if path.is_file():
            line = next((ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()), "")
            first = line.rsplit(maxsplit=1)[0] if line else None
            break
    if first:
        for c in candidates:
            if (c / first).is_file():
                return c
    return next((c for c in candidates if c.is_dir()), candidates[0])


def _resolve_fewshot(suite: Suite, root: Path, names: list[str] | None, stage: Stage) -> list[ResolvedTask]:
    layout = suite.fewshot
    assert layout is not None
    resolved, missing = [], []
    for task in select_tasks(suite, names):
        folder = find_task_folder(root, task)
        if folder is None:
            missing.append(task)
            continue
        eval_name = layout.eval_list(stage.name)
        image_root = find_image_root(folder, task, [eval_name, layout.train_list(layout.shots[0], 0)])
        if task.num_classes is None:
            raise DataError(f"few-shot task {task.name} of suite {suite.name!r} needs a class count")
        resolved.append(ResolvedTask(task, folder, task.num_classes, image_root, layout))
    if missing:
        raise DataError(
            "; ".join(
                f"no folder for task {t.name} under {root} (accepted names: {', '.join((t.name, *t.aliases))}"
                + (f"; {t.source}" if t.source else "")
                + ")"
                for t in missing
            )
            + f"; or choose tasks with --tasks (`bench data verify --suite {suite.name}` lists every missing file)"
        )
    return resolved
