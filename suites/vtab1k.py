"""VTAB-1K (Zhai et al. 2019) in the NOAH folder format, and its standard preset.

Task folder names follow NOAH's ``data/vtab-source/get_vtab1k.py``; class counts follow
``ZhangYuanhan-AI/NOAH:lib/datasets.py`` and ``OSU-MLB/PETL_Vision:utils/global_var.py``; test
sizes are derived from the ``task_adaptation`` split rules.
"""

from __future__ import annotations

from .base import Preset, Suite, Task, register_suite

# The NOAH-lineage schedule (NOAH, PETL-ViT, V-PETL, PETL_Vision): AdamW lr 1e-3 wd 1e-4,
# batch 64, 100 epochs, 10 warm-up epochs from 1e-6, cosine to 1e-5, drop-path 0.1,
# direct bicubic resize to 224, no augmentation (NOAH configs/LoRA/VTAB/slurm_train_lora_vtab.sh).
VTAB1K_PRESET = Preset(
    name="vtab1k",
    img_size=224,
    interpolation="bicubic",
    lr=1e-3,
    weight_decay=1e-4,
    batch_size=64,
    epochs=100,
    warmup_epochs=10,
    warmup_lr=1e-6,
    min_lr=1e-5,
    drop_path=0.1,
)

_K = {"train800.txt": 800, "val200.txt": 200, "train800val200.txt": 1000}

# (name, group, classes, test size, aliases)
_VTAB = [
    ("cifar", "natural", 100, 10_000, ("cifar100", "cifar-100", "cifar_100")),
    ("caltech101", "natural", 102, 6_084, ("caltech",)),
    ("dtd", "natural", 47, 1_880, ()),
    ("oxford_flowers102", "natural", 102, 6_149, ("flowers102", "oxford_flowers", "flowers")),
    ("oxford_iiit_pet", "natural", 37, 3_669, ("oxford_pet", "oxford_pets", "pets", "pet")),
    ("svhn", "natural", 10, 26_032, ("svhn_cropped",)),
    ("sun397", "natural", 397, 21_750, ("sun",)),
    ("patch_camelyon", "specialized", 2, 32_768, ("camelyon", "pcam")),
    ("eurosat", "specialized", 10, 5_400, ()),
    ("resisc45", "specialized", 45, 6_300, ("resisc",)),
    ("diabetic_retinopathy", "specialized", 5, 42_670, ("retinopathy", "diabetic_retinopathy_detection")),
    ("clevr_count", "structured", 8, 15_000, ("clevr_count_all",)),
    ("clevr_dist", "structured", 6, 15_000, ("clevr_closest_object_distance",)),
    ("dmlab", "structured", 6, 22_735, ()),
    ("kitti", "structured", 4, 711, ("kitti_dist", "kitti_closest_vehicle_distance")),
    ("dsprites_loc", "structured", 16, 73_728, ("dsprites_location", "dsprites_xpos")),
    ("dsprites_ori", "structured", 16, 73_728, ("dsprites_orientation",)),
    ("smallnorb_azi", "structured", 18, 12_150, ("smallnorb_azimuth",)),
    ("smallnorb_ele", "structured", 9, 12_150, ("smallnorb_elevation",)),
]

VTAB1K_TASKS = tuple(
    Task(name=n, group=g, num_classes=c, split_sizes={**_K, "test.txt": t}, aliases=a) for n, g, c, t, a in _VTAB
)

VTAB1K = register_suite(
    Suite(
        name="vtab1k",
        description="VTAB-1K: 19 tasks (Natural 7, Specialized 4, Structured 8), 1,000 training images each",
        preset=VTAB1K_PRESET,
        default_backbone="vit_base_patch16_224.orig_in21k",
        tasks=VTAB1K_TASKS,
        source="a local NOAH-format folder (--data-root), or `bench data fetch --suite vtab1k` (HF Hub XiN0919/VTAB-1k)",
    )
)
