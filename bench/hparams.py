"""Hyperparameter sources: where a run's training setup comes from, and the paper recipes applied.

Three sources, named by ``--hparams`` and recorded on every run (``bench.hparams``):

* ``preset``: the suite's one shared preset (plus each method's own defaults), the same for every method;
* ``paper``: each method's own published recipe (``methods/recipes/<method>.yaml``), per suite or task;
* ``tuned``: the best trial of each (task, method, budget) study of ``bench tune``.

``--hparams paper,preset`` trains a method without a recipe with the preset instead of refusing it.
The source is not part of a run's identity: runs whose resolved setups are equal train identically,
so a ``paper`` or ``tuned`` run equal to a ``preset`` run reuses it, and the store records on that
run every source it serves (``bench.hparams_sources``), so a report selects it under each.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any

from methods.base import Composite, Method, MethodError, make_config
from methods.recipe import TRAINING_FIELDS, get_recipe
from suites.base import Preset

from . import schema
from .errors import BenchError
from .method_entries import held_values
from .sources import DEPRECATED, SOURCES


@dataclass(frozen=True)
class HparamsChoice:
    """``--hparams`` parsed: the source, and ``preset`` as fallback for methods without a recipe."""

    source: str
    fallback: str | None = None
    deprecated: bool = False  # given as "published"

    @property
    def text(self) -> str:
        return self.source + (f",{self.fallback}" if self.fallback else "")


def parse_hparams(text: str) -> HparamsChoice:
    """``preset``, ``paper``, ``tuned`` or ``paper,preset``; ``published`` is read as ``preset``."""
    names = [n.strip().lower() for n in (text or "").split(",") if n.strip()]
    deprecated = any(n in DEPRECATED for n in names)
    names = [DEPRECATED.get(n, n) for n in names]
    if names == ["paper", "preset"]:
        return HparamsChoice("paper", "preset", deprecated)
    if len(names) == 1 and names[0] in SOURCES:
        return HparamsChoice(names[0], None, deprecated)
    raise BenchError(
        f"--hparams {text!r} must be preset, paper, tuned, or paper,preset (a paper recipe where the method has one, "
        "else the preset)"
    )


def has_recipe(method: Method, suite: str) -> bool:
    """Whether ``method`` (a registered method or a variant of one) has a paper recipe for ``suite``."""
    from methods.composition import base_name

    if isinstance(method, Composite):
        return False
    recipe = get_recipe(base_name(method))
    return recipe is not None and recipe.for_suite(suite) is not None


def missing_recipe(method: Method, suite: str) -> str:
    """The one-line refusal for a method without a paper recipe on ``suite``."""
    from methods.composition import base_name

    if isinstance(method, Composite):
        why = f"composition {method.name!r} has no paper recipe (no paper trained it)"
    else:
        recipe = get_recipe(base_name(method))
        where = f" (it has one for {', '.join(recipe.suites)})" if recipe else ""
        why = f"method {method.name!r} has no paper recipe for suite {suite!r}{where}"
    return f"{why}; pass --hparams paper,preset to train it with the suite preset, or leave it out"


def _typed(value: Any, annotation: Any, where: str) -> Any:
    """A recipe value checked against its field's type: numbers stay numbers (YAML reads 5e-05 as text)."""
    base = annotation
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and args:
        base = args[0]
    if base is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if base is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if base is bool and isinstance(value, bool):
        return value
    if base is str and isinstance(value, str):
        return value
    if typing.get_origin(base) is typing.Literal and value in typing.get_args(base):
        return value
    raise BenchError(f"{where}={value!r} is not a {getattr(base, '__name__', base)}; fix the recipe file")


@dataclass(frozen=True)
class PaperSettings:
    preset: Preset
    config: Any
    tags: dict[str, str]


def paper_settings(
    method: Method,
    config: Any,
    suite: str,
    task: str,
    preset: Preset,
    user_overrides: dict[str, Any],
    epochs: int | None = None,
) -> PaperSettings:
    """The run's preset and config under the method's paper recipe for ``task``.

    The recipe's training fields replace the preset's; its method fields replace the method's
    defaults, except the fields the entry's brackets or ``--set`` fix (the user's values win).
    ``preset`` is the suite's, before ``--epochs``; ``epochs`` (``--epochs``) is applied after the
    recipe, so the recipe's warm-up scales with it as the preset's does.
    """
    from methods.composition import base_name

    recipe = get_recipe(base_name(method))
    suite_recipe = recipe.for_suite(suite) if recipe else None
    if suite_recipe is None:
        raise BenchError(missing_recipe(method, suite))
    try:
        values = suite_recipe.values(task)
    except MethodError as exc:
        raise BenchError(f"{method.name}: {exc}") from None
    preset_hints = typing.get_type_hints(Preset)
    config_hints = typing.get_type_hints(type(config))
    training, own = {}, {}
    for key, (value, _) in values.items():
        where = f"recipe {recipe.path.name}, {suite}/{task}: {key}"
        if key in TRAINING_FIELDS:
            training[key] = _typed(value, preset_hints[key], where)
        elif key in config_hints:
            own[key] = _typed(value, config_hints[key], where)
        else:
            raise BenchError(
                f"{where} is neither a training field ({', '.join(TRAINING_FIELDS)}) nor a {method.name} config field"
            )
    run_preset = scale_epochs(preset.with_overrides(**training), epochs)
    held = held_values(method, user_overrides)
    try:
        run_config = make_config(method, {**dataclasses.asdict(config), **own, **held})
    except MethodError as exc:
        raise BenchError(f"recipe {recipe.path.name}, {suite}/{task}: {exc}") from None
    tags = {schema.HPARAMS: "paper", schema.RECIPE: recipe_tag(recipe.path.name, suite_recipe.sources)}
    return PaperSettings(run_preset, run_config, tags)


def recipe_tag(file: str, sources: list[str]) -> str:
    """The ``bench.recipe`` tag: the recipe file and the sources its values cite, within a tag's length."""
    text = f"{file}: " + "; ".join(sources)
    return text if len(text) <= 5000 else text[:4999] + "…"


def scale_epochs(preset: Preset, epochs: int | None) -> Preset:
    """``--epochs`` over a recipe's schedule: the warm-up keeps its share (10 of 100 stays a tenth)."""
    if epochs is None or epochs == preset.epochs:
        return preset
    warmup = round(preset.warmup_epochs * epochs / preset.epochs)
    return preset.with_overrides(epochs=epochs, warmup_epochs=min(warmup, epochs - 1))
