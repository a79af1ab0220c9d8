"""An ImageFolder tree (``train/<class>/<image>``, ``test/<class>/<image>``) made a NOAH-format task folder.

``bench data imagefolder PATH`` writes the four list files and ``classes.txt`` into the tree; the
images stay where they are, and the list paths point at them (``train/cat/001.jpg 0``). The
tree is then a task folder of the ``folder`` suite (``--data-root PATH``, or its parent).

The rule, fixed so the same tree always gives the same lists (and the same run keys):

* the classes are the sub-folders of ``train/``, numbered in sorted order of their names;
* the test set is every image of ``test/`` (else of ``val/``), whose class folders must be
  classes of ``train/``;
* ``train800`` and ``val200`` follow VTAB-1K, as the ``hf`` suite does: 1,000 training images
  drawn class-balanced with seed 0 from the images of ``train/`` in sorted path order (classes
  take turns, each giving its next image in a seeded shuffle), every fifth draw to ``val200``;
  a ``train/`` of fewer than 1,000 images gives them all, 4 to train for 1 to validate.
"""

from __future__ import annotations

from pathlib import Path

from .base import DataError
from .hf import SAMPLE_SEED, TRAIN, VAL, class_balanced_draw

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
TEST_FOLDERS = ("test", "val")


def is_imagefolder(folder: Path) -> bool:
    """A ``train/`` of class folders and a ``test/`` or ``val/`` beside it."""
    train = folder / "train"
    return (
        train.is_dir()
        and any(p.is_dir() for p in train.iterdir())
        and any((folder / name).is_dir() for name in TEST_FOLDERS)
    )


def _images(class_dir: Path) -> list[Path]:
    return sorted(p for p in class_dir.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _split(folder: Path, split: str, classes: dict[str, int] | None) -> list[tuple[str, int]]:
    """(path relative to ``folder``, class id) for every image of ``folder/split``, in sorted order."""
    root = folder / split
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir())
    if not class_dirs:
        raise DataError(f"{root} holds no class folders; an ImageFolder tree is {split}/<class>/<image>")
    if classes is None:
        classes = {p.name: i for i, p in enumerate(class_dirs)}
    rows = []
    for class_dir in class_dirs:
        if class_dir.name not in classes:
            raise DataError(
                f"{class_dir} is a class that {folder / 'train'} does not have; every class needs training "
                "images (add them, or remove the folder)"
            )
        images = _images(class_dir)
        if not images:
            raise DataError(f"class folder {class_dir} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
        rows += [(p.relative_to(folder).as_posix(), classes[class_dir.name]) for p in images]
    return rows


def imagefolder_lists(folder: Path) -> tuple[list[str], dict[str, list[str]]]:
    """The class names and the NOAH list lines (by list file name) of the tree at ``folder``."""
    if not is_imagefolder(folder):
        raise DataError(
            f"{folder} is not an ImageFolder tree: it needs train/<class>/<image> and test/<class>/<image> "
            "(or val/<class>/<image>)"
        )
    names = sorted(p.name for p in (folder / "train").iterdir() if p.is_dir())
    classes = {name: i for i, name in enumerate(names)}
    train = _split(folder, "train", classes)
    test = _split(folder, next(n for n in TEST_FOLDERS if (folder / n).is_dir()), classes)
    drawn = class_balanced_draw([label for _, label in train], TRAIN + VAL, SAMPLE_SEED)
    line = lambda row: f"{row[0]} {row[1]}"  # noqa: E731
    lists = {
        "train800.txt": [line(train[r]) for k, r in enumerate(drawn) if k % 5 != 4],
        "val200.txt": [line(train[r]) for k, r in enumerate(drawn) if k % 5 == 4],
        "test.txt": [line(row) for row in test],
    }
    lists["train800val200.txt"] = lists["train800.txt"] + lists["val200.txt"]
    return names, lists


def convert_imagefolder(folder: Path) -> dict[str, int]:
    """Write the lists and ``classes.txt`` into the tree; return each list's line count.

    Lists already there are left alone when they are what this rule writes (a second run changes
    nothing) and refused otherwise: they were written by something else, and are not replaced.
    """
    names, lists = imagefolder_lists(folder)
    texts = {name: "\n".join(rows) + "\n" for name, rows in lists.items()}
    texts["classes.txt"] = "\n".join(names) + "\n"
    for name, text in texts.items():
        path = folder / name
        if path.is_file() and path.read_text(errors="replace") != text:
            raise DataError(
                f"{path} exists and differs from the lists this tree gives; it was not written by "
                "`bench data imagefolder`: move it aside to convert the tree, or use the folder as it is"
            )
    for name, text in texts.items():
        try:
            (folder / name).write_text(text)
        except OSError as exc:
            raise DataError(
                f"cannot write {folder / name} ({exc.strerror}); the lists are written inside the tree: "
                "make it writable, or convert a copy of it"
            ) from None
    return {name: len(rows) for name, rows in lists.items()}
