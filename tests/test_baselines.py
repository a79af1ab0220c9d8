"""The vision PEFT baselines: BitFit, SSF, VPT, AdaptFormer. What is specific to each method;
the shared checks (identity, gradients, frozen weights, count, merge) run through run_checks."""

from __future__ import annotations

import copy

import pytest
import torch

import methods
from bench.backbone import backbone_spec
from methods.base import make_config, trainable_params_excluding_head
from methods.conformance import run_checks, tiny_swin, tiny_vit


def _inputs(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _adapted(name: str, family: str = "vit", **overrides):
    method = methods.get_method(name)
    model = tiny_vit() if family == "vit" else tiny_swin()
    torch.manual_seed(0)
    return method, method.apply(model, make_config(method, overrides)).eval()


@pytest.mark.parametrize(
    ("name", "family", "overrides"),
    [
        ("bitfit", "vit", {}),
        ("bitfit", "swin", {}),
        ("ssf", "vit", {}),
        ("ssf", "swin", {}),
        ("vpt_shallow", "vit", {}),
        ("vpt_deep", "vit", {"num_tokens": 3, "dropout": 0.1}),
        ("adaptformer", "vit", {}),
        ("adaptformer", "swin", {"bottleneck": 8}),
        ("adapter", "vit", {}),
        ("adapter", "swin", {"bottleneck": 8, "train_norms": False}),
    ],
)
def test_baselines_pass_conformance(name: str, family: str, overrides: dict):
    method = methods.get_method(name)
    results = run_checks(method, make_config(method, overrides), family=family)
    failed = [(r.name, r.detail) for r in results if r.passed is False]
    assert not failed
    applicable = {r.name for r in results if r.passed is True}
    assert any("merge" in n for n in applicable) == method.mergeable
    assert any("identity" in n for n in applicable) == method.identity_at_init


BASELINES = ("bitfit", "ssf", "vpt_shallow", "vpt_deep", "adaptformer", "adapter")


def test_bench_methods_check_passes_for_every_baseline(cli):
    for name in BASELINES:
        code, out, err = cli("methods", "check", name)
        assert code == 0, (name, out, err)
        if name.startswith("vpt"):  # the declared exception to identity, and what holds instead
            assert "skip" in out and "prompts are dropped" in out
    code, _, err = cli("methods", "check", "vpt_deep", "--backbone", "swin_base_patch4_window7_224")
    assert code == 2 and "cannot run on" in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------- BitFit


def test_bitfit_trains_exactly_the_backbone_biases_and_counts_vit_b16():
    _, model = _adapted("bitfit")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad and not n.startswith("head.")]
    assert trainable and all(n.endswith(".bias") for n in trainable)
    biases = [n for n, _ in model.named_parameters() if n.endswith(".bias") and not n.startswith("head.")]
    assert sorted(trainable) == sorted(biases)
    spec = backbone_spec("vit_base_patch16_224")
    # 12 x (qkv 2304 + proj 768 + two norms 1536 + fc1 3072 + fc2 768) + patch embedding + final norm
    assert methods.get_method("bitfit").count(spec, make_config(methods.get_method("bitfit"))) == 102_912


def test_bitfit_leaves_swin_relative_position_tables_frozen():
    _, model = _adapted("bitfit", "swin")
    tables = [p for n, p in model.named_parameters() if "relative_position_bias_table" in n]
    assert tables and not any(p.requires_grad for p in tables)


# ---------------------------------------------------------------------------------------- SSF


def test_ssf_sits_after_every_official_operation():
    from methods.ssf import ScaleShift

    _, model = _adapted("ssf")
    wrapped = {n for n, m in model.named_modules() if isinstance(m, ScaleShift)}
    per_block = {"norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"}
    assert wrapped == {"patch_embed.proj", "norm"} | {f"blocks.{i}.{op}" for i in range(12) for op in per_block}
    # fc1's scale is h wide and acts before the GELU: a negative scale changes the output non-linearly
    fc1 = model.blocks[0].mlp.fc1
    assert fc1.ssf_scale.numel() == 256
    x = _inputs()
    with torch.no_grad():
        before = model(x)
        fc1.ssf_scale.fill_(-1.0)
        after = model(x)
    assert not torch.allclose(before, after)


