"""Matched budgets and equal-effort tuning with a real Optuna study and a real MLflow store."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import optuna
import pytest
import torch

import methods
from bench.backbone import backbone_spec
from bench.budget import format_budget, parse_budget
from bench.engine.driver import SilentReporter
from bench.errors import BenchError
from bench.studies import TUNE_SEED, default_storage, effort_used
from bench.tracking import Tracker, default_tracking_uri
from methods.base import BackboneSpec, Method, freeze_all_but, register_method, shared_search_space
from tests.conftest import RAY_SMALL


@pytest.mark.parametrize(
    ("text", "value"),
    [("300000", 300_000), ("300k", 300_000), ("0.3M", 300_000), ("1.5m", 1_500_000), ("36_864", 36_864), ("8K", 8_000)],
)
def test_budget_parsing(text: str, value: int):
    assert parse_budget(text) == value


@pytest.mark.parametrize("text", ["", "0.3G", "-5k", "abc", "0", "0.5"])
def test_bad_budgets_name_the_value(text: str):
    with pytest.raises(BenchError, match="--budget"):
        parse_budget(text)


def test_budget_format():
    assert [format_budget(b) for b in (300_000, 1_200_000, 8_000, 950)] == ["300k", "1.2M", "8k", "950"]


# a small, the published and a large budget for every sizeable method, on ViT-B/16
BUDGETS = {
    "lora": (147_456, 294_912, 1_179_648),
    "karst": (175_000, 356_352, 1_400_000),
    "kadaptation": (47_104, 50_176, 300_000),
    "dtl": (18_432, 36_864, 294_912),
    "sparse_tuning": (300_000, 1_091_584, 2_200_000),
}


@pytest.mark.parametrize("name", sorted(BUDGETS))
def test_for_budget_reaches_small_published_and_large(name: str):
    method, spec = methods.get_method(name), backbone_spec("vit_base_patch16_224")
    assert method.budget_adjustable
    for budget in BUDGETS[name]:
        count = method.count(spec, method.for_budget(spec, budget))
        assert abs(count - budget) <= 0.05 * budget, (name, budget, count)


def test_every_registered_method_is_sized_or_a_reference():
    assert {n for n, m in methods.available_methods().items() if m.budget_adjustable} >= set(BUDGETS)
    assert {n for n, m in methods.available_methods().items() if not m.budget_adjustable} >= {"linear", "full"}


def test_methods_budget_lists_every_method_within_tolerance(cli):
    code, out, _ = cli("methods", "budget", "--backbone", "vit_base_patch16_224", "--budget", "0.3M", "--json")
    rows = {r["method"]: r for r in json.loads(out)}
    assert code == 0 and set(rows) >= set(BUDGETS) | {"linear", "full"}
    for name in BUDGETS:
        assert rows[name]["adjustable"] and abs(rows[name]["deviation"]) <= 0.05, rows[name]
    assert rows["lora"]["config"]["rank"] == 8 and rows["linear"]["trainable_params"] == 0
    assert not rows["full"]["adjustable"]
    code, _, err = cli("methods", "budget", "--budget", "10", "--methods", "lora")
    assert code == 2 and "nearest feasible counts" in err


def test_run_at_a_budget_tags_it_and_shares_reference_runs(cli, workdir: Path, noah_root: Path):
    base = (
        "run",
        "--suite",
        "tinyfolder",
        "--methods",
        "lora,karst,linear",
        "--seeds",
        "1",
        "--data-root",
        str(noah_root),
        "--tasks",
        "alpha",
    )
    assert cli(*base, "--budget", "8k")[0] == 0
    runs = Tracker(default_tracking_uri(workdir)).search("bench/tinyfolder")
    by_method = {r.data.tags["bench.method"]: r for r in runs}
    for name in ("lora", "karst"):
        assert by_method[name].data.tags["bench.budget"] == "8000"
        assert abs(by_method[name].data.metrics["params/trainable"] - 8000) <= 400
    assert by_method["linear"].data.tags["bench.budget"] == "none"
    code, out, _ = cli(*base, "--budget", "16k")
    assert code == 0 and "2 run(s) trained, 1 already finished" in out  # linear is shared
    code, _, err = cli(*base, "--budget", "8k", "--set", "lora.rank=2")
    assert code == 2 and "both size method 'lora'" in err
    # a setting that leaves the fitted size alone is a different run of the same size
    code, out, _ = cli(*base, "--budget", "8k", "--set", "karst.mode=structured")
    assert code == 0 and "1 run(s) trained, 2 already finished" in out
    karst = [
        r
        for r in Tracker(default_tracking_uri(workdir)).search("bench/tinyfolder")
        if r.data.tags["bench.method"] == "karst"
    ]
    modes = {
        r.data.params["method.mode"]: r.data.metrics["params/trainable"]
        for r in karst
        if r.data.tags["bench.budget"] == "8000"
    }
    assert modes == {"fold": by_method["karst"].data.metrics["params/trainable"], "structured": modes["fold"]}


# -- tuning ------------------------------------------------------------------------------------

TUNE = ("tune", "--suite", "demo", "--methods", "karst,lora", "--budget", "8k", "--trials", "4", "--epochs", "3")


@pytest.fixture(scope="module")
def tuned_workdir(tmp_path_factory: pytest.TempPathFactory, mlflow_template: Path) -> Path:
    """The demo suite tuned once (4 trials per method), shared by the tests that read it."""
    from bench.cli import run_cli

    wd = tmp_path_factory.mktemp("tuned") / "runs"
    wd.mkdir()
    shutil.copy(mlflow_template, wd / "mlflow.db")
    assert run_cli(["--workdir", str(wd), *TUNE]) == 0
    return wd


def _studies(workdir: Path) -> dict[str, optuna.Study]:
    storage = default_storage(workdir)
    return {
        s.study_name: optuna.load_study(study_name=s.study_name, storage=storage)
        for s in optuna.get_all_study_summaries(storage)
    }


def _charged(study: optuna.Study, epochs: int = 3) -> int:
    return effort_used(study.trials, epochs).epochs


def test_a_real_study_per_method_with_equal_effort(tuned_workdir: Path):
    studies = _studies(tuned_workdir)
    assert set(studies) == {"demo/digits/karst/b8k", "demo/digits/lora/b8k"}
    assert all(_charged(s) == 4 * 3 for s in studies.values())  # 4 full trials of 3 epochs each
    for study in studies.values():  # Hyperband fed with every epoch's val accuracy; a pruned trial pays its epochs
        for t in study.trials:
            assert t.user_attrs["epochs"] == (3 if t.state.name == "COMPLETE" else len(t.intermediate_values))
    for study in studies.values():
        first = study.trials[0]
        assert first.params["lr"] == 1e-2 and first.params["weight_decay"] == 1e-4  # the demo preset: trial 0
        assert all(len(t.intermediate_values) >= 1 for t in study.trials)
        complete = [t for t in study.trials if t.state.name == "COMPLETE"]
        assert all(t.value == t.intermediate_values[max(t.intermediate_values)] for t in complete)  # last epoch
    assert studies["demo/digits/karst/b8k"].trials[0].params["alpha"] == 1.0


def test_every_trial_is_an_mlflow_run(tuned_workdir: Path):
    runs = Tracker(default_tracking_uri(tuned_workdir)).search("bench/demo-tune")
    assert len(runs) == sum(len(s.trials) for s in _studies(tuned_workdir).values())
    states = {(r.data.tags["bench.study"], r.data.tags["bench.trial"]): r.data.tags["optuna.state"] for r in runs}
    for name, study in _studies(tuned_workdir).items():
        for t in study.trials:
            assert states[(name, str(t.number))] == {"COMPLETE": "complete", "PRUNED": "pruned"}[t.state.name]
    assert all(r.data.tags["bench.stage"] == "tune" and r.data.tags["bench.seed"] == str(TUNE_SEED) for r in runs)
    assert all("hp.lr" in r.data.params for r in runs)


def test_tuning_resumes_without_repeating_trials(tuned_workdir: Path, capsys):
    from bench.cli import run_cli

    before = {n: len(s.trials) for n, s in _studies(tuned_workdir).items()}
    assert run_cli(["--workdir", str(tuned_workdir), *TUNE]) == 0
    assert {n: len(s.trials) for n, s in _studies(tuned_workdir).items()} == before  # nothing left to do
    assert len(Tracker(default_tracking_uri(tuned_workdir)).search("bench/demo-tune")) == sum(before.values())
    capsys.readouterr()
    assert run_cli(["--workdir", str(tuned_workdir), *TUNE[:-4], "--trials", "5", "--epochs", "3"]) == 0
    err = capsys.readouterr().err
    for name, study in _studies(tuned_workdir).items():
        assert _charged(study) == 5 * 3 and len(study.trials) > before[name]  # topped up by a trial's epochs
        drawn = [t.params for t in study.trials]
        assert all(drawn.count(p) == 1 for p in drawn)  # no configuration trained twice
        for trial in study.trials[before[name] :]:  # one line per finished trial, as it finishes
            state = {"COMPLETE": "complete", "PRUNED": "pruned"}[trial.state.name]
            value = f" val {100 * trial.value:.2f}%" if state == "complete" else ""  # a pruned trial has no result
            assert f"{name} trial {trial.number}: {state}{value}" in err, err
        assert f"{name} trial {before[name] - 1}:" not in err  # the trials of the first call are not printed again


@pytest.mark.slow
def test_ray_tuning_equals_the_inline_studies(tuned_workdir: Path, tmp_path: Path, mlflow_template: Path, ray_tmp):
    """Two Ray workers tune the two studies at once; each study proposes, prunes and ends as in
    one process, and every trial is logged the same way."""
    from bench.cli import run_cli

    wd = tmp_path / "runs"
    wd.mkdir()
    shutil.copy(mlflow_template, wd / "mlflow.db")
    assert run_cli(["--workdir", str(wd), *TUNE, "--executor", "ray", "--workers", "2", *RAY_SMALL]) == 0
    ours, theirs = _studies(wd), _studies(tuned_workdir)
    assert set(ours) == set(theirs)
    for name, study in ours.items():
        mine = study.trials
        ref = theirs[name].trials[: len(mine)]  # another test tops the shared studies up to 5 full trials
        assert [t.state.name for t in mine] == [t.state.name for t in ref]
        assert [t.params for t in mine] == [t.params for t in ref]
        for a, b in zip(mine, ref, strict=True):
            assert a.intermediate_values == pytest.approx(b.intermediate_values, abs=1e-6)
            assert (a.value is None) == (b.value is None) and (a.value is None or a.value == pytest.approx(b.value))
    for name, study in ours.items():  # cancelled worker runs are charged what the inline ones were
        assert [t.user_attrs["epochs"] for t in study.trials] == [
            t.user_attrs["epochs"] for t in theirs[name].trials[: len(study.trials)]
        ]

    def logged(workdir: Path) -> dict:
        tracker = Tracker(default_tracking_uri(workdir))
        return {
            (r.data.tags["bench.study"], r.data.tags["bench.trial"]): (
                r.info.status,
                r.data.tags["optuna.state"],
                len(tracker.client.get_metric_history(r.info.run_id, "train/loss")),  # no epoch past a prune
            )
            for r in tracker.search("bench/demo-tune")
        }

    counts = {name: len(study.trials) for name, study in ours.items()}
    expected = {k: v for k, v in logged(tuned_workdir).items() if int(k[1]) < counts[k[0]]}
    assert logged(wd) == expected and len(expected) == sum(counts.values())


def test_final_runs_take_the_best_trial(tuned_workdir: Path, capsys):
    from bench.cli import run_cli

    args = [
        "--workdir",
        str(tuned_workdir),
        "run",
        "--suite",
        "demo",
        "--methods",
        "karst,lora",
        "--budget",
        "8k",
        "--hparams",
        "tuned",
        "--epochs",
        "3",
    ]
    assert run_cli([*args, "--seeds", f"0,{TUNE_SEED}"]) == 2
    assert f"seed {TUNE_SEED} trained the tuning trials" in capsys.readouterr().err
    assert run_cli([*args, "--seeds", "0,"]) == 0
    runs = {r.data.tags["bench.method"]: r for r in Tracker(default_tracking_uri(tuned_workdir)).search("bench/demo")}
    for name, study in _studies(tuned_workdir).items():
        method = name.split("/")[2]
        best = max((t for t in study.trials if t.state.name == "COMPLETE"), key=lambda t: t.value)
        run = runs[method]
        assert run.data.tags["bench.study"] == name and run.data.tags["bench.trial"] == str(best.number)
        assert float(run.data.params["hp.lr"]) == pytest.approx(best.params["lr"])
        assert float(run.data.params["hp.drop_path"]) == pytest.approx(best.params["drop_path"])
    assert float(runs["karst"].data.params["method.alpha"]) == pytest.approx(
        max(
            (t for t in _studies(tuned_workdir)["demo/digits/karst/b8k"].trials if t.state.name == "COMPLETE"),
            key=lambda t: t.value,
        ).params["alpha"]
    )

    # The report states each method's tuning effort: its study's budget, and the trial-epochs and
    # training seconds the study spent, as the study's parent run recorded them.
    from reports import render, tables
    from reports.report import build_report, sections
    from reports.runs import load_runs

    selected = load_runs(Tracker(default_tracking_uri(tuned_workdir)), "demo", "final", hparams="tuned")
    effort = tables.tuning_effort(selected, "karst").set_index("method")
    for name, study in _studies(tuned_workdir).items():
        row = effort.loc[name.split("/")[2]]
        charged = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED", "FAIL")]
        assert row["studies"] == 1 and row["scheduler"] == "hyperband"
        assert row["budget_min"] == row["budget_max"] == row["trial_epochs"] == _charged(study) == 5 * 3
        assert row["train_s"] == pytest.approx(sum(t.user_attrs["train_s"] for t in charged))
    table = render.tuning_effort_table(effort.reset_index())
    assert table.loc["lora", "Trial-epochs used"] == "15" and table.loc["lora", "Budget / study (trial-epochs)"] == "15"
    items = [item for section in sections(build_report(selected, "karst")) for item in section.items]
    assert "tuning_effort" in [getattr(item, "name", None) for item in items]


def test_tuned_without_a_study_says_how_to_make_one(cli):
    code, _, err = cli("run", "--suite", "demo", "--methods", "lora", "--seeds", "1", "--hparams", "tuned")
    assert code == 2 and "no tuning study demo/digits/lora/published" in err and "bench tune" in err


def test_tuning_never_needs_test_lists(cli, workdir: Path, noah_root: Path):
    for task in ("alpha", "beta"):
        (noah_root / task / "test.txt").unlink()
    code, out, err = cli(
        "tune", "--suite", "tinyfolder", "--methods", "lora", "--trials", "2", "--data-root", str(noah_root), "--json",
        "--weights-label", "tiny ViT, random init",
    )  # fmt: skip
    assert code == 0, err
    summaries = json.loads(out)
    assert len(summaries) == 2 and all(s["trials"].get("complete") and s["epochs_used"] == 2 * 3 for s in summaries)
    trials = Tracker(default_tracking_uri(workdir)).search("bench/tinyfolder-tune")
    assert {r.data.tags.get("bench.weights_label") for r in trials if "bench.trial" in r.data.tags} == {
        "tiny ViT, random init"
    }


# -- a failed trial is recorded and the study goes on ------------------------------------------


@dataclass
class PoisonConfig:
    poison: bool = True


class Poison(Method):
    """Test-only: with poison=True the logits become NaN, so the training loss does."""

    name = "_poison"
    Config = PoisonConfig
    budget_adjustable = False

    def apply(self, model, config):
        if config.poison:
            model.head.register_forward_hook(lambda m, a, out: out * torch.nan)
        freeze_all_but(model, [])
        return model

    def count(self, spec: BackboneSpec, config) -> int:
        return 0

    def search_space(self, trial):
        return {**shared_search_space(trial), "poison": trial.suggest_categorical("poison", [True, False])}

    def published_hparams(self):
        return {"poison": True}


@pytest.fixture
def poison_method():
    register_method(Poison)
    yield
    methods.base._REGISTRY.pop("_poison")


@pytest.mark.parametrize("workers", [[], ["--executor", "ray", "--workers", "1", *RAY_SMALL]], ids=["inline", "ray"])
def test_a_failed_trial_is_recorded_and_the_study_goes_on(
    workers: list[str], poison_method, cli, workdir: Path, noah_root: Path, ray_tmp
):
    code, out, err = cli(
        "tune",
        "--suite",
        "tinyfolder",
        "--methods",
        "_poison",
        "--trials",
        "3",
        "--data-root",
        str(noah_root),
        "--tasks",
        "alpha",
        "--json",
        *workers,
    )
    assert code == 0, err
    [summary] = json.loads(out)
    assert summary["trials"].get("fail", 0) >= 1 and summary["epochs_used"] == summary["budget_epochs"] == 3 * 3
    runs = Tracker(default_tracking_uri(workdir)).search("bench/tinyfolder-tune")
    failed = [r for r in runs if r.data.tags["optuna.state"] == "failed"]
    assert failed and all(r.info.status == "FAILED" for r in failed)
    assert "not finite" in failed[0].data.tags["bench.error"]


class _InterruptAtFirstEpoch(SilentReporter):
    """Ctrl-C after the first trial's first epoch."""

    def epoch_done(self, run, metrics) -> None:
        raise KeyboardInterrupt


