"""BOFT, GLoRA and LoRA's NOAH initialisation through peft: what is specific to each (the shared
checks, for every registered method, are in tests/test_conformance.py)."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import pytest
import torch

from bench.backbone import backbone_spec
from bench.inspect import built_trainable_params
from methods import MethodError, get_method, make_config
from methods.base import identity_dict
from methods.conformance import check_identity_at_init, run_checks, tiny_vit


def _lora_a(init: str, rank: int) -> torch.Tensor:
    lora = get_method("lora")
    torch.manual_seed(0)
    model = lora.apply(tiny_vit(), make_config(lora, {"init": init, "rank": rank}))
    return torch.cat([b.attn.qkv.lora_A["default"].weight.detach().flatten() for b in model.blocks])


def test_noah_init_draws_a_over_fan_in_rank_and_keeps_the_backbone_at_init():
    rank, width = 2, 64  # tiny ViT's qkv: in = 64, so the expected std ratio is sqrt(64 / 2) = 5.66
    noah, peft = _lora_a("noah", rank), _lora_a("peft", rank)
    # Kaiming-uniform with a = sqrt(5) over fan-in f is U(-1/sqrt(f), 1/sqrt(f)), std 1/sqrt(3 f)
    assert noah.abs().max() <= 1 / math.sqrt(rank) and noah.abs().max() > 0.9 / math.sqrt(rank)
    assert noah.std().item() == pytest.approx(1 / math.sqrt(3 * rank), rel=0.06)
    assert peft.std().item() == pytest.approx(1 / math.sqrt(3 * width), rel=0.06)
    assert (noah.std() / peft.std()).item() == pytest.approx(math.sqrt(width / rank), rel=0.1)
    lora = get_method("lora")
    assert check_identity_at_init(lora, make_config(lora, {"init": "noah"})).passed is True  # B = 0 still


def test_noah_init_enters_the_run_identity_only_when_chosen():
    lora = get_method("lora")
    assert "init" not in identity_dict(make_config(lora))  # plain LoRA runs keep their run keys
    assert identity_dict(make_config(lora, {"init": "noah"}))["init"] == "noah"
    with pytest.raises(MethodError, match="choose one of peft, pissa, noah"):
        make_config(lora, {"init": "kaiming"})


@pytest.mark.parametrize(
    ("name", "overrides", "backbone", "expected"),
    [
        ("boft", {}, "vit_base_patch16_224", 12 * (768 * 4 + 2304)),  # b = 4 blocks on qkv's 768 inputs, s on 2304
        ("boft", {"block_size": 16, "targets": "qkv,proj"}, "vit_base_patch16_224", None),
        ("boft", {}, "swin_base_patch4_window7_224", 84_224),
        ("glora", {}, "vit_base_patch16_224", 1_437_984),
        ("glora", {"path_ab": "vector", "path_c": "vector", "path_de": "vector"}, "vit_base_patch16_224", None),
        ("glora", {"path_ab": "constant", "path_c": "none", "path_de": "none", "rank": 2}, "vit_base_patch16_224", 96),
        ("glora", {}, "swin_base_patch4_window7_224", 1_877_568),
    ],
)
def test_closed_form_counts_equal_what_peft_builds(name: str, overrides: dict, backbone: str, expected: int | None):
    """count() is the docstring's formula; peft's layers, built on the real shapes, hold exactly that."""
    method = get_method(name)
    config = make_config(method, overrides)
    counted = method.count(backbone_spec(backbone), config)
    assert built_trainable_params(method, config, backbone) == counted
    if expected is not None:
        assert counted == expected


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [{"path_ab": "vector", "path_c": "vector", "path_de": "vector"}, {"path_ab": "constant", "path_c": "none"}],
)
def test_glora_other_forms_conform(overrides: dict):
    glora = get_method("glora")
    results = run_checks(glora, make_config(glora, overrides))
    assert [(r.name, r.detail) for r in results if r.passed is not True] == []


def test_glora_budget_fit_moves_placement_when_one_rank_step_is_too_coarse():
    glora, spec = get_method("glora"), backbone_spec("vit_base_patch16_224")
    assert glora.for_budget(spec, 719_040).targets == "qkv,proj,fc1,fc2"  # rank 2 at the default placement
    small = glora.for_budget(spec, 300_000)  # one rank on all four linears is already 359,568
    assert small.targets != "qkv,proj,fc1,fc2" and abs(glora.count(spec, small) - 300_000) <= 15_000
    with pytest.raises(MethodError, match="path_ab, path_c and path_de are all none"):
        make_config(glora, {"path_ab": "none", "path_c": "none", "path_de": "none"})


def test_boft_refuses_structures_peft_cannot_build_as_asked():
    from methods.boft import peft_runs_butterflies

    boft = get_method("boft")
    with pytest.raises(MethodError, match=r"block_size=24 does not divide .* divides 64"):
        boft.apply(tiny_vit(), make_config(boft, {"block_size": 24}))
    with pytest.raises(MethodError, match="block_size=5 must be even"):
        make_config(boft, {"block_size": 5, "butterfly_factors": 2})
    with pytest.raises(MethodError, match=r"block_size=64 with butterfly_factors=2 \(span 128\)"):
        boft.apply(tiny_vit(), make_config(boft, {"block_size": 64, "butterfly_factors": 2}))
    two = make_config(boft, {"block_size": 8, "butterfly_factors": 2})
    if peft_runs_butterflies():  # a CUDA machine with nvcc and ninja: peft's butterflies, as counted
        model = boft.apply(tiny_vit(), two)
        assert model.blocks[0].attn.qkv.boft_R["default"].shape == (2, 8, 8, 8)
    else:  # peft would silently train one factor: refused instead
        with pytest.raises(MethodError, match="butterfly_factors=2 needs peft's CUDA extension"):
            boft.apply(tiny_vit(), two)
    assert boft.count(backbone_spec("vit_base_patch16_224"), two) == 12 * (2 * 768 * 8 + 2304)


@pytest.mark.parametrize("name", ["boft", "glora"])
def test_macs_count_on_meta_and_merge_back_to_the_backbone(name: str):
    """`bench methods info` counts MACs on the meta device: GLoRA's scalars (a view of a parameter)
    and BOFT's permutations (built element by element) must not break it."""
    from bench.inspect import macs_per_image

    method = get_method(name)
    config = make_config(method)
    backbone = macs_per_image(None, None, "vit_demo_tiny")
    assert macs_per_image(method, config, "vit_demo_tiny") > backbone
    assert macs_per_image(method, config, "vit_demo_tiny", merged=True) == backbone


