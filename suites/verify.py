"""``bench data verify``: every check on a suite's data, reported at once instead of failing at the first.

Per task: the four NOAH lists exist and parse, line counts match the suite's expected split
sizes, labels are in range, every class appears in the training lists, every listed image
opens, and per stage the fingerprint (sha256 of the stage's two list files) that its runs record.

Few-shot suites (:func:`verify_fewshot_task`): val, test and all shots x split-seed training lists
exist and parse, every training list holds exactly ``shots`` images of every class, no training
image is in val or test, repeated lines are reported (warnings: runs keep them unless
``--dedupe``), the lists are compared with NOAH's published ones, and every image opens.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from .base import STAGES, DataError, FewShotLayout, Suite, Task
from .lists import ListEntry, check_regular_file, dedupe, duplicates, list_fingerprint, read_list
from .resolve import (
    NOAH_LISTS,
    check_data_root,
    count_classes,
    discover_tasks,
    find_image_root,
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
    warnings: list[str] = field(default_factory=list)  # worth knowing, not wrong (NOAH's repeated lines)

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
            "warnings": self.warnings,
        }


def _image_problem(entry: ListEntry) -> str | None:
    try:
        check_regular_file(entry)
    except DataError as exc:
        return str(exc)
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
    _check_images(report, unique)
    for stage in STAGES.values():
        lists = [stage.train_list, stage.eval_list]
        if all(name in report.lines for name in lists):
            report.fingerprints[stage.name] = list_fingerprint(folder, lists)
    return report


def _check_images(report: TaskReport, unique: dict[Path, ListEntry], hint: str = "") -> None:
    with ThreadPoolExecutor(16) as pool:
        problems = [p for p in pool.map(_image_problem, unique.values()) if p]
    report.images_checked = len(unique)
    report.problems.extend(problems[:20])
    if len(problems) > 20:
        report.problems.append(f"... and {len(problems) - 20} more unreadable images")
    if problems and hint:
        report.problems.append(hint)


def verify_fewshot_task(
    task: Task,
    folder: Path,
    layout: FewShotLayout,
    dedupe_lines: bool = False,
    published: dict[str, str] | None = None,
) -> TaskReport:
    """Every check of a few-shot task folder; ``published``: list name -> sha256 of NOAH's copy."""
    report = TaskReport(task.name, folder, num_classes=task.num_classes)
    source = f"; {task.source}" if task.source else ""
    assert task.num_classes is not None
    classes = task.num_classes
    evals = {stage: layout.eval_list(stage) for stage, _ in layout.eval_lists}
    trains = {(k, s): layout.train_list(k, s) for k in layout.shots for s in layout.split_seeds}
    names = [*evals.values(), *trains.values()]
    absent = [n for n in names if not (folder / n).is_file()]
    if len(absent) == len(names):
        report.problems.append(f"no lists in {folder / layout.list_dir}/{source}")
        return report
    report.problems.extend(f"{folder / n} is missing{source}" for n in absent)
    image_root = find_image_root(folder, task, [n for n in names if n not in absent][:1])
    if not image_root.is_dir():
        report.problems.append(f"image folder {image_root} is missing{source}")
    entries: dict[str, list[ListEntry]] = {}
    for name in names:
        if name in absent:
            continue
        try:
            entries[name] = read_list(folder, name, classes, image_root)
        except DataError as exc:
            report.problems.append(str(exc))
            continue
        report.lines[name] = len(entries[name])
        expected = task.split_sizes.get(name.rsplit("/", 1)[-1])
        if expected is not None and len(entries[name]) != expected:
            report.problems.append(f"{folder / name} has {len(entries[name])} lines, expected {expected}")
        digest = (published or {}).get(name.rsplit("/", 1)[-1])
        if digest and hashlib.sha256((folder / name).read_bytes()).hexdigest() != digest:
            report.warnings.append(f"{folder / name} differs from NOAH's published list")
    held_out = {e.path for n in evals.values() for e in entries.get(n, [])}
    repeats = []
    for (k, _s), name in trains.items():
        if name not in entries:
            continue
        listed = entries[name]
        if n := duplicates(listed):
            repeats.append(f"{name.rsplit('/', 1)[-1]} ({n} of {len(listed)} lines)")
        per_class = Counter(e.label for e in dedupe(listed))
        wrong = sorted(c for c in range(classes) if per_class.get(c, 0) != k)
        if wrong:
            counts = ", ".join(f"class {c}: {per_class.get(c, 0)}" for c in wrong[:5])
            report.problems.append(
                f"{folder / name} should hold {k} image(s) of each of {classes} classes ({k * classes} in all); "
                f"{counts}{' …' if len(wrong) > 5 else ''}"
            )
        labels: dict[Path, int] = {}
        for e in listed:
            if labels.setdefault(e.path, e.label) != e.label:
                report.problems.append(
                    f"{e.source}: image {e.path} is listed with labels {labels[e.path]} and {e.label}"
                )
        leaked = sorted({e.path for e in listed} & held_out)
        if leaked:
            report.problems.append(
                f"{folder / name}: {len(leaked)} training image(s) are also in val/test, e.g. {leaked[0]}"
            )
    if repeats:
        action = (
            "--dedupe drops the repeats"
            if dedupe_lines
            else "runs keep them as published; `bench run --dedupe` drops them"
        )
        report.warnings.append(f"{len(repeats)} training list(s) repeat lines: {', '.join(repeats)}; {action}")
    unique: dict[Path, ListEntry] = {}
    for listed in entries.values():
        for e in listed:
            unique.setdefault(e.path, e)
    _check_images(report, unique, hint=f"images of {task.name}: {task.source}" if task.source else "")
    for (k, s), train in trains.items():
        for stage, evaluation in evals.items():
            if train in report.lines and evaluation in report.lines:
                report.fingerprints[f"{stage}/k{k}/s{s}"] = list_fingerprint(folder, [train, evaluation])
    return report


def verify_suite(
    suite: Suite, data_root: Path, names: list[str] | None = None, dedupe_lines: bool = False
) -> list[TaskReport]:
    root = check_data_root(data_root, suite)
    if suite.fewshot is not None:
        from .fewshot import published_lists

        reports = []
        for task in select_tasks(suite, names):
            folder = find_task_folder(root, task)
            if folder is None:
                aliases = ", ".join((task.name, *task.aliases))
                hint = f"; {task.source}" if task.source else ""
                reports.append(TaskReport(task.name, None, problems=[f"no folder named {aliases} under {root}{hint}"]))
            else:
                published = published_lists(suite, task)
                reports.append(verify_fewshot_task(task, folder, suite.fewshot, dedupe_lines, published))
        return reports
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
