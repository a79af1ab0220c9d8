"""An ImageFolder tree (train/<class>/*, test/<class>/*) becomes a folder-suite task with one command."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from tests.conftest import CLASS_COLOURS
from tests.test_cli_errors import _assert_one_line_error

CLASSES = ["zebra", "cat", "dog"]  # written unsorted: the classes are numbered in sorted order


def _tree(root: Path, train: int = 12, test: int = 4) -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("test", test)):
        for c, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(np.array(CLASS_COLOURS[c], np.int16) + rng.integers(-30, 30, (20, 20, 3)), 0, 255)
                suffix = ".jpg" if i % 2 else ".png"
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i:03d}{suffix}")
    return root


def test_an_imagefolder_tree_is_pointed_to_the_conversion_then_verifies_and_trains(cli, tmp_path: Path):
    tree = _tree(tmp_path / "pets")
    code, _, err = cli("data", "verify", "--suite", "folder", "--data-root", str(tree))
    _assert_one_line_error(code, err, "is an ImageFolder tree", f"bench data imagefolder {tree}")

    code, out, err = cli("data", "imagefolder", str(tree))
    assert code == 0, err
    assert "train800.txt: 29, val200.txt: 7" in out  # 36 images < 1,000: all of them, every fifth to val200
    assert (tree / "classes.txt").read_text().split() == ["cat", "dog", "zebra"]
    lines = {n: (tree / f"{n}.txt").read_text().splitlines() for n in ("train800", "val200", "test")}
    assert len(lines["test"]) == 12 and lines["test"][0] == "test/cat/000.png 0"
    assert all(line.startswith("test/zebra/") for line in lines["test"] if line.endswith(" 2"))
    assert Counter(line.split()[1] for line in lines["train800"] + lines["val200"]) == {"0": 12, "1": 12, "2": 12}
    assert not set(lines["train800"]) & set(lines["val200"])
    before = {p.name: p.read_bytes() for p in tree.glob("*.txt")}
    assert cli("data", "imagefolder", str(tree))[0] == 0  # the same tree, the same lists
    assert {p.name: p.read_bytes() for p in tree.glob("*.txt")} == before

    code, out, err = cli("data", "verify", "--suite", "folder", "--data-root", str(tree))
    assert code == 0, out + err
    code, out, err = cli(
        "run", "--suite", "tinyfolder", "--data-root", str(tree), "--methods", "linear", "--seeds", "1"
    )
    assert code == 0, err
    assert "1 run(s) trained" in out


def test_imagefolder_problems_are_one_line(cli, tmp_path: Path):
    tree = _tree(tmp_path / "pets", train=3, test=1)
    (tree / "test" / "wolf").mkdir()
    Image.new("RGB", (8, 8)).save(tree / "test" / "wolf" / "a.png")
    code, _, err = cli("data", "imagefolder", str(tree))
    _assert_one_line_error(code, err, str(tree / "test" / "wolf"), "does not have")

    (tree / "test" / "wolf" / "a.png").unlink()
    (tree / "test" / "wolf").rmdir()
    (tree / "train800.txt").write_text("mine.png 0\n")
    code, _, err = cli("data", "imagefolder", str(tree))
    _assert_one_line_error(code, err, str(tree / "train800.txt"), "move it aside")
    assert (tree / "train800.txt").read_text() == "mine.png 0\n"  # never overwritten

    code, _, err = cli("data", "imagefolder", str(tmp_path / "nothing"))
    assert code == 2 and "is not an ImageFolder tree" in err


def test_a_tree_that_cannot_be_written_is_one_line(cli, tmp_path: Path):
    import os
    import stat

    if os.geteuid() == 0:  # root writes through permission bits: make the list's path a folder instead
        tree = _tree(tmp_path)
        (tree / "train800.txt").mkdir()
        expected = "train800.txt"
    else:
        tree = _tree(tmp_path)
        tree.chmod(stat.S_IRUSR | stat.S_IXUSR)
        expected = "cannot write"
    code, _, err = cli("data", "imagefolder", str(tree))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert expected in err and "Traceback" not in err
