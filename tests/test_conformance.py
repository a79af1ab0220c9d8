"""Conformance of every registered method, on a tiny ViT and (for methods that support it) a tiny Swin.

Parametrised over ``methods.base.available_methods()``: a method is covered the moment it
registers. Each case runs the checks of ``bench methods check`` (methods/conformance.py) at the
method's published config and asserts which of them must apply: identity at init (or the
method's declared exception and its own checks), a gradient on every trainable tensor, a frozen
backbone that never moves, count() against the built model, merge equivalence where the method
claims ``mergeable``, and a trainable state that round-trips. Budget fitting is checked at a few
budgets around the published size.
"""

from __future__ import annotations

import pytest

from bench.budget import choose_for_budget
from bench.errors import BenchError
from methods import available_methods, get_method, make_config
from methods.base import BUDGET_TOLERANCE, backbone_spec_of, trainable_params_excluding_head
from methods.conformance import TINY, run_checks

CASES = [(name, family) for name, cls in available_methods().items() for family in cls.families if family in TINY]
ADJUSTABLE = [name for name, cls in available_methods().items() if cls.budget_adjustable]
# Budgets as multiples of the published size on the tiny backbone: smaller, equal, larger.
BUDGET_FACTORS = (0.5, 1.0, 2.0)


@pytest.mark.parametrize(("name", "family"), CASES, ids=[f"{n}-{f}" for n, f in CASES])
def test_registered_method_conforms(name: str, family: str):
    method = get_method(name)
    results = {r.name: r for r in run_checks(method, make_config(method), family=family)}
    failed = {n: r.detail for n, r in results.items() if r.passed is False}
    assert not failed
    identity = results["identity at init"]
    if method.identity_at_init:
        assert identity.passed is True
    else:  # the documented exception: the method says what holds instead, and it holds
        assert identity.passed is None
        if family == "vit":
            extra = [r for r in method.extra_checks(make_config(method))]
            assert extra and all(r.passed is True for r in extra)
    assert results["every trainable tensor gets a gradient within two steps"].passed is True
    assert results["frozen backbone is bit-identical after optimiser steps"].passed is True
    assert results["count() equals the built model (head excluded)"].passed is True
    assert results["trainable state round-trips through safetensors"].passed is True
    merge = results["merge() preserves outputs and leaves a plain backbone"]
    assert merge.passed is (True if method.mergeable else None)


@pytest.mark.parametrize("name", ADJUSTABLE)
def test_budget_fitting_within_tolerance(name: str):
    """At a few budgets around the default size the fitted config is within ±5 % (in free parameters)
    and its stored count is the built model's; a budget the structure cannot reach is refused in one line naming it."""
    method = get_method(name)
    model = TINY["vit"]()
    spec = backbone_spec_of(model, "tiny_vit")
    published = method.budget_count(spec, make_config(method))
    reached = 0
    for factor in BUDGET_FACTORS:
        budget = max(1, round(factor * published))
        try:
            choice = choose_for_budget(method, spec, budget)
        except BenchError as exc:
            message = str(exc)
            assert "\n" not in message and f"{budget:,}" in message
            continue
        reached += 1
        assert abs(choice.count - budget) <= BUDGET_TOLERANCE * budget
        built = trainable_params_excluding_head(method.apply(TINY["vit"](), choice.config))
        # what the model stores; the budget charges the free parameters, equal for every method but BOFT
        assert built == choice.stored == method.count(spec, choice.config)
        assert choice.count == method.budget_count(spec, choice.config) <= choice.stored
    assert reached >= 1


GPU_CASES = [name for name, cls in available_methods().items() if "vit" in cls.families]


@pytest.mark.gpu
@pytest.mark.parametrize("name", GPU_CASES)
def test_registered_method_trains_and_merges_on_a_gpu(name: str):
    """Adapt, train two steps and merge on CUDA: a tensor a method creates on the CPU (RepAdapter's
    merge once built its identity there) fails only on a GPU, which CI does not have."""
    import copy

    import torch

    from methods.conformance import _inputs, tiny_vit

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    method = get_method(name)
    model = method.apply(tiny_vit(), make_config(method)).cuda()
    x = _inputs().cuda()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        model(x).logsumexp(1).mean().backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    if method.mergeable:
        with torch.no_grad():
            before = model(x)
            after = method.merge(copy.deepcopy(model)).eval()(x)
        assert (before - after).abs().max().item() <= 1e-3 * max(1.0, before.abs().max().item())
