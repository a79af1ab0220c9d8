"""Shared fixtures: generated NOAH-format data, tiny checkpoints, a real MLflow store per test.

Nothing here mocks MLflow, timm or peft: the store is a real sqlite MLflow database (migrated
once per session and copied, since a fresh one costs ~7 s), the backbones are real timm ViTs
with small shapes, and the images are real PNG files on disk.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach the network
torch.set_num_threads(2)

import suites  # noqa: E402
from suites.base import Suite, register_suite  # noqa: E402
from suites.demo import DEMO_PRESET  # noqa: E402

# A suite for in-process tests: the `folder` rules (tasks discovered, classes from labels)
# with a schedule short enough for a CPU. Registered once; suites are data.
TINY_PRESET = replace(DEMO_PRESET, name="tiny", img_size=32, epochs=3, warmup_epochs=1, batch_size=16, lr=1e-2)
if "tinyfolder" not in suites.available_suites():
    register_suite(
        Suite(
            name="tinyfolder",
            description="test-only: NOAH folders, tiny preset",
            preset=TINY_PRESET,
            default_backbone="vit_demo_tiny",
            tasks=(),
            backbone_pretrained=False,
        )
    )

CLASS_COLOURS = [(220, 40, 40), (40, 200, 40), (40, 40, 220), (200, 200, 40)]


def write_task(
    folder: Path, num_classes: int = 3, sizes: dict[str, int] | None = None, img_size: int = 20, seed: int = 0
) -> Path:
    """A NOAH-format task folder whose classes differ in colour, so they can be learnt."""
    sizes = sizes or {"train800": 24, "val200": 9, "test": 15}
    rng = np.random.default_rng(seed)
    lines: dict[str, list[str]] = {}
    for split, n in sizes.items():
        (folder / "images" / split).mkdir(parents=True, exist_ok=True)
        lines[split] = []
        for i in range(n):
            label = i % num_classes
            base = np.array(CLASS_COLOURS[label % len(CLASS_COLOURS)], dtype=np.int16)
            noise = rng.integers(-30, 30, size=(img_size, img_size, 3))
            pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
            rel = f"images/{split}/{i:06d}.png"
            Image.fromarray(pixels).save(folder / rel)
            lines[split].append(f"{rel} {label}")
    lines["train800val200"] = lines["train800"] + lines["val200"]
    for split, rows in lines.items():
        (folder / f"{split}.txt").write_text("\n".join(rows) + "\n")
    return folder


@pytest.fixture
def noah_root(tmp_path: Path) -> Path:
    """A data root with two generated task folders, ``alpha`` (3 classes) and ``beta`` (2 classes)."""
    root = tmp_path / "data"
    write_task(root / "alpha", num_classes=3, seed=0)
    write_task(root / "beta", num_classes=2, seed=1)
    return root


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated, empty MLflow sqlite store, created once per test session."""
    from bench.tracking import Tracker

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    Tracker(f"sqlite:///{path}")
    return path


@pytest.fixture
def workdir(tmp_path: Path, mlflow_template: Path) -> Path:
    """A bench work directory whose tracking store is a copy of the template."""
    wd = tmp_path / "runs"
    wd.mkdir()
    shutil.copy(mlflow_template, wd / "mlflow.db")
    return wd


@pytest.fixture
def cli(workdir: Path, capsys: pytest.CaptureFixture):
    """Run the CLI in-process against ``workdir``: returns (exit code, stdout, stderr)."""
    from bench.cli import run_cli

    def invoke(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = run_cli(["--workdir", str(workdir), *args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return invoke


def bench_subprocess(*args: str, env_extra: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
    """``bench`` in a fresh interpreter, as a user would run it."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "bench", *args], env=env, **kwargs)


RAY_SMALL = ("--ray-object-store-mb", "80")  # a local Ray cluster's object store, small enough for CI


@pytest.fixture
def ray_tmp(monkeypatch: pytest.MonkeyPatch):
    """A short temp dir for this test's Ray cluster (RAY_TMPDIR: Ray's socket paths must stay
    short), removed afterwards."""
    path = tempfile.mkdtemp(prefix="br", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", path)
    yield path
    shutil.rmtree(path, ignore_errors=True)
