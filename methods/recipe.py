"""Paper recipes: each method's own published training setup, read from ``methods/recipes/<method>.yaml``.

A recipe file names, per suite, the values the method's paper or official code trained with, in
blocks that each cite one source (a paper table, or an official script or config file with its
repository and commit)::

    method: ssf
    paper: Lian et al., NeurIPS 2022 (arXiv 2210.08823)
    suites:
      vtab1k:
        blocks:
          - source: dongzelian/SSF@e94e0e7 train_scripts/vit/vtab/<task>/train_ssf.sh
            every_task: {optimizer: adamw, batch_size: 32, epochs: 100}
            tasks:
              cifar: {lr: 0.005, weight_decay: 5.0e-5, drop_path: 0.0}
        differences:
          - what the official setup does that bench does not reproduce, one line each

Keys are training-setup fields (``lr``, ``optimizer``, ...: the suite preset's) or the method's own
config fields (``rank``, ``scale``, ...). A block with ``tasks`` must list every task the recipe
serves; values of later blocks win over earlier ones. Further recipe folders (a user's own
recipes, which replace a shipped file of the same method) are read from the ``BENCH_RECIPES``
environment variable, folders separated by the path separator.

This module reads and checks the files; it knows nothing of suites or runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from .base import MethodError

SHIPPED = Path(__file__).parent / "recipes"
ENV_PATH = "BENCH_RECIPES"
#: Training-setup fields a recipe may set: the suite preset's optimiser, schedule and regularisation.
TRAINING_FIELDS = (
    "optimizer",
    "lr",
    "weight_decay",
    "batch_size",
    "epochs",
    "warmup_epochs",
    "warmup_lr",
    "min_lr",
    "drop_path",
    "label_smoothing",
)
#: Optimisers the training loop implements (``bench.train``): AdamW, and SGD with momentum 0.9.
OPTIMIZERS = ("adamw", "sgd")


@dataclass(frozen=True)
class RecipeBlock:
    """Values from one source: for every task, and per task."""

    source: str
    every_task: dict[str, Any] = field(default_factory=dict)
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class SuiteRecipe:
    """A method's recipe on one suite."""

    suite: str
    blocks: tuple[RecipeBlock, ...]
    differences: tuple[str, ...] = ()

    @property
    def per_task(self) -> bool:
        return any(b.tasks for b in self.blocks)

    @property
    def tasks(self) -> list[str]:
        """The tasks the recipe serves; empty: every task of the suite."""
        listed = [set(b.tasks) for b in self.blocks if b.tasks]
        return sorted(set.intersection(*listed)) if listed else []

    def values(self, task: str) -> dict[str, tuple[Any, str]]:
        """``field -> (value, source)`` for ``task``; a per-task block that does not list it is refused."""
        resolved: dict[str, tuple[Any, str]] = {}
        for block in self.blocks:
            if block.tasks and task not in block.tasks:
                raise MethodError(
                    f"the paper recipe for suite {self.suite!r} has no values for task {task!r} "
                    f"(it lists {', '.join(sorted(block.tasks))}); drop the task or use --hparams preset"
                )
            for key, value in {**block.every_task, **block.tasks.get(task, {})}.items():
                resolved[key] = (value, block.source)
        return resolved

    @property
    def keys(self) -> list[str]:
        seen: dict[str, None] = {}
        for block in self.blocks:
            for values in (block.every_task, *block.tasks.values()):
                seen.update(dict.fromkeys(values))
        return list(seen)

    @property
    def sources(self) -> list[str]:
        return list(dict.fromkeys(b.source for b in self.blocks))


@dataclass(frozen=True)
class Recipe:
    """A method's paper recipe: its suites, read from ``path``."""

    method: str
    paper: str
    suites: dict[str, SuiteRecipe]
    path: Path

    @property
    def source(self) -> str:
        """One line naming where the values come from (``bench methods list --json``'s ``paper_recipe``)."""
        return "; ".join(dict.fromkeys(s for r in self.suites.values() for s in r.sources))

    def for_suite(self, suite: str) -> SuiteRecipe | None:
        return self.suites.get(suite)


