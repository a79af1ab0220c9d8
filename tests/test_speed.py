"""`bench speed`: our run path against the reference-style loop, on the CPU (and on a GPU where one is)."""

from __future__ import annotations

import importlib
import json
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

import bench.speed

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# ---------------------------------------------------------------------------------------
# bench speed


def test_speed_json_on_cpu_measures_both_paths(cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    opened: Counter[str] = Counter()
    real_open = bench.speed.open_image

    def counting_open(path):
        opened[Path(path).name] += 1
        return real_open(path)

    monkeypatch.setattr(bench.speed, "open_image", counting_open)  # the reference loader reads in-process (0 workers)
    out_file = tmp_path / "speed.json"
    code, out, err = cli("speed", "--methods", "lora,linear", "--steps", "3", "--json", "--out", str(out_file))
    assert code == 0, err
    report = json.loads(out)
    assert json.loads(out_file.read_text()) == report
    assert report["device"] == "cpu" and report["backbone"] == "vit_demo_tiny" and report["batch_size"] == 8
    assert report["steps"] == 3 and report["reference_workers"] == 0 and report["torch"] == torch.__version__
    assert "bench speed --methods lora,linear" in report["command"]
    train_images, eval_images = 3 * 8, report["eval_images"]
    assert [row["method"] for row in report["methods"]] == ["lora", "linear"]
    for row in report["methods"]:
        ours, ref = row["ours"], row["reference"]
        for figures in (ours, ref):
            assert figures["train_images_per_s"] > 0 and figures["eval_images_per_s"] > 0
            assert figures["peak_memory_mb"] is None  # CPU
        assert ours["merged_eval"] is True and ref["merged_eval"] is False
        assert row["ratio"]["train"] == pytest.approx(ours["train_images_per_s"] / ref["train_images_per_s"])
        assert row["ratio"]["eval"] > 0
        # warm-up epoch + timed epoch over every training file, then every eval file once
        assert ref["files_decoded"] == 2 * train_images + eval_images
    train_reads = [n for name, n in opened.items() if name.startswith("t")]
    eval_reads = [n for name, n in opened.items() if name.startswith("e")]
    assert len(train_reads) == train_images and set(train_reads) == {2 * 2}  # 2 epochs x 2 methods
    assert len(eval_reads) == eval_images and set(eval_reads) == {2}


def test_speed_table_and_user_errors(cli):
    code, out, err = cli("speed", "--methods", "linear", "--steps", "1", "--no-reference")
    assert code == 0, err
    assert "linear" in out and "ours:" in out
    for args, fragment in (
        (("--methods", "lora,nope"), "unknown method 'nope'"),
        (("--backbone", "vit_nope"), "unknown backbone 'vit_nope'"),
        (("--steps", "0"), "--steps 0 must be at least 1"),
    ):
        code, out, err = cli("speed", *args)
        assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_speed_module_imports_neither_mlflow_nor_optuna():
    """`bench speed` runs where only torch, timm, peft and the CLI's packages are installed: its
    modules are imported afresh here with mlflow and optuna made unimportable."""
    saved = dict(sys.modules)
    ours = ("bench", "methods", "suites", "reports")
    for name in [n for n in sys.modules if n.split(".")[0] in (*ours, "mlflow", "optuna")]:
        del sys.modules[name]
    sys.modules.update({"mlflow": None, "optuna": None})  # what Python does for a package that is not installed
    try:
        importlib.import_module("bench.speed")
        importlib.import_module("bench.cli")
    finally:
        sys.modules.clear()
        sys.modules.update(saved)


@pytest.mark.gpu
@gpu
def test_speed_on_gpu(cli):
    code, out, err = cli("speed", "--methods", "lora", "--steps", "5", "--eval-images", "512", "--json")
    assert code == 0, err
    row = json.loads(out)["methods"][0]
    assert row["ours"]["peak_memory_mb"] > 0 and row["ratio"]["train"] > 1
