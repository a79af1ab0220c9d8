"""Few-shot FGVC: suite, lists, verify/dedupe, fetch, run identity, stage rules, augmentation.

The data is a generated copy of the NOAH layout with tiny images: ``oxford_pets`` (3 classes; its
1-shot lists repeat every line, as NOAH's do) and ``stanford_cars`` in a folder named
``standford-cars`` (4 classes; list paths carry ``cars_train/``/``cars_test/`` relative to the
dataset folder, NOAH's Stanford Cars exception). A test suite ``tinyfewshot`` uses the real
suite's layout and tasks with those class counts and a 16 px preset.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

import suites
from bench.tracking import Tracker, default_tracking_uri
from suites import get_stage, get_suite, resolve_tasks
from suites.base import Suite, register_suite
from suites.fewshot import FGVC_FEWSHOT_PRESET, LAYOUT, fewshot_tasks
from tests.conftest import CLASS_COLOURS

CLASSES = {"oxford_pets": 3, "stanford_cars": 4}
TINY_PRESET = replace(
    FGVC_FEWSHOT_PRESET, name="tinyfewshot", img_size=16, resize=20, epochs=1, warmup_epochs=0, lr=1e-2
)
if "tinyfewshot" not in suites.available_suites():
    register_suite(
        Suite(
            name="tinyfewshot",
            description="test-only: the fgvc_fewshot layout with 2 tiny datasets",
            preset=TINY_PRESET,
            default_backbone="vit_demo_tiny",
            tasks=tuple(t for t in fewshot_tasks(CLASSES) if t.name in CLASSES),
            backbone_pretrained=False,
            fewshot=LAYOUT,
        )
    )


def _image(path: Path, label: int, rng: np.random.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    base = np.array(CLASS_COLOURS[label % len(CLASS_COLOURS)], dtype=np.int16)
    pixels = np.clip(base + rng.integers(-30, 30, size=(14, 18, 3)), 0, 255).astype(np.uint8)  # not square
    Image.fromarray(pixels).save(path)


def write_fewshot_dataset(folder: Path, classes: int, *, cars: bool, repeat_one_shot: bool, seed: int = 0) -> None:
    """A NOAH-format few-shot dataset folder: 15 training lists, val and test, tiny PNGs."""
    rng = np.random.default_rng(seed)
    images = folder if cars else folder / "images"
    train_dir, test_dir = ("cars_train", "cars_test") if cars else ("", "")
    pool = {c: [f"{train_dir}/c{c}_{i:02d}.png".lstrip("/") for i in range(18)] for c in range(classes)}
    val = [(f"{train_dir}/val_c{c}_{i}.png".lstrip("/"), c) for c in range(classes) for i in range(2)]
    test = [(f"{test_dir}/test_c{c}_{i}.png".lstrip("/"), c) for c in range(classes) for i in range(3)]
    for c, names in pool.items():
        for name in names:
            _image(images / name, c, rng)
    for name, c in val + test:
        _image(images / name, c, rng)
    ann = folder / "annotations"
    ann.mkdir(parents=True)
    for k in LAYOUT.shots:
        for s in LAYOUT.split_seeds:
            picks = random.Random(100 * k + s)
            lines = []
            for c in range(classes):
                for name in picks.sample(pool[c], k):
                    lines += [f"{name} {c}"] * (2 if repeat_one_shot and k == 1 else 1)
            (ann / f"train_meta.list.num_shot_{k}.seed_{s}").write_text("\n".join(lines) + "\n")
    (ann / "val_meta.list").write_text("".join(f"{n} {c}\n" for n, c in val))
    (ann / "test_meta.list").write_text("".join(f"{n} {c}\n" for n, c in test))


@pytest.fixture
def fewshot_root(tmp_path: Path) -> Path:
    root = tmp_path / "fgvc"
    write_fewshot_dataset(root / "oxford_pets", 3, cars=False, repeat_one_shot=True, seed=0)
    write_fewshot_dataset(root / "standford-cars", 4, cars=True, repeat_one_shot=False, seed=1)
    return root


def _runs(workdir: Path, suite: str = "tinyfewshot"):
    return Tracker(default_tracking_uri(workdir)).search(f"bench/{suite}")


def _one_line_error(code: int, err: str, *fragments: str) -> None:
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])


# ----------------------------------------------------------------------------------------
# end to end


def test_all_shots_and_split_seeds_run_end_to_end(cli, workdir: Path, fewshot_root: Path):
    args = ("run", "--suite", "tinyfewshot", "--methods", "linear", "--data-root", str(fewshot_root))
    code, out, err = cli(*args)  # default: all five shots, --seeds 3 (split seed = training seed), 1 epoch
    assert code == 0, err
    assert "30 run(s) trained, 0 already finished" in out
    assert "1-shot" in out and "16-shot" in out  # the summary has a row per (dataset, shots)
    assert "warning: oxford_pets: training lists repeat lines (k1/split0: 3 repeated" in err
    assert "kept, as published; --dedupe drops them" in err

    runs = _runs(workdir)
    assert len(runs) == 30 and len({r.data.tags["bench.run_key"] for r in runs}) == 30
    combos = {(r.data.tags["bench.task"], r.data.tags["bench.shots"], r.data.tags["bench.seed"]) for r in runs}
    assert combos == {(t, str(k), str(s)) for t in CLASSES for k in (1, 2, 4, 8, 16) for s in (0, 1, 2)}
    client = MlflowClient(default_tracking_uri(workdir))
    for r in runs:
        t, m, p = r.data.tags, r.data.metrics, r.data.params
        assert r.info.status == "FINISHED" and t["bench.stage"] == "final" and t["bench.preset"] == "tinyfewshot"
        assert t["bench.split_seed"] == t["bench.seed"] and t["bench.dedupe"] == "false"
        assert t["mlflow.runName"] == f"linear/{t['bench.task']}/k{t['bench.shots']}/s{t['bench.seed']}"
        assert p["extra.shots"] == t["bench.shots"] and p["extra.split_seed"] == t["bench.split_seed"]
        shots, classes = int(t["bench.shots"]), CLASSES[t["bench.task"]]
        listed = shots * classes * (2 if (t["bench.task"], shots) == ("oxford_pets", 1) else 1)
        assert p["hp.batch_size"] == str(min(64, listed))  # 64, or the training list if smaller
        assert p["hp.augmentation"] == "rrc+flip+rand-m9-mstd0.5-inc1" and p["hp.resize"] == "20"
        assert 0.0 <= m["test/acc"] <= 1.0
        assert len(client.get_metric_history(r.info.run_id, "test/acc")) == 1  # scored once, at the end
        assert client.get_metric_history(r.info.run_id, "val/acc") == []
    pets = next(r for r in runs if r.data.tags["bench.task"] == "oxford_pets")
    assert pets.data.params["data.task_dir"].endswith("oxford_pets")
    cars = next(r for r in runs if r.data.tags["bench.task"] == "stanford_cars")
    assert cars.data.params["data.task_dir"].endswith("standford-cars")  # the NOAH folder name is an alias
    local = Path(client.download_artifacts(cars.info.run_id, "", str(workdir / "dl")))
    resolved = json.loads((local / "config/resolved.json").read_text())
    assert resolved["data"]["train_list"].startswith("annotations/train_meta.list.num_shot_")
    assert resolved["data"]["eval_list"] == "annotations/test_meta.list"
    assert resolved["data"]["image_root"].endswith("standford-cars")  # Stanford Cars: paths from the dataset folder
    assert (local / "eval/predictions.csv").read_text().splitlines()[1].split(",")[1].startswith("cars_test/")

    code, out, _ = cli(*args)
    assert code == 0 and "0 run(s) trained, 30 already finished" in out
    code, out, _ = cli("runs", "--suite", "tinyfewshot", "--json")
    assert {(row["shots"], row["split_seed"]) for row in json.loads(out)} >= {("4", "2"), ("16", "0")}

    # the report groups few-shot results by shot: per shot, the mean over datasets of the seed means
    rep = workdir / "rep"
    code, _, err = cli("report", "--suite", "tinyfewshot", "--format", "md,csv", "--out", str(rep))
    assert code == 0, err
    md = (rep / "report.md").read_text()
    assert "## Few-shot: per shot count" in md
    acc = {}
    for r in runs:
        t = r.data.tags
        acc.setdefault((int(t["bench.shots"]), t["bench.task"]), []).append(r.data.metrics["test/acc"])
    for shots in (1, 2, 4, 8, 16):
        mean = np.mean([np.mean(v) for (k, _), v in acc.items() if k == shots])
        assert re.search(rf"\| {shots}-shot \(2 datasets\) +\| \*\*{100 * mean:.1f}\*\* \[", md), shots
    summary = pd.read_csv(rep / "summary.csv")
    assert sorted(set(summary["shots"])) == [1, 2, 4, 8, 16] and len(summary) == 10


def test_tune_stage_never_reads_test_and_final_never_reads_val(cli, workdir: Path, fewshot_root: Path, tmp_path):
    """tune: few-shot list -> val every epoch, test untouched; final: few-shot list -> test once, val untouched."""
    pets = fewshot_root / "oxford_pets"
    aside = tmp_path / "aside"
    aside.mkdir()
    test_files = [pets / "annotations" / "test_meta.list", *(pets / "images").glob("test_*.png")]
    for f in test_files:
        f.rename(aside / f.name)
    base = ("run", "--suite", "tinyfewshot", "--methods", "lora", "--data-root", str(fewshot_root))
    base += ("--tasks", "oxford_pets", "--shots", "2", "--seeds", "0,")
    code, _, err = cli(*base, "--stage", "tune", "--epochs", "2")
    assert code == 0, err
    [r] = _runs(workdir)
    client = MlflowClient(default_tracking_uri(workdir))
    assert r.data.tags["bench.stage"] == "tune" and "test/acc" not in r.data.metrics
    assert [h.step for h in client.get_metric_history(r.info.run_id, "val/acc")] == [0, 1]  # val, every epoch
    code, _, err = cli(*base)  # final scores the test list...
    _one_line_error(code, err, "annotations/test_meta.list is missing")

    for f in test_files:
        (aside / f.name).rename(f)
    (pets / "annotations" / "val_meta.list").rename(aside / "val_meta.list")  # ...and never reads val
    for png in (pets / "images").glob("val_*.png"):
        png.unlink()
    code, _, err = cli(*base)
    assert code == 0, err
    [final] = [r for r in _runs(workdir) if r.data.tags["bench.stage"] == "final"]
    assert len(client.get_metric_history(final.info.run_id, "test/acc")) == 1
    assert client.get_metric_history(final.info.run_id, "val/acc") == []


def test_run_identity_includes_shots_split_seed_and_dedupe(workdir: Path, fewshot_root: Path):
    from bench.sweep import SweepRequest, plan_sweep

    def plan(**kw):
        request = SweepRequest(
            suite="tinyfewshot", methods=["linear"], data_root=fewshot_root, tasks=["pets"], device="cpu", **kw
        )
        return plan_sweep(request, workdir)

    paired = plan(seeds=[0, 1], shots=[1, 4])
    assert [r.spec.label for r in paired.runs] == [
        "linear/oxford_pets/k1/s0",
        "linear/oxford_pets/k1/s1",
        "linear/oxford_pets/k4/s0",
        "linear/oxford_pets/k4/s1",
    ]
    assert [r.spec.extra for r in paired.runs][2] == {"shots": 4, "split_seed": 0, "dedupe": False}
    assert len({r.spec.run_key for r in paired.runs}) == 4
    assert len({r.spec.data for r in paired.runs}) == 4  # each run records its own training list's fingerprint

    crossed = plan(seeds=[0], shots=[4], split_seeds=[0, 1])  # NOAH: one training seed, three splits
    assert [r.spec.label for r in crossed.runs] == ["linear/oxford_pets/k4/s0", "linear/oxford_pets/k4/split1/s0"]
    assert crossed.runs[0].spec.run_key == paired.runs[2].spec.run_key  # the same run, however it was asked for
    assert crossed.runs[1].spec.run_key not in {r.spec.run_key for r in paired.runs}

    deduped = plan(seeds=[0], shots=[1], dedupe=True)
    [run] = deduped.runs
    assert run.spec.extra["dedupe"] is True and run.spec.run_key != paired.runs[0].spec.run_key
    assert run.preset.batch_size == 3 and paired.runs[0].preset.batch_size == 6
    assert (
        run.task.train_entries(get_stage("final"))[0].path.name
        == paired.runs[0].task.train_entries(get_stage("final"))[0].path.name
    )
    assert len(run.task.train_entries(get_stage("final"))) == 3
    assert deduped.warnings == ["oxford_pets: training lists repeat lines (k1/split0: 3 repeated); dropped (--dedupe)"]

    from bench.spec import RunSpec
    from bench.sweep import run_tags

    spec = RunSpec("s", "t", "final", "linear", {}, {}, 0, "p", "b", "c", "d", 2)  # not few-shot
    assert run_tags(spec)["bench.shots"] == "none" and run_tags(spec)["bench.split_seed"] == "none"
    assert spec.label == "linear/t/s0"


# ----------------------------------------------------------------------------------------
# errors


def test_shot_and_seed_errors(cli, fewshot_root: Path, noah_root: Path):
    base = ("run", "--suite", "tinyfewshot", "--methods", "linear", "--data-root", str(fewshot_root))
    _one_line_error(*cli(*base, "--shots", "3")[::2], "--shots 3", "1, 2, 4, 8, 16 shots only")
    _one_line_error(*cli(*base, "--shots", "two")[::2], "--shots 'two'", "e.g. 1,2,4,8,16")
    _one_line_error(*cli(*base, "--seeds", "5")[::2], "seed(s) 3, 4 have no few-shot lists", "--split-seeds")
    _one_line_error(*cli(*base, "--split-seeds", "7")[::2], "--split-seeds 7", "split seeds 0, 1, 2 only")
    code, _, err = cli("run", "--suite", "vtab1k", "--methods", "lora", "--shots", "1,2", "--data-root", str(noah_root))
    _one_line_error(code, err, "--shots applies to few-shot suites only", "fgvc_fewshot", "'vtab1k' has no shots")
    code, _, err = cli("run", "--suite", "tinyfolder", "--methods", "lora", "--dedupe", "--data-root", str(noah_root))
    _one_line_error(code, err, "--dedupe applies to few-shot suites only")
    code, _, err = cli("tune", "--suite", "tinyfewshot", "--methods", "lora", "--trials", "2")
    _one_line_error(code, err, "does not tune few-shot suites yet")
    code, _, err = cli("run", "--suite", "fgvc_fewshot", "--methods", "lora", "--data-root", str(fewshot_root))
    _one_line_error(code, err, "no folder for task fgvc_aircraft", "robots.ox.ac.uk/~vgg/data/fgvc-aircraft")


# ----------------------------------------------------------------------------------------
# data: verify, dedupe, fetch


def test_verify_reports_duplicates_and_counts(cli, fewshot_root: Path):
    args = ("data", "verify", "--suite", "tinyfewshot", "--data-root", str(fewshot_root), "--json")
    code, out, _ = cli(*args)
    pets, cars = json.loads(out)
    assert code == 0 and pets["ok"] and cars["ok"], (pets["problems"], cars["problems"])
    assert pets["lines"]["annotations/train_meta.list.num_shot_1.seed_0"] == 6  # 3 classes x 1 shot, each twice
    assert pets["lines"]["annotations/train_meta.list.num_shot_16.seed_2"] == 48
    assert len(pets["lines"]) == 17 and pets["images_checked"] == 3 * 18 + 3 * 2 + 3 * 3
    [warning] = pets["warnings"]
    assert "3 training list(s) repeat lines" in warning and "num_shot_1.seed_0 (3 of 6 lines)" in warning
    assert "runs keep them as published; `bench run --dedupe` drops them" in warning
    assert cars["warnings"] == [] and cars["folder"].endswith("standford-cars")
    assert len(pets["fingerprints"]) == 30  # tune/final x 5 shots x 3 split seeds
    [pets_task] = resolve_tasks(get_suite("tinyfewshot"), fewshot_root, ["oxford_pets"], get_stage("tune"))
    assert pets["fingerprints"]["tune/k8/s1"] == pets_task.with_split(8, 1).fingerprint(get_stage("tune"))
    code, out, _ = cli(*args, "--dedupe")
    assert "--dedupe drops the repeats" in json.loads(out)[0]["warnings"][0]
    code, out, _ = cli(*args[:-1])
    assert code == 0 and "repeat lines" in out  # the table shows warnings too

    ann = fewshot_root / "oxford_pets" / "annotations"
    k4 = ann / "train_meta.list.num_shot_4.seed_1"
    k4.write_text("\n".join(k4.read_text().splitlines()[1:]) + "\n")  # class 0 now has 3 images
    k2 = ann / "train_meta.list.num_shot_2.seed_0"
    leaked = (ann / "test_meta.list").read_text().splitlines()[0]
    k2.write_text(k2.read_text() + leaked + "\n")
    (ann / "val_meta.list").write_text((ann / "val_meta.list").read_text() + "images/val_c0_0.png 3\n")
    (fewshot_root / "standford-cars" / "cars_test" / "test_c1_0.png").unlink()
    code, out, _ = cli(*args)
    pets, cars = json.loads(out)
    assert code == 1 and not pets["ok"] and not cars["ok"]
    problems = "\n".join(pets["problems"])
    assert "num_shot_4.seed_1 should hold 4 image(s) of each of 3 classes (12 in all); class 0: 3" in problems
    assert "num_shot_2.seed_0 should hold 2 image(s)" in problems and "also in val/test" in problems
    assert "val_meta.list:7: label 3 is out of range" in problems
    assert any("cars_test/test_c1_0.png does not exist" in p for p in cars["problems"])
    assert any("ai.stanford.edu/~jkrause/cars" in p for p in cars["problems"])  # where the images come from


def test_verify_real_suite_names_missing_data_and_sources(cli, tmp_path: Path):
    root = tmp_path / "fgvc"
    (root / "oxford_flowers" / "jpg").mkdir(parents=True)  # images unpacked as the archive has them, no lists
    code, out, _ = cli("data", "verify", "--suite", "fgvc_fewshot", "--data-root", str(root), "--json")
    reports = {r["task"]: r for r in json.loads(out)}
    assert code == 1 and set(reports) == {
        "fgvc_aircraft",
        "food101",
        "oxford_flowers102",
        "oxford_pets",
        "stanford_cars",
    }
    [problem] = reports["oxford_flowers102"]["problems"]
    assert "no lists in" in problem and "oxford_flowers/annotations" in problem
    assert f"NOAH/tree/{suites.noah_lists.NOAH_COMMIT}/data/few-shot/oxford-flowers102/annotations" in problem
    [problem] = reports["food101"]["problems"]
    assert (
        "no folder named food101, food-101" in problem
        and "data.vision.ee.ethz.ch/cvl/datasets_extra/food-101" in problem
    )


def test_noah_lists_pass_verify_and_image_root_alternatives(tmp_path: Path):
    """The pinned sha256 of a list are checked; Flowers images may sit in jpg/ (CoOp's layout)."""
    from suites.fewshot import published_lists
    from suites.resolve import find_image_root
    from suites.verify import verify_fewshot_task

    suite = get_suite("fgvc_fewshot")
    flowers = next(t for t in suite.tasks if t.name == "oxford_flowers102")
    assert len(published_lists(suite, flowers)) == 17 and published_lists(get_suite("tinyfewshot"), flowers) is None
    tiny = replace(flowers, num_classes=3, split_sizes={})
    folder = tmp_path / "oxford_flowers"
    write_fewshot_dataset(folder, 3, cars=False, repeat_one_shot=False)
    (folder / "images").rename(folder / "jpg")
    assert find_image_root(folder, tiny, ["annotations/val_meta.list"]) == folder / "jpg"
    name = "train_meta.list.num_shot_2.seed_1"
    published = {name: hashlib.sha256((folder / "annotations" / name).read_bytes()).hexdigest()}
    report = verify_fewshot_task(tiny, folder, LAYOUT, published=published)
    assert report.ok and report.warnings == [], report.problems
    published[name] = "0" * 64
    report = verify_fewshot_task(tiny, folder, LAYOUT, published=published)
    assert report.ok and report.warnings == [f"{folder / 'annotations' / name} differs from NOAH's published list"]


def test_fetch_downloads_pinned_lists_and_names_image_sources(cli, tmp_path: Path, monkeypatch):
    import suites.fetch as fetch
    import suites.noah_lists as noah

    served = {}
    hashes = {}
    for folder in noah.NOAH_LIST_SHA256:
        hashes[folder] = {}
        for name in noah.NOAH_LIST_SHA256[folder]:
            data = f"{folder}/{name}.jpg 0\n".encode()
            served[
                fetch.NOAH_RAW_URL.format(repo=noah.NOAH_REPO, commit=noah.NOAH_COMMIT, folder=folder, name=name)
            ] = data
            hashes[folder][name] = hashlib.sha256(data).hexdigest()
    monkeypatch.setattr(noah, "NOAH_LIST_SHA256", hashes)
    monkeypatch.setattr(fetch, "_download_bytes", lambda url: served[url])
    to = tmp_path / "fgvc"
    (to / "oxford_flowers").mkdir(parents=True)  # an existing folder under an accepted name receives its lists
    code, out, err = cli("data", "fetch", "--suite", "fgvc_fewshot", "--to", str(to))
    assert code == 0, err
    assert (
        to / "oxford_flowers" / "annotations" / "val_meta.list"
    ).read_bytes() == b"oxford-flowers102/val_meta.list.jpg 0\n"
    assert (
        len(list((to / "standford-cars").glob("*"))) == 0
        and len(list((to / "stanford_cars/annotations").iterdir())) == 17
    )
    source = json.loads((to / "SOURCE.json").read_text())
    assert source["lists"]["commit"] == noah.NOAH_COMMIT and source["folders"]["oxford_flowers102"] == "oxford_flowers"
    assert "images have no pinned public copy" in out and "robots.ox.ac.uk/~vgg/data/pets" in out

    assert cli("data", "fetch", "--suite", "fgvc_fewshot", "--to", str(to))[0] == 0  # present lists are kept
    (to / "food101" / "annotations" / "test_meta.list").write_text("edited 0\n")
    code, _, err = cli("data", "fetch", "--suite", "fgvc_fewshot", "--to", str(to))
    _one_line_error(code, err, "test_meta.list exists and differs from NOAH's list")
    served = {url: b"tampered\n" for url in served}
    code, _, err = cli("data", "fetch", "--suite", "fgvc_fewshot", "--to", str(tmp_path / "other"))
    _one_line_error(code, err, "does not have the pinned sha256")
    code, _, err = cli("data", "fetch", "--suite", "fgvc_fewshot", "--to", str(to), "--revision", "abc")
    _one_line_error(code, err, "pinned to ZhangYuanhan-AI/NOAH@")


# ----------------------------------------------------------------------------------------
# suite, preset, preprocessing


def test_real_suite_definition(cli):
    code, out, _ = cli("suites", "info", "fgvc_fewshot", "--json")
    info = json.loads(out)
    assert code == 0 and {t["name"]: t["num_classes"] for t in info["tasks"]} == {
        "fgvc_aircraft": 100,
        "food101": 101,
        "oxford_flowers102": 102,
        "oxford_pets": 37,
        "stanford_cars": 196,
    }
    assert "standford-cars" in next(t for t in info["tasks"] if t["name"] == "stanford_cars")["aliases"]
    p = info["preset"]
    assert (p["img_size"], p["resize"], p["batch_size"], p["epochs"], p["warmup_epochs"]) == (224, 256, 64, 100, 10)
    assert (p["lr"], p["weight_decay"], p["optimizer"]) == (5e-3, 1e-4, "adamw")
    assert p["augmentation"] == "rrc+flip+rand-m9-mstd0.5-inc1"
    assert "resize" not in get_suite("vtab1k").preset.to_dict()  # unchanged presets keep their run keys


def test_evaluation_images_are_resized_then_centre_cropped(tmp_path: Path):
    from suites.images import decode_images
    from suites.lists import ListEntry

    rng = np.random.default_rng(0)
    path = tmp_path / "x.png"
    Image.fromarray(rng.integers(0, 255, size=(30, 50, 3), dtype=np.uint8)).save(path)
    [entry] = [ListEntry(path, 0, "l:1")]
    images, _ = decode_images([entry], 256, "bicubic", crop=224)
    expected = np.asarray(Image.open(path).convert("RGB").resize((256, 256), Image.Resampling.BICUBIC))[16:240, 16:240]
    assert images.shape == (1, 3, 224, 224) and np.array_equal(images[0].permute(1, 2, 0).numpy(), expected)
    assert TINY_PRESET.decode(training=True) == (20, None) and TINY_PRESET.decode(training=False) == (20, 16)
    assert get_suite("vtab1k").preset.decode(training=True) == (224, None)


# ----------------------------------------------------------------------------------------
# augmentation on the device


def _timm_op(name: str, pil: Image.Image, sign: float) -> np.ndarray:
    from timm.data import auto_augment

    op = auto_augment.AugmentOp(
        name, prob=1.0, magnitude=9, hparams={"translate_const": 100, "img_mean": (128,) * 3, "interpolation": 3}
    )
    state = random.getstate()
    random.seed(0 if sign < 0 else 1)  # timm negates when random() > 0.5: seed 0 -> 0.84, seed 1 -> 0.13
    try:
        return np.asarray(op(pil)).astype(np.float64)
    finally:
        random.setstate(state)


def test_randaugment_ops_follow_timm():
    from bench.augment import GEOMETRIC, OPS, _op_theta, _warp, apply_color_op

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:48]
    pixels = np.stack([xx * 5, yy * 5, (xx + yy) * 2], -1) + rng.normal(0, 20, (48, 48, 3))
    pixels[10:30, 8:24] = (200, 50, 30)
    pixels = np.clip(pixels, 0, 255).astype(np.uint8)
    x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float()
    fill = torch.full((1, 3, 1, 1), 128.0)
    for k, name in enumerate(OPS):
        for sign in (1.0, -1.0):
            reference = _timm_op(name, Image.fromarray(pixels), sign)
            if k in GEOMETRIC:
                ours = _warp(x, _op_theta(k, 9.0, sign)[None], 48, fill)
            else:
                ours = apply_color_op(x, k, torch.tensor([9.0]), torch.tensor([sign]))
            diff = np.abs(ours[0].permute(1, 2, 0).numpy() - reference)
            # pixel ops: identical up to PIL's rounding; resampling ops: bicubic grid_sample vs PIL, edges
            assert diff.mean() < (2.5 if k in GEOMETRIC else 0.05), (name, sign, diff.mean())


