"""The ``hf`` suite: a ``datasets`` dataset built here from generated images, end to end."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import suites
from bench.tracking import Tracker, default_tracking_uri
from suites.base import DatasetOptions, register_suite
from suites.hf import HF, class_balanced_draw, find_columns, materialize

from .conftest import CLASS_COLOURS, TINY_PRESET

# The hf suite's rules with the tests' tiny preset and random tiny ViT.
if "tinyhf" not in suites.available_suites():
    register_suite(
        replace(HF, name="tinyhf", preset=TINY_PRESET, default_backbone="vit_demo_tiny", backbone_pretrained=False)
    )


def _images(n: int, classes: int, seed: int) -> tuple[list[Image.Image], list[int]]:
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for i in range(n):
        label = i % classes
        pixels = np.clip(np.array(CLASS_COLOURS[label], np.int16) + rng.integers(-30, 30, (20, 20, 3)), 0, 255)
        images.append(Image.fromarray(pixels.astype(np.uint8)))
        labels.append(label)
    return images, labels


def _dataset(tmp_path: Path, train: int = 60, test: int | None = 15, classes: int = 3, **extra) -> Path:
    import datasets

    features = datasets.Features(
        {"img": datasets.Image(), "fine_label": datasets.ClassLabel(names=["red", "green", "blue"][:classes]), **extra}
    )

    def split(n: int, seed: int) -> datasets.Dataset:
        images, labels = _images(n, classes, seed)
        columns = {"img": images, "fine_label": labels, **{k: [0] * n for k in extra}}
        return datasets.Dataset.from_dict(columns, features=features)

    parts = {"train": split(train, 0)}
    if test is not None:
        parts["test"] = split(test, 1)
    path = tmp_path / "saved"
    datasets.DatasetDict(parts).save_to_disk(str(path))
    return path


@pytest.mark.slow
def test_a_saved_dataset_runs_end_to_end_and_resumes(cli, workdir: Path, tmp_path: Path):
    path = _dataset(tmp_path)
    args = ("run", "--suite", "tinyhf", "--dataset", str(path), "--methods", "linear", "--seeds", "1")
    code, out, err = cli(*args)
    assert code == 0, err
    assert "1 run(s) trained, 0 already finished" in out
    [run] = Tracker(default_tracking_uri(workdir)).search("bench/tinyhf")
    assert run.data.tags["bench.task"] == "saved" and run.info.status == "FINISHED"
    [root] = (workdir / "data" / "tinyhf").iterdir()
    task = root / "saved"
    lines = {name: (task / f"{name}.txt").read_text().splitlines() for name in ("train800", "val200", "test")}
    assert [len(v) for v in lines.values()] == [48, 12, 15]  # 60 drawn: 4 to train for 1 to validate; test split
    assert Counter(line.split()[1] for line in lines["train800"]) == {"0": 16, "1": 16, "2": 16}  # class-balanced
    assert (task / "classes.txt").read_text().split() == ["red", "green", "blue"]
    assert root.name in run.data.params["data.task_dir"]  # the split's content hash names its folder
    assert any((workdir / "cache" / "images").iterdir())  # decoded into the shared uint8 cache

    code, out, _ = cli(*args)  # the same command: nothing trains again
    assert code == 0 and "0 run(s) trained, 1 already finished and reused" in out
    code, out, _ = cli(*args[:-1], "2")  # one more seed: only it trains
    assert code == 0 and "1 run(s) trained, 1 already finished" in out
    assert len(list((workdir / "data" / "tinyhf").iterdir())) == 1


def test_draw_is_class_balanced_and_fixed():
    labels = [0] * 700 + [1] * 200 + [2] * 100 + [3] * 50
    drawn = class_balanced_draw(labels, 1000, seed=0)
    counts = Counter(labels[i] for i in drawn)
    assert len(drawn) == len(set(drawn)) == 1000 and counts == {0: 650, 1: 200, 2: 100, 3: 50}
    assert class_balanced_draw(labels, 1000, seed=0) == drawn
    even = [0] * 600 + [1] * 600
    assert Counter(even[i] for i in class_balanced_draw(even, 1000, 0)) == {0: 500, 1: 500}


def test_without_a_test_split_the_undrawn_train_examples_are_the_test_set(tmp_path: Path):
    path = _dataset(tmp_path, train=1030, test=None)
    root = materialize(DatasetOptions(str(path)), tmp_path / "out")
    task = root / "saved"
    read = lambda name: (task / name).read_text().splitlines()  # noqa: E731
    assert [len(read(n)) for n in ("train800.txt", "val200.txt", "test.txt")] == [800, 200, 30]
    # generated images repeat rarely at 20 px; content-addressed files make any repeat one file
    assert len({p.name for p in (task / "images").rglob("*.png")}) <= 1030
    assert materialize(DatasetOptions(str(path)), tmp_path / "out") == root  # same content, same folder


def test_columns_found_from_features_or_named(tmp_path: Path):
    import datasets

    features = datasets.Features(
        {
            "a": datasets.Image(),
            "b": datasets.Image(),
            "y": datasets.ClassLabel(names=["x", "z"]),
            "n": datasets.Value("int64"),
        }
    )
    with pytest.raises(suites.DataError, match="2 .*Image columns.*--image-column"):
        find_columns(features, None, None)
    assert find_columns(features, "b", None) == ("b", "y")
    assert find_columns(features, "a", "n") == ("a", "n")
    with pytest.raises(suites.DataError, match="--label-column 'q' is not a column.*a, b, y, n"):
        find_columns(features, "a", "q")


def test_dataset_flags_are_refused_where_they_do_not_apply(cli, tmp_path: Path):
    code, _, err = cli("run", "--suite", "demo", "--methods", "linear", "--dataset", "beans")
    assert code == 2 and "--dataset applies to suite hf only" in err
    code, _, err = cli("run", "--suite", "hf", "--methods", "linear")
    assert code == 2 and "needs --dataset" in err
    code, _, err = cli("run", "--suite", "hf", "--methods", "linear", "--dataset", str(tmp_path / "missing"))
    assert code == 2 and "--dataset" in err and len(err.strip().splitlines()) == 1


def _string_label_dataset(tmp_path: Path, test_names: list[str]) -> Path:
    import datasets

    names = ["zebra", "ant", "moth"]  # not in sorted order: the classes are sorted, not taken as met
    features = datasets.Features({"img": datasets.Image(), "animal": datasets.Value("string")})

    def split(n: int, seed: int, pool: list[str]) -> datasets.Dataset:
        images, labels = _images(n, 3, seed)
        return datasets.Dataset.from_dict({"img": images, "animal": [pool[y % len(pool)] for y in labels]}, features)

    path = tmp_path / "strings"
    datasets.DatasetDict({"train": split(30, 0, names), "test": split(9, 1, test_names)}).save_to_disk(str(path))
    return path


def test_a_label_column_of_strings_maps_to_sorted_classes(tmp_path: Path):
    path = _string_label_dataset(tmp_path, ["zebra", "ant", "moth"])
    root = materialize(DatasetOptions(str(path), label_column="animal"), tmp_path / "out")
    task = root / "strings"
    assert (task / "classes.txt").read_text().split() == ["ant", "moth", "zebra"]
    # image i of each split has colour i % 3 and the name names[i % 3]: zebra -> 2, ant -> 0, moth -> 1
    lines = (task / "test.txt").read_text().splitlines()
    assert sorted(Counter(line.split()[1] for line in lines).items()) == [("0", 3), ("1", 3), ("2", 3)]
    assert materialize(DatasetOptions(str(path), label_column="animal"), tmp_path / "out") == root  # deterministic


def test_a_test_label_the_train_split_lacks_is_one_line_error(cli, tmp_path: Path):
    path = _string_label_dataset(tmp_path, ["zebra", "ant", "wolf"])
    code, _, err = cli(
        "run", "--suite", "tinyhf", "--dataset", str(path), "--label-column", "animal", "--methods", "linear"
    )  # fmt: skip
    assert code == 2, err
    assert "'wolf'" in err and "--label-column 'animal'" in err and len(err.strip().splitlines()) == 1


def test_a_hub_dataset_with_the_hub_unreachable_fails_at_once(cli, monkeypatch):
    """No half minute of retries logged by the Hub client: one line, at once, with both ways out."""
    import time

    import datasets  # noqa: F401  (imported before the clock starts: the probe is what is timed)

    from suites.hf import load

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    started = time.monotonic()
    with pytest.raises(suites.DataError, match="cannot reach the Hugging Face Hub at http://127.0.0.1:9"):
        load("someone/some-images")
    assert time.monotonic() - started < 5  # the probe's timeout is 3 s; the client's retries take 30
    code, _, err = cli("run", "--suite", "tinyhf", "--methods", "linear", "--dataset", "someone/some-images")
    assert code == 2 and err.startswith("error: cannot reach the Hugging Face Hub at http://127.0.0.1:9")
    assert "HF_HUB_OFFLINE=1" in err and "save_to_disk" in err and len(err.strip().splitlines()) == 1
    assert "Retrying" not in err