def test_ssf_swin_scales_the_patch_merging_norm_before_the_reduction():
    from methods.ssf import ScaleShift

    _, model = _adapted("ssf", "swin")
    merge_norm = model.layers[1].downsample.norm
    assert isinstance(merge_norm, ScaleShift) and merge_norm.ssf_scale.numel() == 4 * 32
    assert not isinstance(model.layers[1].downsample.reduction, ScaleShift)


def test_ssf_count_on_vit_b16():
    ssf = methods.get_method("ssf")
    assert ssf.count(backbone_spec("vit_base_patch16_224"), make_config(ssf)) == 2 * (12 * (7 * 768 + 3072) + 2 * 768)


def test_ssf_official_normal_init_and_merge_without_qkv_bias():
    """init=normal (the official N(1, 0.02)) is not the backbone; merge folds it, also into a bias-free qkv."""
    ssf = methods.get_method("ssf")
    torch.manual_seed(0)
    plain = tiny_vit(qkv_bias=False)
    model = ssf.apply(copy.deepcopy(plain), make_config(ssf, {"init": "normal"})).eval()
    scale = model.blocks[0].attn.qkv.ssf_scale
    assert 0.0 < float((scale.detach() - 1).std()) < 0.05
    x = _inputs()
    with torch.no_grad():
        assert not torch.allclose(model(x), plain(x), atol=1e-4)
        expected = model(x)
        merged = ssf.merge(model).eval()
        assert torch.allclose(merged(x), expected, atol=1e-5)
    assert merged.blocks[0].attn.qkv.bias is not None  # the shift became the qkv's bias
    assert trainable_params_excluding_head(merged) == 0  # nothing left to train: plain layers, frozen


# ---------------------------------------------------------------------------------------- VPT


@pytest.mark.parametrize("name", ["vpt_shallow", "vpt_deep"])
def test_vpt_prompts_sit_after_the_class_token_and_deep_replaces_them_per_block(name: str):
    method, model = _adapted(name, num_tokens=4)
    seen: dict[int, torch.Tensor] = {}
    for i in (0, 5):
        model.blocks[i].register_forward_pre_hook(lambda _m, args, i=i: seen.__setitem__(i, args[0]))
    with torch.no_grad():
        model(_inputs())
    prompts = model.vpt.prompts
    assert prompts.shape == ((12 if method.deep else 1), 4, 64)
    assert seen[0].shape[1] == 1 + 4 + 16  # class token, prompts, patches
    assert torch.equal(seen[0][0, 1:5], prompts[0])
    # block 5 reads its own prompts (Deep) or block 4's outputs at the prompt positions (Shallow)
    assert torch.equal(seen[5][0, 1:5], prompts[5 if method.deep else 0]) == method.deep


def test_vpt_deep_gives_every_block_prompts_a_gradient():
    _, model = _adapted("vpt_deep", num_tokens=2)
    model.train()
    model(_inputs()).sum().backward()
    per_layer = model.vpt.prompts.grad.abs().sum(dim=(1, 2))
    assert bool((per_layer > 0).all())


def test_vpt_counts_budgets_and_refuses_swin():
    spec = backbone_spec("vit_base_patch16_224")
    shallow, deep = methods.get_method("vpt_shallow"), methods.get_method("vpt_deep")
    assert shallow.count(spec, make_config(shallow)) == 10 * 768
    assert deep.count(spec, make_config(deep)) == 12 * 10 * 768
    assert deep.for_budget(spec, 460_800).num_tokens == 50
    with pytest.raises(methods.MethodError, match="nearest feasible counts"):
        deep.for_budget(spec, 4_000)  # one token on every block is already 9,216
    with pytest.raises(methods.MethodError, match="cannot run on .*swin.*prompt tokens"):
        deep.apply(tiny_swin(), make_config(deep))


# ---------------------------------------------------------------------------------------- AdaptFormer