def test_augmentation_is_seeded_and_crops_like_timm():
    from timm.data.transforms import RandomResizedCropAndInterpolation

    from bench.augment import DeviceAugment, parse_rand

    assert parse_rand("rand-m9-mstd0.5-inc1") == {"m": 9.0, "n": 2.0, "p": 0.5, "mstd": 0.5, "inc": 1.0}
    spec, cpu = "rrc+flip+rand-m9-mstd0.5-inc1", torch.device("cpu")
    batch = torch.randint(0, 256, (16, 3, 40, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    a = DeviceAugment.from_spec(spec, 32, seed=3, device=cpu)(batch)
    b = DeviceAugment.from_spec(spec, 32, seed=3, device=cpu)(batch)
    c = DeviceAugment.from_spec(spec, 32, seed=4, device=cpu)(batch)
    assert a.shape == (16, 3, 32, 32) and torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= 0 and a.max() <= 255 and torch.equal(a, a.round())

    boxes = DeviceAugment(224, seed=0, device=cpu).crop_boxes(4000, 256, 256).numpy()
    img = Image.new("RGB", (256, 256))
    random.seed(0)
    ref = np.array(
        [RandomResizedCropAndInterpolation.get_params(img, (0.08, 1.0), (3 / 4, 4 / 3)) for _ in range(4000)]
    )
    for stat in (lambda z: z[:, 2] * z[:, 3] / 256**2, lambda z: z[:, 3] / z[:, 2]):  # area fraction, aspect
        assert abs(stat(boxes).mean() - stat(ref).mean()) < 0.02
    assert (boxes[:, 0] + boxes[:, 2] <= 256).all() and (boxes[:, 1] + boxes[:, 3] <= 256).all()

    # no augmentation: the training loop gets the batch back untouched
    from bench.augment import train_augment

    assert train_augment(get_suite("vtab1k").preset, 0, cpu, (0.5,) * 3)(batch) is batch
    with pytest.raises(Exception, match="unknown part 'mixup'"):
        DeviceAugment.from_spec("rrc+mixup", 32, seed=0, device=cpu)
