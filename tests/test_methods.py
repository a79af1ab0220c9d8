"""Conformance of the built-in methods, counts on real backbone shapes, and checks that can fail."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import methods
from bench.backbone import backbone_spec
from bench.inspect import built_trainable_params
from methods.base import BackboneSpec, EmptyConfig, Method, MethodError, freeze_all_but, make_config
from methods.conformance import run_checks, tiny_vit
from methods.lora import Lora


def test_lora_on_every_linear_passes_conformance():
    """The published configs are covered by tests/test_conformance.py; this is LoRA's other path."""
    method = methods.get_method("lora")
    results = run_checks(method, make_config(method, {"targets": "qkv,proj,fc1,fc2", "rank": 4}))
    failed = [(r.name, r.detail) for r in results if r.passed is False]
    assert not failed
    assert sum(r.passed is True for r in results) == 6  # every check applies to these methods


def test_lora_counts_on_vit_b16():
    lora = methods.get_method("lora")
    spec = backbone_spec("vit_base_patch16_224")
    assert lora.count(spec, make_config(lora)) == 294_912  # NOAH's "LoRA r=8, 0.29 M"
    all_linears = make_config(lora, {"targets": "qkv,proj,fc1,fc2"})
    assert lora.count(spec, all_linears) == 1_179_648
    # built on the meta device, so the closed form is checked against a real peft injection
    assert built_trainable_params(lora, all_linears, "vit_base_patch16_224") == 1_179_648


def test_lora_targets_are_anchored_on_blocks():
    model = Lora().apply(tiny_vit(), make_config(Lora(), {"targets": "qkv,proj,fc1,fc2"}))
    wrapped = {n.rsplit(".lora_A", 1)[0] for n, _ in model.named_parameters() if ".lora_A." in n}
    assert len(wrapped) == 4 * 12
    assert not any(n.startswith("patch_embed") for n in wrapped)  # the bare name `proj` would match it


def test_lora_for_budget_solves_rank_or_names_nearest():
    lora = methods.get_method("lora")
    spec = backbone_spec("vit_base_patch16_224")
    assert lora.for_budget(spec, 300_000).rank == 8
    assert lora.for_budget(spec, 150_000).rank == 4
    with pytest.raises(MethodError, match=r"nearest feasible counts are 36,864, 73,728"):
        lora.for_budget(spec, 27_000)


def test_full_and_linear_counts():
    spec = backbone_spec("vit_base_patch16_224")
    assert methods.get_method("full").count(spec, EmptyConfig()) == 85_798_656
    assert methods.get_method("linear").count(spec, EmptyConfig()) == 0


# -- the checks must be able to fail ---------------------------------------------------------


class _Broken(Method):
    name = "_broken"
    mergeable = False

    def count(self, spec: BackboneSpec, config) -> int:
        return 0

    def apply(self, model, config):
        freeze_all_but(model, [])
        return model


class NonZeroInit(_Broken):
    """An adapter whose init was overwritten (the V-PETL Bench bug): not the backbone at step 0."""

    def apply(self, model, config):
        model.extra = nn.Parameter(torch.full((model.embed_dim,), 0.5))
        hook = lambda mod, args, out: out + mod.extra  # noqa: E731
        model.norm.register_forward_hook(lambda m, a, o: hook(model, a, o))
        freeze_all_but(model, [model.extra])
        return model

    def count(self, spec, config):
        return spec.embed_dim


class BothFactorsZero(_Broken):
    """Two zero-initialised factors in a product (the KAdaptation bug): nothing ever learns."""

    def apply(self, model, config):
        d = model.embed_dim
        model.u = nn.Parameter(torch.zeros(d, 2))
        model.v = nn.Parameter(torch.zeros(2, d))
        model.norm.register_forward_hook(lambda m, a, o: o + o @ model.u @ model.v)
        freeze_all_but(model, [model.u, model.v])
        return model

    def count(self, spec, config):
        return 4 * spec.embed_dim


class LeaksBackbone(_Broken):
    """Forgets to freeze a backbone tensor and miscounts."""

    def apply(self, model, config):
        freeze_all_but(model, [model.blocks[0].norm1.weight])
        return model


def _failed(method: Method) -> set[str]:
    return {r.name for r in run_checks(method, EmptyConfig()) if r.passed is False}


def test_checks_catch_a_non_identity_init():
    assert "identity at init" in _failed(NonZeroInit())


def test_checks_catch_factors_without_gradient():
    assert "every trainable tensor gets a gradient within two steps" in _failed(BothFactorsZero())


def test_checks_catch_wrong_counts():
    assert "count() equals the built model (head excluded)" in _failed(LeaksBackbone())


def test_full_fine_tuning_warns_about_the_shared_peft_learning_rate(noah_root, tmp_path):
    """Regression: with the preset's PEFT learning rate, full fine-tuning fell below the
    linear probe on realmini; a sweep that runs it untuned must say so, once, before training."""
    from bench.sweep import SweepRequest, plan_sweep

    request = SweepRequest(suite="tinyfolder", methods=["full", "lora"], seeds=[0], data_root=noah_root)
    plan = plan_sweep(request, tmp_path)
    caveats = [w for w in plan.warnings if "full fine-tuning" in w]
    assert len(caveats) == 1 and "bench tune --methods full" in caveats[0] and f"{plan.preset.lr:g}" in caveats[0]
    assert (
        plan_sweep(
            SweepRequest(suite="tinyfolder", methods=["lora"], seeds=[0], data_root=noah_root), tmp_path
        ).warnings
        == []
    )
    assert methods.get_method("full").preset_caveat(1e-4) is None  # a full-fine-tuning rate draws no warning
    assert methods.get_method("full").preset_caveat(1e-3) is not None  # VTAB-1K's PEFT rate does
