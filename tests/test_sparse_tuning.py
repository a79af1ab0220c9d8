"""Sparse-Tuning: token counts, selection and fusion, adapters, counts and counted FLOPs."""

from __future__ import annotations

import json

import pytest
import torch

from bench.backbone import backbone_spec
from methods.base import MethodError, make_config
from methods.conformance import run_checks, tiny_vit
from methods.sparse_checks import check_selection_and_fusion
from methods.sparse_tuning import SparseTuning, SparseTuningConfig, sequence_lengths

SPARSE = SparseTuning()


@pytest.mark.parametrize("overrides", [{}, {"fuse": False}, {"adapter": "code"}, {"adapter": "code", "fuse": False}])
def test_conformance_and_what_holds(overrides):
    results = run_checks(SPARSE, make_config(SPARSE, overrides))
    assert [(r.name, r.detail) for r in results if r.passed is False] == []
    names = {r.name for r in results if r.passed}
    assert "selection keeps the top-K by [CLS] attention and fuses the rest by score" in names
    assert "tokens per block follow ceil(rho (N - 1)) (+1 fused)" in names
    backbone_check = "keep_rate=1 with zero up-projections is the backbone"
    assert (backbone_check in names) == (make_config(SPARSE, overrides).adapter == "paper")


@pytest.mark.parametrize(("fuse", "expected"), [(True, [197, 140, 100, 72]), (False, [197, 139, 98, 69])])
def test_vit_b16_token_counts(fuse: bool, expected: list[int]):
    lengths = sequence_lengths(197, 12, SparseTuningConfig(fuse=fuse))
    assert sorted({n for pair in lengths for n in pair}, reverse=True) == expected
    # and the built model at ViT-B/16's geometry (196 patches) runs exactly those lengths
    model = SPARSE.apply(tiny_vit(img_size=224, patch_size=16), SparseTuningConfig(fuse=fuse)).eval()
    seen = []
    for block in model.blocks:
        block.norm2.register_forward_hook(lambda m, a, o: seen.append(o.shape[1]))
    with torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    assert seen == [mlp for _, mlp in lengths]
    assert seen[3] == expected[1] and seen[6] == expected[2] and seen[9] == expected[3]


def test_selection_and_fusion_on_a_hand_made_map():
    assert check_selection_and_fusion().passed


def test_paper_and_code_adapter_counts(cli):
    for settings, expected in (
        ([], 1_091_584),
        (["adapter=code"], 1_314_432),
        (["width=64"], 2 * 1_091_584 - 12 * 768),
    ):
        args = [a for s in settings for a in ("--set", s)]
        code, out, _ = cli("methods", "info", "sparse_tuning", "--backbone", "vit_base_patch16_224", *args, "--json")
        info = json.loads(out)
        assert code == 0 and info["trainable_params"] == expected == info["trainable_params_built"], settings


def test_info_reports_counted_macs_about_two_thirds_of_vit_b(cli):
    code, out, _ = cli("methods", "info", "sparse_tuning", "--backbone", "vit_base_patch16_224", "--json")
    info = json.loads(out)
    assert info["backbone_macs_per_image"] == pytest.approx(17.56e9, rel=1e-3)
    assert 0.66 <= info["macs_ratio"] <= 0.68
    code, out, _ = cli(
        "methods", "info", "sparse_tuning", "--backbone", "vit_base_patch16_224", "--set", "adapter=code", "--json"
    )
    assert json.loads(out)["macs_per_image"] == pytest.approx(11.77e9, rel=2e-3)  # the notes' 11.77 G


def _closed_form_macs(config: SparseTuningConfig | None, d=64, h=256, patches=16, patch=8, classes=10) -> int:
    """Matmul MACs of a tiny ViT from the token counts: what FlopCounterMode should count."""
    n0 = 1 + patches
    lengths = sequence_lengths(n0, 12, config) if config else [(n0, n0)] * 12
    macs = patches * 3 * patch * patch * d + d * classes  # patch embedding and head
    for i, (n, m) in enumerate(lengths):
        macs += n * d * 3 * d + 2 * n * n * d + n * d * d  # qkv, scores, weighted values, proj
        macs += 2 * m * d * h  # MLP
        if config is not None:
            if n != m:
                macs += n * d  # the [CLS] row of the attention map, for the scores
            if n != m and config.fuse:
                # the fused token of the stream and of the adapter outputs carried along (i-1..i-3)
                macs += (n - 1) * d * (1 + min(3, i))
            inputs = 1 + int(i >= 1) + int(i >= 3)
            macs += m * (inputs * d * config.width + config.width * d)  # the paper's dense adapter
    return macs


def _counted(model) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    # On the meta device, as `bench methods info` counts: there the attention goes through a kernel
    # FlopCounterMode knows on every torch version (CPU builds may pick one it does not count).
    model = model.to("meta").eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.empty(1, 3, 32, 32, device="meta"))
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("fuse", [True, False])
def test_counted_flops_match_the_token_counts_on_a_tiny_vit(fuse: bool):
    config = SparseTuningConfig(fuse=fuse)
    backbone = _counted(tiny_vit())
    counted = _counted(SPARSE.apply(tiny_vit(), config))
    assert backbone == _closed_form_macs(None, classes=5)
    assert counted == _closed_form_macs(config, classes=5)
    assert counted < backbone


def test_budget_through_the_adapter_width():
    spec = backbone_spec("vit_base_patch16_224")
    cfg = SPARSE.for_budget(spec, 300_000)
    assert abs(SPARSE.count(spec, cfg) - 300_000) <= 15_000 and cfg.adapter == "paper"
    assert SPARSE.for_budget(spec, 1_091_584).width == 32
    with pytest.raises(MethodError, match="drop_blocks \\[12\\] are not blocks"):
        SPARSE.apply(tiny_vit(), SparseTuningConfig(drop_blocks="3,12"))
    assert sequence_lengths(17, 4, SparseTuningConfig())[1:4] == [(17, 14), (14, 12), (12, 10)]  # auto: 1, 2, 3


def test_sparse_tuning_runs_in_the_demo(cli):
    code, out, err = cli("run", "--suite", "demo", "--methods", "sparse_tuning", "--seeds", "1", "--epochs", "2")
    assert code == 0, err
    assert "sparse_tuning" in out
