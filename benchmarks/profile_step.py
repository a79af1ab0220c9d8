"""Where a method's training step spends GPU time: torch.profiler over a few eager steps.

python benchmarks/profile_step.py --methods lora,karst [--steps 5]
"""

from __future__ import annotations

import argparse

import timm
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

import methods
from methods.base import make_config


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, images: torch.Tensor, labels: torch.Tensor) -> None:
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = F.cross_entropy(model(images).float(), labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--methods", default="lora,karst")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--rows", type=int, default=18)
    args = parser.parse_args()
    device = torch.device("cuda")
    images = torch.randn(64, 3, 224, 224, device=device)
    labels = torch.randint(0, 100, (64,), device=device)
    for name in args.methods.split(","):
        torch.manual_seed(0)
        model = timm.create_model("vit_base_patch16_224", num_classes=100, drop_path_rate=0.1)
        method = methods.get_method(name)
        model = method.apply(model, make_config(method)).to(device).train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, fused=True)

        for _ in range(3):
            train_step(model, opt, images, labels)
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                train_step(model, opt, images, labels)
            torch.cuda.synchronize()
        events = prof.key_averages()
        total = sum(e.device_time_total for e in events if e.device_time_total) / args.steps / 1e3
        print(f"== {name}: ~{total:.1f} ms of kernels per step (sum over ops, may double-count nesting)")
        print(events.table(sort_by="device_time_total", row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
