"""Throughput of the real training path (``bench.train.train_run``) with and without its GPU speed-ups.

For each method, in one process, each of ``bench.train.COMPILE_MODES`` (``--modes``): ``eager``
(fp32 frozen weights under bf16 autocast: the earlier path) and the compiled modes (frozen
weights held in bf16; ``model`` compiles the model alone, ``step`` normalisation + model + loss
as one graph, ``step-cudagraphs`` the same replayed as CUDA graphs). Steady state is the mean of
the epochs after the first (which includes compilation); the first epoch's time is reported too. Then, with
``--full-run``, one whole VTAB-1K-sized ``final`` run (1,000 images x 100 epochs, then a
10,000-image test split once), timed from model build and the data-cache load to the last
prediction.

    PYTHONPATH=. python benchmarks/train_path_speed.py --methods lora,karst --modes model,step,step-cudagraphs

Needs no MLflow or Optuna (it runs on GPU machines that lack them). Random weights: speed does
not depend on them.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

import methods
from bench.backbone import Weights, build_backbone, normalization
from bench.train import COMPILE_MODES, CUDA_COMPILE_MODE, EpochMetrics, SplitData, train_run
from methods.base import make_config
from suites.base import STAGES
from suites.vtab1k import VTAB1K_PRESET


def _data(n: int, classes: int, size: int, seed: int) -> SplitData:
    g = torch.Generator().manual_seed(seed)
    return SplitData(
        torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g),
        torch.randint(0, classes, (n,), generator=g),
    )


def _cached(split: SplitData, folder: Path, name: str) -> Path:
    """The split written as a bench data-cache entry (safetensors), as ``bench.cache`` stores it."""
    path = folder / f"{name}.safetensors"
    save_file({"images": split.images, "labels": split.labels}, str(path))
    return path


def _load(path: Path) -> SplitData:
    tensors = load_file(str(path))
    return SplitData(tensors["images"], tensors["labels"])


def one(method_name: str, *, epochs: int, n_train: int, n_eval: int, mode: str, backbone: str) -> dict:
    device = torch.device("cuda")
    preset = VTAB1K_PRESET.with_overrides(epochs=epochs, warmup_epochs=min(1, epochs - 1))
    # The images are generated and written as data-cache entries first; the timed span loads them
    # from there, as a run with a warm cache does (generating 11,000 random images takes seconds).
    folder = Path(tempfile.mkdtemp(prefix="train-path-"))
    train_file = _cached(_data(n_train, 100, 224, 0), folder, "train")
    eval_file = _cached(_data(n_eval, 100, 224, 1), folder, "eval")
    t0 = time.perf_counter()
    weights = Weights(None, "random-init:seed0")
    model = build_backbone(backbone, num_classes=100, img_size=224, drop_path=0.1, weights=weights, seed=0)
    mean, std = normalization(model)
    name, _, karst_mode = method_name.partition(":")  # "karst:fold": a KARST training mode
    method = methods.get_method(name)
    model = method.apply(model, make_config(method, {"mode": karst_mode} if karst_mode else {}))
    stamps: list[float] = []

    def on_epoch(m: EpochMetrics) -> None:
        torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    train, evaluate = _load(train_file), _load(eval_file)
    torch.cuda.synchronize()
    start = time.perf_counter()
    result = train_run(
        model,
        method,
        preset,
        STAGES["final"],
        train,
        evaluate,
        seed=0,
        device=device,
        mean=mean,
        std=std,
        on_epoch=on_epoch,
        compile_mode=mode,
        frozen_bf16=mode != "eager",
    )
    wall = time.perf_counter() - t0
    shutil.rmtree(folder, ignore_errors=True)
    steady = n_train * (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) >= 2 else float("nan")
    return {
        "method": method_name,
        "backbone": backbone,
        "mode": mode,
        "epochs": epochs,
        "n_train": n_train,
        "first_epoch_s": stamps[0] - start,
        "steady_train_img_s": steady,
        "merged_eval_img_s": result.infer_images_per_s,
        "merged": result.merged,
        "peak_mem_mb": result.peak_memory_mb,
        "wall_s_build_to_last_prediction": wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default="lora,karst", help="method names; karst:MODE picks KARST's training mode")
    ap.add_argument("--backbone", default="vit_base_patch16_224")
    ap.add_argument("--steps", type=int, default=24, help="full batches per epoch in the throughput runs")
    ap.add_argument("--epochs", type=int, default=4, help="epochs per throughput run (the first is warm-up)")
    ap.add_argument("--modes", default=",".join(COMPILE_MODES))
    ap.add_argument("--full-run", default="", help="methods to time a whole 1,000 x 100-epoch final run for")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    rows = []
    n = 64 * args.steps
    for name in args.methods.split(","):
        for mode in args.modes.split(","):
            row = one(name, epochs=args.epochs, n_train=n, n_eval=4096, mode=mode, backbone=args.backbone)
            rows.append(row)
            print(json.dumps(row), flush=True)
    for name in filter(None, args.full_run.split(",")):
        row = one(name, epochs=100, n_train=1000, n_eval=10_000, mode=CUDA_COMPILE_MODE, backbone=args.backbone)
        row["kind"] = "full_final_run"
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
