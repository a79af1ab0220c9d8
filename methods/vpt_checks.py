"""What holds for VPT, which is not the backbone at init: checks on the tiny ViT."""

from __future__ import annotations

import math

import torch

from .conformance import ATOL, CheckResult, tiny_vit
from .vpt import VPTConfig, init_range, patch_size_of


def _adapted(method, config: VPTConfig) -> torch.nn.Module:
    model = tiny_vit()
    torch.manual_seed(0)
    return method.apply(model, config).eval()


def _inputs() -> torch.Tensor:
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _norm_input_tokens(model: torch.nn.Module) -> int:
    seen: list[int] = []
    handle = model.norm.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1]))
    with torch.no_grad():
        model(_inputs())
    handle.remove()
    return seen[0]


def check_prompts_dropped_before_head(method, config: VPTConfig) -> CheckResult:
    plain, adapted = _norm_input_tokens(tiny_vit()), _norm_input_tokens(_adapted(method, config))
    return CheckResult(
        "prompts are dropped before the final norm and the head",
        plain == adapted,
        f"the final norm sees {adapted} tokens; the backbone's sees {plain}",
    )


def check_prompt_order_does_not_matter(method, config: VPTConfig) -> CheckResult:
    model = _adapted(method, config)
    x = _inputs()
    with torch.no_grad():
        before = model(x)
        model.vpt.prompts.copy_(model.vpt.prompts.flip(1))  # reverse the prompts of every layer
        after = model(x)
    diff = float((before - after).abs().max())
    changed = bool(config.num_tokens > 1)
    return CheckResult(
        "prompts carry no position: reversing their order leaves the logits unchanged",
        diff <= ATOL and changed or config.num_tokens == 1,
        f"max |logit difference| = {diff:.2e}",
    )


def check_official_init(method, config: VPTConfig) -> CheckResult:
    model = _adapted(method, config)
    bound = init_range(patch_size_of(model), model.embed_dim)
    prompts = model.vpt.prompts.detach()
    inside = float(prompts.abs().max()) <= bound
    std, expected = float(prompts.std()), bound / math.sqrt(3)  # the std of U(-v, v)
    return CheckResult(
        "prompts start uniform in [-v, v], v = sqrt(6 / (3 p² + d))",
        inside and abs(std - expected) <= 0.2 * expected,
        f"v = {bound:.4f}; max |prompt| = {float(prompts.abs().max()):.4f}; std {std:.4f} (uniform: {expected:.4f})",
    )


def vpt_checks(method, config: VPTConfig) -> list[CheckResult]:
    return [
        check_prompts_dropped_before_head(method, config),
        check_prompt_order_does_not_matter(method, config),
        check_official_init(method, config),
    ]
