"""Training and evaluation throughput of the methods (and KARST's computation variants), in one process.

ViT-B/16 at 224, batch 64, bf16 autocast, images already on the GPU, fused AdamW, random weights
(speed does not depend on them). Each variant trains eager and under torch.compile; evaluation
runs the deployed model (merged where the method can merge) at batch 512. Run on a GPU:

    python benchmarks/method_speed.py [--variants lora,karst,...] [--steps 30] [--out results.json]

A variant is a method name, optionally ``name:mode`` (KARST's ``structured``/``materialize``) and
``@route`` (KARST's ``g``/``k``, forced on every layer).
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


def build(variant: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", num_classes=100, drop_path_rate=0.1)
    if variant == "full":
        return methods.get_method("full").apply(model, make_config(methods.get_method("full")))
    spec, _, route = variant.partition("@")  # e.g. karst:structured@g forces one route everywhere
    name, _, mode = spec.partition(":")
    method = methods.get_method(name)
    overrides = {"mode": mode} if mode else {}
    model = method.apply(model, make_config(method, overrides))
    if route:
        from methods.karst import KarstLinear

        for module in model.modules():
            if isinstance(module, KarstLinear):
                module.route = route
    return model


def train_throughput(model: torch.nn.Module, steps: int, batch: int, compiled: bool) -> dict:
    """Images/s of full training steps; peak GPU memory of the timed steps."""
    device = torch.device("cuda")
    model = model.to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3, fused=True)
    images = torch.randint(0, 256, (1024, 3, 224, 224), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 100, (1024,), device=device)
    fwd = torch.compile(model) if compiled else model

    def step(i: int) -> None:
        idx = torch.arange(i * batch, (i + 1) * batch, device=device) % 1024
        x = images[idx].float().div_(127.5).sub_(1.0)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = F.cross_entropy(fwd(x).float(), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t0 = time.perf_counter()
    for i in range(3):  # warm-up (and compilation)
        step(i)
    torch.cuda.synchronize()
    warm = time.perf_counter() - t0
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"images_per_s": steps * batch / dt, "peak_gb": torch.cuda.max_memory_allocated() / 2**30, "warmup_s": warm}


@torch.inference_mode()
def eval_throughput(model: torch.nn.Module, batch: int = 512, steps: int = 20) -> float:
    model = model.cuda().eval()
    x = torch.randn(batch, 3, 224, 224, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        for _ in range(3):
            model(x)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            model(x)
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument(
        "--variants", default="lora,karst:structured,karst:structured@g,karst:structured@k,karst:materialize,full"
    )
    parser.add_argument("--eval", default="lora,karst,kadaptation,dtl,sparse_tuning", help="methods timed at inference")
    parser.add_argument("--out", default=None)
    parser.add_argument("--modes", choices=["both", "eager", "compiled"], default="both")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = True
    rows = []
    for variant in args.variants.split(","):
        for compiled in (False, True) if args.modes == "both" else (args.modes == "compiled",):
            torch._dynamo.reset()
            r = train_throughput(build(variant), args.steps, args.batch, compiled)
            rows.append({"variant": variant, "compiled": compiled, **r})
            print(json.dumps(rows[-1]), flush=True)
    ev = {"backbone": eval_throughput(build("linear"))}
    if args.eval:
        for name in args.eval.split(","):
            model = build(name)
            method = methods.get_method(name)
            ev[name] = eval_throughput(method.merge(model) if method.mergeable else model)
    print(json.dumps(ev), flush=True)
    result = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "train": rows, "eval": ev}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
