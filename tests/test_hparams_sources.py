"""Hyperparameter sources (preset, paper, tuned): paper recipes planned per task, every recipe value
cited and understood, the source recorded on every run, and a run that serves two sources selectable
under either."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pandas as pd
import pytest
import torch

import methods
import suites
from bench.errors import BenchError
from bench.hparams import HparamsChoice, paper_settings, parse_hparams
from bench.sweep import SweepRequest, plan_sweep
from bench.tracking import Tracker, default_tracking_uri
from methods.base import make_config
from methods.recipe import TRAINING_FIELDS, all_recipes, parse_recipe
from suites.base import Preset
from tests.conftest import write_task
from tests.test_cli_errors import _assert_one_line_error

DEMO_RECIPE = """\
method: lora
paper: a test paper
suites:
  demo:
    blocks:
      - source: Table 9 of a test paper
        every_task: {optimizer: sgd, lr: 0.02, batch_size: 16, epochs: 20, warmup_epochs: 4, rank: 2}
      - source: a test repository@0123abc configs/<task>.yaml
        tasks:
          digits: {weight_decay: 0.5, alpha: 4.0}
    differences:
      - one line on what bench does not reproduce
"""


@pytest.fixture
def demo_recipe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A recipe folder (BENCH_RECIPES) with a LoRA recipe for the demo suite."""
    folder = tmp_path / "recipes"
    folder.mkdir()
    (folder / "lora.yaml").write_text(DEMO_RECIPE)
    monkeypatch.setenv("BENCH_RECIPES", str(folder))
    return folder


# -- recipes: every value cited, every key understood ---------------------------------------------


def test_every_shipped_recipe_cites_its_sources_and_uses_known_fields():
    recipes = all_recipes()
    assert {"ssf", "dtl", "fact_tk", "fact_tt"} <= set(recipes)
    preset_fields = {f.name for f in dataclasses.fields(Preset)}
    assert set(TRAINING_FIELDS) <= preset_fields
    for name, recipe in recipes.items():
        method = methods.get_method(name)  # a recipe names a registered method
        config_fields = {f.name for f in dataclasses.fields(make_config(method))}
        for suite_name, suite_recipe in recipe.suites.items():
            suite = suites.get_suite(suite_name)
            task_names = {t.name for t in suite.tasks}
            assert set(suite_recipe.tasks) <= task_names, (name, set(suite_recipe.tasks) - task_names)
            for block in suite_recipe.blocks:
                # a source names a paper table or a repository with its commit
                assert "@" in block.source or "Table" in block.source, (name, block.source)
            unknown = set(suite_recipe.keys) - set(TRAINING_FIELDS) - config_fields
            assert not unknown, (name, unknown)
            for task in suite_recipe.tasks or [t.name for t in suite.tasks]:
                for key, (value, source) in suite_recipe.values(task).items():
                    assert source in suite_recipe.sources
                    field_type = typing.get_type_hints(Preset if key in TRAINING_FIELDS else type(make_config(method)))
                    if field_type[key] is float:
                        assert isinstance(value, int | float) and not isinstance(value, bool), (name, task, key)


def test_a_recipe_without_a_source_or_with_a_bad_value_is_refused(tmp_path: Path):
    path = tmp_path / "lora.yaml"
    with pytest.raises(BenchError, match=r"block 1 has no source; every value must cite one"):
        parse_recipe("method: lora\nsuites:\n  demo:\n    blocks:\n      - every_task: {lr: 0.1}\n", path)
    with pytest.raises(BenchError, match=r"optimizer 'lion' is not one of adamw, sgd"):
        parse_recipe(
            "method: lora\nsuites:\n  demo:\n    blocks:\n      - source: x@1\n        every_task: {optimizer: lion}\n",
            path,
        )
    recipe = parse_recipe(
        "method: lora\nsuites:\n  demo:\n    blocks:\n      - source: x@1\n        tasks: {other: {lr: 0.1}}\n", path
    )
    with pytest.raises(BenchError, match=r"no values for task 'digits'"):
        recipe.for_suite("demo").values("digits")
    block = "    blocks:\n      - source: x@1\n        every_task: {lr: 0.1}\n"
    with pytest.raises(BenchError, match=r"suite demo has unknown key\(s\) diferences; valid: blocks, differences"):
        parse_recipe("method: lora\nsuites:\n  demo:\n" + block + "    diferences: [x]\n", path)
    with pytest.raises(BenchError, match=r"differences must be a list of lines"):
        parse_recipe("method: lora\nsuites:\n  demo:\n" + block + "    differences: one line\n", path)


