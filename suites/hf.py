"""``hf``: any Hugging Face image-classification dataset, loaded with ``datasets``.

``--dataset NAME`` loads a Hub dataset (``datasets.load_dataset``, through the Hugging Face cache);
``--dataset PATH`` a folder written by ``save_to_disk``. The image and label columns are the ones
whose features are ``Image`` and ``ClassLabel`` (or named with ``--image-column`` and
``--label-column``). A label column of strings (class names) is read as classes numbered in
sorted order of the names, so the same data always gives the same class ids.

The split follows VTAB-1K: 1,000 examples drawn from the train split with a fixed seed, 800 to
train and 200 to validate (``train800``, ``val200``; ``train800val200`` is both), class-balanced:
classes take turns, each giving its next example in a seeded shuffle, until 1,000 are drawn
(a class that runs out drops out of the rotation), and every fifth draw goes to validation.
The test set is the ``test`` split, else the ``validation`` split, else every train example
not drawn. A train split with fewer than 1,000 examples gives them all, 4 to train for 1 to
validate.

The drawn split is written once as a NOAH-format task folder: every image under its content hash
(the encoded bytes as stored, not re-encoded), the four list files and ``classes.txt``. The folder
is named by a hash of the lists, so the data fingerprint every run records, and with it the run
key, changes exactly when the drawn images or labels do; rerunning a command finds the same
folder and the same runs. From there the suite is the ``folder`` suite: one decode per split into
the uint8 image cache, the same training path.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .base import DataError, DatasetOptions, Suite, register_suite
from .vtab1k import VTAB1K_PRESET

TRAIN, VAL = 800, 200
SAMPLE_SEED = 0  # the draw is fixed, as VTAB-1K's lists are; training seeds vary on top of it
SOURCE_FILE = "source.json"
TEST_SPLITS = ("test", "validation")


def task_name(dataset: str) -> str:
    """A task name from a Hub id or a path: ``beans``, ``cifar10``, ``my_data``."""
    base = Path(dataset.rstrip("/")).name if os.sep in dataset or Path(dataset).exists() else dataset.split("/")[-1]
    return re.sub(r"[^A-Za-z0-9_]+", "_", base).strip("_").lower() or "dataset"


def load(dataset: str) -> Any:
    """``datasets.DatasetDict`` from a ``save_to_disk`` folder or a Hub id (a single Dataset is its train split)."""
    import datasets

    from .hub import hub_endpoint, hub_offline, reachable

    path = Path(dataset).expanduser()
    if not path.exists() and not hub_offline() and not reachable(endpoint := hub_endpoint()):
        raise DataError(
            f"cannot reach the Hugging Face Hub at {endpoint} to load --dataset {dataset!r}; with a copy in the "
            "Hugging Face cache set HF_HUB_OFFLINE=1, or save it with save_to_disk and pass the folder"
        )
    try:
        loaded = datasets.load_from_disk(str(path)) if path.exists() else datasets.load_dataset(dataset)
    except FileNotFoundError as exc:
        raise DataError(
            f"--dataset {dataset!r} is neither a folder written by save_to_disk nor a dataset on the Hub "
            f"({' '.join(str(exc).split())[:120]}); check the name or the path"
        ) from None
    except Exception as exc:  # offline without a cached copy, a gated dataset, a damaged folder
        raise DataError(
            f"cannot load --dataset {dataset!r} ({type(exc).__name__}: {' '.join(str(exc).split())[:160]}); "
            "check the name, the network (HF_HUB_OFFLINE) or the folder, or save it with save_to_disk and pass the path"
        ) from None
    if isinstance(loaded, datasets.Dataset):
        return datasets.DatasetDict({"train": loaded})
    return loaded


def find_columns(features: Any, image_column: str | None, label_column: str | None) -> tuple[str, str]:
    """The image and label columns: as named, else the one ``Image`` and the one ``ClassLabel`` feature."""
    import datasets

    names = list(features)

    def pick(given: str | None, kind: type, flag: str) -> str:
        if given is not None:
            if given not in features:
                raise DataError(f"{flag} {given!r} is not a column of the dataset; its columns: {', '.join(names)}")
            return given
        found = [n for n, f in features.items() if isinstance(f, kind)]
        if len(found) != 1:
            what = "no" if not found else f"{len(found)} ({', '.join(found)})"
            raise DataError(
                f"the dataset has {what} {kind.__name__} columns; name the one to use with {flag} "
                f"(its columns: {', '.join(names)})"
            )
        return found[0]

    image = pick(image_column, datasets.Image, "--image-column")
    label = pick(label_column, datasets.ClassLabel, "--label-column")
    if not isinstance(features[image], datasets.Image):
        raise DataError(f"--image-column {image!r} holds {features[image]}, not images; name an Image column")
    return image, label


def class_names(dataset: Any, label: str) -> list[str]:
    """The class names: a ``ClassLabel``'s, ``0..C-1`` for integer ids, or the sorted distinct
    values of a column of strings (sorted, so the same data always gives the same class ids)."""
    import datasets

    feature = dataset.features[label]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    labels = dataset[label]
    if labels and all(isinstance(v, str) for v in labels):
        return sorted(set(labels))
    if not labels or not all(isinstance(v, int) and v >= 0 for v in labels):
        raise DataError(
            f"--label-column {label!r} must hold class names (strings), non-negative integer class ids, "
            "or be a ClassLabel; name another column with --label-column"
        )
    return [str(c) for c in range(max(labels) + 1)]


def class_ids(values: list[Any], names: list[str], label: str, split: str) -> list[int]:
    """Each label as a class id: a string by its class name, an integer as it is."""
    index = {name: i for i, name in enumerate(names)}
    ids = []
    for value in values:
        if isinstance(value, str):
            if value not in index:
                raise DataError(
                    f"--label-column {label!r}: the {split} split has label {value!r}, which the train split "
                    f"never has (its classes: {', '.join(names[:10])}{', …' if len(names) > 10 else ''}); "
                    "every class needs training examples"
                )
            ids.append(index[value])
        elif isinstance(value, int) and 0 <= value < len(names):
            ids.append(value)
        else:
            raise DataError(
                f"--label-column {label!r}: the {split} split has label {value!r}, not one of the "
                f"{len(names)} classes of the train split; check the column"
            )
    return ids


def class_balanced_draw(labels: list[int], total: int, seed: int) -> list[int]:
    """Indices of ``total`` examples (all when fewer), classes taking turns in a seeded shuffle."""
    import numpy as np

    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for i in rng.permutation(len(labels)).tolist():
        by_class.setdefault(labels[i], []).append(i)
    queues = [iter(by_class[c]) for c in sorted(by_class)]
    drawn: list[int] = []
    while queues and len(drawn) < total:
        alive = []
        for q in queues:
            if len(drawn) == total:
                break
            nxt = next(q, None)
            if nxt is not None:
                drawn.append(nxt)
                alive.append(q)
        queues = alive
    return drawn


def _encoded(dataset: Any, image: str) -> Iterator[bytes]:
    """Each row's image as stored (PNG, JPEG, …), without decoding it."""
    import datasets

    raw = dataset.cast_column(image, datasets.Image(decode=False))
    for value in raw[image]:
        if value is None:
            raise DataError(f"column {image!r} has an empty image; drop those rows before running")
        if value.get("bytes"):
            yield value["bytes"]
        elif value.get("path"):
            yield Path(value["path"]).read_bytes()
        else:
            raise DataError(f"column {image!r} has an image with neither bytes nor a path")


