"""The peft tuners behind bench's interface: what is specific to each (the shared checks, for
every registered method, are in tests/test_conformance.py)."""

from __future__ import annotations

import math

import pytest
import torch

from bench.backbone import backbone_spec
from bench.inspect import built_trainable_params
from methods import MethodError, get_method, make_config
from methods.conformance import run_checks, tiny_vit


@pytest.mark.parametrize(
    "overrides", [{"use_dora": True}, {"use_rslora": True, "alpha": 16}, {"init": "pissa", "use_dora": True}]
)
def test_lora_options_conform(overrides: dict):
    lora = get_method("lora")
    results = run_checks(lora, make_config(lora, overrides))
    assert [(r.name, r.detail) for r in results if r.passed is not True] == []


def test_dora_adds_one_magnitude_per_output_channel_on_vit_b16():
    lora = get_method("lora")
    dora = make_config(lora, {"use_dora": True})
    assert lora.count(backbone_spec("vit_base_patch16_224"), dora) == 294_912 + 12 * 2304
    assert built_trainable_params(lora, dora, "vit_base_patch16_224") == 322_560


def test_rslora_scales_by_the_square_root_of_the_rank():
    lora = get_method("lora")
    qkv = lora.apply(tiny_vit(), make_config(lora, {"use_rslora": True, "rank": 4, "alpha": 8})).blocks[0].attn.qkv
    assert qkv.scaling["default"] == pytest.approx(8 / math.sqrt(4))
    plain = lora.apply(tiny_vit(), make_config(lora, {"rank": 4, "alpha": 8})).blocks[0].attn.qkv
    assert plain.scaling["default"] == pytest.approx(8 / 4)


def test_pissa_starts_from_the_principal_singular_vectors():
    lora = get_method("lora")
    w0 = tiny_vit().blocks[0].attn.qkv.weight.detach()
    qkv = lora.apply(tiny_vit(), make_config(lora, {"init": "pissa", "rank": 4})).blocks[0].attn.qkv
    a, b = qkv.lora_A["default"].weight.detach(), qkv.lora_B["default"].weight.detach()
    top = torch.linalg.svdvals(w0)[:4]
    assert torch.allclose(torch.linalg.svdvals(b @ a)[:4], top, atol=1e-4)  # scale 1: B A is W0's best rank-4 part
    residual = qkv.base_layer.weight.detach()
    assert torch.allclose(residual + b @ a, w0, atol=1e-5)
    assert torch.linalg.svdvals(residual)[0] < top[0]  # the principal part left the frozen weight


@pytest.mark.parametrize(
    ("name", "overrides", "expected"),
    [
        ("ia3", {}, 12 * (2304 + 3072)),  # a vector on qkv's output, one on fc2's input (the MLP activation)
        ("loha", {}, 12 * 2 * 8 * (768 + 2304)),
        ("lokr", {}, 12 * (48 * 24 + 8 * (48 + 32))),  # 2304 = 48 x 48, 768 = 24 x 32; W2 = W2a W2b at r = 8
        ("lokr", {"factor": 4, "rank": 300}, 12 * (4 * 4 + 576 * 192)),  # r >= max(b, d) / 2: W2 is full
        ("vera", {}, 12 * (256 + 2304)),
        ("ln_tuning", {}, 12 * 4 * 768),
        ("fourierft", {}, 12 * 1000),
        ("oft", {}, 12 * 24 * (32 * 31 // 2)),  # 24 orthogonal 32 x 32 blocks on qkv's 768 inputs
    ],
)
def test_peft_tuner_counts_on_vit_b16(name: str, overrides: dict, expected: int):
    method = get_method(name)
    config = make_config(method, overrides)
    assert method.count(backbone_spec("vit_base_patch16_224"), config) == expected
    assert built_trainable_params(method, config, "vit_base_patch16_224") == expected


def test_ia3_scales_the_mlp_activation_and_vera_shares_one_projection():
    block = get_method("ia3").apply(tiny_vit(), make_config(get_method("ia3"))).blocks[0]
    assert block.mlp.fc2.ia3_l["default"].shape == (1, 256)  # fc2's input: the hidden activation
    assert block.attn.qkv.ia3_l["default"].shape == (192, 1)  # qkv's output
    vera = get_method("vera").apply(tiny_vit(), make_config(get_method("vera"), {"rank": 16}))
    a0, a11 = vera.blocks[0].attn.qkv.vera_A["default"], vera.blocks[11].attn.qkv.vera_A["default"]
    assert a0 is a11 and not a0.requires_grad  # one frozen random A for every layer


def test_lokr_budget_fit_changes_the_factor_when_the_balanced_one_is_too_small():
    lokr = get_method("lokr")
    spec = backbone_spec("vit_base_patch16_224")
    assert lokr.for_budget(spec, 21_504).factor == -1  # the published size keeps the default factor
    big = lokr.for_budget(spec, 300_000)
    assert big.factor != -1 and abs(lokr.count(spec, big) - 300_000) <= 15_000


def test_oft_refuses_a_block_size_that_does_not_divide_the_width():
    oft = get_method("oft")
    with pytest.raises(MethodError, match=r"block_size=24 does not divide .* choose a divisor of 64"):
        oft.apply(tiny_vit(), make_config(oft, {"block_size": 24}))
    rotation = oft.apply(tiny_vit(), make_config(oft, {"block_size": 16})).blocks[0].attn.qkv.oft_R["default"]
    assert not rotation.use_cayley_neumann  # the exact Cayley transform