def _mapping(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise MethodError(f"{where} must be a mapping of field names to values")
    return value


def _check_values(values: dict[str, Any], where: str) -> dict[str, Any]:
    for key, value in values.items():
        if isinstance(value, dict | list) or value is None:
            raise MethodError(f"{where}: {key} must be a single value, not {value!r}")
        if key == "optimizer" and value not in OPTIMIZERS:
            raise MethodError(f"{where}: optimizer {value!r} is not one of {', '.join(OPTIMIZERS)}")
    return values


def parse_recipe(text: str, path: Path) -> Recipe:
    """A recipe from a file's YAML text; a malformed file is refused in one line naming it."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise MethodError(f"recipe {path} is not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(data, dict) or not isinstance(data.get("method"), str):
        raise MethodError(f"recipe {path} must be a mapping with a 'method' name and 'suites'")
    unknown = sorted(set(data) - {"method", "paper", "suites"})
    if unknown:
        raise MethodError(f"recipe {path} has unknown key(s) {', '.join(unknown)}; valid: method, paper, suites")
    suites: dict[str, SuiteRecipe] = {}
    for suite, body in _mapping(data.get("suites"), f"recipe {path}: suites").items():
        where = f"recipe {path}, suite {suite}"
        body = _mapping(body, where)
        unknown = sorted(set(body) - {"blocks", "differences"})
        if unknown:
            raise MethodError(f"{where} has unknown key(s) {', '.join(unknown)}; valid: blocks, differences")
        blocks = []
        for i, raw in enumerate(body.get("blocks") or []):
            raw = _mapping(raw, f"{where}, block {i + 1}")
            if not isinstance(raw.get("source"), str) or not raw["source"].strip():
                raise MethodError(f"{where}, block {i + 1} has no source; every value must cite one")
            extra = sorted(set(raw) - {"source", "every_task", "tasks"})
            if extra:
                raise MethodError(f"{where}, block {i + 1} has unknown key(s) {', '.join(extra)}")
            tasks = {
                str(t): _check_values(_mapping(v, f"{where}, task {t}"), f"{where}, task {t}")
                for t, v in _mapping(raw.get("tasks"), f"{where}, tasks").items()
            }
            every = _check_values(_mapping(raw.get("every_task"), f"{where}, every_task"), f"{where}, every_task")
            blocks.append(RecipeBlock(raw["source"].strip(), every, tasks))
        if not blocks:
            raise MethodError(f"{where} has no blocks of values")
        differences = body.get("differences") or []
        if not isinstance(differences, list):
            raise MethodError(f"{where}: differences must be a list of lines, one per difference")
        differences = tuple(str(d) for d in differences)
        suites[suite] = SuiteRecipe(suite, tuple(blocks), differences)
    return Recipe(data["method"], str(data.get("paper", "")), suites, path)


def recipe_folders() -> list[Path]:
    """Where recipes are read from: ``BENCH_RECIPES``'s folders first (they win), then the shipped one."""
    extra = [Path(p) for p in os.environ.get(ENV_PATH, "").split(os.pathsep) if p.strip()]
    missing = [str(p) for p in extra if not p.is_dir()]
    if missing:
        raise MethodError(
            f"{ENV_PATH} names {', '.join(missing)}, which is not a folder; point it at your recipes' folder"
        )
    return [*extra, SHIPPED]


@cache
def _read(path: Path, stamp: tuple[int, int]) -> Recipe:
    """A recipe file, parsed once per version (``stamp``: its modification time and size)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise MethodError(f"recipe {path} cannot be read ({exc}); fix its permissions or encoding (UTF-8)") from None
    recipe = parse_recipe(text, path)
    if recipe.method != path.stem:
        raise MethodError(f"recipe {path} names method {recipe.method!r}; name the file {recipe.method}.yaml")
    return recipe


def _load(folders: list[Path]) -> dict[str, Recipe]:
    recipes: dict[str, Recipe] = {}
    for folder in reversed(folders):  # the shipped folder first; a user's file of the same method replaces it
        for path in sorted(folder.glob("*.yaml")):
            stat = path.stat()
            recipe = _read(path, (stat.st_mtime_ns, stat.st_size))
            recipes[recipe.method] = recipe
    return recipes


def all_recipes() -> dict[str, Recipe]:
    """Every recipe by method name."""
    return _load(recipe_folders())


def get_recipe(method: str) -> Recipe | None:
    """The recipe of a registered method (by its name, not a variant's label), or None."""
    return all_recipes().get(method)