def _suffix(data: bytes) -> str:
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return "." + (img.format or "img").lower()
    except Exception:
        return ".img"  # decoding names the unreadable file later, with its list line


def _write_split(dataset: Any, image: str, ids: list[int], rows: list[int], folder: Path) -> list[str]:
    """Write ``rows`` of ``dataset`` (class ids ``ids``, one per row of ``dataset``) under
    ``folder/images`` by content hash; return their list lines."""
    subset = dataset.select(rows)
    lines = []
    for data, y in zip(_encoded(subset, image), [ids[r] for r in rows], strict=True):
        digest = hashlib.sha256(data).hexdigest()[:32]
        rel = f"images/{digest[:2]}/{digest}{_suffix(data)}"
        target = folder / rel
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        lines.append(f"{rel} {int(y)}")
    return lines


def materialize(options: DatasetOptions, root: Path) -> Path:
    """Write the dataset's VTAB-1K-style split as a NOAH task folder under ``root``; return the data root.

    The data root is ``root/<hash of the lists>``, holding one task folder named after the dataset.
    An existing folder with the same lists is reused as it is.
    """
    data = load(options.dataset)
    if "train" not in data:
        raise DataError(f"--dataset {options.dataset!r} has no train split (its splits: {', '.join(data)})")
    train = data["train"]
    image, label = find_columns(train.features, options.image_column, options.label_column)
    names = class_names(train, label)
    labels = class_ids(train[label], names, label, "train")
    drawn = class_balanced_draw(labels, TRAIN + VAL, SAMPLE_SEED)
    if len(set(labels[i] for i in drawn)) < len(names):
        missing = sorted(set(range(len(names))) - {labels[i] for i in drawn})
        raise DataError(
            f"the train split of {options.dataset!r} has no example of class {names[missing[0]]!r}; "
            "every class needs training examples"
        )
    # every fifth draw validates: 200 of 1,000, each class in proportion to its draws
    val_rows = [r for k, r in enumerate(drawn) if k % 5 == 4]
    train_rows = [r for k, r in enumerate(drawn) if k % 5 != 4]
    test_split = next((s for s in TEST_SPLITS if s in data), None)
    if test_split is not None:
        test_data, test_rows = data[test_split], list(range(len(data[test_split])))
        image_t, label_t = find_columns(test_data.features, image, label)
        test_ids = class_ids(test_data[label_t], names, label_t, test_split)
    else:
        taken = set(drawn)
        test_data, test_rows, image_t, test_ids = train, [i for i in range(len(train)) if i not in taken], image, labels
        if not test_rows:
            raise DataError(
                f"--dataset {options.dataset!r} has no test or validation split and no train examples beyond the "
                f"{len(drawn)} drawn for training; a held-out test set needs more"
            )

    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".hf-", dir=root))
    try:
        task = staging / task_name(options.dataset)
        lists = {
            "train800": _write_split(train, image, labels, train_rows, task),
            "val200": _write_split(train, image, labels, val_rows, task),
            "test": _write_split(test_data, image_t, test_ids, test_rows, task),
        }
        lists["train800val200"] = lists["train800"] + lists["val200"]
        for name, rows in lists.items():
            (task / f"{name}.txt").write_text("\n".join(rows) + "\n")
        (task / "classes.txt").write_text("\n".join(names) + "\n")
        digest = hashlib.sha256()
        for name in sorted(lists):
            digest.update(f"{name}\n".encode() + (task / f"{name}.txt").read_bytes())
        digest.update((task / "classes.txt").read_bytes())
        source = {
            "dataset": options.dataset,
            "image_column": image,
            "label_column": label,
            "test": test_split or "held-out train examples",
            "sample_seed": SAMPLE_SEED,
            "sizes": {k: len(v) for k, v in lists.items()},
        }
        (task / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")
        final = root / digest.hexdigest()[:16]
        if not final.exists():
            with contextlib.suppress(OSError):  # another process wrote the same split first
                staging.rename(final)
        return final
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


HF = register_suite(
    Suite(
        name="hf",
        description="any Hugging Face image-classification dataset (--dataset NAME or save_to_disk PATH), VTAB-1K-style split",
        preset=VTAB1K_PRESET,
        default_backbone="vit_base_patch16_224.orig_in21k",
        tasks=(),
        needs_data_root=False,
        from_dataset=materialize,
        source="a Hugging Face dataset, drawn VTAB-1K-style and written as a NOAH-format folder under the work directory",
    )
)