def test_a_bench_recipes_folder_that_does_not_exist_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("BENCH_RECIPES", str(tmp_path / "no-such-folder"))
    with pytest.raises(BenchError, match=r"BENCH_RECIPES names .*no-such-folder, which is not a folder"):
        all_recipes()


def test_a_recipe_value_of_the_wrong_type_or_field_is_one_line(demo_recipe: Path):
    lora = methods.get_method("lora")
    preset = suites.get_suite("demo").preset
    (demo_recipe / "lora.yaml").write_text(DEMO_RECIPE.replace("weight_decay: 0.5", "weight_decay: 5e-05"))
    with pytest.raises(BenchError, match=r"weight_decay='5e-05' is not a float; fix the recipe file"):
        paper_settings(lora, make_config(lora), "demo", "digits", preset, {})
    (demo_recipe / "lora.yaml").write_text(DEMO_RECIPE.replace("alpha: 4.0", "nosuch: 4.0"))
    with pytest.raises(BenchError, match=r"nosuch is neither a training field .* nor a lora config field"):
        paper_settings(lora, make_config(lora), "demo", "digits", preset, {})


def test_the_committed_hyperparameters_page_is_the_generated_one():
    from bench.recipe_page import markdown

    committed = (Path(__file__).parent.parent / "docs" / "reference" / "hyperparameters.md").read_text()
    assert committed == markdown(), "regenerate it: python -m bench.recipe_page > docs/reference/hyperparameters.md"
    for name in ("ssf", "dtl", "fact_tk", "fact_tt", "karst", "lora"):
        assert f"### `{name}` on `vtab1k`" in committed
    assert "`boft`" in committed.split("## Methods without a paper recipe")[1]


# -- planning -------------------------------------------------------------------------------------


def test_hparams_names_and_the_deprecated_alias():
    assert parse_hparams("preset") == HparamsChoice("preset", None, False)
    assert parse_hparams("published") == HparamsChoice("preset", None, True)
    assert parse_hparams("paper,preset").fallback == "preset" and parse_hparams("tuned").source == "tuned"
    with pytest.raises(BenchError, match=r"--hparams 'best' must be preset, paper, tuned, or paper,preset"):
        parse_hparams("best")


def test_paper_plans_each_run_with_its_recipe_on_the_demo_suite(demo_recipe: Path, workdir: Path):
    request = SweepRequest(suite="demo", methods=["lora", "linear"], seeds=[0], hparams="paper,preset")
    plan = plan_sweep(request, workdir)
    runs = {r.spec.method: r for r in plan.runs}
    lora, linear = runs["lora"], runs["linear"]
    assert (lora.preset.optimizer, lora.preset.lr, lora.preset.batch_size, lora.preset.weight_decay) == (
        "sgd",
        0.02,
        16,
        0.5,
    )
    assert (lora.preset.epochs, lora.preset.warmup_epochs) == (20, 4)
    assert (lora.config.rank, lora.config.alpha) == (2, 4.0)
    assert lora.spec.hparams == lora.preset.to_dict() and lora.spec.method_config["rank"] == 2
    assert lora.tags["bench.hparams"] == "paper" and lora.tags["bench.hparams_sources"] == "paper"
    assert "Table 9 of a test paper" in lora.tags["bench.recipe"]
    # linear has no recipe: with paper,preset it trains with the preset, and says so
    preset = suites.get_suite("demo").preset
    assert linear.preset == preset and linear.tags["bench.hparams"] == "preset"
    assert any("no paper recipe for suite 'demo': linear" in w for w in plan.warnings)

    # --epochs scales the recipe's schedule (warm-up keeps its share); brackets and --set win over it
    request = SweepRequest(
        suite="demo", methods=["lora[rank=3]"], seeds=[0], hparams="paper", epochs=5, method_overrides={}
    )
    [run] = plan_sweep(request, workdir).runs
    assert (run.preset.epochs, run.preset.warmup_epochs, run.config.rank, run.config.alpha) == (5, 1, 3, 4.0)
    request = SweepRequest(
        suite="demo", methods=["lora"], seeds=[0], hparams="paper", method_overrides={"lora": {"alpha": "8"}}
    )
    [run] = plan_sweep(request, workdir).runs
    assert run.config.alpha == 8.0 and run.config.rank == 2

    # the preset's former name plans preset runs, with one line saying so
    from bench.sources import DEPRECATION_NOTE

    plan = plan_sweep(SweepRequest(suite="demo", methods=["linear"], seeds=[0], hparams="published"), workdir)
    assert plan.warnings.count(DEPRECATION_NOTE) == 1 and plan.runs[0].tags["bench.hparams"] == "preset"


