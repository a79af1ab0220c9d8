"""KARST: conformance, counts, gradients at step 0, the peft LoKr cross-check, merge, budgets."""

from __future__ import annotations

import json

import optuna
import pytest
import torch
from peft import LoKrConfig, inject_adapter_in_model
from torch import nn

import methods
from bench.backbone import backbone_spec
from methods.base import MethodError, make_config
from methods.conformance import run_checks, tiny_vit
from methods.karst import Karst, KarstConfig, KarstLinear, merge_linear

KARST = Karst()


@pytest.mark.parametrize("rescale", ["channel", "scalar", "none"])
@pytest.mark.parametrize("kernels", [1, 2, 4])
def test_conformance(rescale: str, kernels: int):
    results = run_checks(KARST, make_config(KARST, {"rescale": rescale, "kernels": kernels}))
    assert [(r.name, r.detail) for r in results if r.passed is not True] == []


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        (["kernels=2", "rescale=channel"], 356_352),
        (["kernels=2", "rescale=scalar"], 301_128),
        (["kernels=8", "rescale=scalar"], 1_204_296),
        (["kernels=1", "rescale=scalar"], 150_600),
        (["kernels=2", "rescale=none"], 301_056),
    ],
)
def test_published_counts_on_vit_b16(cli, settings: list[str], expected: int):
    args = [a for s in settings for a in ("--set", s)]
    code, out, _ = cli("methods", "info", "karst", "--backbone", "vit_base_patch16_224", *args, "--json")
    info = json.loads(out)
    assert code == 0 and info["trainable_params"] == expected == info["trainable_params_built"]


def test_other_widths_factorise_and_bad_factors_fail():
    spec_s, spec_l = backbone_spec("vit_small_patch16_224"), backbone_spec("vit_large_patch16_224")
    cfg = KarstConfig()
    # ViT-S: d = 384, h = 1536; ViT-L: 24 blocks, d = 1024, h = 4096
    assert KARST.count(spec_s, cfg) == 12 * (2 * (4 * 64 + (8 * 384 + 2 * 1536)) + 6 * 384)
    assert KARST.count(spec_l, cfg) == 24 * (2 * (4 * 64 + (8 * 1024 + 2 * 4096)) + 6 * 1024)
    with pytest.raises(MethodError, match=r"factor=7 does not divide the width 768 of blocks.0.attn.qkv"):
        KARST.count(backbone_spec("vit_base_patch16_224"), KarstConfig(factor=7))
    with pytest.raises(MethodError, match=r"factor=8 does not divide the width 60 of blocks.0.attn.qkv"):
        KARST.apply(tiny_vit(embed_dim=60, num_heads=4), KarstConfig())


def _random_karst(base: nn.Linear, splits: int = 1, kernels: int = 1, **kw) -> KarstLinear:
    layer = KarstLinear(base, kernels=kernels, factor=8, rank=4, alpha=2.0, splits=splits, **kw)
    with torch.no_grad():
        layer.karst_B.normal_()
    return layer


def test_structured_materialized_and_explicit_kronecker_agree():
    torch.manual_seed(0)
    layer = _random_karst(nn.Linear(64, 192), splits=3, kernels=2, mode="structured")
    x = torch.randn(5, 7, 64)
    # dW from the definition: s * sum_i [C_i (x) (A_i^q B_i); C_i (x) (A_i^k B_i); C_i (x) (A_i^v B_i)]
    explicit = layer.scaling * sum(
        torch.cat([torch.kron(layer.karst_C[i], layer.karst_A[i, s] @ layer.karst_B[i]) for s in range(3)])
        for i in range(2)
    )
    assert torch.allclose(layer.delta_weight(), explicit, atol=1e-6)
    structured = layer(x)
    layer.route = "g" if layer.route == "k" else "k"  # both orders of the structured product
    assert torch.allclose(layer(x), structured, atol=1e-5)
    for mode in ("materialize", "fold"):
        layer.mode = mode
        assert torch.allclose(layer(x), structured, atol=1e-5), mode
    assert torch.allclose(structured, nn.functional.linear(x, layer.base.weight + explicit, layer.base.bias), atol=1e-5)


