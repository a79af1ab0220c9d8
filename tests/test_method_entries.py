"""Method entries in --methods: named variants (karst[rescale=none]) and compositions (karst+bitfit).

The grammar and labels, the run-key invariance of plain names, one-line refusals through the CLI,
compositions as one method (count, identity at init, merge, collisions), and a demo sweep end to end.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
from pathlib import Path

import pytest
import torch

from bench.errors import BenchError
from bench.method_entries import (
    choose_entry_for_budget,
    method_base,
    parse_entry,
    parse_methods,
    resolve_entry,
    resolve_methods,
    split_methods,
)
from bench.spec import RunSpec
from bench.sweep import SweepRequest, plan_sweep
from bench.tracking import Tracker, default_tracking_uri
from methods import get_method, make_config
from methods.base import MethodError, backbone_spec_of, identity_dict, trainable_params_excluding_head
from methods.conformance import TINY, check_identity_at_init, check_merge
from methods.ssf import ScaleShift

# ------------------------------------------------------------------------------------------------
# grammar and labels (pure)


def test_commas_split_entries_only_outside_brackets():
    text = " lora , karst[kernels=4, factor=16],karst+bitfit,, lora[rank=4]+ssf "
    assert split_methods(text) == ["lora", "karst[kernels=4, factor=16]", "karst+bitfit", "lora[rank=4]+ssf"]
    assert split_methods(None) is None and split_methods(" , ") is None


def test_parts_fields_and_syntactic_label():
    entry = parse_entry(" karst [ kernels = 4 , factor=016 ] + bitfit ")
    assert [p.base for p in entry.parts] == ["karst", "bitfit"]
    assert entry.parts[0].overrides == (("factor", "016"), ("kernels", "4"))  # sorted by field name
    assert entry.label == "karst[factor=016,kernels=4]+bitfit"  # values as written until resolved
    assert [e.label for e in parse_methods("lora,ssf+lora")] == ["lora", "ssf+lora"]  # parts keep their order


def test_canonical_label_coerces_values_and_sorts_fields():
    assert resolve_entry("karst[kernels=4,factor=016]").name == "karst[factor=16,kernels=4]"
    assert resolve_entry("lora[alpha=2,use_dora=YES]").name == "lora[alpha=2.0,use_dora=true]"
    assert resolve_entry("karst").name == "karst" and resolve_entry("karst+bitfit").name == "karst+bitfit"
    assert resolve_entry(" lora[rank=04] + ssf").name == "lora[rank=4]+ssf"


def test_method_base_of_a_label():
    assert method_base("karst[rescale=none]") == "karst"
    assert method_base("karst") == "karst"
    assert method_base("karst+bitfit") == "karst+bitfit"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("lora[rank=4", "a [ is never closed"),
        ("lora]rank=4[", "a ] closes no ["),
        ("lora[rank]", "'rank' in lora[...] is not FIELD=VALUE"),
        ("lora[rank=4,rank=8]", "sets rank twice"),
        ("karst+", "an empty part"),
        ("karst[]", "an empty item"),
        ("lora[a=[1]]", "do not nest"),
    ],
)
def test_syntax_errors_name_the_entry(text: str, says: str):
    with pytest.raises(BenchError) as info:
        resolve_methods(split_methods(text))
    message = str(info.value)
    assert says in message and "--methods entry" in message and "\n" not in message


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("karst[foo=1]", "has no config field foo; its fields are: kernels, factor, rank, alpha, rescale, mode"),
        ("karst[rescale=off]", "choose one of channel, scalar, none"),
        ("lora[rank=x]", "rank='x' is not a valid int"),
        ("lora[rank=0]", "must be a positive integer"),
        ("nope[rank=2]", "unknown method 'nope'"),
        ("lora+lora", "names a method twice"),
    ],
)
def test_bad_fields_values_and_methods_are_refused(text: str, says: str):
    with pytest.raises(MethodError) as info:
        resolve_entry(text)
    assert str(info.value).startswith(f"--methods entry {text!r}: ") and says in str(info.value)


def test_one_label_twice_is_refused():
    with pytest.raises(BenchError, match="same entry 'karst\\[rank=8\\]'"):
        resolve_methods(["karst[rank=8]", "karst[rank=08]"])


# ------------------------------------------------------------------------------------------------
# variants: the base method with values fixed


def test_a_variant_is_its_base_method_with_values_fixed():
    variant = resolve_entry("karst[rescale=none]")
    karst = get_method("karst")
    assert isinstance(variant, type(karst)) and variant.name == "karst[rescale=none]"
    config = make_config(variant)
    assert config == dataclasses.replace(make_config(karst), rescale="none")
    assert make_config(variant, {"rank": "4"}).rank == 4  # other fields still take values
    copied = pickle.loads(pickle.dumps(variant))  # as a run travels to a worker process
    assert copied.name == variant.name and make_config(copied) == config
    spec = backbone_spec_of(TINY["vit"]())
    assert variant.count(spec, config) == karst.count(spec, config)
    # under a budget the variant is fitted with its own values, and keeps them
    choice = choose_entry_for_budget(variant, spec, karst.count(spec, make_config(karst)))
    assert choice.config.rescale == "none"


def test_a_variant_that_sizes_the_method_disagrees_with_a_budget():
    spec = backbone_spec_of(TINY["vit"]())
    karst = get_method("karst")
    budget = karst.count(spec, make_config(karst))
    with pytest.raises(
        BenchError, match="brackets \\(kernels=8\\) and --budget .* both size method 'karst\\[kernels=8\\]'"
    ):
        choose_entry_for_budget(resolve_entry("karst[kernels=8]"), spec, budget)


# ------------------------------------------------------------------------------------------------
# planning: labels are run identities; a plain name keeps its run keys


def _plan(noah_root: Path, tmp_path: Path, methods: list[str], **kw) -> list:
    request = SweepRequest(
        suite="tinyfolder", methods=methods, seeds=[0], tasks=["alpha"], data_root=noah_root, device="cpu", **kw
    )
    return plan_sweep(request, tmp_path).runs


def test_plain_name_keeps_its_run_spec_and_variants_get_their_own(noah_root: Path, tmp_path: Path):
    runs = _plan(noah_root, tmp_path, ["karst", "karst[rescale=none]", "karst+bitfit"])
    plain, variant, composed = (r.spec for r in runs)
    # the RunSpec a plain name always had: the registered method's name and its published config
    karst = get_method("karst")
    assert plain.method == "karst" and plain.method_config == identity_dict(make_config(karst))
    assert plain.run_key == RunSpec(**{**plain.to_dict(), "method": karst.name}).run_key
    assert variant.method == "karst[rescale=none]"
    assert variant.method_config == {**plain.method_config, "rescale": "none"}
    assert composed.method == "karst+bitfit"
    assert composed.method_config == {"karst": plain.method_config, "bitfit": {}}
    assert len({plain.run_key, variant.run_key, composed.run_key}) == 3


def test_set_reaches_every_entry_of_its_method_and_brackets_win(noah_root: Path, tmp_path: Path):
    methods = ["karst", "karst[rank=4]", "karst[mode=structured]+bitfit"]
    overrides = {"karst": {"rank": "2", "mode": "materialize"}}
    plain, variant, composed = (r.config for r in _plan(noah_root, tmp_path, methods, method_overrides=overrides))
    assert (plain.rank, plain.mode) == (2, "materialize")
    assert (variant.rank, variant.mode) == (4, "materialize")  # its own rank=4 wins over --set
    karst_part = dict(composed.parts)["karst[mode=structured]"]
    assert (karst_part.rank, karst_part.mode) == (2, "structured")


def test_set_naming_no_entry_is_refused(noah_root: Path, tmp_path: Path):
    with pytest.raises(BenchError, match="--set names method\\(s\\) lora"):
        _plan(noah_root, tmp_path, ["karst[rank=4]"], method_overrides={"lora": {"rank": "2"}})


# ------------------------------------------------------------------------------------------------
# compositions as one method


def test_composition_counts_its_parts_starts_at_the_backbone_and_merges_exactly():
    method = resolve_entry("karst+bitfit")
    config = make_config(method)
    assert method.mergeable and method.identity_at_init and method.families == ("vit", "swin")
    for check in (check_identity_at_init, check_merge):  # methods.conformance, as `bench methods check` runs them
        result = check(method, config)
        assert result.passed, result.detail
    spec = backbone_spec_of(TINY["vit"]())
    parts = [get_method("karst"), get_method("bitfit")]
    expected = sum(p.count(spec, make_config(p)) for p in parts)
    assert method.count(spec, config) == expected
    assert trainable_params_excluding_head(method.apply(TINY["vit"](), config)) == expected


def test_composition_properties_follow_its_parts():
    method = resolve_entry("lora+vpt_shallow")
    assert not method.mergeable and not method.identity_at_init and method.families == ("vit",)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("lora+ia3", "lora and ia3 both change module blocks.0.attn.qkv (peft nests ia3's layer around lora's"),
        ("karst+lora", "lora cannot adapt the layers karst placed"),
        ("ln_tuning+bitfit", "ln_tuning and bitfit both train blocks.0.norm1"),
        (
            "vpt_deep+vpt_shallow",
            "both change module vpt (vpt_shallow replaces or removes the layer vpt_deep put there)",
        ),
        (
            "ssf+lora",
            "lora cannot adapt the layers ssf placed; ssf wraps other parts' layers as a whole, so write it last: "
            "'lora+ssf'",
        ),
    ],
)
def test_colliding_parts_are_refused_when_built(text: str, says: str):
    method = resolve_entry(text)
    with pytest.raises(MethodError) as info:
        method.apply(TINY["vit"](), make_config(method))
    assert says in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        # LN-tuning computes with copies of the norms bitfit trains
        ("bitfit+ln_tuning", "bitfit's tensor blocks.0.norm1.base_layer.bias has no effect once ln_tuning"),
        # DTL runs the blocks LoRA adapts without a graph
        ("lora+dtl", "lora's tensor blocks.0.attn.qkv.lora_A.default.weight has no effect once dtl"),
        # KARST wraps LoRA's layer as a whole but computes with the plain weight inside it
        ("lora+karst", "lora's tensor blocks.0.attn.qkv.base.lora_A.default.weight has no effect once karst"),
    ],
)
def test_a_part_bypassed_by_another_is_refused(text: str, says: str):
    method = resolve_entry(text)
    with pytest.raises(MethodError) as info:
        method.check_parts_act(make_config(method), "vit")
    assert says in str(info.value) and "\n" not in str(info.value)


def test_a_tensor_inert_by_its_own_construction_is_not_a_collision():
    """GLoRA's scalar E on attn.proj adds one constant to every channel of the residual stream, which
    every LayerNorm reading it removes: its gradient is 0 up to rounding in GLoRA alone. Composed with
    BitFit, nothing is bypassed, and the composition is accepted."""
    glora = get_method("glora")
    model = glora.apply(TINY["vit"](), make_config(glora))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=generator))
    model(torch.randn(2, 3, 32, 32, generator=generator)).square().sum().backward()
    scale = max(float(p.grad.abs().max()) for p in model.parameters() if p.grad is not None)
    grads = {n: float(p.grad.abs().max()) for n, p in model.named_parameters() if n.endswith("glora_E.default.X")}
    inert = [g for n, g in grads.items() if ".attn.proj." in n or ".mlp.fc2." in n]
    acting = [g for n, g in grads.items() if ".mlp.fc1." in n]  # fc1's output goes through the GELU
    assert len(inert) == 2 * len(model.blocks) and max(inert) < 1e-5 * scale < 1e-3 * scale < min(acting)
    for text in ("bitfit+glora", "glora+bitfit"):
        method = resolve_entry(text)
        method.check_parts_act(make_config(method), "vit")  # no refusal


# ------------------------------------------------------------------------------------------------
# a part that wraps an earlier part's layer as a whole: SSF after LoRA


@pytest.mark.parametrize("text", ["lora+ssf", "lora[rank=4,use_dora=true]+ssf", "kadaptation+ssf"])
def test_ssf_wraps_an_adapted_linear_counts_add_and_merges_exactly(text: str):
    method = resolve_entry(text)
    config = make_config(method)
    assert method.mergeable and method.identity_at_init
    spec = backbone_spec_of(TINY["vit"]())
    expected = sum(p.count(spec, c) for p, (_, c) in zip(method.parts, config.parts, strict=True))
    assert method.count(spec, config) == expected
    model, owners = method.apply_parts(TINY["vit"](), config)
    assert trainable_params_excluding_head(model) == expected
    qkv = model.blocks[0].attn.qkv
    assert isinstance(qkv, ScaleShift) and not isinstance(qkv.base, torch.nn.Linear)  # SSF around the adapted qkv
    assert {owners[n] for n in owners} == {p.name for p in method.parts}
    for check in (check_identity_at_init, check_merge):  # as `bench methods check` runs them
        result = check(method, config)
        assert result.passed, result.detail
    method.check_parts_act(config, "vit")  # every tensor acts, and the merged tiny model gives the same outputs


def test_lora_then_ssf_computes_scale_times_the_adapted_linear_plus_shift():
    """y = γ ⊙ (W x + b + s · B A x) + β at one adapted qkv, with every tensor off its init."""
    method = resolve_entry("lora+ssf")
    model = method.apply(TINY["vit"](), make_config(method))
    qkv = model.blocks[0].attn.qkv
    lora = qkv.base
    with torch.no_grad():
        for p in (qkv.ssf_scale, qkv.ssf_shift, lora.lora_B["default"].weight):
            p.add_(0.1 * torch.randn_like(p))
        x = torch.randn(3, 64)
        w, b = lora.get_base_layer().weight, lora.get_base_layer().bias
        delta = lora.scaling["default"] * lora.lora_B["default"].weight @ lora.lora_A["default"].weight
        expected = qkv.ssf_scale * (x @ (w + delta).T + b) + qkv.ssf_shift
        assert torch.allclose(qkv(x), expected, atol=1e-5)


def test_ssf_refuses_to_fold_into_a_layer_not_merged_yet():
    """SSF merged before the LoRA layer it wraps would fold γ into W alone and lose B A: refused."""
    method = resolve_entry("lora+ssf")
    model = method.apply(TINY["vit"](), make_config(method))
    with pytest.raises(MethodError) as info:
        get_method("ssf").merge(model)
    message = str(info.value)
    assert "ssf cannot fold its scale and shift into blocks.0.attn.qkv" in message
    assert "peft.tuners.lora.layer.Linear, not a plain layer" in message and "\n" not in message


def _perturbed(method, model):
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return torch.randn(2, 3, 32, 32, generator=generator)


def test_a_composition_whose_merge_fails_is_refused():
    """peft nests IA3's layer around LoRA's (the nesting the structural rule refuses, built here by
    hand); LoRA's merge then merges IA3's layer through LoRA's and breaks the module tree."""
    method = resolve_entry("lora+ia3")
    model = TINY["vit"]()
    for part, (_, c) in zip(method.parts, make_config(method).parts, strict=True):
        model = part.apply(model, c)
    x = _perturbed(method, model)
    with pytest.raises(MethodError) as info:
        method.check_merged_outputs(model.eval(), x, TINY["vit"]())
    message = str(info.value)
    assert message.startswith("composition 'lora+ia3' cannot be merged (") and "\n" not in message


