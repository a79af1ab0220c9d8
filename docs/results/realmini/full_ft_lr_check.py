"""CPU proxy for the full fine-tuning anomaly on realmini cifar10: is AdamW lr 1e-3 the cause?

The GPU sweep gave `full` 36.9 % against the linear probe's 64.3 %. This trains full fine-tuning
on the same checkpoint and data through bench's own `train_run`, at a reduced scale a CPU can
afford (112 px, 5 epochs), once at the preset's lr 1e-3 and once at 1e-4, and scores test once
at the end. A proxy: it shows the direction, not the GPU numbers.

    PYTHONPATH=. python docs/results/realmini/full_ft_lr_check.py --data-root DIR \
        --checkpoint vit_s14_imgfocus.safetensors
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import methods
import suites
from bench.backbone import build_backbone, normalization, resolve_weights
from bench.cache import load_split
from bench.train import SplitData, train_run
from methods.base import make_config


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-root", type=Path, required=True)
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--img-size", type=int, default=112)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--lrs", default="1e-3,1e-4")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_num_threads(2)
    backbone = "vit_small_patch14_dinov2"
    suite = suites.get_suite("folder")
    stage = suites.get_stage("final")
    (task,) = suites.resolve_tasks(suite, args.data_root, ["cifar10"], stage)
    train_entries, eval_entries = task.stage_lists(stage)
    cache = Path("runs/cache/images")
    train = SplitData(*load_split(train_entries, args.img_size, "bicubic", cache))
    test = SplitData(*load_split(eval_entries, args.img_size, "bicubic", cache))
    weights = resolve_weights(backbone, args.checkpoint, pretrained=True)
    rows = []
    for lr in [float(x) for x in args.lrs.split(",")]:
        preset = suite.preset.with_overrides(
            img_size=args.img_size, epochs=args.epochs, warmup_epochs=1, lr=lr, min_lr=lr / 100
        )
        model = build_backbone(
            backbone, num_classes=10, img_size=args.img_size, drop_path=preset.drop_path, weights=weights, seed=0
        )
        mean, std = normalization(model)
        method = methods.get_method("full")
        model = method.apply(model, make_config(method))
        result = train_run(
            model, method, preset, stage, train, test, seed=0, device=torch.device("cpu"), mean=mean, std=std
        )
        row = {"lr": lr, "test_acc": result.eval_acc, "final_train_loss": result.epochs[-1].train_loss}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps({"img_size": args.img_size, "epochs": args.epochs, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