@pytest.mark.parametrize("rescale", ["channel", "scalar", "none"])
def test_fold_trains_the_same_function_with_the_same_gradients(rescale: str):
    """``fold`` (one linear with the effective weight built each step) is the structured path's
    function and gives every trainable tensor the same gradient, re-scaling included."""
    torch.manual_seed(5)
    structured = KARST.apply(tiny_vit(), KarstConfig(rescale=rescale, kernels=2, mode="structured"))
    with torch.no_grad():
        for name, p in structured.named_parameters():
            if ".karst_B" in name or ".pre." in name or ".post." in name:
                p.normal_(0.0, 0.5)  # off the identity init, so every factor shapes the output
    folded = KARST.apply(tiny_vit(), KarstConfig(rescale=rescale, kernels=2, mode="fold"))
    folded.load_state_dict(structured.state_dict())
    x = torch.randn(4, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 3])
    outputs, grads = [], []
    for model in (structured, folded):
        model.train()
        model.zero_grad()
        out = model(x)
        nn.functional.cross_entropy(out, y).backward()
        outputs.append(out.detach())
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert _max_rel_error(outputs[1], outputs[0]) <= 1e-5
    assert grads[0].keys() == grads[1].keys() and any(".post." in n for n in grads[0]) == (rescale != "none")
    for name, g in grads[0].items():
        # A scalar shift adds one constant to every channel of the residual stream, which every
        # later LayerNorm subtracts again: its gradient is zero whichever way it is computed.
        constant_shift = rescale == "scalar" and name.endswith("post.shift")
        assert constant_shift or torch.count_nonzero(g) > 0, name
        assert torch.allclose(grads[1][name], g, rtol=1e-4, atol=1e-6), name


def test_fold_under_bf16_autocast_keeps_the_update():
    """The effective weight is built in fp32: a bf16 dW would round small updates of W0 away."""
    torch.manual_seed(6)
    layer = _random_karst(nn.Linear(64, 64), kernels=2, mode="fold")
    weight, _ = layer.folded_weight_and_bias()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        weight_autocast, _ = layer.folded_weight_and_bias()
    assert weight_autocast.dtype == torch.float32 and torch.equal(weight_autocast, weight)
    explicit = layer.scaling * sum(
        torch.kron(layer.karst_C[i], layer.karst_A[i, 0] @ layer.karst_B[i]) for i in range(2)
    )
    assert torch.allclose(weight, layer.base.weight + explicit, atol=1e-6)


def _lokr(base: nn.Linear, rank: int, alpha: float, names: tuple[str, ...] = ("default",)) -> nn.Module:
    holder = nn.Sequential(base)
    for name in names:
        cfg = LoKrConfig(r=rank, alpha=alpha, decompose_factor=8, init_weights="lycoris", target_modules=["0"])
        holder = inject_adapter_in_model(cfg, holder, adapter_name=name)
    return holder[0]


# peft factorises w2 only when r < max(out/f, in/f) / 2, so the widths are large enough for that.
@pytest.mark.parametrize(("fan_in", "fan_out"), [(128, 128), (128, 512), (512, 128)])  # proj, fc1, fc2
def test_one_kernel_equals_peft_lokr(fan_in: int, fan_out: int):
    torch.manual_seed(1)
    base = nn.Linear(fan_in, fan_out)
    layer = _random_karst(base)
    lokr = _lokr(nn.Linear(fan_in, fan_out), rank=4, alpha=2.0)
    with torch.no_grad():
        lokr.lokr_w1["default"].copy_(layer.karst_C[0])
        lokr.lokr_w2_a["default"].copy_(layer.karst_A[0, 0])
        lokr.lokr_w2_b["default"].copy_(layer.karst_B[0])
    assert torch.allclose(layer.delta_weight(), lokr.get_delta_weight("default"), atol=1e-6)


def test_qkv_kernel_equals_lokr_after_row_permutation():
    """KARST's q/k/v-split kernel is a fused LoKr with A = [A^q; A^k; A^v], rows permuted."""
    torch.manual_seed(2)
    d, f = 64, 8
    layer = _random_karst(nn.Linear(d, 3 * d), splits=3)
    lokr = _lokr(nn.Linear(d, 3 * d), rank=4, alpha=2.0)
    with torch.no_grad():
        lokr.lokr_w1["default"].copy_(layer.karst_C[0])
        lokr.lokr_w2_a["default"].copy_(layer.karst_A[0].reshape(3 * d // f, 4))
        lokr.lokr_w2_b["default"].copy_(layer.karst_B[0])
    k = d // f
    # KARST row (which, a, c) = which*d + a*k + c  <->  LoKr row (a, which, c) = a*3k + which*k + c
    perm = torch.tensor([a * 3 * k + which * k + c for which in range(3) for a in range(f) for c in range(k)])
    fused = lokr.get_delta_weight("default")
    assert torch.allclose(layer.delta_weight(), fused[perm], atol=1e-6)
    assert not torch.allclose(layer.delta_weight(), fused, atol=1e-3)  # the permutation matters


def test_two_kernels_equal_two_lokr_adapters():
    torch.manual_seed(3)
    layer = _random_karst(nn.Linear(64, 256), kernels=2)
    base = nn.Linear(64, 256)
    lokr = _lokr(base, rank=4, alpha=2.0, names=("k0", "k1"))
    with torch.no_grad():
        for i, name in enumerate(("k0", "k1")):
            lokr.lokr_w1[name].copy_(layer.karst_C[i])
            lokr.lokr_w2_a[name].copy_(layer.karst_A[i, 0])
            lokr.lokr_w2_b[name].copy_(layer.karst_B[i])
    summed = lokr.get_delta_weight("k0") + lokr.get_delta_weight("k1")
    assert torch.allclose(layer.delta_weight(), summed, atol=1e-6)


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    x, y = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 3])
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    return {n: p.grad for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head")}


def test_gradients_at_step_zero_then_everywhere():
    model = KARST.apply(tiny_vit(), KarstConfig(rescale="channel"))
    for name, g in _grads(model).items():
        if ".karst_C" in name or ".karst_A" in name:
            assert torch.count_nonzero(g) == 0, name  # B = 0 blocks them at step 0: a both-zero bug would show
        else:
            assert torch.count_nonzero(g) > 0, name  # B and the re-scaling learn at once
    torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2).step()
    assert all(torch.count_nonzero(g) > 0 for g in _grads(model).values())


