"""Sweep files: the options of ``bench run`` and ``bench tune`` as a YAML file.

An experiment becomes a file that can be versioned, shared and rerun: ``bench run --config
FILE.yaml``. The keys are the commands' long options in snake_case (``data_root`` for
``--data-root``), with lists as YAML lists, plus two mappings: ``preset`` (``preset: {lr: 0.001}``
is ``--set preset.lr=0.001``) and ``set`` (``set: {karst.mode: fold}`` is ``--set karst.mode=fold``).
``include: base.yaml`` reads another file first (relative to this one); this file's keys replace
its keys, and ``preset`` and ``set`` merge entry by entry.

A file's values become the command-line values the options would have received, so a file and
the same flags plan the same runs with the same run keys. Options given on the command line
replace the file's; ``--set`` entries are added to the file's, a ``--set`` of the same key winning.
After planning, :func:`resolved_file` writes back what the sweep actually used (the suite's
default backbone, epochs, tasks, the seeds as a list) as a sweep file that reruns the same runs.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import BenchError
from .seeds import check_seeds, seeds_from_count

COMMANDS = ("run", "tune")


def _opt(kind: str, example: str, commands: tuple[str, ...] = COMMANDS, param: str | None = None) -> Any:
    return field(default=None, metadata={"kind": kind, "example": example, "commands": commands, "param": param})


@dataclass
class SweepFile:
    """The keys a sweep file may hold, what each must be, and which command uses it.

    A key one command does not use is ignored by it (``trials``, ``budget_epochs`` and ``scheduler``
    by ``bench run``; ``seeds``, ``stage``, ``hparams`` and the few-shot keys by ``bench tune``), so
    one file serves both.
    """

    description: str | None = _opt("str", "description: KARST without re-scaling", ())
    include: str | None = _opt("str", "include: base.yaml", ())
    suite: str | None = _opt("str", "suite: vtab1k")
    tasks: list[str] | None = _opt("str_list", "tasks: [dtd, svhn]")
    methods: list[str] | None = _opt("str_list", "methods: [karst, lora, linear]")
    seeds: int | list[int] | None = _opt("seeds", "seeds: 3  (seeds 0,1,2) or seeds: [0, 5, 7]", ("run",))
    budgets: list[int | str] | None = _opt("budgets", "budgets: [0.1M, 0.3M, 1M]", param="budget")
    stage: str | None = _opt("str", "stage: final", ("run",))
    data_root: str | None = _opt("path", "data_root: ~/data/vtab-1k")
    dataset: str | None = _opt("str", "dataset: beans")
    image_column: str | None = _opt("str", "image_column: image")
    label_column: str | None = _opt("str", "label_column: label")
    backbone: str | None = _opt("str", "backbone: vit_base_patch16_224.augreg2_in21k_ft_in1k")
    checkpoint: str | None = _opt("path", "checkpoint: ~/weights/ViT-B_16.npz")
    weights_label: str | None = _opt("str", 'weights_label: "ViT-B/16, ImageNet-21k"')
    epochs: int | None = _opt("int", "epochs: 100")
    preset: dict[str, Any] | None = _opt("mapping", "preset: {lr: 0.001, weight_decay: 0.0001}", param="set_")
    set: dict[str, Any] | None = _opt("mapping", "set: {karst.mode: fold}", param="set_")
    hparams: str | None = _opt("str", "hparams: tuned", ("run",))
    storage: str | None = _opt("str", "storage: sqlite:///optuna.db")
    shots: list[int] | None = _opt("int_list", "shots: [1, 2, 4, 8, 16]", ("run",))
    split_seeds: list[int] | None = _opt("int_list", "split_seeds: [0, 1, 2]", ("run",))
    dedupe: bool | None = _opt("bool", "dedupe: true", ("run",))
    trials: int | None = _opt("int", "trials: 30", ("tune",))
    budget_epochs: int | None = _opt("int", "budget_epochs: 3000", ("tune",))
    scheduler: str | None = _opt("str", "scheduler: asha", ("tune",))
    device: str | None = _opt("str", "device: cuda")
    tracking_uri: str | None = _opt("str", "tracking_uri: http://mlflow.example:5000")
    executor: str | None = _opt("str", "executor: ray")
    ray_address: str | None = _opt("str", "ray_address: head-node:6379")
    gpus: str | None = _opt("gpus", "gpus: all  (or a count, 2, or indices, [0, 1])")
    runs_per_gpu: int | None = _opt("int", "runs_per_gpu: 2")
    workers: int | None = _opt("int", "workers: 4")
    system_metrics: bool | None = _opt("bool", "system_metrics: false")


KEYS = {f.name: f for f in dataclasses.fields(SweepFile)}

_KINDS = {
    "str": "a string",
    "path": "a path",
    "int": "a whole number",
    "bool": "true or false",
    "str_list": "a list of strings",
    "int_list": "a list of whole numbers",
    "seeds": "a seed count or a list of seeds",
    "budgets": "a budget or a list of budgets",
    "mapping": "a mapping of KEY: VALUE",
    "gpus": "all, a GPU count or a list of GPU indices",
}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_scalar(v: Any) -> bool:
    return isinstance(v, str | int | float | bool)


def _valid(kind: str, value: Any) -> bool:
    if kind in ("str", "path"):
        return isinstance(value, str) and bool(value.strip())
    if kind == "int":
        return _is_int(value)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "str_list":
        return isinstance(value, list) and bool(value) and all(isinstance(v, str) and v.strip() for v in value)
    if kind == "int_list":
        return isinstance(value, list) and bool(value) and all(_is_int(v) for v in value)
    if kind == "seeds":
        return _is_int(value) or _valid("int_list", value)
    if kind == "budgets":
        items = value if isinstance(value, list) else [value]
        return bool(items) and all(
            (_is_int(v) or isinstance(v, str | float)) and not isinstance(v, bool) for v in items
        )
    if kind == "mapping":
        return isinstance(value, dict) and all(isinstance(k, str) and _is_scalar(v) for k, v in value.items())
    if kind == "gpus":
        return (isinstance(value, str) and bool(value.strip())) or _is_int(value) or _valid("int_list", value)
    raise AssertionError(kind)


#: The source checkout bench runs from, if any: its ``configs/`` holds the shipped sweep files.
CHECKOUT = Path(__file__).resolve().parents[1]


def find_sweep_file(path: Path) -> Path:
    """``path`` itself, or, for a relative path missing here, the same path in the checkout bench
    runs from (so ``--config configs/demo_budget_curve.yaml`` works from any folder)."""
    path = Path(path).expanduser()
    if path.is_file() or path.is_absolute():
        return path
    shipped = CHECKOUT / path
    return shipped if shipped.is_file() and (CHECKOUT / "configs").is_dir() else path


def _read_mapping(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise BenchError(
            f"--config {path}: no such file; pass the path of a sweep file, e.g. configs/demo_budget_curve.yaml"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "a syntax error"
        raise BenchError(f"--config {path}: not valid YAML{where} ({problem}); fix the file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BenchError(f"--config {path}: cannot be read ({exc.__class__.__name__}); check the file") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise BenchError(
            f"--config {path}: must be a mapping of keys such as suite: and methods:, not a {type(data).__name__}"
        )
    return data


def _check(path: Path, data: dict[str, Any]) -> None:
    for key, value in data.items():
        if key not in KEYS:
            close = difflib.get_close_matches(str(key), KEYS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise BenchError(
                f"--config {path}: unknown key {key!r}; {hint}valid keys: {', '.join(KEYS)} (see docs/guide/sweep-files.md)"
            )
        kind, example = KEYS[key].metadata["kind"], KEYS[key].metadata["example"]
        if not _valid(kind, value):
            raise BenchError(f"--config {path}: {key} must be {_KINDS[kind]}, e.g. {example}; it is {value!r}")
        if kind == "seeds":  # the same range and count as --seeds, named by the file
            if isinstance(value, list):
                check_seeds(value, f"--config {path}: seeds")
            else:
                seeds_from_count(value, f"--config {path}: seeds: {value}")


def load_sweep_file(path: Path, _seen: tuple[Path, ...] = ()) -> SweepFile:
    """Read, check and merge a sweep file and its ``include`` chain; every error is one line."""
    path = find_sweep_file(path) if not _seen else Path(path).expanduser()
    if path.resolve() in _seen:
        raise BenchError(f"--config {path}: includes itself through {' -> '.join(map(str, _seen))}; remove the cycle")
    data = _read_mapping(path)
    _check(path, data)
    merged: dict[str, Any] = {}
    if data.get("include"):
        base = load_sweep_file(path.parent / data["include"], (*_seen, path.resolve()))
        merged = {k: v for k, v in dataclasses.asdict(base).items() if v is not None}
    for key, value in data.items():
        if key in ("preset", "set") and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    merged.pop("include", None)
    return SweepFile(**merged)


def _text(value: Any) -> str:
    """A YAML scalar as the command line would spell it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _cli_value(key: str, value: Any) -> Any:
    """A file value as the command's option would have received it from the command line."""
    kind = KEYS[key].metadata["kind"]
    if kind == "path":
        return Path(value).expanduser()
    if kind in ("str_list", "int_list"):
        return ",".join(map(str, value))
    if kind == "seeds":
        return str(value) if _is_int(value) else ",".join(map(str, value)) + ("," if len(value) == 1 else "")
    if kind == "budgets":
        return ",".join(_text(v) for v in (value if isinstance(value, list) else [value]))
    if kind == "gpus":
        return ",".join(map(str, value)) if isinstance(value, list) else str(value)
    if kind == "mapping":
        prefix = "preset." if key == "preset" else ""
        return [f"{prefix}{k}={_text(v)}" for k, v in value.items()]
    return value