def test_paper_refusals_are_one_line(demo_recipe: Path, workdir: Path):
    cases = [
        ({"methods": ["linear"]}, "method 'linear' has no paper recipe for suite 'demo'; pass --hparams paper,preset"),
        ({"methods": ["lora+bitfit"]}, "composition 'lora+bitfit' has no paper recipe"),
        ({"methods": ["lora"], "budgets": [8000]}, "--hparams paper trains each method at its paper's own structure"),
        ({"methods": ["lora"], "preset_overrides": {"lr": 0.1}}, "--set preset.… and --hparams paper both set"),
    ]
    for extra, message in cases:
        with pytest.raises(BenchError) as info:
            plan_sweep(SweepRequest(suite="demo", seeds=[0], hparams="paper", **extra), workdir)
        assert message in str(info.value) and "\n" not in str(info.value)


def test_paper_plans_vtab1k_runs_on_its_real_task_names(tmp_path: Path, workdir: Path):
    """Every method with a VTAB-1K recipe, every task by its real name: each run gets its task's values."""
    from bench.backbone import create_backbone

    root = tmp_path / "vtab"
    vtab = suites.get_suite("vtab1k")
    for i, task in enumerate(vtab.tasks):
        write_task(root / task.name, num_classes=2, sizes={"train800": 2, "val200": 2, "test": 2}, img_size=8, seed=i)
    checkpoint = tmp_path / "tiny.pt"
    torch.save(create_backbone("vit_demo_tiny", num_classes=0, img_size=224).state_dict(), checkpoint)
    names = sorted(n for n, r in all_recipes().items() if r.for_suite("vtab1k"))
    request = SweepRequest(
        suite="vtab1k",
        methods=names,
        seeds=[0],
        hparams="paper",
        data_root=root,
        backbone="vit_demo_tiny",
        checkpoint=checkpoint,
    )
    plan = plan_sweep(request, workdir)
    assert len(plan.runs) == len(names) * len(vtab.tasks)
    for run in plan.runs:
        recipe = all_recipes()[run.spec.method].for_suite("vtab1k")
        for key, (value, _) in recipe.values(run.spec.task).items():
            actual = getattr(run.preset if key in TRAINING_FIELDS else run.config, key)
            assert actual == value, (run.spec.label, key)
        assert run.tags["bench.hparams"] == "paper"
    ssf = {r.spec.task: r.preset for r in plan.runs if r.spec.method == "ssf"}
    assert (ssf["clevr_dist"].lr, ssf["cifar"].weight_decay, ssf["cifar"].batch_size) == (0.05, 5e-5, 32)
    fact = {r.spec.task: r.config for r in plan.runs if r.spec.method == "fact_tk"}
    assert (fact["dtd"].rank, fact["dtd"].scale, fact["svhn"].scale) == (16, 0.01, 100.0)


def test_every_vtab1k_recipe_builds_on_vit_b16_on_the_meta_device():
    """Each task's resolved config is a structure ViT-B/16 can take (built on the meta device)."""
    from bench.backbone import backbone_spec
    from bench.inspect import built_trainable_params

    vtab = suites.get_suite("vtab1k")
    spec = backbone_spec(vtab.default_backbone, vtab.preset.img_size)
    for name, recipe in all_recipes().items():
        if recipe.for_suite("vtab1k") is None:
            continue
        method = methods.get_method(name)
        configs = {}  # the distinct structures, each built once
        for task in vtab.tasks:
            config = paper_settings(method, make_config(method), "vtab1k", task.name, vtab.preset, {}).config
            configs[repr(config)] = config
        counts = [built_trainable_params(method, config, vtab.default_backbone) for config in configs.values()]
        assert min(counts) > 0 and counts == [method.count(spec, c) for c in configs.values()], name


# -- one run serving two sources --------------------------------------------------------------------

RUN = ("run", "--suite", "tinyfolder", "--seeds", "0,", "--tasks", "beta", "--epochs", "1", "--methods", "linear")


