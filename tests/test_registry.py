"""The method and suite registries, and run identity."""

from __future__ import annotations

import subprocess
import sys

import pytest

import methods
import suites
from bench.spec import RunSpec
from methods.base import Method, MethodError, make_config, parse_set_options, register_method


def test_builtin_methods_are_registered():
    names = methods.available_methods()
    assert {"linear", "full", "lora"} <= set(names)
    assert isinstance(methods.get_method("lora"), Method)


def test_unknown_method_names_the_alternatives():
    with pytest.raises(MethodError, match=r"unknown method 'loraa'.*lora"):
        methods.get_method("loraa")


def test_a_name_cannot_be_registered_twice():
    class Impostor(Method):
        name = "lora"

        def apply(self, model, config):
            return model

        def count(self, spec, config):
            return 0

    with pytest.raises(TypeError, match="taken"):
        register_method(Impostor)


def test_config_overrides_are_typed_and_checked():
    lora = methods.get_method("lora")
    cfg = make_config(lora, parse_set_options(["rank=4", "alpha=none", "targets=qkv,fc1"]))
    assert (cfg.rank, cfg.alpha, cfg.targets) == (4, None, "qkv,fc1")
    with pytest.raises(MethodError, match="no config field ranky"):
        make_config(lora, {"ranky": "4"})
    with pytest.raises(MethodError, match="rank='four' is not a valid int"):
        make_config(lora, {"rank": "four"})
    with pytest.raises(MethodError, match="targets 'qkv,head'"):
        make_config(lora, {"targets": "qkv,head"})
    with pytest.raises(MethodError, match="key=value"):
        parse_set_options(["rank"])


def test_suites_registry_has_the_protocols():
    assert {"vtab1k", "folder", "demo"} <= set(suites.available_suites())
    vtab = suites.get_suite("vtab1k")
    assert len(vtab.tasks) == 19
    groups = [t.group for t in vtab.tasks]
    assert (groups.count("natural"), groups.count("specialized"), groups.count("structured")) == (7, 4, 8)
    assert all(t.split_sizes["train800val200.txt"] == 1000 for t in vtab.tasks)
    with pytest.raises(suites.DataError, match="unknown suite 'vtab'"):
        suites.get_suite("vtab")


def _spec(**changes) -> RunSpec:
    base = dict(
        suite="vtab1k",
        task="dtd",
        stage="final",
        method="lora",
        method_config={"rank": 8, "alpha": None},
        hparams={"lr": 0.001, "epochs": 100},
        seed=0,
        preset="vtab1k",
        backbone="vit_base_patch16_224.orig_in21k",
        checkpoint="sha256:abc",
        data="f00",
        num_classes=47,
    )
    base.update(changes)
    return RunSpec(**base)


def test_run_key_is_stable_and_sensitive():
    key = _spec().run_key
    # Same content in another dict order gives the same key; any field change gives another.
    assert _spec(method_config={"alpha": None, "rank": 8}).run_key == key
    for change in (
        {"seed": 1},
        {"hparams": {"lr": 0.001, "epochs": 99}},
        {"checkpoint": "sha256:abd"},
        {"data": "f01"},
        {"method_config": {"rank": 4, "alpha": None}},
        {"stage": "tune"},
    ):
        assert _spec(**change).run_key != key, change
    # Stable across interpreters (no use of hash()): a fresh process computes the same key.
    code = "from tests.test_registry import _spec; print(_spec().run_key)"
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == key
    # The contract, computed independently: sha256 of the sorted, compact JSON of every field.
    import dataclasses
    import hashlib
    import json

    payload = json.dumps(dataclasses.asdict(_spec()), sort_keys=True, separators=(",", ":"))
    assert key == hashlib.sha256(payload.encode()).hexdigest()[:32]
    # Pinned: changing the canonical form silently would orphan every stored run.
    assert key == "24d42288dc74335b7d1c85159f4be556"


def test_an_added_option_at_its_default_keeps_the_run_keys_of_finished_runs():
    """LoRA gained use_dora, use_rslora and init after LoRA runs were recorded: at their defaults they
    stay out of the run's identity (the old keys hold), and set they enter it (new keys)."""
    from methods.base import get_method, identity_dict, make_config

    lora = get_method("lora")
    as_recorded_before = {"rank": 8, "alpha": None, "dropout": 0.0, "targets": "qkv"}
    assert identity_dict(make_config(lora)) == as_recorded_before
    assert identity_dict(make_config(lora, {"use_dora": True})) == {**as_recorded_before, "use_dora": True}
    assert identity_dict(make_config(lora, {"init": "pissa"}))["init"] == "pissa"
    # a field of the original config is always part of the identity, default or not
    assert "kernels" in identity_dict(make_config(get_method("karst")))


def test_every_method_says_how_it_adapts_and_where_it_comes_from():
    from methods.base import CATEGORIES

    for name, cls in methods.available_methods().items():
        assert cls.category in CATEGORIES, f"{name}: category {cls.category!r}"
        if cls.category != "reference":
            assert "arXiv" in cls.paper, f"{name}: paper {cls.paper!r} should cite the arXiv id"
        if cls.published_params:
            assert cls.published_params.endswith("M") and float(cls.published_params[:-1]) > 0


def test_methods_list_groups_by_category_and_counts_on_the_backbone(cli):
    import json

    from bench.backbone import backbone_spec
    from methods.base import CATEGORIES, make_config

    code, out, _ = cli("methods", "list", "--json", "--backbone", "swin_demo_tiny")
    assert code == 0
    rows = json.loads(out)
    assert {r["name"] for r in rows} == set(methods.available_methods())
    order = [CATEGORIES.index(r["category"]) for r in rows]
    assert order == sorted(order)  # grouped, in the documented order
    spec = backbone_spec("swin_demo_tiny")
    for r in rows:
        m = methods.get_method(r["name"])
        if "swin" in r["backbones"]:
            assert r["trainable_params"] == m.count(spec, make_config(m))
        else:
            assert r["trainable_params"] is None  # e.g. VPT: refused on Swin, shown as unsupported
    code, out, _ = cli("methods", "list")
    assert code == 0
    for category in {r["category"] for r in rows}:
        assert f"{category} methods" in out
