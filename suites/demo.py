"""``demo``: the embedded default, runnable on a CPU in minutes with no download.

Images: scikit-learn's bundled copy of the UCI optical digits (1,797 real 8×8 scans of
handwritten digits, 10 classes). They are written once as a NOAH-format task folder
(train800 / val200 / train800val200 / test = the remaining 797) by a fixed permutation, so the
demo runs through exactly the code path of a real suite.

Backbone: ``vit_demo_tiny`` (4 blocks, width 64, patch 4 at 32 px), a seeded random
initialisation standing in for a pretrained model: no weights exist offline for a ViT this
small. Accuracies from it say nothing about the methods on real backbones.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from .base import Preset, Suite, Task, register_suite

DEMO_TASK = Task(
    name="digits",
    group="demo",
    num_classes=10,
    split_sizes={"train800.txt": 800, "val200.txt": 200, "train800val200.txt": 1000, "test.txt": 797},
)

DEMO_PRESET = Preset(
    name="demo",
    img_size=32,
    interpolation="bicubic",
    lr=1e-2,
    weight_decay=1e-4,
    batch_size=64,
    epochs=20,
    warmup_epochs=2,
    warmup_lr=1e-5,
    min_lr=1e-5,
    drop_path=0.0,
)


def write_digits(root: Path) -> None:
    """Write the digits task folder under ``root`` once (atomically: a crash leaves nothing half-written)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    target = root / DEMO_TASK.name
    if (target / "test.txt").is_file():
        return
    root.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)  # pixel values are 0..16
    order = np.random.default_rng(0).permutation(len(images))
    splits = {"train800": order[:800], "val200": order[800:1000], "test": order[1000:]}
    tmp = Path(tempfile.mkdtemp(prefix=".digits-", dir=root))
    try:
        lines: dict[str, list[str]] = {}
        for split, idx in splits.items():
            (tmp / "images" / split).mkdir(parents=True)
            lines[split] = []
            for k, i in enumerate(idx):
                rel = f"images/{split}/{k:06d}.png"
                Image.fromarray(images[i], mode="L").save(tmp / rel)
                lines[split].append(f"{rel} {int(digits.target[i])}")
        lines["train800val200"] = lines["train800"] + lines["val200"]
        for split, rows in lines.items():
            (tmp / f"{split}.txt").write_text("\n".join(rows) + "\n")
        (tmp / "classes.txt").write_text("\n".join(str(c) for c in range(10)) + "\n")
        try:
            tmp.rename(target)
        except OSError:
            if not (target / "test.txt").is_file():
                raise
            # another process wrote the same folder first (the rename is atomic, so it is whole)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


DEMO = register_suite(
    Suite(
        name="demo",
        description="embedded default: scikit-learn's digits on a tiny random ViT, a couple of minutes on a CPU",
        preset=DEMO_PRESET,
        default_backbone="vit_demo_tiny",
        tasks=(DEMO_TASK,),
        needs_data_root=False,
        prepare=write_digits,
        backbone_pretrained=False,
        source="scikit-learn's bundled digits, written as a NOAH-format folder under the work directory",
    )
)