def test_an_interrupted_trial_does_not_count_and_the_rerun_tops_the_study_up(cli, workdir: Path, noah_root: Path):
    from bench.engine import ExecutorOptions, Recorder, make_executor
    from bench.sweep import SweepRequest
    from bench.tune import run_tuning

    request = SweepRequest(
        suite="tinyfolder", methods=["lora"], seeds=[0], tasks=["alpha"], data_root=noah_root, device="cpu"
    )
    storage = default_storage(workdir)
    recorder = Recorder(Tracker(default_tracking_uri(workdir), artifact_root=workdir / "artifacts"))
    with pytest.raises(KeyboardInterrupt):
        run_tuning(
            request, 2, workdir, recorder, storage, make_executor(ExecutorOptions(), "cpu"), _InterruptAtFirstEpoch()
        )
    [study] = optuna.get_all_study_summaries(storage)
    [trial] = optuna.load_study(study_name=study.study_name, storage=storage).trials
    assert trial.state.name == "FAIL" and trial.user_attrs.get("interrupted") is True
    [run] = Tracker(default_tracking_uri(workdir)).search("bench/tinyfolder-tune")
    assert run.info.status == "KILLED"

    code, out, err = cli(
        "tune", "--suite", "tinyfolder", "--methods", "lora", "--trials", "2", "--tasks", "alpha",
        "--data-root", str(noah_root), "--device", "cpu", "--json",
    )  # fmt: skip
    assert code == 0, err
    [summary] = json.loads(out)
    assert summary["trials"] == {"interrupted": 1, "complete": 2}  # two that count, as every study gets
