"""FacT-TT, FacT-TK and RepAdapter: what is specific to each (the shared checks of identity,
gradients, frozen weights, count and merge run for every method in test_conformance.py)."""

from __future__ import annotations

import copy

import pytest
import torch

import methods
from bench.backbone import backbone_spec, create_backbone
from bench.budget import choose_for_budget
from bench.errors import BenchError
from methods.base import make_config, trainable_params_excluding_head
from methods.conformance import tiny_swin, tiny_vit
from methods.fact import FacTFactors, FacTLinear
from methods.repadapter import GroupAdapter, RepAdaptedLinear


def _inputs(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _perturb(model: torch.nn.Module, seed: int = 3) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))


def _built_on_meta(name: str, backbone: str, **overrides) -> int:
    """Trainable parameters (head excluded) of ``name`` applied to ``backbone`` built on the meta device."""
    method = methods.get_method(name)
    with torch.device("meta"):
        model = create_backbone(backbone, num_classes=0)
        model = method.apply(model, make_config(method, overrides))
    return trainable_params_excluding_head(model)


@pytest.mark.parametrize(
    ("name", "overrides", "expected"),
    [
        ("fact_tt", {}, 2 * 768 * 16 + 144 * 16**2),  # 61,440: 2dr + 12L r²
        ("fact_tt", {"rank": 4}, 8_448),  # the paper's FacT-TT4 (Table 1: 0.008 M)
        ("fact_tk", {}, 2 * 768 * 32 + 144 * 32 + 32**3),  # 86,528: 2dr + 12L r + r³
        ("fact_tk", {"rank": 8}, 13_952),  # the paper's FacT-TK8 (Table 1: 0.014 M)
        ("repadapter", {}, 24 * (768 * 8 + 8 + 768 * 4 + 768)),  # 239,808
        ("repadapter", {"placement": "attn"}, 12 * (768 * 8 + 8 + 768 * 4 + 768)),  # 119,904
    ],
)
def test_vit_b16_count_matches_the_closed_form_and_the_model_built_on_meta(name, overrides, expected):
    method = methods.get_method(name)
    assert method.count(backbone_spec("vit_base_patch16_224"), make_config(method, overrides)) == expected
    assert _built_on_meta(name, "vit_base_patch16_224", **overrides) == expected


def test_published_sizes_follow_from_the_official_per_task_ranks():
    """Table 1 averages the count over the VTAB groups' task averages, with the rank of each
    task's official config: FacT-TT≤16 0.037 M, FacT-TK≤32 0.069 M. RepAdapter's 0.22 M is its
    weights without the biases."""
    spec = backbone_spec("vit_base_patch16_224")
    tt, tk = methods.get_method("fact_tt"), methods.get_method("fact_tk")
    # ranks per task of the official configs, VTAB order: natural (7), specialized (4), structured (8)
    tt_ranks = ([8, 16, 8, 16, 8, 16, 8], [8, 8, 8, 8], [16, 4, 16, 16, 16, 16, 16, 8])
    tk_ranks = ([32, 32, 16, 32, 16, 32, 16], [32, 32, 32, 16], [32, 16, 32, 32, 32, 32, 32, 16])

    def table_size(method, ranks) -> float:
        groups = [sum(method.count(spec, make_config(method, {"rank": r})) for r in g) / len(g) for g in ranks]
        return sum(groups) / 3 / 1e6

    assert f"{table_size(tt, tt_ranks):.3f}M" == tt.published_params == "0.037M"
    assert f"{table_size(tk, tk_ranks):.3f}M" == tk.published_params == "0.069M"
    rep = methods.get_method("repadapter")
    weights = rep.count(spec, make_config(rep)) - 24 * (8 + 768)
    assert f"{weights / 1e6:.2f}M" == rep.published_params == "0.22M"


def test_swin_b_counts_use_per_stage_factors():
    spec = backbone_spec("swin_base_patch4_window7_224")
    tt = methods.get_method("fact_tt")
    # four stages (2, 2, 18, 2 blocks at 128, 256, 512, 1024): the paper's Table 2 FacT-TT16, 0.135 M
    assert tt.count(spec, make_config(tt)) == 2 * 16 * (128 + 256 + 512 + 1024) + 12 * 24 * 16**2 == 135_168
    tk = methods.get_method("fact_tk")
    assert tk.count(spec, make_config(tk)) == 2 * 32 * 1920 + 12 * 24 * 32 + 4 * 32**3
    rep = methods.get_method("repadapter")
    assert rep.count(spec, make_config(rep)) == 313_216


