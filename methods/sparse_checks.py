"""What does hold for Sparse-Tuning, which is not the backbone at init (tokens are dropped)."""

from __future__ import annotations

import dataclasses

import torch

from .conformance import CheckResult, tiny_vit
from .sparse_tuning import Selection, SparseTuningConfig, kept, sequence_lengths


def check_backbone_at_full_keep_rate(method, config: SparseTuningConfig) -> CheckResult:
    name = "keep_rate=1 with zero up-projections is the backbone"
    if config.adapter == "code":
        return CheckResult(name, None, "the code wiring re-adds the patch embeddings after block 2")
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = tiny_vit()(x)
        adapted = method.apply(tiny_vit(), dataclasses.replace(config, keep_rate=1.0)).eval()(x)
    diff = float((reference - adapted).abs().max())
    return CheckResult(name, diff <= 1e-5, f"max |logit difference| = {diff:.2e}")


def check_selection_and_fusion() -> CheckResult:
    """A hand-made attention map: the kept tokens and the fused token are known in advance."""
    tokens = torch.arange(12, dtype=torch.float32).reshape(1, 6, 2)  # [CLS] + 5 tokens
    scores = torch.tensor([[0.10, 0.50, 0.05, 0.30, 0.05]])
    out = Selection(scores, kept(6, 0.5), fuse=True)(tokens)  # keep ceil(2.5) = 3: tokens 2, 4, 1
    expected = torch.cat([tokens[:, :1], tokens[:, [2, 4, 1]], 0.05 * tokens[:, 3:4] + 0.05 * tokens[:, 5:6]], dim=1)
    ok = out.shape == (1, 5, 2) and torch.allclose(out, expected)
    return CheckResult(
        "selection keeps the top-K by [CLS] attention and fuses the rest by score",
        ok,
        "top-3 of 5 in descending score, fused = score-weighted sum of the other 2",
    )


def check_token_counts(method, config: SparseTuningConfig) -> CheckResult:
    model = method.apply(tiny_vit(), config).eval()
    seen: list[tuple[int, int]] = []
    for block in model.blocks:
        block.norm1.register_forward_hook(lambda m, a, o: seen.append((o.shape[1], -1)))
        block.norm2.register_forward_hook(lambda m, a, o: seen.__setitem__(-1, (seen[-1][0], o.shape[1])))
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    expected = sequence_lengths(1 + model.patch_embed.num_patches, len(model.blocks), config)
    return CheckResult(
        "tokens per block follow ceil(rho (N - 1)) (+1 fused)",
        seen == expected,
        f"(attention, MLP) tokens: {sorted(set(seen), reverse=True)}",
    )


def sparse_tuning_checks(method, config: SparseTuningConfig) -> list[CheckResult]:
    return [
        check_backbone_at_full_keep_rate(method, config),
        check_selection_and_fusion(),
        check_token_counts(method, config),
    ]