@pytest.mark.slow
def test_a_tuned_run_equal_to_the_preset_run_is_reported_under_either(cli, workdir: Path, noah_root: Path):
    """One trial (trial 0 is the preset configuration): `--hparams tuned` reuses the preset run, records
    that it serves both sources, and `bench report --hparams tuned` finds it."""
    root = ("--data-root", str(noah_root))
    code, _, err = cli(*RUN, *root)
    assert code == 0, err
    code, _, err = cli(
        "tune", "--suite", "tinyfolder", "--methods", "linear", "--trials", "1", "--tasks", "beta", "--epochs", "1",
        *root,
    )  # fmt: skip
    assert code == 0, err
    code, out, err = cli(*RUN, *root, "--hparams", "tuned")
    assert code == 0, err
    assert "0 run(s) trained, 1 already finished" in out
    [run] = Tracker(default_tracking_uri(workdir)).search("bench/tinyfolder")
    tags = run.data.tags
    assert tags["bench.hparams"] == "preset" and tags["bench.hparams_sources"] == "preset,tuned"
    assert tags["bench.study"] == "tinyfolder/beta/linear/published" and tags["bench.trial"] == "0"
    for source in ("tuned", "preset"):
        code, _, err = cli("report", "--suite", "tinyfolder", "--hparams", source, "--out", str(workdir / source))
        assert code == 0, err
        assert f"- **hyperparameters**: {source} (" in (workdir / source / "report.md").read_text()
    code, _, err = cli("report", "--suite", "tinyfolder", "--hparams", "paper", "--out", str(workdir / "paper"))
    _assert_one_line_error(code, err, "no finished runs with --hparams paper")
    # the former name still selects the preset runs, with one line saying so
    code, _, err = cli("report", "--suite", "tinyfolder", "--hparams", "published", "--out", str(workdir / "old"))
    assert code == 0 and err.count("--hparams published is now called preset") == 1, err


def test_a_reused_run_records_each_source_it_serves(demo_recipe: Path, workdir: Path):
    """The sweep's reuse step on a real MLflow record: a second source is added once, with the
    recipe tag where the run has none; a run that already serves the source is left as it is."""
    from bench.sources import run_sources
    from bench.sweep import record_source

    tracker = Tracker(default_tracking_uri(workdir))
    experiment = tracker.experiment_id("bench/demo", create=True)
    created = tracker.client.create_run(experiment, tags={"bench.hparams": "published"})  # an old run
    tracker.client.set_terminated(created.info.run_id)
    [paper] = plan_sweep(SweepRequest(suite="demo", methods=["lora"], seeds=[0], hparams="paper"), workdir).runs
    assert run_sources(tracker.client.get_run(created.info.run_id).data.tags) == ["preset"]
    record_source(tracker.client, tracker.client.get_run(created.info.run_id), paper)
    tags = tracker.client.get_run(created.info.run_id).data.tags
    assert tags["bench.hparams_sources"] == "preset,paper" and tags["bench.recipe"] == paper.tags["bench.recipe"]
    assert run_sources(tags) == ["preset", "paper"]
    tracker.client.set_tag(created.info.run_id, "bench.recipe", "kept")
    record_source(tracker.client, tracker.client.get_run(created.info.run_id), paper)  # already served: unchanged
    tags = tracker.client.get_run(created.info.run_id).data.tags
    assert tags["bench.hparams_sources"] == "preset,paper" and tags["bench.recipe"] == "kept"


# -- report selection on hand-made frames ----------------------------------------------------------


def _frame(rows: list[dict]) -> pd.DataFrame:
    from reports.runs import COLUMNS

    base = {c: None for c in COLUMNS}
    base.update(
        suite="s", group="", stage="final", preset="p", protocol="epochs=1", backbone="b", checkpoint="c",
        params_trainable=10.0, params_head=3.0, train_step="eager", git_sha="unrecorded", weights_label="",
        end_time=0, batch_size="64", n_test=100.0,
    )  # fmt: skip
    frame = pd.DataFrame([{**base, **r} for r in rows], columns=COLUMNS)
    for col in ("shots", "split_seed", "budget"):
        frame[col] = frame[col].astype("Int64")
    return frame


def _rows(method: str, source: str, served: str, batch: str = "64") -> list[dict]:
    return [
        {"run_id": f"{method}{t}{s}", "run_key": f"{method}{t}{s}{source}", "task": t, "method": method,
         "method_base": method, "seed": s, "acc": 0.5 + 0.01 * s, "hparams": source, "hparams_sources": served,
         "batch_size": batch}
        for t in ("a", "b") for s in (0, 1)
    ]  # fmt: skip