@pytest.mark.slow
def test_planning_and_running_boft_builds_no_extension_and_prints_no_compiler_output(tmp_path: Path):
    """peft tries to build its fbd_cuda kernel (nvcc) at every BOFT layer it creates while the kernel
    is missing, printing the compiler's output; a default boft (one factor) needs no kernel, so bench
    never lets that build start."""
    from tests.conftest import bench_subprocess

    extensions = tmp_path / "torch-extensions"
    proc = bench_subprocess(
        "--workdir", str(tmp_path / "runs"), "run", "--suite", "demo", "--methods", "boft", "--seeds", "1",
        "--epochs", "1", "--device", "cpu",
        env_extra={"TORCH_EXTENSIONS_DIR": str(extensions), "XDG_CACHE_HOME": str(tmp_path / "cache")},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    for noise in ("nvcc", "ninja", "CUDA extension", "fbd_cuda", "cpp_extension"):
        assert noise not in err, err[-2000:]
    assert not (extensions / "fbd_cuda").exists()


def test_boft_budgets_charge_free_parameters_and_keep_the_stored_count():
    """A b x b block stores b² entries but only its b (b - 1) / 2 skew-symmetric ones are free."""
    from bench.budget import choose_for_budget

    boft = get_method("boft")
    spec = backbone_spec("vit_base_patch16_224")
    config = make_config(boft)
    model = boft.apply(tiny_vit(), config)
    free = sum(
        p.shape[0] * p.shape[1] * p.shape[2] * (p.shape[2] - 1) // 2 if name.endswith("boft_R.default") else p.numel()
        for name, p in model.named_parameters()
        if p.requires_grad and "boft_" in name
    )
    assert free == boft.budget_count(_tiny_spec(), config)
    assert (boft.count(spec, config), boft.budget_count(spec, config)) == (64_512, 41_472)
    assert built_trainable_params(boft, config, "vit_base_patch16_224") == 64_512  # what the model stores
    choice = choose_for_budget(boft, spec, 41_472)
    assert (choice.config.block_size, choice.count, choice.stored) == (4, 41_472, 64_512)
    assert choice.to_dict()["stored_params"] == 64_512


def _tiny_spec():
    from methods.backbones import describe_backbone

    return describe_backbone(tiny_vit())


def test_adapter_expresses_noahs_single_sequential_adapter():
    """NOAH's VTAB-1K adapter: one bottleneck-8 adapter after each MLP, LayerNorms frozen, QuickGELU:
    156,768 trainable parameters on ViT-B/16 (the 0.16M of the VTAB-1K tables)."""
    adapter = get_method("adapter")
    noah = make_config(adapter, {"placement": "mlp", "bottleneck": 8, "train_norms": False, "activation": "quick_gelu"})
    spec = backbone_spec("vit_base_patch16_224")
    assert adapter.count(spec, noah) == built_trainable_params(adapter, noah, "vit_base_patch16_224") == 156_768
    assert "placement" not in identity_dict(make_config(adapter))  # default adapter runs keep their run keys
    model = adapter.apply(tiny_vit(), noah).eval()
    block = model.blocks[0]
    assert isinstance(block.adapter_attn, torch.nn.Identity)
    x = torch.randn(2, 17, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.nn.init.normal_(block.adapter_mlp.down_proj.weight)  # away from the near-zero init
        h = x + block.attn(block.norm1(x))
        m = block.mlp(block.norm2(h))
        down = block.adapter_mlp.down_proj(m)
        expected = h + m + block.adapter_mlp.up_proj(down * torch.sigmoid(1.702 * down))
        assert torch.allclose(block(x), expected, atol=1e-6)
    for activation, reference in (
        ("gelu", lambda t: 0.5 * t * (1 + torch.erf(t / math.sqrt(2)))),
        ("gelu_tanh", lambda t: 0.5 * t * (1 + torch.tanh(math.sqrt(2 / math.pi) * (t + 0.044715 * t**3)))),
    ):
        layer = adapter.apply(tiny_vit(), make_config(adapter, {"activation": activation})).blocks[0].adapter_mlp
        t = torch.linspace(-3, 3, 61)
        assert torch.allclose(layer.activation(t), reference(t), atol=1e-6)
    failed = [r for r in run_checks(adapter, noah) if r.passed is False]
    assert not failed, failed  # the shared conformance checks hold for the variant too