def test_merged_outputs_are_compared_with_the_unmerged_model():
    """The check compares logits: lora+ssf with LoRA's dropout active is not the function its merge
    computes, and is refused; in eval mode it merges exactly."""
    method = resolve_entry("lora[dropout=0.5]+ssf")
    model = method.apply(TINY["vit"](), make_config(method))
    x = _perturbed(method, model)
    method.check_merged_outputs(model.eval(), x, TINY["vit"]())
    with pytest.raises(MethodError, match="merging its parts in order changes the outputs by"):
        method.check_merged_outputs(model.train(), x, TINY["vit"]())


# ------------------------------------------------------------------------------------------------
# the CLI: one-line refusals with exit 2, before any data is read


@pytest.mark.parametrize(
    ("methods", "says"),
    [
        ("karst[foo=1]", "--methods entry 'karst[foo=1]': method 'karst' has no config field foo"),
        ("karst[rescale=off]", "rescale='off' is not allowed"),
        ("nope[rank=2]", "unknown method 'nope'"),
        ("lora,lora[rank=4", "a [ is never closed"),
        ("lora+ia3", "composition 'lora+ia3': lora and ia3 both change module"),
        ("ssf+lora", "composition 'ssf+lora': lora cannot adapt the layers ssf placed"),
    ],
)
def test_cli_refuses_bad_entries_in_one_line(cli, tmp_path: Path, methods: str, says: str):
    data_root = tmp_path / "nothing-here"  # never read: the refusal comes first
    code, out, err = cli(
        "run", "--suite", "tinyfolder", "--methods", methods, "--seeds", "1", "--data-root", str(data_root)
    )
    assert code == 2, err
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and says in lines[0] and "Traceback" not in err