def test_the_report_refuses_to_rank_mixed_sources_unless_asked():
    from reports.runs import select_runs, sources_text

    frame = _frame(_rows("ssf", "paper", "paper", batch="32") + _rows("linear", "preset", "preset,paper"))
    runs = select_runs(frame, suite="s", stage="final")  # linear's run serves paper too: one source
    assert set(runs.frame["hparams"]) == {"paper"} and sources_text(runs.frame) == "paper (each method's own recipe)"

    frame = _frame(_rows("ssf", "paper", "paper", batch="32") + _rows("linear", "preset", "preset"))
    with pytest.raises(
        BenchError, match=r"mix 2 hyperparameter sources: paper \(ssf\); preset \(linear\).*--mix-hparams"
    ):
        select_runs(frame, suite="s", stage="final")
    runs = select_runs(frame, suite="s", stage="final", mix_hparams=True)
    assert sources_text(runs.frame) == (
        "mixed (--mix-hparams): paper (each method's own recipe): ssf; preset (the suite's shared preset): linear"
    )
    assert set(select_runs(frame, suite="s", stage="final", hparams="preset").frame["method"]) == {"linear"}

    both = _frame(_rows("ssf", "paper", "paper", batch="32") + _rows("ssf", "preset", "preset"))
    with pytest.raises(BenchError, match=r"method 'ssf' has runs under several hyperparameter sources"):
        select_runs(both, suite="s", stage="final", mix_hparams=True)


def test_sgd_is_momentum_09_without_decay_on_biases_and_norms():
    from bench.train import SGD_MOMENTUM, make_optimizer
    from methods.conformance import tiny_vit

    model = tiny_vit()
    preset = dataclasses.replace(suites.get_suite("demo").preset, optimizer="sgd", weight_decay=0.3)
    optimizer = make_optimizer(model, preset, torch.device("cpu"))
    assert isinstance(optimizer, torch.optim.SGD) and SGD_MOMENTUM == 0.9
    decays = {g["weight_decay"]: sum(p.numel() for p in g["params"]) for g in optimizer.param_groups}
    one_dim = sum(p.numel() for p in model.parameters() if p.ndim <= 1)
    assert decays[0.0] == one_dim and decays[0.3] == sum(p.numel() for p in model.parameters()) - one_dim
    assert all(g["momentum"] == 0.9 for g in optimizer.param_groups)
    with pytest.raises(ValueError, match=r"optimizer 'lion' is not one of adamw, sgd"):
        make_optimizer(model, dataclasses.replace(preset, optimizer="lion"), torch.device("cpu"))


@pytest.mark.slow
def test_a_paper_run_trains_with_its_recipe_and_reports_its_source(demo_recipe: Path, cli, workdir: Path):
    """End to end on the demo suite: the recipe's SGD and values reach the run, which records its
    source and recipe; the report says paper."""
    code, _, err = cli(
        "run", "--suite", "demo", "--methods", "lora", "--hparams", "paper", "--epochs", "1", "--seeds", "0,"
    )
    assert code == 0, err
    [run] = Tracker(default_tracking_uri(workdir)).search("bench/demo")
    params, tags = run.data.params, run.data.tags
    assert (params["hp.optimizer"], params["hp.lr"], params["hp.batch_size"], params["method.rank"]) == (
        "sgd",
        "0.02",
        "16",
        "2",
    )
    assert tags["bench.hparams"] == tags["bench.hparams_sources"] == "paper"
    assert tags["bench.recipe"].startswith("lora.yaml: Table 9 of a test paper")
    code, _, err = cli("report", "--suite", "demo", "--out", str(workdir / "r"))
    assert code == 0, err
    assert "- **hyperparameters**: paper (each method's own recipe)" in (workdir / "r" / "report.md").read_text()


def test_methods_list_and_info_say_which_methods_have_a_paper_recipe(cli):
    import json

    code, out, err = cli("methods", "list", "--json")
    assert code == 0, err
    rows = {row["name"]: row for row in json.loads(out)}
    shipped = all_recipes()
    assert shipped and set(shipped) <= set(rows)
    for name, row in rows.items():
        if name in shipped:
            assert row["paper_recipe"] == shipped[name].source and row["paper_recipe"]
            assert row["paper_recipe_suites"] == list(shipped[name].suites)
        else:
            assert row["paper_recipe"] == "" and row["paper_recipe_suites"] == []
    with_recipe, without = sorted(shipped)[0], next(n for n in sorted(rows) if n not in shipped)
    code, out, _ = cli("methods", "info", with_recipe, "--json")
    assert code == 0 and json.loads(out)["paper_recipe"]["source"] == shipped[with_recipe].source
    code, out, _ = cli("methods", "info", without, "--json")
    assert code == 0 and json.loads(out)["paper_recipe"].startswith("none: `bench run --hparams paper` refuses it")
