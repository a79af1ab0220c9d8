"""Every registered method in one demo sweep: each trains, is tracked, and counts what it claims."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

import methods
from bench import schema
from bench.backbone import backbone_spec
from bench.tracking import Tracker, default_tracking_uri
from methods.base import make_config


@pytest.mark.slow
def test_one_demo_sweep_runs_every_registered_method(cli, workdir: Path):
    names = sorted(methods.available_methods())
    code, out, err = cli("run", "--suite", "demo", "--methods", ",".join(names), "--seeds", "1", "--epochs", "1")
    assert code == 0, err
    assert f"{len(names)} run(s) trained" in out

    runs = Tracker(default_tracking_uri(workdir)).search("bench/demo")
    by_method = {r.data.tags[schema.METHOD]: r for r in runs}
    assert sorted(by_method) == names
    spec = backbone_spec("vit_demo_tiny", 32)
    for name, run in by_method.items():
        method = methods.get_method(name)
        assert run.info.status == "FINISHED", (name, run.data.tags.get(schema.ERROR))
        assert run.data.metrics[schema.PARAMS_TRAINABLE] == method.count(spec, make_config(method)), name
        acc = run.data.metrics[schema.TEST_ACC]
        assert 0.0 <= acc <= 1.0 and not math.isnan(acc), name
        # a mergeable method is scored merged into plain timm layers
        assert (run.data.tags[schema.MERGED_EVAL] == "true") == method.mergeable, name
