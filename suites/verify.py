"""``bench data verify``: every check on a suite's data, reported at once instead of failing at the first.

Per task: the four NOAH lists exist and parse, line counts match the suite's expected split
sizes, labels are in range, every class appears in the training lists, every listed image
opens, and per stage the fingerprint (sha256 of the stage's two list files) that its runs record.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from .base import STAGES, DataError, Suite, Task
from .lists import ListEntry, list_fingerprint, read_list
from .resolve import (
    NOAH_LISTS,
    check_data_root,
    count_classes,
    discover_tasks,
    find_task_folder,
    select_tasks,
)


@dataclass
class TaskReport:
    task: str
    folder: Path | None
    num_classes: int | None = None
    lines: dict[str, int] = field(default_factory=dict)
    images_checked: int = 0
    fingerprints: dict[str, str] = field(default_factory=dict)  # stage -> what runs of that stage record
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "folder": str(self.folder) if self.folder else None,
            "ok": self.ok,
            "num_classes": self.num_classes,
            "lines": self.lines,
            "images_checked": self.images_checked,
            "fingerprints": self.fingerprints,
            "problems": self.problems,
        }


def _image_problem(entry: ListEntry) -> str | None:
    try:
        with Image.open(entry.path) as img:
            img.verify()
        return None
    except FileNotFoundError:
        return f"{entry.source}: image {entry.path} does not exist"
    except Exception as exc:
        return f"{entry.source}: image {entry.path} cannot be read ({type(exc).__name__})"


def verify_task(task: Task, folder: Path) -> TaskReport:
    report = TaskReport(task.name, folder)
    present = [name for name in NOAH_LISTS if (folder / name).is_file()]
    for name in NOAH_LISTS:
        if name not in present:
            report.problems.append(f"{folder / name} is missing")
    try:
        report.num_classes = task.num_classes or count_classes(folder, present)
    except DataError as exc:
        report.problems.append(str(exc))
        return report
    unique: dict[Path, ListEntry] = {}
    for name in present:
        try:
            entries = read_list(folder, name, report.num_classes)
        except DataError as exc:
            report.problems.append(str(exc))
            continue
        report.lines[name] = len(entries)
        expected = task.split_sizes.get(name)
        if expected is not None and len(entries) != expected:
            report.problems.append(f"{folder / name} has {len(entries)} lines, expected {expected}")
        if name.startswith("train"):
            seen = Counter(e.label for e in entries)
            absent = [c for c in range(report.num_classes) if c not in seen]
            if absent:
                report.problems.append(f"{folder / name} has no example of class(es) {absent[:10]}")
        for e in entries:
            unique.setdefault(e.path, e)
    with ThreadPoolExecutor(16) as pool:
        problems = [p for p in pool.map(_image_problem, unique.values()) if p]
    report.images_checked = len(unique)
    report.problems.extend(problems[:20])
    if len(problems) > 20:
        report.problems.append(f"... and {len(problems) - 20} more unreadable images")
    for stage in STAGES.values():
        lists = [stage.train_list, stage.eval_list]
        if all(name in report.lines for name in lists):
            report.fingerprints[stage.name] = list_fingerprint(folder, lists)
    return report


def verify_suite(suite: Suite, data_root: Path, names: list[str] | None = None) -> list[TaskReport]:
    root = check_data_root(data_root, suite)
    if suite.discovers_tasks:
        found = discover_tasks(root)
        if names:
            wanted = {n.lower() for n in names}
            found = [(t, p) for t, p in found if t.name.lower() in wanted]
        return [verify_task(t, p) for t, p in found]
    reports = []
    for task in select_tasks(suite, names):
        folder = find_task_folder(root, task)
        if folder is None:
            aliases = ", ".join((task.name, *task.aliases))
            reports.append(TaskReport(task.name, None, problems=[f"no folder named {aliases} under {root}"]))
        else:
            reports.append(verify_task(task, folder))
    return reports
