"""KAdaptation and DTL: conformance, counts, the official-code bugs fixed, DTL's wiring and memory."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from bench.backbone import backbone_spec
from methods.base import MethodError, make_config
from methods.conformance import run_checks, saved_activation_bytes, tiny_vit
from methods.dtl import DTL, DTLConfig, dtl_forward
from methods.kadaptation import KAdaptation, KAdaptationConfig, KAdaptationQKV
from methods.lora import Lora

KAD, DTL_ = KAdaptation(), DTL()


@pytest.mark.parametrize(
    ("method", "overrides"),
    [(KAD, {"rank": 2, "n": 16}), (DTL_, {"fusion_size": 3}), (DTL_, {"fusion_size": 4})],  # defaults: test_conformance
)
def test_conformance(method, overrides):
    results = run_checks(method, make_config(method, overrides))
    assert [(r.name, r.detail) for r in results if r.passed is False] == []
    assert sum(r.passed is None for r in results) == (0 if method.mergeable else 1)


@pytest.mark.parametrize(
    ("name", "settings", "expected"),
    [
        ("kadaptation", [], 50_176),  # the official code's count
        ("kadaptation", ["rank=2"], 12 * (2 * 32 * 2 * 24 * 2 + 768) + 4 * 32 * 32),
        ("dtl", [], 36_864),
        ("dtl", ["fusion_size=3"], 43_776),
        ("dtl", ["fusion_size=4"], 49_152),
        ("dtl", ["fusion_size=5"], 56_064),
    ],
)
def test_counts_on_vit_b16(cli, name, settings, expected):
    args = [a for s in settings for a in ("--set", s)]
    code, out, _ = cli("methods", "info", name, "--backbone", "vit_base_patch16_224", *args, "--json")
    info = json.loads(out)
    assert code == 0 and info["trainable_params"] == expected == info["trainable_params_built"]


# -- KAdaptation: the three bugs of the official code, each with a test that fails on it ------------


def _kad_model(**overrides) -> nn.Module:
    return KAD.apply(tiny_vit(), KAdaptationConfig(dropout=0.0, **overrides))


def _kronecker_grads(model: nn.Module) -> dict[str, float]:
    x, y = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.arange(4)
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    return {
        n: float(p.grad.abs().max())
        for n, p in model.named_parameters()
        if p.requires_grad and ("fast_" in n or n.startswith("kadaptation_rules"))
    }


def _assert_every_kronecker_factor_learns(model: nn.Module) -> None:
    """After one optimiser step, every Kronecker factor (fast and shared) has a non-zero gradient."""
    _kronecker_grads(model)
    torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2).step()
    after = _kronecker_grads(model)
    assert len(after) == 12 * 2 + 2  # fast U and V of 12 layers, and the shared rules p and q
    assert min(after.values()) > 0, {k: v for k, v in after.items() if v == 0}


def test_kadaptation_factors_learn_after_one_step():
    _assert_every_kronecker_factor_learns(_kad_model())


def test_official_both_zero_init_would_fail_that_test():
    model = _kad_model()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, KAdaptationQKV):
                module.fast_u.zero_()  # the official "glorot-uniform" branch zeroes u and v
    with pytest.raises(AssertionError):
        _assert_every_kronecker_factor_learns(model)


def _qkv_out(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return model.blocks[0].attn.qkv(x)


def test_v_update_uses_its_own_factors():
    model = _kad_model()
    layer = model.blocks[0].attn.qkv
    x = torch.randn(2, 5, 64)
    before = _qkv_out(model, x)
    with torch.no_grad():
        layer.fast_v[1].normal_()  # the v factors only
    changed = (_qkv_out(model, x) - before).abs().amax(dim=(0, 1)).reshape(3, 64).amax(dim=1)
    assert changed[0] == 0 and changed[1] == 0 and changed[2] > 0  # only v moves
    before = _qkv_out(model, x)
    with torch.no_grad():
        layer.fast_v[0].normal_()  # the q factors only (the official code builds v from these too)
    changed = (_qkv_out(model, x) - before).abs().amax(dim=(0, 1)).reshape(3, 64).amax(dim=1)
    assert changed[0] > 0 and changed[1] == 0 and changed[2] == 0  # only q moves


def _official_layout_delta(delta: torch.Tensor, heads: int) -> torch.Tensor:
    """The official reshape: a (seq, batch, C) delta viewed as (batch * heads, seq, C / heads)."""
    s, b, c = delta.shape
    return delta.reshape(b * heads, s, c // heads)


def test_update_is_per_token_and_batch_permutation_equivariant():
    model = _kad_model()
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(5, 3, 32, 32)
    perm = torch.tensor([3, 0, 4, 1, 2])
    with torch.no_grad():
        assert torch.allclose(model(x[perm]), model(x)[perm], atol=1e-5)
    # the official layout is not: the same per-token deltas land on other images' rows
    delta = torch.randn(7, 5, 64)  # (seq, batch, C)
    correct = delta.permute(1, 0, 2).reshape(5, 7, 4, 16).permute(0, 2, 1, 3).reshape(20, 7, 16)
    assert not torch.equal(_official_layout_delta(delta, 4), correct)


def test_kadaptation_rules_are_shared_and_merge_folds_the_bias():
    model = _kad_model()
    layers = [b.attn.qkv for b in model.blocks]
    assert all(layer._rules is model.kadaptation_rules for layer in layers)
    assert sum(".p" in n or ".q" in n for n, _ in model.named_parameters() if "rules" in n) == 2
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model.eval()(x)
        after = KAD.merge(model)(x)
    assert torch.allclose(before, after, atol=1e-5) and not hasattr(model, "kadaptation_rules")


def test_kadaptation_for_budget_and_bad_n():
    spec = backbone_spec("vit_base_patch16_224")
    assert (KAD.for_budget(spec, 50_176).n, KAD.for_budget(spec, 50_176).rank) == (32, 1)
    cfg = KAD.for_budget(spec, 300_000)
    assert abs(KAD.count(spec, cfg) - 300_000) <= 15_000
    with pytest.raises(MethodError, match="n=7 does not divide the width 768"):
        KAD.count(spec, KAdaptationConfig(n=7))


# -- DTL ------------------------------------------------------------------------------------------


def _dtl_model(**overrides) -> nn.Module:
    model = DTL_.apply(tiny_vit(), DTLConfig(**overrides))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith("dtl.") and name.endswith(".B"):
                p.normal_(0, 0.5)
    return model


def _block_inputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    seen = []
    hooks = [b.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone())) for b in model.blocks]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


def test_dtl_first_changes_the_stream_after_block_6():
    x = torch.randn(2, 3, 32, 32)
    plain = _block_inputs(tiny_vit(), x)
    adapted = _block_inputs(_dtl_model(), x)
    same = [torch.equal(a, b) for a, b in zip(plain, adapted, strict=True)]
    # inputs of blocks 0..6 are the outputs of blocks -1..5: unchanged; block 7 reads block 6 + phi(h)
    assert same == [True] * 7 + [False] * 5


def test_dtl_gradient_without_backbone_graph_equals_full_graph():
    model = _dtl_model(fusion_size=3)
    x, y = torch.randn(3, 3, 32, 32), torch.tensor([0, 1, 2])
    side = [p for p in model.dtl.parameters()]

    def grads(keep_graph: bool) -> list[torch.Tensor]:
        model.zero_grad()
        torch.manual_seed(0)
        inputs = x.clone().requires_grad_(keep_graph)  # full graph: every block is recorded
        nn.functional.cross_entropy(dtl_forward(model, inputs, keep_graph=keep_graph), y).backward()
        return [p.grad.clone() for p in side]

    for fast, full in zip(grads(False), grads(True), strict=True):
        assert torch.allclose(fast, full, atol=1e-6)


def test_dtl_keeps_about_half_of_loras_activations():
    x = torch.randn(4, 3, 32, 32)
    dtl = saved_activation_bytes(DTL_.apply(tiny_vit(), DTLConfig()), x)
    lora = saved_activation_bytes(Lora().apply(tiny_vit(), make_config(Lora())), x)
    assert dtl < 0.6 * lora, (dtl, lora)


def test_dtl_plus_conv_is_shared_and_skips_the_class_token():
    model = _dtl_model(fusion_size=3)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m is not model.patch_embed.proj]
    assert len(convs) == 1 and convs[0].groups == 64 and convs[0].bias is None
    h = torch.randn(2, 17, 64)
    out = model.dtl.inject(h, 1, (4, 4))
    assert torch.equal(out[:, 0], h[:, 0] * torch.sigmoid(100 * h[:, 0]))  # class token: swish only


def test_dtl_budget_and_bad_settings():
    spec = backbone_spec("vit_base_patch16_224")
    assert DTL_.for_budget(spec, 36_864).rank == 2
    assert DTL_.for_budget(spec, 300_000).rank == 16
    with pytest.raises(MethodError, match="add_from=12 must be a block index"):
        DTL_.apply(tiny_vit(), DTLConfig(add_from=12))


def test_both_run_in_the_demo(cli):
    code, out, err = cli("run", "--suite", "demo", "--methods", "kadaptation,dtl", "--seeds", "1", "--epochs", "2")
    assert code == 0, err
    assert "kadaptation" in out and "dtl" in out and "2 run(s) trained" in out