def test_tt_and_tk_structure():
    model = methods.get_method("fact_tt").apply(tiny_vit(), make_config(methods.get_method("fact_tt")))
    (tt,) = model.fact
    assert tt.u.shape == (16, 64) and tt.v.shape == (64, 16) and tt.sigma.shape == (144, 16, 16)
    assert not hasattr(tt, "core") and torch.count_nonzero(tt.v) == 0
    model = methods.get_method("fact_tk").apply(tiny_vit(), make_config(methods.get_method("fact_tk")))
    (tk,) = model.fact
    assert tk.core.shape == (32, 32, 32) and tk.p.shape == (32, 144) and not hasattr(tk, "sigma")
    # a Tucker slice is the core contracted with that slice's column of P
    i = 7
    assert torch.allclose(tk.cores(i, 1)[0], (tk.core * tk.p[:, i]).sum(-1))


def test_one_set_of_factors_is_shared_by_every_block_and_each_stage_has_its_own():
    model = methods.get_method("fact_tt").apply(tiny_vit(), make_config(methods.get_method("fact_tt")))
    wrapped = [m for m in model.modules() if isinstance(m, FacTLinear)]
    assert len(wrapped) == 4 * 12 and len({id(m.factors) for m in wrapped}) == 1
    # slices cover 0 .. 143 once each: q, k, v, proj, 4 fc1 quarters, 4 fc2 quarters per block
    spans = sorted((m.first, m.first + m.in_chunks * m.out_chunks) for m in wrapped)
    assert (
        spans[0][0] == 0 and spans[-1][1] == 144 and all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    )
    # a shared tensor is trained and counted once
    assert sum(p.numel() for p in model.fact.parameters()) == trainable_params_excluding_head(model)

    swin = methods.get_method("fact_tk").apply(tiny_swin(), make_config(methods.get_method("fact_tk"), {"rank": 4}))
    assert [f.u.shape[1] for f in swin.fact] == [32, 64]  # one set per stage, at the stage's width
    by_stage = {m.width: id(m.factors) for m in swin.modules() if isinstance(m, FacTLinear)}
    assert len(by_stage) == 2 and len(set(by_stage.values())) == 2


def test_fact_increment_is_the_paper_formula_for_each_slice():
    """fc1's output quarter k gets s · V M_kᵀ Uᵀ with M_k the slice's core (Eq. 8/10), not a reshuffled core."""
    method = methods.get_method("fact_tk")
    model = method.apply(tiny_vit(), make_config(method, {"rank": 4}))
    _perturb(model)
    fc1 = model.blocks[2].mlp.fc1
    f, s, d = fc1.factors, fc1.scale, 64
    for k in range(4):
        expected = s * f.v @ f.cores(fc1.first + k, 1)[0].t() @ f.u
        assert torch.allclose(fc1.delta_weight()[k * d : (k + 1) * d].float(), expected, atol=1e-6)
    fc2 = model.blocks[2].mlp.fc2
    for k in range(4):  # fc2's input quarters
        expected = s * f.v @ f.cores(fc2.first + k, 1)[0].t() @ f.u
        assert torch.allclose(fc2.delta_weight()[:, k * d : (k + 1) * d].float(), expected, atol=1e-6)
    # the forward pass adds exactly that increment
    fc2.eval()
    x = torch.randn(3, 5, 4 * d)
    with torch.no_grad():
        assert torch.allclose(fc2(x), fc2.base(x) + x @ fc2.delta_weight().float().t(), atol=1e-5)


