"""Backbones beyond ViT-B: Swin (tiny ones built by timm, Swin-B on the meta device), ViT-L/H
counts, DINOv2 (registers, layer scale) and CLIP loading, normalisation and adaptation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.data import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

from bench.backbone import backbone_spec, build_backbone, create_backbone, load_weights, normalization, resolve_weights
from bench.budget import choose_for_budget
from bench.tracking import Tracker, default_tracking_uri
from methods import available_methods, get_method, make_config
from methods.base import MethodError, backbone_spec_of, trainable_params_excluding_head
from methods.conformance import run_checks, tiny_swin
from methods.karst import KarstLinear
from methods.karst.model import layer_ranks

SWIN_B = "swin_base_patch4_window7_224.ms_in22k"

# The variants of Swin methods that take other code paths than the published configs (those are
# covered for every registered method by tests/test_conformance.py).
SWIN_CASES = [
    ("lora", {"targets": "qkv,proj,fc1,fc2"}),
    ("karst", {"rescale": "scalar", "mode": "structured", "kernels": 1}),
    ("kadaptation", {"n": 8}),
    ("dtl", {"fusion_size": 3, "add_from": 1}),
]


@pytest.mark.parametrize(("name", "overrides"), SWIN_CASES)
def test_every_swin_method_conforms_on_a_tiny_swin(name: str, overrides: dict):
    method = get_method(name)
    results = {r.name: r for r in run_checks(method, make_config(method, overrides), family="swin")}
    failed = {n: r.detail for n, r in results.items() if r.passed is False}
    assert not failed
    assert results["identity at init"].passed is True
    assert results["count() equals the built model (head excluded)"].passed is True
    assert results["every trainable tensor gets a gradient within two steps"].passed is True
    merge = results["merge() preserves outputs and leaves a plain backbone"]
    assert merge.passed is (True if method.mergeable else None)


def _meta(name: str, **kwargs) -> torch.nn.Module:
    with torch.device("meta"):
        return timm.create_model(name, pretrained=False, num_classes=0, **kwargs)


def _built(method_name: str, backbone: str, overrides: dict | None = None) -> tuple[int, int]:
    """(count(), trainable parameters of the built model) on the meta device."""
    method = get_method(method_name)
    config = make_config(method, overrides or {})
    spec = backbone_spec_of(_meta(backbone), backbone)
    model = method.apply(_meta(backbone), config)
    return method.count(spec, config), trainable_params_excluding_head(model)


def test_swin_b_description_is_read_off_the_model():
    spec = backbone_spec(SWIN_B)
    assert spec.family == "swin" and spec.attention == "windowed" and not spec.class_token
    assert spec.stage_widths == (128, 256, 512, 1024) and spec.depth == 24 and spec.feature_dim == 1024
    assert [b.stage for b in spec.blocks].count(2) == 18 and {b.window for b in spec.blocks} == {7}
    qkv = spec.blocks[-1].linear("qkv")
    assert (qkv.path, qkv.in_features, qkv.out_features, qkv.splits) == ("layers.3.blocks.1.attn.qkv", 1024, 3072, 3)
    assert not any("downsample" in lin.path for lin in spec.linears())
    vit = backbone_spec("vit_base_patch14_reg4_dinov2", 224)
    assert vit.family == "vit" and vit.class_token and vit.num_prefix_tokens == 5 and vit.num_patches == 256


def test_karst_on_swin_b_follows_the_official_swin_script():
    spec = backbone_spec(SWIN_B)
    ranks = layer_ranks(spec, factor=8, rank=8)
    by_stage = {lin.path.split(".")[1]: r for lin, r in zip(spec.linears(), ranks, strict=True)}
    assert by_stage == {"0": 2, "1": 2, "2": 4, "3": 8}  # HIERARCHY_RANK: m 16, 32, 64, 128 -> 2, 2, 4, 8
    # closed form per stage: depth_s * (N (4 f^2 + 16 r_s d_s / f) + R_s)
    stages = [(2, 128, 2), (2, 256, 2), (18, 512, 4), (2, 1024, 8)]
    adapters = sum(n * 2 * (4 * 64 + 16 * r * d // 8) for n, d, r in stages)
    assert adapters + sum(n * 6 * d for n, d, _ in stages) == 303_616
    assert _built("karst", SWIN_B) == (303_616, 303_616)
    assert _built("karst", SWIN_B, {"rescale": "scalar"}) == (adapters + 24 * 6, 231_568)
    model = get_method("karst").apply(_meta(SWIN_B), make_config(get_method("karst")))
    adapted = {n for n, m in model.named_modules() if isinstance(m, KarstLinear)}
    assert len(adapted) == 4 * 24 and not any("downsample" in n or "patch_embed" in n for n in adapted)
    assert model.layers[2].blocks[0].attn.qkv.scaling == 1 / 4  # s = alpha / r per layer, as the code


@pytest.mark.parametrize(
    ("name", "overrides", "expected"),
    [
        ("lora", {}, 8 * 4 * (2 * 128 + 2 * 256 + 18 * 512 + 2 * 1024)),
        (
            "kadaptation",
            {},
            sum(n * (2 * 32 * 2 * (d // 32) + d) for n, d in ((2, 128), (2, 256), (18, 512), (2, 1024))) + 4 * 32 * 32,
        ),
        ("dtl", {"rank": 4}, 2 * 4 * (18 * 512 + 2 * 1024)),  # the Swin scripts: maps on blocks 4-23
        ("dtl", {"rank": 4, "fusion_size": 5}, 2 * 4 * (18 * 512 + 2 * 1024) + 25 * (512 + 1024)),
        ("linear", {}, 0),
    ],
)
def test_swin_b_counts_match_closed_forms_and_the_built_model(name: str, overrides: dict, expected: int):
    assert _built(name, SWIN_B, overrides) == (expected, expected)


def test_swin_b_budgets_fit_every_swin_method_and_full_is_the_backbone():
    spec = backbone_spec(SWIN_B)
    for name in ("lora", "karst", "kadaptation", "dtl"):
        choice = choose_for_budget(get_method(name), spec, 300_000)
        assert abs(choice.deviation) <= 0.05 and choice.count == _built(name, SWIN_B, choice.to_dict()["config"])[1]
    assert choose_for_budget(get_method("full"), spec, 300_000).count == spec.backbone_params == 86_743_224


def test_merged_swin_is_a_plain_swin():
    for name in ("lora", "karst", "kadaptation"):
        method = get_method(name)
        merged = method.merge(method.apply(tiny_swin(), make_config(method, {"n": 8} if name == "kadaptation" else {})))
        assert type(merged) is type(tiny_swin()) and set(merged.state_dict()) == set(tiny_swin().state_dict())


@pytest.mark.parametrize(
    ("backbone", "depth", "d"), [("vit_large_patch16_224", 24, 1024), ("vit_huge_patch14_224", 32, 1280)]
)
def test_vit_large_and_huge_counts_and_budgets(backbone: str, depth: int, d: int):
    h = 4 * d
    assert _built("lora", backbone) == (depth * 8 * (d + 3 * d),) * 2
    karst = depth * (2 * (4 * 64 + (8 * d + 2 * h)) + 6 * d)
    assert _built("karst", backbone) == (karst, karst)
    assert _built("kadaptation", backbone) == (depth * (2 * 32 * 2 * (d // 32) + d) + 4 * 32 * 32,) * 2
    assert _built("dtl", backbone) == (depth * 2 * 2 * d,) * 2
    spec = backbone_spec(backbone)
    for name in ("lora", "karst", "kadaptation", "dtl", "sparse_tuning"):
        choice = choose_for_budget(get_method(name), spec, 1_000_000)
        assert abs(choice.deviation) <= 0.05


def test_sparse_tuning_refuses_swin_in_one_line_before_any_run(cli, workdir: Path):
    code, _, err = cli("run", "--suite", "demo", "--backbone", "swin_demo_tiny", "--methods", "lora,sparse_tuning")
    line = err.strip()
    assert code == 2 and "\n" not in line and "Traceback" not in err
    assert "sparse_tuning" in line and "swin_demo_tiny" in line and "windows" in line and "class token" in line
    assert not (workdir / "data" / "demo").exists()  # refused before the data was even prepared
    code, _, err = cli("methods", "check", "sparse_tuning", "--backbone", "swin_demo_tiny")
    assert code == 2 and len(err.strip().splitlines()) == 1
    with pytest.raises(MethodError, match="cannot run on"):
        get_method("sparse_tuning").apply(tiny_swin(), make_config(get_method("sparse_tuning")))


def test_methods_list_info_budget_on_swin(cli):
    code, out, _ = cli("methods", "list", "--json")
    families = {m["name"]: m["backbones"] for m in json.loads(out)}
    assert code == 0 and families["karst"] == ["vit", "swin"] and families["sparse_tuning"] == ["vit"]
    code, out, _ = cli("methods", "info", "karst", "--backbone", SWIN_B, "--json")
    info = json.loads(out)
    assert code == 0 and info["trainable_params"] == info["trainable_params_built"] == 303_616
    assert info["head_params_per_class"] == 1025 and info["backbone_family"] == "swin"
    code, out, _ = cli("methods", "budget", "--budget", "300k", "--backbone", SWIN_B, "--json")
    swin_methods = {name for name, cls in available_methods().items() if "swin" in cls.families}
    assert code == 0 and {r["method"] for r in json.loads(out)} == swin_methods
    assert {"dtl", "full", "kadaptation", "karst", "linear", "lora"} <= swin_methods
    code, out, _ = cli("methods", "budget", "--budget", "300k", "--backbone", SWIN_B)
    assert code == 0 and "do not support swin backbones: sparse_tuning" in out


def test_swin_checkpoint_loads_offline_and_keeps_a_fresh_head(tmp_path: Path):
    torch.manual_seed(3)
    source = create_backbone("swin_demo_tiny", num_classes=0)
    state = {k: v.clone() for k, v in source.state_dict().items()}
    path = tmp_path / "swin.safetensors"
    save_file(state, str(path))
    weights = resolve_weights("swin_demo_tiny", path, pretrained=True)
    model = build_backbone("swin_demo_tiny", num_classes=4, img_size=32, drop_path=0.0, weights=weights, seed=0)
    loaded = model.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    assert model.head.fc.weight.shape == (4, 64) and float(model.head.fc.bias.detach().abs().sum()) == 0.0


def _tiny(name: str, img_size: int, **kwargs) -> torch.nn.Module:
    return create_backbone(name, num_classes=0, img_size=img_size, embed_dim=64, depth=2, num_heads=2, **kwargs)


@pytest.mark.parametrize("name", ["vit_base_patch14_dinov2", "vit_base_patch14_reg4_dinov2"])
def test_dinov2_loads_resamples_its_position_embedding_and_adapts(tmp_path: Path, name: str):
    torch.manual_seed(0)
    source = _tiny(name, img_size=56)  # 4 x 4 patches of 14 px
    path = tmp_path / "dinov2.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))

    def loaded() -> torch.nn.Module:
        model = _tiny(name, img_size=28)  # 2 x 2 patches: the position embedding must be resampled
        load_weights(model, path, name)
        return model.eval()

    model = loaded()
    registers = "reg4" in name  # register tokens carry no position (no_embed_class)
    assert source.pos_embed.shape[1] == (16 if registers else 17)
    assert model.pos_embed.shape == (1, 4 if registers else 5, 64)
    assert torch.equal(model.blocks[1].ls2.gamma, source.blocks[1].ls2.gamma)  # layer scale loaded
    assert model.num_prefix_tokens == (5 if registers else 1)
    assert normalization(model) == ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    spec = backbone_spec_of(model, name)
    x = torch.randn(2, 3, 28, 28)
    for method_name in ("karst", "lora", "dtl"):
        method = get_method(method_name)
        config = make_config(method, {"rank": 2} if method_name == "karst" else {})
        adapted = method.apply(loaded(), config).eval()
        with torch.no_grad():
            diff = float((method.reference(loaded()).eval()(x) - adapted(x)).abs().max())
        assert diff < 1e-5
        assert method.count(spec, config) == trainable_params_excluding_head(adapted)


def test_clip_is_pre_norm_with_its_own_normalisation(tmp_path: Path):
    model = _tiny("vit_base_patch16_clip_224.openai", img_size=32)
    assert isinstance(model.norm_pre, torch.nn.LayerNorm)
    assert normalization(model) == (tuple(OPENAI_CLIP_MEAN), tuple(OPENAI_CLIP_STD))
    spec = backbone_spec("vit_base_patch16_clip_224.openai", 224)
    assert spec.family == "vit" and spec.num_patches == 196
    assert _built("karst", "vit_base_patch16_clip_224.openai") == (356_352, 356_352)


@pytest.mark.slow
def test_demo_suite_runs_a_tiny_swin_through_run_report_and_tune(cli, workdir: Path):
    code, out, err = cli(
        "run",
        "--suite",
        "demo",
        "--backbone",
        "swin_demo_tiny",
        "--methods",
        "karst,dtl",
        "--seeds",
        "1",
        "--epochs",
        "1",
    )
    assert code == 0, err
    runs = Tracker(default_tracking_uri(workdir)).search("bench/demo")
    assert len(runs) == 2 and all(r.data.tags["bench.backbone"] == "swin_demo_tiny" for r in runs)
    assert {r.data.tags["bench.method"] for r in runs} == {"karst", "dtl"}
    assert all(r.info.status == "FINISHED" and 0.0 <= r.data.metrics["test/acc"] <= 1.0 for r in runs)
    code, out, err = cli("report", "--suite", "demo", "--format", "md", "--out", str(workdir / "report"))
    assert code == 0, err
    assert any("karst" in p.read_text() and "dtl" in p.read_text() for p in (workdir / "report").glob("*.md"))
    tune = ("tune", "--suite", "demo", "--backbone", "swin_demo_tiny", "--methods", "karst", "--trials", "1")
    code, out, err = cli(*tune, "--epochs", "1", "--json")
    assert code == 0, err
    [trial] = Tracker(default_tracking_uri(workdir)).search("bench/demo-tune")
    assert trial.data.tags["bench.stage"] == "tune" and trial.data.tags["bench.backbone"] == "swin_demo_tiny"