def test_scalar_shifts_on_the_residual_stream_are_dead():
    """The official code's scalar shift after proj and after fc2 adds one constant to every channel
    of the residual stream, which every later LayerNorm removes: its gradient is zero up to rounding.
    The channel-wise shifts (the paper's form, the default) are not affected."""
    model = KARST.apply(tiny_vit(), KarstConfig(rescale="scalar"))
    torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2).step()
    grads = _grads(model)
    dead = {n: float(g.abs().max()) for n, g in grads.items() if n.endswith(("proj.post.shift", "fc2.post.shift"))}
    live = {n: float(g.abs().max()) for n, g in grads.items() if n.endswith(("proj.pre.shift", "post.scale"))}
    assert len(dead) == 24 and max(dead.values()) < 1e-6
    assert min(live.values()) > 1e-4


def _max_rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("size", ["tiny", "vit_s"])
@pytest.mark.parametrize("rescale", ["channel", "scalar"])
def test_merge_is_exact_and_leaves_a_plain_vit(size: str, rescale: str):
    shape = {} if size == "tiny" else {"embed_dim": 384, "num_heads": 6, "patch_size": 16, "img_size": 64}
    model = KARST.apply(tiny_vit(**shape), KarstConfig(rescale=rescale))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    x = torch.randn(3, 3, model.patch_embed.img_size[0], model.patch_embed.img_size[0], generator=g)
    with torch.no_grad():
        before = model.eval()(x)
        merged = KARST.merge(model)
        after = merged(x)
    assert _max_rel_error(after, before) <= 1e-5
    plain = tiny_vit(**shape)
    assert set(merged.state_dict()) == set(plain.state_dict())
    assert sum(p.numel() for p in merged.parameters()) == sum(p.numel() for p in plain.parameters())
    assert not any(isinstance(m, KarstLinear) for m in merged.modules())


def test_shift_before_proj_becomes_proj_bias():
    torch.manual_seed(4)
    layer = KARST.apply(tiny_vit(), KarstConfig(rescale="channel")).blocks[0].attn.proj
    with torch.no_grad():
        layer.pre.shift.normal_()
    x = torch.randn(2, 5, 64)
    plain = merge_linear(layer)
    assert torch.allclose(plain(x), layer(x), atol=1e-5)
    assert not torch.allclose(plain.bias, layer.base.bias)


def test_for_budget_prefers_the_published_shape():
    spec = backbone_spec("vit_base_patch16_224")
    assert (KARST.for_budget(spec, 356_352).kernels, KARST.for_budget(spec, 356_352).rank) == (2, 8)
    for budget in (100_000, 300_000, 1_000_000):
        cfg = KARST.for_budget(spec, budget)
        assert abs(KARST.count(spec, cfg) - budget) <= 0.05 * budget and cfg.factor == 8
    with pytest.raises(MethodError, match="nearest feasible counts"):
        KARST.for_budget(spec, 10_000)


def test_search_space_is_real_optuna():
    study = optuna.create_study(direction="maximize")
    study.enqueue_trial({"lr": 1e-3, "weight_decay": 1e-4, "drop_path": 0.1, **KARST.published_hparams()})
    trial = study.ask()
    space = KARST.search_space(trial)
    assert space == {"lr": 1e-3, "weight_decay": 1e-4, "drop_path": 0.1, "alpha": 1.0}
    assert set(methods.get_method("lora").search_space(study.ask())) == {"lr", "weight_decay", "drop_path", "dropout"}


def test_karst_runs_in_the_demo(cli):
    code, out, err = cli("run", "--suite", "demo", "--methods", "karst,lora", "--seeds", "1", "--epochs", "2")
    assert code == 0, err
    assert "karst" in out and "2 run(s) trained" in out


def test_cli_check_passes_and_exits_nonzero_on_a_bad_config(cli):
    code, out, _ = cli("methods", "check", "karst", "--set", "rescale=scalar", "--set", "kernels=4", "--json")
    assert code == 0 and len(json.loads(out)) == 6 and all(r["passed"] for r in json.loads(out))
    code, _, err = cli("methods", "check", "karst", "--set", "rescale=diagonal")
    assert code == 2 and "rescale='diagonal' is not allowed" in err