def test_cli_tune_refuses_a_composition(cli, noah_root: Path):
    args = (
        "tune",
        "--suite",
        "tinyfolder",
        "--methods",
        "karst+bitfit",
        "--trials",
        "1",
        "--data-root",
        str(noah_root),
    )
    code, _, err = cli(*args)
    assert code == 2 and "composition 'karst+bitfit' cannot be tuned yet" in err


def test_cli_methods_budget_and_info_take_entries(cli):
    code, out, err = cli(
        "methods",
        "budget",
        "--budget",
        "8k",
        "--backbone",
        "vit_demo_tiny",
        "--methods",
        "karst[rescale=none],lora+bitfit",
        "--json",
    )
    assert code == 0, err
    rows = {r["method"]: r for r in json.loads(out)}
    assert rows["karst[rescale=none]"]["config"]["rescale"] == "none"
    assert set(rows["lora+bitfit"]["config"]) == {"lora", "bitfit"}
    code, out, err = cli("methods", "info", "karst[kernels=4]+bitfit", "--backbone", "vit_demo_tiny", "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["trainable_params"] == info["trainable_params_built"]
    assert info["config"]["karst[kernels=4]"]["kernels"] == 4


# ------------------------------------------------------------------------------------------------
# a demo sweep end to end


@pytest.mark.slow
def test_demo_sweep_with_variants_and_a_composition(cli, workdir: Path):
    args = (
        "run",
        "--suite",
        "demo",
        "--methods",
        "lora,lora[rank=2],karst+bitfit,lora+ssf",
        "--seeds",
        "1",
        "--epochs",
        "1",
    )
    code, out, err = cli(*args)
    assert code == 0, err
    assert "4 run(s) trained, 0 already finished" in out
    runs = Tracker(default_tracking_uri(workdir)).search("bench/demo")
    tags = {r.data.tags["bench.method"]: r for r in runs}
    assert set(tags) == {"lora", "lora[rank=2]", "karst+bitfit", "lora+ssf"}
    assert len({r.data.tags["bench.run_key"] for r in runs}) == 4
    assert {m: r.data.tags["bench.method_base"] for m, r in tags.items()} == {
        "lora": "lora",
        "lora[rank=2]": "lora",
        "karst+bitfit": "karst+bitfit",
        "lora+ssf": "lora+ssf",
    }
    # each composition's trainable count is the sum of its parts' on the demo backbone (SSF wraps LoRA's qkv)
    from bench.backbone import backbone_spec

    spec = backbone_spec("vit_demo_tiny", 32)
    for label in ("karst+bitfit", "lora+ssf"):
        parts = sum(get_method(n).count(spec, make_config(get_method(n))) for n in label.split("+"))
        assert tags[label].data.metrics["params/trainable"] == parts
    lora = get_method("lora")
    assert tags["lora[rank=2]"].data.metrics["params/trainable"] == lora.count(spec, make_config(lora, {"rank": 2}))

    code, out, err = cli("runs", "--suite", "demo", "--json")
    assert code == 0 and {r["method"] for r in json.loads(out)} == {"lora", "lora[rank=2]", "karst+bitfit", "lora+ssf"}

    code, out, err = cli(*args)  # rerun: every run is found, nothing trains
    assert code == 0 and "0 run(s) trained, 4 already finished and reused" in out


def test_a_composition_meets_a_budget_on_its_total_not_on_the_fitted_part_alone():
    """karst+bitfit at 16k on the demo ViT: bitfit holds 2,944, and no KARST structure is within ±5%
    of the 13,056 left; 12,288 is, for the total (15,232 is -4.8% of 16,000)."""
    from bench.backbone import backbone_spec
    from bench.budget import choose_for_budget
    from methods.base import within_budget

    spec = backbone_spec("vit_demo_tiny", 32)
    choice = choose_for_budget(resolve_entry("karst+bitfit"), spec, 16_000)
    assert within_budget(choice.count, 16_000)
    karst, bitfit = get_method("karst"), get_method("bitfit")
    parts = dict(choice.config.parts)
    assert choice.count == karst.count(spec, parts["karst"]) + bitfit.count(spec, make_config(bitfit))