def test_repadapter_reparameterisation_is_exact():
    method = methods.get_method("repadapter")
    model = method.apply(tiny_vit(), make_config(method, {"groups": 4, "hidden_dim": 8})).eval()
    _perturb(model)
    layer = model.blocks[0].attn.qkv
    assert isinstance(layer, RepAdaptedLinear) and isinstance(layer.adapter, GroupAdapter)
    # the up-projection is block-diagonal over the groups
    up = layer.adapter.dense_up()
    assert up.shape == (64, 8) and torch.count_nonzero(up[:16, 2:]) == 0 and torch.count_nonzero(up[16:32, :2]) == 0
    x = torch.randn(2, 5, 64, dtype=torch.float64)
    with torch.no_grad():
        adapted = copy.deepcopy(layer).double()(x)
        merged = copy.deepcopy(layer).folded().double()(x)
    # the fold is computed in float64 and stored in the linear's float32: exact to float32 rounding
    assert torch.allclose(adapted, merged, atol=1e-6, rtol=1e-6)
    # merging the whole model leaves plain linears with the same outputs
    with torch.no_grad():
        before = model(_inputs())
        plain = method.merge(copy.deepcopy(model))
        after = plain(_inputs())
    assert torch.allclose(before, after, atol=1e-5)
    assert not any(isinstance(m, (RepAdaptedLinear, GroupAdapter)) for m in plain.modules())
    assert type(plain.blocks[0].attn.qkv) is torch.nn.Linear


def test_repadapter_placement_and_a_bias_free_qkv():
    method = methods.get_method("repadapter")
    model = method.apply(tiny_vit(qkv_bias=False), make_config(method, {"placement": "attn"})).eval()
    assert isinstance(model.blocks[0].attn.qkv, RepAdaptedLinear) and type(model.blocks[0].mlp.fc1) is torch.nn.Linear
    _perturb(model)
    with torch.no_grad():
        before = model(_inputs())
        merged = method.merge(copy.deepcopy(model))
    assert merged.blocks[0].attn.qkv.bias is not None  # the adapter's shift becomes the new bias
    with torch.no_grad():
        assert torch.allclose(before, merged(_inputs()), atol=1e-5)


def test_fact_merge_is_exact_on_swin_and_drops_the_factors():
    method = methods.get_method("fact_tt")
    model = method.apply(tiny_swin(), make_config(method, {"rank": 4})).eval()
    _perturb(model)
    with torch.no_grad():
        before = model(_inputs())
        merged = method.merge(copy.deepcopy(model))
        assert torch.allclose(before, merged(_inputs()), atol=1e-5)
    assert not hasattr(merged, "fact") and not any(isinstance(m, (FacTLinear, FacTFactors)) for m in merged.modules())


@pytest.mark.parametrize("name", ["fact_tt", "fact_tk", "repadapter"])
def test_budget_fit_respects_the_structure_and_refuses_beyond_it(name: str):
    method = methods.get_method(name)
    spec = backbone_spec("vit_base_patch16_224")
    choice = choose_for_budget(method, spec, 300_000)
    assert abs(choice.count - 300_000) <= 0.05 * 300_000
    field, (cap, _) = next(iter(method.size_limits(spec, choice.config).items()))
    assert cap == 768 and getattr(choice.config, field) <= cap
    most = method.count(spec, method.largest_config(spec))
    with pytest.raises(BenchError, match=f"at most {most:,}"):
        choose_for_budget(method, spec, 3 * most)


def test_budget_between_fact_ranks_is_refused_with_the_nearest_counts():
    """The TT count grows as r²: on the demo ViT (width 64, 4 blocks) ranks 16 and 17 give 14,336
    and 16,048, and 15,150 is within 5 % of neither."""
    method = methods.get_method("fact_tt")
    spec = backbone_spec("vit_demo_tiny")
    assert method.count(spec, make_config(method, {"rank": 16})) == 2 * 64 * 16 + 48 * 16**2 == 14_336
    assert choose_for_budget(method, spec, 14_336).config.rank == 16
    with pytest.raises(BenchError, match="nearest feasible counts are .*14,336, 16,048"):
        choose_for_budget(method, spec, 15_150)


def test_bad_settings_are_refused_in_one_line():
    rep = methods.get_method("repadapter")
    with pytest.raises(BenchError, match="hidden_dim=9 must be a positive multiple of groups=2"):
        make_config(rep, {"hidden_dim": "9"})
    with pytest.raises(BenchError, match="groups=3 does not divide the width 64"):
        rep.apply(tiny_vit(), make_config(rep, {"groups": 3, "hidden_dim": 6}))
    tt = methods.get_method("fact_tt")
    with pytest.raises(BenchError, match="rank=0 must be a positive integer"):
        make_config(tt, {"rank": "0"})
    with pytest.raises(BenchError, match="cannot tensorise blocks.0.mlp.fc1"):
        tt.apply(tiny_vit(mlp_ratio=2.5), make_config(tt))
