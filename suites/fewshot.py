"""``fgvc_fewshot``: five fine-grained datasets with NOAH's few-shot lists (1/2/4/8/16 shots, split seeds 0-2).

Layout (NOAH's ``lib/datasets.py:general_dataset_few_shot``)::

    <data root>/<dataset>/annotations/train_meta.list.num_shot_<k>.seed_<s>   (15 per dataset)
    <data root>/<dataset>/annotations/val_meta.list
    <data root>/<dataset>/annotations/test_meta.list
    <data root>/<dataset>/images/...          list paths are relative to this folder,
    <data root>/stanford_cars/cars_train/...  except Stanford Cars: relative to the dataset folder

Lines are ``<path> <label>``. The lists are NOAH's, pinned to one commit (``suites.noah_lists``);
the images come from each dataset's official page (``Task.source``). A run is (dataset, shots,
split seed, training seed, method); the split seed picks the training list, and by default it is
the training seed.

The preset mixes NOAH's optimiser and schedule with DTL's augmentation; docs/protocol.md says
which published variant each choice follows and why.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import DataError, FewShotLayout, Preset, Stage, Suite, Task, register_suite
from .lists import duplicates, read_list
from .noah_lists import NOAH_COMMIT, NOAH_REPO
from .resolve import ResolvedTask

SHOTS = (1, 2, 4, 8, 16)
SPLIT_SEEDS = (0, 1, 2)
LAYOUT = FewShotLayout(shots=SHOTS, split_seeds=SPLIT_SEEDS)

# NOAH's schedule for its few-shot runs (configs/*/few-shot/*.sh + argparse defaults: AdamW lr 5e-3,
# wd 1e-4, batch 64, 100 epochs, 10 warm-up from 1e-6, cosine to 1e-5, drop-path 0.1) with DTL's
# training augmentation (RandomResizedCrop 224 bicubic + flip + RandAugment rand-m9-mstd0.5-inc1;
# no mixup, cutmix, random erasing or label smoothing) and the evaluation transform both use
# (Resize((256, 256)) bicubic + CenterCrop(224)). The batch is min(64, training list size).
FGVC_FEWSHOT_PRESET = Preset(
    name="fgvc_fewshot",
    img_size=224,
    resize=256,
    interpolation="bicubic",
    lr=5e-3,
    weight_decay=1e-4,
    batch_size=64,
    epochs=100,
    warmup_epochs=10,
    warmup_lr=1e-6,
    min_lr=1e-5,
    drop_path=0.1,
    augmentation="rrc+flip+rand-m9-mstd0.5-inc1",
)

_NOAH_LISTS_URL = f"https://github.com/{NOAH_REPO}/tree/{NOAH_COMMIT}/data/few-shot/{{folder}}/annotations"


def _source(page: str, images: str, noah_folder: str) -> str:
    return (
        f"images from {page} ({images}); lists from {_NOAH_LISTS_URL.format(folder=noah_folder)} "
        "(`bench data fetch --suite fgvc_fewshot` downloads them) into annotations/"
    )


# (name, classes, val lines, test lines, aliases, image folders, NOAH folder, official page, what to unpack)
_FGVC = [
    (
        "fgvc_aircraft",
        100,
        3_333,
        3_333,
        ("fgvc-aircraft", "aircraft", "fgvc_aircraft_2013b"),
        ("images", "data/images"),
        "fgvc-aircraft",
        "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/",
        "fgvc-aircraft-2013b.tar.gz: its data/images/ becomes fgvc_aircraft/images/",
    ),
    (
        "food101",
        101,
        20_200,
        30_300,
        ("food-101", "food_101", "food"),
        ("images",),
        "food101",
        "https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/",
        "food-101.tar.gz: its food-101/images/<class>/ becomes food101/images/",
    ),
    (
        "oxford_flowers102",
        102,
        1_633,
        2_463,
        ("oxford-flowers102", "oxford_flowers", "flowers102", "flowers"),
        ("images", "jpg"),
        "oxford-flowers102",
        "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/",
        "102flowers.tgz: its jpg/ becomes oxford_flowers102/images/ (jpg/ is accepted too)",
    ),
    (
        "oxford_pets",
        37,
        736,
        3_669,
        ("oxford-pets", "oxford_iiit_pet", "oxford_pet", "pets"),
        ("images",),
        "oxford-pets",
        "https://www.robots.ox.ac.uk/~vgg/data/pets/",
        "images.tar.gz: its images/ becomes oxford_pets/images/",
    ),
    (
        "stanford_cars",
        196,
        1_635,
        8_041,
        ("standford-cars", "standford_cars", "stanford-cars", "cars"),
        (".", "images"),  # NOAH's exception: list paths carry cars_train/ and cars_test/
        "standford-cars",
        "https://ai.stanford.edu/~jkrause/cars/car_dataset.html",
        "cars_train.tgz and cars_test.tgz: cars_train/ and cars_test/ go directly into stanford_cars/, "
        "not under images/; any copy that keeps the original file names works",
    ),
]

NOAH_FOLDERS = {name: noah for name, *_, noah, _page, _images in _FGVC}
IMAGE_SOURCES = {name: f"{page} ({images})" for name, *_, page, images in _FGVC}


def fewshot_tasks(num_classes: dict[str, int] | None = None) -> tuple[Task, ...]:
    """The five tasks; ``num_classes`` overrides class counts (tests build tiny copies of the suite)."""
    tasks = []
    for name, classes, val, test, aliases, image_dirs, noah, page, images in _FGVC:
        tasks.append(
            Task(
                name=name,
                group="fgvc",
                num_classes=(num_classes or {}).get(name, classes),
                split_sizes={} if num_classes else {"val_meta.list": val, "test_meta.list": test},
                aliases=aliases,
                image_dirs=image_dirs,
                source=_source(page, images, noah),
            )
        )
    return tuple(tasks)


FGVC_FEWSHOT = register_suite(
    Suite(
        name="fgvc_fewshot",
        description="few-shot FGVC: Aircraft, Food-101, Flowers102, Pets, Cars; NOAH's lists, 1-16 shots, split seeds 0-2",
        preset=FGVC_FEWSHOT_PRESET,
        default_backbone="vit_base_patch16_224.orig_in21k",
        tasks=fewshot_tasks(),
        source=(
            "a local folder of dataset folders (--data-root) with NOAH's lists in <dataset>/annotations/ "
            "(`bench data fetch --suite fgvc_fewshot` downloads them) and the official images"
        ),
        fewshot=LAYOUT,
    )
)


@dataclass(frozen=True)
class SplitRuns:
    """One (shots, split seed) of a task and the training seeds run on it."""

    task: ResolvedTask  # with its split chosen
    seeds: tuple[int, ...]
    train_size: int  # lines trained on (after de-duplication when asked for)
    repeated: int  # repeated lines in the list as published


def check_request(
    suite: Suite, shots: list[int] | None, split_seeds: list[int] | None, seeds: list[int]
) -> tuple[list[int], list[int] | None]:
    """Validate ``--shots`` / ``--split-seeds`` / ``--seeds`` against a few-shot suite's lists.

    Returns the shots (default: all the suite has) and the split seeds (None: each training seed
    trains on the split of the same number).
    """
    layout = suite.fewshot
    assert layout is not None
    shots = list(shots or layout.shots)
    bad = [k for k in shots if k not in layout.shots]
    if bad:
        raise DataError(
            f"--shots {','.join(map(str, bad))}: suite {suite.name!r} has lists for "
            f"{', '.join(map(str, layout.shots))} shots only"
        )
    if split_seeds is not None:
        bad = [s for s in split_seeds if s not in layout.split_seeds]
        if bad:
            raise DataError(
                f"--split-seeds {','.join(map(str, bad))}: suite {suite.name!r} has lists for split seeds "
                f"{', '.join(map(str, layout.split_seeds))} only"
            )
    else:
        bad = [s for s in seeds if s not in layout.split_seeds]
        if bad:
            raise DataError(
                f"seed(s) {', '.join(map(str, bad))} have no few-shot lists: by default the split seed is the "
                f"training seed, and the lists have split seeds {', '.join(map(str, layout.split_seeds))}; "
                "pass --split-seeds to train other seeds on those splits"
            )
    return shots, split_seeds


def split_runs(
    task: ResolvedTask,
    stage: Stage,
    shots: list[int],
    seeds: list[int],
    split_seeds: list[int] | None,
    dedupe: bool,
) -> list[SplitRuns]:
    """Every (shots, split seed) of ``task`` with its training seeds, each list parsed now.

    Without ``split_seeds`` the split seed is the training seed (seed s trains on the split-seed-s
    lists); with them every training seed runs on every listed split.
    """
    layout = task.layout
    assert layout is not None
    pairs = [(s, (s,)) for s in seeds] if split_seeds is None else [(sp, tuple(seeds)) for sp in split_seeds]
    groups = []
    for k in shots:
        for split_seed, run_seeds in pairs:
            variant = task.with_split(k, split_seed, dedupe)
            train_name, _ = variant.list_names(stage)
            published = read_list(task.directory, train_name, task.num_classes, task.image_root)
            repeated = duplicates(published)
            size = len(published) - (repeated if dedupe else 0)
            groups.append(SplitRuns(variant, run_seeds, size, repeated))
    _, eval_name = task.with_split(shots[0], pairs[0][0]).list_names(stage)
    read_list(task.directory, eval_name, task.num_classes, task.image_root)  # a bad line fails now
    return groups


def published_lists(suite: Suite, task: Task) -> dict[str, str] | None:
    """sha256 of NOAH's published copy of each of ``task``'s lists (only for this suite's own tasks)."""
    from .noah_lists import NOAH_LIST_SHA256

    if suite.name != FGVC_FEWSHOT.name:
        return None
    return NOAH_LIST_SHA256.get(NOAH_FOLDERS.get(task.name, ""))
