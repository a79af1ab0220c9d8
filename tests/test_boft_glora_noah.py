"""BOFT, GLoRA and LoRA's NOAH initialisation through peft: what is specific to each (the shared
checks, for every registered method, are in tests/test_conformance.py)."""

from __future__ import annotations

import math

import pytest
import torch

from bench.backbone import backbone_spec
from bench.inspect import built_trainable_params
from methods import MethodError, get_method, make_config
from methods.base import identity_dict
from methods.conformance import run_checks, tiny_vit


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
    results = run_checks(lora, make_config(lora, {"init": "noah"}))
    assert [(r.name, r.detail) for r in results if r.passed is not True] == []


def test_noah_init_enters_the_run_identity_only_when_chosen():
    lora = get_method("lora")
    assert "init" not in identity_dict(make_config(lora))  # plain LoRA runs keep their run keys
    assert identity_dict(make_config(lora, {"init": "noah"}))["init"] == "noah"
    with pytest.raises(MethodError, match="choose one of peft, pissa, noah"):
        make_config(lora, {"init": "kaiming"})