def _epochs_from_preset(sweep_file: SweepFile) -> SweepFile:
    """``preset: {epochs: 50}`` is ``epochs: 50`` (the --epochs option, which also scales the warm-up)."""
    preset = dict(sweep_file.preset or {})
    if "epochs" not in preset:
        return sweep_file
    epochs = preset.pop("epochs")
    if sweep_file.epochs is not None and sweep_file.epochs != epochs:
        raise BenchError(f"the sweep file sets epochs twice ({sweep_file.epochs} and preset.epochs {epochs}); keep one")
    if not _is_int(epochs):
        raise BenchError(
            f"the sweep file's preset.epochs must be a whole number, e.g. preset: {{epochs: 100}}; it is {epochs!r}"
        )
    return dataclasses.replace(sweep_file, preset=preset or None, epochs=epochs)


def file_options(sweep_file: SweepFile, command: str) -> dict[str, Any]:
    """The file's values for ``command``, keyed by the command's parameter names (``set_`` holds
    the ``preset`` and ``set`` entries, as ``--set`` items)."""
    sweep_file = _epochs_from_preset(sweep_file)
    options: dict[str, Any] = {}
    for key, f in KEYS.items():
        value = getattr(sweep_file, key)
        if value is None or command not in f.metadata["commands"]:
            continue
        param = f.metadata["param"] or key
        converted = _cli_value(key, value)
        options[param] = [*options.get(param, []), *converted] if param == "set_" else converted
    return options


