"""Cost of the few-shot training augmentation on the GPU, and whether CPU and GPU draw the same crops.

Times, in one process: the augmentation alone (RandomResizedCrop 256->224 + flip + RandAugment
rand-m9-mstd0.5-inc1 on a uint8 batch of 64), and LoRA training steps on ViT-B/16 (random weights,
bf16 autocast, fused AdamW, images on the GPU) without augmentation (224 px cache, the VTAB path)
and with it (256 px cache, the few-shot path). The augmentation alone is bound by the host issuing
its ~200 small kernels (about 10 ms a batch on an H100 machine); inside training that work
overlaps the model's GPU time, so the training ratio is the figure that matters. Run on a GPU:

    python benchmarks/augment_speed.py [--steps 40] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import time

import timm
import torch
import torch.nn.functional as F

import methods
from bench.augment import DeviceAugment
from methods.base import make_config

SPEC = "rrc+flip+rand-m9-mstd0.5-inc1"


def timed(fn, steps: int) -> float:
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = torch.device("cuda")
    gen = torch.Generator().manual_seed(0)
    cache256 = torch.randint(0, 256, (1024, 3, 256, 256), dtype=torch.uint8, generator=gen).to(device)
    cache224 = cache256[:, :, 16:240, 16:240].contiguous()
    labels = torch.randint(0, 100, (1024,), device=device)

    # CPU and GPU: same random draws (one CPU generator), same crops; pixels differ only by resampling arithmetic
    batch = cache256[:16]
    on_gpu = DeviceAugment.from_spec(SPEC, 224, seed=7, device=device)(batch).cpu()
    on_cpu = DeviceAugment.from_spec(SPEC, 224, seed=7, device=torch.device("cpu"))(batch.cpu())
    diff = (on_gpu - on_cpu).abs()
    same = {"identical_pixels": float((diff == 0).float().mean()), "max_abs_diff": float(diff.max())}

    augment = DeviceAugment.from_spec(SPEC, 224, seed=0, device=device)
    idx = torch.arange(args.batch, device=device)
    augment_ms = 1e3 * timed(lambda: augment(cache256[idx]), args.steps)

    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", num_classes=100, drop_path_rate=0.1)
    lora = methods.get_method("lora")
    model = lora.apply(model, make_config(lora)).to(device).train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, fused=True)
    perm = torch.randperm(1024, device=device)
    state = {"i": 0}

    def step(images: torch.Tensor, aug) -> None:
        i = state["i"] = (state["i"] + 1) % (1024 // args.batch)
        b = perm[i * args.batch : (i + 1) * args.batch]
        x = aug(images[b]) if aug is not None else images[b].float()
        x = x.div(127.5).sub(1.0)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x).float(), labels[b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    plain = timed(lambda: step(cache224, None), args.steps)
    augmented = timed(lambda: step(cache256, augment), args.steps)
    result = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "batch": args.batch,
        "cpu_vs_gpu": same,
        "augment_ms_per_batch": round(augment_ms, 3),
        "lora_vitb16_train_img_s": {
            "no_augmentation": round(args.batch / plain, 1),
            "with_augmentation": round(args.batch / augmented, 1),
            "ratio": round(plain / augmented, 3),
        },
    }
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
