"""Protocols: tasks, splits, preprocessing and schedule, as data in a registry."""

from . import demo, fewshot, folder, hf, vtab1k  # noqa: F401  (registration by import)
from .base import STAGES, DataError, DatasetOptions, Preset, Stage, Suite, Task, available_suites, get_stage, get_suite
from .resolve import ResolvedTask, resolve_tasks

__all__ = [
    "STAGES",
    "DataError",
    "DatasetOptions",
    "Preset",
    "ResolvedTask",
    "Stage",
    "Suite",
    "Task",
    "available_suites",
    "get_stage",
    "get_suite",
    "resolve_tasks",
]
