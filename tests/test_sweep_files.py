"""Sweep files (`--config FILE.yaml`): the same runs as the same flags, the command line over the
file, the resolved file stored with the sweep, resuming, one-line errors, and the shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import methods
from bench import schema
from bench.backbone import backbone_spec
from bench.budget import parse_budgets
from bench.cli import _command_options, _sweep_request, click_command
from bench.errors import BenchError
from bench.sweep import plan_sweep
from bench.sweepfile import COMMANDS, file_options, load_sweep_file
from bench.tracking import Tracker, default_tracking_uri

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _options(workdir: Path, *args: str, command: str = "run") -> tuple[dict, list[str]]:
    """Parse a `bench run|tune` command line exactly as the CLI does, and merge its --config."""
    root = click_command()
    parent = root.make_context("bench", ["--workdir", str(workdir), command, *args])
    sub = root.commands[command]
    ctx = sub.make_context(command, list(args), parent=parent)
    with ctx:
        return _command_options(ctx, command)


def _sweep_yaml(data_root: Path) -> str:
    return f"""
description: a test sweep
suite: tinyfolder
data_root: {data_root}
tasks: [alpha]
methods: [lora, linear]
seeds: 1
budgets: [4k]
preset: {{lr: 0.005}}
set: {{lora.dropout: 0.1}}
"""


def test_a_sweep_file_end_to_end_resumes_and_stores_the_resolved_file(cli, workdir: Path, noah_root: Path, tmp_path):
    config = _write(tmp_path / "sweep.yaml", _sweep_yaml(noah_root))
    code, out, err = cli("run", "--config", str(config))
    assert code == 0, err
    assert "2 run(s) trained" in out
    runs = [
        r for r in Tracker(default_tracking_uri(workdir)).search("bench/tinyfolder") if schema.RUN_KEY in r.data.tags
    ]
    assert {r.data.tags[schema.METHOD] for r in runs} == {"lora", "linear"}
    assert all(float(r.data.params["hp.lr"]) == 0.005 for r in runs)
    lora = next(r for r in runs if r.data.tags[schema.METHOD] == "lora")
    assert lora.data.params["method.dropout"] == "0.1" and lora.data.tags[schema.BUDGET] == "4000"

    # the resolved file: printed, kept in the workdir, stored on the parent run, and complete
    line = next(x for x in err.splitlines() if x.startswith("resolved sweep file: "))
    local = Path(line.split(": ", 1)[1].split(" (")[0])
    resolved = yaml.safe_load(local.read_text())
    assert resolved["backbone"] == "vit_demo_tiny" and resolved["epochs"] == 3 and resolved["seeds"] == [0]
    assert resolved["budgets"] == [4000] and resolved["preset"] == {"lr": 0.005}
    assert resolved["set"] == {"lora.dropout": 0.1} and resolved["data_root"] == str(noah_root.resolve())
    tracker = Tracker(default_tracking_uri(workdir))
    exp = tracker.client.get_experiment_by_name("bench/tinyfolder")
    (parent,) = tracker.client.search_runs([exp.experiment_id], f"tags.`{schema.KIND}` = '{schema.KIND_SWEEP}'")
    stored = Path(tracker.client.download_artifacts(parent.info.run_id, schema.SWEEP_FILE, str(tmp_path)))
    assert stored.read_text() == local.read_text()

    # rerunning the file, the resolved file, or the same flags trains nothing
    for args in (
        ("--config", str(config)),
        ("--config", str(local)),
        ("--suite", "tinyfolder", "--data-root", str(noah_root), "--tasks", "alpha", "--methods", "lora,linear",
         "--seeds", "1", "--budget", "4k", "--set", "preset.lr=0.005", "--set", "lora.dropout=0.1"),
    ):  # fmt: skip
        code, out, err = cli("run", *args)
        assert code == 0 and "0 run(s) trained, 2 already finished" in out, err
    # a flag on the command line replaces the file's value: one more seed trains two more runs
    code, out, _ = cli("run", "--config", str(config), "--seeds", "0,1")
    assert code == 0 and "2 run(s) trained, 2 already finished" in out


def test_command_line_options_replace_the_file_and_set_merges_per_key(workdir: Path, noah_root: Path, tmp_path):
    config = _write(tmp_path / "sweep.yaml", _sweep_yaml(noah_root))
    opts, sources = _options(workdir, "--config", str(config))
    assert opts["seeds"] == "1" and opts["budget"] == "4k" and opts["methods"] == "lora,linear"
    assert sources == [str(config)]
    opts, sources = _options(
        workdir, "--config", str(config), "--seeds", "5", "--budget", "8k,16k", "--set", "preset.lr=0.01",
        "--set", "lora.rank=2", "--stage", "tune",
    )  # fmt: skip
    assert opts["seeds"] == "5" and opts["budget"] == "8k,16k" and opts["stage"] == "tune"
    assert sources == [str(config), "command-line options"]
    request = _sweep_request(opts, "run", sources)
    assert request.seeds == [0, 1, 2, 3, 4] and request.budgets == [8000, 16000]
    assert request.preset_overrides == {"lr": "0.01"}  # the command line's preset.lr wins
    assert request.method_overrides == {"lora": {"dropout": "0.1", "rank": "2"}}  # merged key by key
    assert request.tasks == ["alpha"] and request.data_root == noah_root  # the file's, not given on the line
    resolved = yaml.safe_load(request.sweep_file)
    assert resolved["seeds"] == [0, 1, 2, 3, 4] and resolved["preset"] == {"lr": 0.01} and resolved["stage"] == "tune"
    # keys one command does not use are left to the other: trials to tune, seeds to run
    both = _write(tmp_path / "both.yaml", "suite: demo\nmethods: [lora]\ntrials: 4\nseeds: 2\n")
    assert _options(workdir, "--config", str(both))[0]["seeds"] == "2"
    opts, _ = _options(workdir, "--config", str(both), command="tune")
    assert opts["trials"] == 4 and "seeds" not in opts


def test_include_reads_the_base_file_first(tmp_path: Path):
    _write(
        tmp_path / "base.yaml", "suite: vtab1k\nmethods: [karst]\nseeds: 3\nset: {karst.mode: fold, karst.alpha: 2}\n"
    )
    child = _write(tmp_path / "child.yaml", "include: base.yaml\nsuite: demo\nset: {karst.alpha: 4}\n")
    sweep = load_sweep_file(child)
    assert sweep.suite == "demo" and sweep.methods == ["karst"] and sweep.seeds == 3
    assert sweep.set == {"karst.mode": "fold", "karst.alpha": 4}


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ("suite: demo\nmethod: [lora]\n", ("unknown key 'method'", "did you mean 'methods'")),
        ("suite: demo\nmethods: lora\n", ("methods must be a list of strings", "methods: [karst, lora, linear]")),
        ("suite: demo\nseeds: [0, x]\n", ("seeds must be a seed count or a list of seeds",)),
        ("suite: demo\npreset: 0.1\n", ("preset must be a mapping of KEY: VALUE",)),
        ("suite: [demo\n", ("not valid YAML at line", "fix the file")),
        ("- suite: demo\n", ("must be a mapping of keys such as suite:",)),
        ("include: loop.yaml\nsuite: demo\n", ("includes itself",)),
    ],
)
def test_bad_sweep_files_are_one_line_errors(cli, tmp_path: Path, text: str, fragments: tuple[str, ...]):
    config = _write(tmp_path / "loop.yaml", text)
    code, _, err = cli("run", "--config", str(config))
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: --config {config}"), err
    assert all(f in lines[0] for f in fragments), lines[0]


def test_a_missing_file_and_missing_options_are_one_line_errors(cli, tmp_path: Path):
    code, _, err = cli("run", "--config", str(tmp_path / "nosuch.yaml"))
    assert code == 2 and "no such file" in err and len(err.strip().splitlines()) == 1
    config = _write(tmp_path / "nomethods.yaml", "suite: demo\n")
    code, _, err = cli("tune", "--config", str(config), "--trials", "2")
    assert code == 2 and "Missing option '--methods'" in err and "a methods: key" in err
    code, _, err = cli("tune", "--suite", "demo", "--methods", "lora")
    assert code == 2 and "Missing option '--trials'" in err


# -- the shipped configs ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_fits_its_backbone(path: Path):
    sweep = load_sweep_file(path)
    assert sweep.description and sweep.suite and sweep.methods and sweep.seeds == 3
    for command in COMMANDS:
        file_options(sweep, command)
    if sweep.budgets:
        parse_budgets(",".join(map(str, sweep.budgets)))
    import suites

    suite = suites.get_suite(sweep.suite)
    spec = backbone_spec(sweep.backbone or suite.default_backbone, suite.preset.img_size)
    for entry in sweep.methods:
        name = entry.split("[")[0].split("+")[0]
        methods.get_method(name).check_backbone(spec)  # every method supports the backbone


def _demo_plan(workdir: Path, path: Path):
    opts, sources = _options(workdir, "--config", str(path))
    return plan_sweep(_sweep_request(opts, "run", sources), workdir)


DEMOS = [p for p in CONFIGS if p.name.startswith("demo_")]


@pytest.mark.parametrize("path", DEMOS, ids=lambda p: p.name)
def test_every_demo_config_plans(workdir: Path, path: Path):
    from bench.method_entries import resolve_methods

    plan = _demo_plan(workdir, path)
    sweep = load_sweep_file(path)
    assert plan.runs and {r.spec.seed for r in plan.runs} == {0, 1, 2}
    # every entry of the file is planned, under its canonical label (variants' fields sorted)
    assert {r.spec.method for r in plan.runs} | {u.method for u in plan.unreachable} == {
        m.name for m in resolve_methods(sweep.methods)
    }


def test_the_demo_budget_curve_plans_every_reachable_cell(workdir: Path):
    plan = _demo_plan(workdir, ROOT / "configs" / "demo_budget_curve.yaml")
    cells = {(r.spec.method, r.spec.budget) for r in plan.runs}
    assert cells == {(m, b) for m in ("karst", "lora") for b in (4000, 8000, 16000)} | {
        ("adapter", 8000),
        ("adapter", 16000),
        ("linear", None),
    }
    assert [(u.method, u.budget) for u in plan.unreachable] == [("adapter", 4000)]
    assert len(plan.runs) == 9 * 3


def test_preset_epochs_is_the_epochs_option(tmp_path: Path):
    config = _write(tmp_path / "e.yaml", "suite: demo\nmethods: [lora]\npreset: {epochs: 5, lr: 0.01}\n")
    options = file_options(load_sweep_file(config), "run")
    assert options["epochs"] == 5 and options["set_"] == ["preset.lr=0.01"]
    twice = _write(tmp_path / "t.yaml", "suite: demo\nmethods: [lora]\nepochs: 4\npreset: {epochs: 5}\n")
    with pytest.raises(BenchError, match="sets epochs twice"):
        file_options(load_sweep_file(twice), "run")


ABLATIONS = [p for p in CONFIGS if "rst_ablation" in p.name or "kernels_factor_grid" in p.name]


@pytest.mark.parametrize("path", ABLATIONS, ids=lambda p: p.name)
def test_each_ablation_config_holds_its_base_once_and_only_variants_of_it(path: Path):
    """The report's ablation table needs the base (plain `karst`) next to its variants."""
    from bench.method_entries import resolve_methods
    from methods.base import make_config
    from methods.composition import base_name

    entries = resolve_methods(load_sweep_file(path).methods)
    assert [m.name for m in entries].count("karst") == 1
    assert {base_name(m) for m in entries} == {"karst"}
    if "grid" in path.name:  # the nine cells N x m, the paper's N = 2, m = 8 being the base
        cells = {(make_config(m).kernels, make_config(m).factor) for m in entries}
        assert cells == {(n, m) for n in (1, 2, 4) for m in (4, 8, 16)}
        base = make_config(next(m for m in entries if m.name == "karst"))
        assert (base.kernels, base.factor) == (2, 8)
