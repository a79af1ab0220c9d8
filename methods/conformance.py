"""Conformance checks every method must pass, on a tiny timm ViT (and a tiny Swin for the methods
that support Swin) with random weights.

The checks catch the fidelity bugs the field's code ships with:
an adapter init overwritten so the model no longer starts at the backbone, factors that never
receive a gradient, a "frozen" backbone that moves, parameter counts that do not match the
formula, merges that change the function, and trainable state that cannot be restored.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load, save
from timm.models.swin_transformer import SwinTransformer
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from .base import (
    Method,
    backbone_spec_of,
    head_parameters,
    trainable_params_excluding_head,
    trainable_state_dict,
    unique_parameters,
)

TINY_VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 64, "depth": 12, "num_heads": 4, "num_classes": 5}
# Two stages (widths 32 and 64): shifted 4 x 4 windows on an 8 x 8 grid, a patch merging, then one
# 4 x 4 window: every Swin code path, at widths KARST's f = 8 divides.
TINY_SWIN = {
    "img_size": 32,
    "patch_size": 4,
    "embed_dim": 32,
    "depths": (2, 2),
    "num_heads": (2, 4),
    "window_size": 4,
    "num_classes": 5,
}
ATOL = 1e-5


@dataclass
class CheckResult:
    name: str
    passed: bool | None  # None: not applicable to this method
    detail: str


def _pretrained_like_biases(model: nn.Module, seed: int) -> nn.Module:
    """Small random biases on the blocks' linears, as a trained backbone has: timm initialises them
    to 0, and a method that scales a bias (GLoRA's D) would then get no gradient at all."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.Linear) and module.bias is not None and not name.startswith("head"):
                module.bias.copy_(0.02 * torch.randn(module.bias.shape, generator=g))
    return model


def tiny_vit(seed: int = 0, **overrides: Any) -> VisionTransformer:
    """A 12-block, width-64 ViT at 32 px (16 patches): every block index a method may target exists."""
    torch.manual_seed(seed)
    model = VisionTransformer(**{**TINY_VIT, **overrides})
    return _pretrained_like_biases(model, seed).eval()


def tiny_swin(seed: int = 0, **overrides: Any) -> SwinTransformer:
    """A two-stage Swin (widths 32, 64; 2 blocks each) at 32 px, patch 4, 4 x 4 windows (shifted in stage 0)."""
    torch.manual_seed(seed)
    model = SwinTransformer(**{**TINY_SWIN, **overrides})
    return _pretrained_like_biases(model, seed).eval()


TINY = {"vit": tiny_vit, "swin": tiny_swin}


def _inputs(n: int = 4, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, TINY_VIT["img_size"], TINY_VIT["img_size"], generator=g)


def _adapted(method: Method, config: Any, adapter_seed: int = 0, family: str = "vit") -> nn.Module:
    model = TINY[family]()
    torch.manual_seed(adapter_seed)
    return method.apply(model, config).eval()


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def check_identity_at_init(method: Method, config: Any, family: str = "vit") -> CheckResult:
    name = "identity at init"
    if not method.identity_at_init:
        return CheckResult(name, None, "the method declares it does not start at the backbone")
    x = _inputs()
    with torch.no_grad():
        reference = method.reference(TINY[family]()).eval()(x)
        adapted = _adapted(method, config, family=family)(x)
    diff = _max_diff(reference, adapted)
    return CheckResult(name, diff <= ATOL, f"max |logit difference| = {diff:.2e} (tolerance {ATOL:.0e})")


def _train_steps(model: nn.Module, steps: int, seen: dict[int, bool]) -> None:
    params = [p for p in unique_parameters(model.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    x, y = _inputs(8, seed=2), torch.arange(8) % TINY_VIT["num_classes"]
    model.train()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        for p in params:
            if p.grad is not None and bool(p.grad.abs().sum() > 0):
                seen[id(p)] = True
        opt.step()
    model.eval()


def check_gradients_and_frozen(method: Method, config: Any, family: str = "vit") -> list[CheckResult]:
    model = _adapted(method, config, family=family)
    named = dict(model.named_parameters())
    trainable = {n: p for n, p in named.items() if p.requires_grad}
    frozen = {n: p.detach().clone() for n, p in named.items() if not p.requires_grad}
    seen: dict[int, bool] = {}
    _train_steps(model, 2, seen)
    dead = [n for n, p in trainable.items() if not seen.get(id(p))]
    head_ok = all(p.requires_grad for p in head_parameters(model))
    grad = CheckResult(
        "every trainable tensor gets a gradient within two steps",
        not dead and head_ok and bool(trainable),
        (
            f"no gradient: {', '.join(dead[:5])}"
            if dead
            else f"{len(trainable)} trainable tensors all received gradients"
        )
        + ("" if head_ok else "; the head is not trainable"),
    )
    moved = [n for n, before in frozen.items() if not torch.equal(before, named[n].detach())]
    frozen_check = CheckResult(
        "frozen backbone is bit-identical after optimiser steps",
        not moved,
        f"changed: {', '.join(moved[:5])}" if moved else f"{len(frozen)} frozen tensors unchanged",
    )
    return [grad, frozen_check]


def check_count(method: Method, config: Any, family: str = "vit") -> CheckResult:
    spec = backbone_spec_of(TINY[family](), f"tiny_{family}")
    formula = method.count(spec, config)
    built = trainable_params_excluding_head(_adapted(method, config, family=family))
    return CheckResult(
        "count() equals the built model (head excluded)",
        formula == built,
        f"count() = {formula:,}, built model = {built:,}",
    )


def _perturb_trainable(model: nn.Module, seed: int = 3) -> None:
    """Move every trainable tensor away from its init, so zero-initialised factors matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in unique_parameters(model.parameters()):
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))


def merge_tolerance(outputs: torch.Tensor) -> float:
    """How far merged outputs may move from ``outputs`` in float32: the folds reorder sums."""
    return 1e-4 * max(1.0, float(outputs.abs().max()))


def check_merge(method: Method, config: Any, family: str = "vit") -> CheckResult:
    name = "merge() preserves outputs and leaves a plain backbone"
    if not method.mergeable:
        return CheckResult(name, None, "the method is not re-parameterisable")
    model = _adapted(method, config, family=family)
    _perturb_trainable(model)
    x = _inputs()
    with torch.no_grad():
        before = model(x)
        merged = method.merge(copy.deepcopy(model)).eval()
        after = merged(x)
    diff = _max_diff(before, after)
    tolerance = merge_tolerance(before)
    plain = TINY[family]()
    same_keys = set(merged.state_dict()) == set(plain.state_dict())
    same_count = sum(p.numel() for p in merged.parameters()) == sum(p.numel() for p in plain.parameters())
    return CheckResult(
        name,
        diff <= tolerance and same_keys and same_count,
        f"max |logit difference| = {diff:.2e}; merged state dict "
        + ("matches" if same_keys and same_count else "differs from")
        + " the plain backbone's",
    )


def check_state_round_trip(method: Method, config: Any, family: str = "vit") -> CheckResult:
    model = _adapted(method, config, family=family)
    _perturb_trainable(model)
    x = _inputs()
    with torch.no_grad():
        expected = model(x)
    blob = save({k: v.contiguous() for k, v in trainable_state_dict(model).items()})
    restored = _adapted(method, config, adapter_seed=123, family=family)  # other adapter init, same backbone
    missing = set(trainable_state_dict(restored)) - set(load(blob))
    restored.load_state_dict(load(blob), strict=False)
    with torch.no_grad():
        diff = _max_diff(expected, restored.eval()(x))
    return CheckResult(
        "trainable state round-trips through safetensors",
        not missing and diff <= ATOL,
        f"missing after load: {sorted(missing)[:3]}" if missing else f"max |logit difference| = {diff:.2e}",
    )


CHECKS: list[Callable[..., CheckResult | list[CheckResult]]] = [
    check_identity_at_init,
    check_gradients_and_frozen,
    check_count,
    check_merge,
    check_state_round_trip,
]


def run_checks(method: Method, config: Any, family: str = "vit") -> list[CheckResult]:
    """Every check on the tiny backbone of ``family`` (``vit`` or ``swin``); the method's own extra
    checks run on the ViT. A family the method does not support raises its one-line refusal."""
    method.check_backbone(backbone_spec_of(TINY[family](), f"tiny_{family}"))
    results: list[CheckResult] = []
    for check in CHECKS:
        try:
            r = check(method, config, family=family)
        except Exception as exc:  # a crashing check is a failed check, with its reason
            r = CheckResult(
                check.__name__.removeprefix("check_").replace("_", " "),
                False,
                f"raised {type(exc).__name__}: {exc}",
            )
        results.extend(r if isinstance(r, list) else [r])
    try:
        if family == "vit":
            results.extend(method.extra_checks(config))
    except Exception as exc:
        results.append(CheckResult("method-specific checks", False, f"raised {type(exc).__name__}: {exc}"))
    return results


def saved_activation_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd keeps for backward in one training forward (parameters excluded).

    This is the part of training memory a method controls: DTL's claim is that it keeps far less
    than LoRA because most of the backbone runs without a graph.
    """
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = max(seen.get(ptr, 0), t.untyped_storage().nbytes())
        return t

    model.train()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    del out
    return sum(seen.values())