@pytest.mark.parametrize("family", ["vit", "swin"])
def test_adaptformer_adds_the_scaled_adapter_of_the_post_attention_state_to_the_block(family: str):
    method, model = _adapted("adaptformer", family, bottleneck=4)
    block = model.blocks[3] if family == "vit" else model.layers[1].blocks[1]
    adapter = block.adaptmlp
    assert adapter.scale == 0.1 and adapter.dropout == 0.1
    assert not adapter.up_proj.weight.any() and adapter.down_proj.weight.abs().sum() > 0
    with torch.no_grad():
        adapter.up_proj.weight.normal_()
        x = torch.randn(2, 17, 64) if family == "vit" else torch.randn(2, 4, 4, 64)
        after_attn = x + block.attn(block.norm1(x)) if family == "vit" else x + block._attn(block.norm1(x))
        mlp = block.mlp(block.norm2(after_attn))
        hidden = torch.relu(adapter.down_proj(after_attn))  # reads x itself, not LN(x)
        expected = after_attn + mlp + 0.1 * adapter.up_proj(hidden)
        assert torch.allclose(block(x), expected, atol=1e-5)


def test_adaptformer_counts_budgets_and_limits_on_vit_b16():
    spec = backbone_spec("vit_base_patch16_224")
    af = methods.get_method("adaptformer")
    assert af.count(spec, make_config(af)) == 12 * (2 * 768 * 64 + 64 + 768) == 1_189_632
    assert af.count(spec, make_config(af, {"bottleneck": 8})) == 156_768  # the 0.16 M of VTAB-1K tables
    assert af.for_budget(spec, 156_768).bottleneck == 8
    assert af.size_limits(spec, make_config(af))["bottleneck"][0] == 768  # no wider than the model
    with pytest.raises(methods.MethodError, match="scale=0 is out of range"):
        make_config(af, {"scale": "0"})


# ---------------------------------------------------------------------------------------- Adapter (Houlsby)


@pytest.mark.parametrize("family", ["vit", "swin"])
def test_adapter_follows_the_attention_and_mlp_branches_before_the_residual(family: str):
    _, model = _adapted("adapter", family, bottleneck=4, init_scale=0.1)
    block = model.blocks[3] if family == "vit" else model.layers[1].blocks[1]
    assert block.norm1.weight.requires_grad and block.norm2.bias.requires_grad  # the paper trains the norms
    assert float(block.adapter_mlp.up_proj.weight.detach().abs().max()) <= 0.2  # truncated at 2 std
    with torch.no_grad():
        x = torch.randn(2, 17, 64) if family == "vit" else torch.randn(2, 4, 4, 64)

        def adapt(a, h):
            return h + a.up_proj(torch.nn.functional.gelu(a.down_proj(h)))

        attn = block.attn(block.norm1(x)) if family == "vit" else block._attn(block.norm1(x))
        mid = x + adapt(block.adapter_attn, attn)
        expected = mid + adapt(block.adapter_mlp, block.mlp(block.norm2(mid)))
        assert torch.allclose(block(x), expected, atol=1e-5)


def test_adapter_counts_and_budgets_on_vit_b16():
    spec = backbone_spec("vit_base_patch16_224")
    ad = methods.get_method("adapter")
    assert ad.count(spec, make_config(ad)) == 12 * (2 * (2 * 768 * 64 + 64 + 768) + 4 * 768) == 2_416_128
    assert ad.count(spec, make_config(ad, {"bottleneck": 8})) == 350_400
    assert ad.count(spec, make_config(ad, {"bottleneck": 8, "train_norms": False})) == 350_400 - 12 * 4 * 768
    assert ad.for_budget(spec, 350_400).bottleneck == 8


def test_methods_budget_names_the_methods_that_cannot_reach_it(cli):
    """Listing every method, one that cannot reach the budget is named, not fatal; named, it is refused."""
    code, out, _ = cli("methods", "budget", "--backbone", "vit_base_patch16_224", "--budget", "0.3M")
    assert code == 0 and "vpt_deep" in out and "no configuration within ±5% of 300,000: vpt_shallow" in out
    code, _, err = cli(
        "methods", "budget", "--backbone", "vit_base_patch16_224", "--budget", "0.3M", "--methods", "vpt_shallow"
    )
    assert code == 2 and "num_tokens <= 200" in err
