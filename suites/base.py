"""What a suite is: tasks, a protocol preset and stages, all plain data."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import BenchError


class DataError(BenchError):
    """A problem with the user's data: missing folder or list, bad line, bad label, bad image."""


@dataclass(frozen=True)
class Stage:
    """Which list a run trains on and which it scores.

    ``tune`` scores val200 after every epoch (for model selection on validation data only);
    ``final`` scores test **once, after the last epoch** and never during training.
    """

    name: str
    train_list: str
    eval_list: str
    eval_every_epoch: bool


STAGES: dict[str, Stage] = {
    "tune": Stage("tune", train_list="train800.txt", eval_list="val200.txt", eval_every_epoch=True),
    "final": Stage("final", train_list="train800val200.txt", eval_list="test.txt", eval_every_epoch=False),
}


def get_stage(name: str) -> Stage:
    if name not in STAGES:
        raise DataError(f"unknown stage {name!r}; use one of {', '.join(STAGES)}")
    return STAGES[name]


@dataclass(frozen=True)
class Preset:
    """A training protocol: preprocessing, optimiser and schedule. Every run records it whole."""

    name: str
    img_size: int
    lr: float
    weight_decay: float
    batch_size: int
    epochs: int
    warmup_epochs: int
    warmup_lr: float
    min_lr: float
    drop_path: float
    interpolation: str = "bicubic"
    optimizer: str = "adamw"
    label_smoothing: float = 0.0
    augmentation: str = "none"
    normalization: str = "backbone"  # mean/std from the backbone's pretrained config
    # Decode size for presets that crop: images are cached at resize x resize, evaluation takes the
    # centre img_size crop, training takes random crops (augmentation). None: direct resize to img_size.
    resize: int | None = None

    def with_overrides(self, **overrides: Any) -> Preset:
        known = {f.name for f in dataclasses.fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise DataError(f"preset {self.name!r} has no setting {', '.join(unknown)}")
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if d["resize"] is None:  # added later: left out when unused, so earlier run keys stay valid
            del d["resize"]
        return d

    def decode(self, training: bool) -> tuple[int, int | None]:
        """``(size, centre crop)`` at which a split is decoded into the image cache.

        Evaluation images are resized to ``resize`` and centre-cropped to ``img_size`` (resize 256,
        crop 224); training images keep the whole ``resize`` square when the preset augments, so
        the random crop has room. Without ``resize``: a direct resize to ``img_size``, no crop.
        """
        if self.resize is None:
            return self.img_size, None
        if training and self.augmentation != "none":
            return self.resize, None
        return self.resize, self.img_size


@dataclass(frozen=True)
class Task:
    """One task of a suite. ``num_classes=None`` means: read it from the data."""

    name: str
    group: str = ""
    num_classes: int | None = None
    split_sizes: dict[str, int] = field(default_factory=dict)  # list file name -> expected lines
    aliases: tuple[str, ...] = ()
    # Sub-folders (of the task folder) that list paths may be relative to, tried in order; the
    # first that holds the listed images wins. Empty: the task folder itself (the VTAB layout).
    image_dirs: tuple[str, ...] = ()
    source: str = ""  # where the data comes from, for messages about missing data


@dataclass(frozen=True)
class FewShotLayout:
    """Few-shot lists in the NOAH format: one training list per (shots, split seed), shared val/test.

    Lists live in ``<task>/<list_dir>/``: ``train_meta.list.num_shot_{k}.seed_{s}`` (trained on in
    both stages), ``val_meta.list`` (scored by ``tune``) and ``test_meta.list`` (scored by ``final``).
    """

    shots: tuple[int, ...]
    split_seeds: tuple[int, ...]
    list_dir: str = "annotations"
    train_pattern: str = "train_meta.list.num_shot_{shots}.seed_{split_seed}"
    eval_lists: tuple[tuple[str, str], ...] = (("tune", "val_meta.list"), ("final", "test_meta.list"))

    def train_list(self, shots: int, split_seed: int) -> str:
        return f"{self.list_dir}/{self.train_pattern.format(shots=shots, split_seed=split_seed)}"

    def eval_list(self, stage: str) -> str:
        return f"{self.list_dir}/{dict(self.eval_lists)[stage]}"


@dataclass(frozen=True)
class DatasetOptions:
    """A dataset a suite loads itself (``hf``): ``--dataset``, ``--image-column``, ``--label-column``."""

    dataset: str
    image_column: str | None = None
    label_column: str | None = None


@dataclass(frozen=True)
class Suite:
    """A protocol: its tasks (or a rule to discover them), preset, default backbone and data source.

    ``tasks`` empty means the tasks are the task folders found under the data root (``folder``).
    ``prepare`` (if set) writes the suite's own data into a folder: the ``demo`` suite ships its
    images inside scikit-learn and needs no ``--data-root``.
    """

    name: str
    description: str
    preset: Preset
    default_backbone: str
    tasks: tuple[Task, ...] = ()
    needs_data_root: bool = True
    prepare: Callable[[Path], None] | None = None
    backbone_pretrained: bool = True  # False: the default backbone is a seeded random init (demo)
    source: str = "a local folder in the NOAH format"
    fewshot: FewShotLayout | None = None  # set: runs are (task, shots, split seed, seed, method)
    # set: the suite's data is a dataset named with --dataset, written as a NOAH folder under the
    # given folder; returns the data root (``hf``)
    from_dataset: Callable[[DatasetOptions, Path], Path] | None = None

    @property
    def discovers_tasks(self) -> bool:
        return not self.tasks


_SUITES: dict[str, Suite] = {}


def register_suite(suite: Suite) -> Suite:
    if suite.name in _SUITES:
        raise TypeError(f"suite {suite.name!r} is registered twice")
    _SUITES[suite.name] = suite
    return suite


def available_suites() -> dict[str, Suite]:
    return dict(sorted(_SUITES.items()))


def get_suite(name: str) -> Suite:
    if name not in _SUITES:
        raise DataError(
            f"unknown suite {name!r}; available suites: {', '.join(sorted(_SUITES))} (see `bench suites list`)"
        )
    return _SUITES[name]
