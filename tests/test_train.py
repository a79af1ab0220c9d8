"""The learning-rate schedule and the decoded-image cache."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.cache import load_split
from bench.train import lr_at
from suites.lists import read_list
from tests.conftest import write_task

SCHEDULE = {"total_steps": 1600, "warmup_steps": 160, "base_lr": 1e-3, "warmup_lr": 1e-6, "min_lr": 1e-5}


def test_noah_schedule_warms_up_then_decays_by_cosine():
    lrs = [lr_at(s, **SCHEDULE) for s in range(1600)]
    assert lrs[0] == pytest.approx(1e-6)
    assert lrs[80] == pytest.approx(1e-6 + (1e-3 - 1e-6) / 2)  # linear warm-up
    assert max(lrs) == pytest.approx(1e-3) and lrs.index(max(lrs)) == 160
    assert lrs[160 + 720] == pytest.approx((1e-3 + 1e-5) / 2, rel=1e-3)  # half-way through the cosine
    assert lrs[-1] == pytest.approx(1e-5, abs=1e-8)
    assert all(a >= b for a, b in zip(lrs[160:], lrs[161:], strict=False))


def test_cache_decodes_once_and_notices_edits(tmp_path: Path):
    task = write_task(tmp_path / "t", img_size=12)
    entries = read_list(task, "test.txt", 3)
    cache = tmp_path / "cache"
    images, labels = load_split(entries, 16, "bicubic", cache)
    assert images.shape == (15, 3, 16, 16) and str(images.dtype) == "torch.uint8"
    assert labels.tolist()[:4] == [0, 1, 2, 0]
    [entry] = list(cache.iterdir())
    again, _ = load_split(entries, 16, "bicubic", cache)
    assert (again == images).all() and list(cache.iterdir()) == [entry]  # served from the cache

    path = task / "images/test/000000.png"
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(path)
    os.utime(path, ns=(1, 1))  # a different mtime, even on coarse clocks
    edited, _ = load_split(entries, 16, "bicubic", cache)
    assert int(edited[0].sum()) == 0 and len(list(cache.iterdir())) == 2