def _scalar(text: str) -> Any:
    """``"0.001"`` -> 0.001, ``"fold"`` -> "fold": a --set value as YAML would read it, for the resolved file."""
    import yaml

    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    return value if _is_scalar(value) else text


def resolved_file(request: Any, command: str, extra: dict[str, Any], sources: list[str]) -> str:
    """The sweep a command ran, as a sweep file: the merged options with the suite's defaults filled
    in (backbone, epochs, tasks, seeds as a list). Rerunning it plans the same runs."""
    import yaml

    import suites

    from . import __version__

    suite = suites.get_suite(request.suite)
    tasks = request.tasks or [t.name for t in suite.tasks] or None
    method_sets = {
        f"{method}.{k}": _scalar(v) for method, fields in request.method_overrides.items() for k, v in fields.items()
    }
    data: dict[str, Any] = {
        "suite": request.suite,
        "tasks": tasks,
        "methods": list(request.methods),
        "seeds": list(request.seeds) if command == "run" else None,
        "budgets": list(request.budgets) or None,
        "stage": request.stage if command == "run" else None,
        "data_root": str(Path(request.data_root).expanduser().resolve()) if request.data_root else None,
        "dataset": request.dataset,
        "image_column": request.image_column,
        "label_column": request.label_column,
        "backbone": request.backbone or suite.default_backbone,
        "checkpoint": str(Path(request.checkpoint).expanduser().resolve()) if request.checkpoint else None,
        "weights_label": request.weights_label,
        "epochs": request.epochs or suite.preset.epochs,
        "preset": {k: _scalar(str(v)) for k, v in request.preset_overrides.items()} or None,
        "set": method_sets or None,
        "hparams": request.hparams if command == "run" and request.hparams not in ("preset", "published") else None,
        "shots": request.shots if command == "run" else None,
        "split_seeds": request.split_seeds if command == "run" else None,
        "dedupe": True if command == "run" and request.dedupe else None,
        **extra,
    }
    data = {k: v for k, v in data.items() if v is not None}
    header = f"# resolved by bench {__version__} `bench {command}` from: {'; '.join(sources)}\n"
    return header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=120, default_flow_style=None)
