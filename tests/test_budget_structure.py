"""A budget or a --set never asks a method for more structure than the backbone has."""

from __future__ import annotations

import pytest

from bench.backbone import backbone_spec
from bench.budget import choose_for_budget
from methods.base import available_methods, get_method
from tests.test_cli_errors import _assert_one_line_error

SIZEABLE = [n for n, cls in available_methods().items() if cls.budget_adjustable]


@pytest.mark.parametrize("name", SIZEABLE)
def test_the_largest_config_respects_its_own_limits_and_is_reachable(name: str):
    spec = backbone_spec("vit_demo_tiny")
    method = get_method(name)
    largest = method.largest_config(spec)
    limits = method.size_limits(spec, largest)
    assert limits, f"{name} declares no size limit"
    assert all(getattr(largest, field) <= cap for field, (cap, _) in limits.items())
    most = method.budget_count(spec, largest)  # what a budget charges (BOFT: its free parameters)
    choice = choose_for_budget(method, spec, most)  # the largest count is a budget it can meet
    assert all(getattr(choice.config, f) <= cap for f, (cap, _) in method.size_limits(spec, choice.config).items())


def test_budget_beyond_the_structure_names_the_largest_count(cli):
    code, _, err = cli("methods", "budget", "--budget", "999M", "--backbone", "vit_demo_tiny", "--methods", "lora,dtl")
    _assert_one_line_error(code, err, "method 'lora' cannot reach a budget of 999,000,000", "at most 65,536")
    assert "rank <= 64" in err and "975" not in err


@pytest.mark.parametrize("name", SIZEABLE)
def test_every_sizeable_method_refuses_a_budget_beyond_its_structure(name: str):
    from bench.errors import BenchError

    spec = backbone_spec("vit_demo_tiny")
    with pytest.raises(BenchError, match="its structure allows at most"):
        choose_for_budget(get_method(name), spec, 999_000_000)


def test_a_set_rank_beyond_the_layers_is_refused(cli, noah_root):
    code, _, err = cli(
        "run", "--suite", "tinyfolder", "--methods", "lora", "--seeds", "1", "--data-root", str(noah_root),
        "--set", "lora.rank=100",
    )  # fmt: skip
    _assert_one_line_error(code, err, "lora rank=100 exceeds the structure of vit_demo_tiny", "at most 64")
