"""How much the numeric mode of a training step costs, compiled, in one process (ViT-B/16, batch 64).

Modes:
* ``autocast``: fp32 model under bf16 autocast (the field's usual mixed precision);
* ``autocast_frozen_bf16``: the same with frozen weights stored in bf16 (``bench.train``'s path);
* ``bf16_master``: the whole model in bf16 (activations bf16 end to end, LayerNorm included),
  trainable tensors updated through fp32 master copies (mixed precision "O2").

Prints steady-state images/s per (method, mode) and, with ``--profile``, the top GPU kernels of
one mode's step. Needs no MLflow/Optuna.

    PYTHONPATH=. python benchmarks/precision_modes.py --methods lora,karst --profile lora:autocast_frozen_bf16
"""

from __future__ import annotations

import argparse
import json
import time

import timm
import torch
import torch.nn.functional as F

import methods
from methods.base import make_config


def build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", num_classes=100, drop_path_rate=0.1)
    method = methods.get_method(name)
    return method.apply(model, make_config(method)).cuda()


def make_step(model: torch.nn.Module, mode: str):
    trainable = [p for p in model.parameters() if p.requires_grad]
    if mode in ("autocast", "autocast_frozen_bf16"):
        if mode == "autocast_frozen_bf16":
            for p in model.parameters():
                if not p.requires_grad:
                    p.data = p.data.to(torch.bfloat16)
        opt = torch.optim.AdamW(trainable, lr=1e-3, fused=True)
        fwd = torch.compile(model)

        def step(x, y):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = F.cross_entropy(fwd(x).float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            return loss

        return step
    if mode == "bf16_master":
        master = [p.detach().float().clone().requires_grad_(True) for p in trainable]
        model.to(torch.bfloat16)
        opt = torch.optim.AdamW(master, lr=1e-3, fused=True)
        fwd = torch.compile(model)

        def step(x, y):
            loss = F.cross_entropy(fwd(x.to(torch.bfloat16)).float(), y)
            loss.backward()
            for m, p in zip(master, trainable, strict=True):
                m.grad = p.grad.float()
                p.grad = None
            opt.step()
            torch._foreach_copy_([p.data for p in trainable], master)
            return loss

        return step
    raise ValueError(mode)


def measure(name: str, mode: str, steps: int, profile: bool) -> dict:
    model = build(name)
    step = make_step(model, mode)
    x = torch.randn(64, 3, 224, 224, device="cuda")
    y = torch.randint(0, 100, (64,), device="cuda")
    t0 = time.perf_counter()
    for _ in range(3):
        step(x, y)
    torch.cuda.synchronize()
    warm = time.perf_counter() - t0
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    row = {
        "method": name,
        "mode": mode,
        "img_s": 64 * steps / dt,
        "ms_per_step": 1000 * dt / steps,
        "warmup_s": warm,
        "peak_gb": torch.cuda.max_memory_allocated() / 2**30,
    }
    if profile:
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile as prof

        with prof(activities=[ProfilerActivity.CUDA]) as p:
            for _ in range(3):
                step(x, y)
            torch.cuda.synchronize()
        table = p.key_averages().table(sort_by="cuda_time_total", row_limit=25, max_name_column_width=70)
        row["profile"] = table
        print(table, flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default="lora,karst")
    ap.add_argument("--modes", default="autocast,autocast_frozen_bf16,bf16_master")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--profile", default="", help="method:mode pairs to profile, comma-separated")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    wanted = set(filter(None, args.profile.split(",")))
    rows = []
    for name in args.methods.split(","):
        for mode in args.modes.split(","):
            row = measure(name, mode, args.steps, f"{name}:{mode}" in wanted)
            print(json.dumps({k: v for k, v in row.items() if k != "profile"}), flush=True)
            rows.append(row)
            torch._dynamo.reset()
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
