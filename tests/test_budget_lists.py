"""Several budgets in one sweep: a run key per (method, budget, task, seed), references shared,
unreachable cells left out, warned about and recorded on the sweep's parent run."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from bench import schema
from bench.budget import parse_budgets
from bench.errors import BenchError
from bench.studies import default_storage
from bench.tracking import Tracker, default_tracking_uri


def _runs(workdir: Path, experiment: str = "bench/tinyfolder"):
    return [r for r in Tracker(default_tracking_uri(workdir)).search(experiment) if schema.RUN_KEY in r.data.tags]


def _parents(workdir: Path):
    tracker = Tracker(default_tracking_uri(workdir))
    exp = tracker.client.get_experiment_by_name("bench/tinyfolder")
    return tracker.client.search_runs([exp.experiment_id], f"tags.`{schema.KIND}` = '{schema.KIND_SWEEP}'")


def test_budget_lists_parse_and_refuse_repeats():
    assert parse_budgets("0.1M,0.3M,1M") == [100_000, 300_000, 1_000_000]
    assert parse_budgets("8k") == [8000]
    for bad, fragment in (("8k,8000", "repeats a budget"), (",", "names no budget"), ("8k,x", "not a parameter")):
        with pytest.raises(BenchError, match=fragment):
            parse_budgets(bad)


def test_a_multi_budget_sweep_end_to_end(cli, workdir: Path, noah_root: Path):
    base = ("run", "--suite", "tinyfolder", "--seeds", "1", "--data-root", str(noah_root), "--tasks", "alpha")
    code, out, err = cli(*base, "--methods", "lora,adapter,linear", "--budget", "4k,8k")
    assert code == 0, err
    # adapter has no structure within 5 % of 4k on the tiny ViT: one warning line with its nearest counts
    warnings = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "adapter at budget 4k is left out" in warnings[0]
    assert "nearest feasible counts are 2,568, 3,600, 4,632" in warnings[0]
    runs = _runs(workdir)
    cells = {(r.data.tags[schema.METHOD], r.data.tags[schema.BUDGET]): r for r in runs}
    assert set(cells) == {("lora", "4000"), ("lora", "8000"), ("adapter", "8000"), ("linear", "none")}
    assert len({r.data.tags[schema.RUN_KEY] for r in runs}) == 4
    for (_, budget), r in cells.items():
        if budget != "none":
            assert abs(r.data.metrics[schema.PARAMS_TRAINABLE] - int(budget)) <= 0.05 * int(budget)
    assert (
        cells[("lora", "4000")].data.params["method.rank"] == "4"
        and cells[("lora", "8000")].data.params["method.rank"] == "8"
    )
    assert {r.info.run_name for r in runs} >= {"lora@4k/alpha/s0", "lora@8k/alpha/s0", "linear/alpha/s0"}
    assert "lora@4k" in out and "lora@8k" in out  # the summary keeps the budgets apart
    (parent,) = _parents(workdir)
    assert parent.data.tags[schema.BUDGETS] == "4000,8000"
    (cell,) = json.loads(parent.data.tags[schema.UNREACHABLE])
    assert cell["method"] == "adapter" and cell["budget"] == 4000 and "4,632" in cell["reason"]

    # the same sweep again resumes; one of its budgets alone reuses its runs and the shared reference
    code, out, _ = cli(*base, "--methods", "lora,adapter,linear", "--budget", "4k,8k")
    assert code == 0 and "0 run(s) trained, 4 already finished" in out
    code, out, _ = cli(*base, "--methods", "lora,adapter,linear", "--budget", "8k")
    assert code == 0 and "0 run(s) trained, 3 already finished" in out
    # a report of one budget: that budget's runs and the reference
    report = workdir / "report"
    code, _, err = cli(
        "report", "--suite", "tinyfolder", "--budget", "8k", "--reference", "linear", "--format", "csv", "--out",
        str(report),
    )  # fmt: skip
    assert code == 0, err
    table = (report / "results.csv").read_text()
    assert "lora" in table and "adapter" in table and "linear" in table


def test_unreachable_budgets_refused_in_one_line(cli, workdir: Path, noah_root: Path):
    base = ("run", "--suite", "tinyfolder", "--seeds", "1", "--data-root", str(noah_root), "--tasks", "alpha")
    code, _, err = cli(*base, "--methods", "adapter,linear", "--budget", "4k")  # one budget: refused as before
    assert code == 2 and len(err.strip().splitlines()) == 1 and "nearest feasible counts" in err
    code, _, err = cli(*base, "--methods", "adapter,linear", "--budget", "2k,4k")  # every cell unreachable
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: no method reaches any of the budgets 2k,4k")
    assert _runs(workdir) == []


@pytest.mark.slow
def test_tuning_several_budgets_keeps_a_study_per_budget(cli, workdir: Path, noah_root: Path, tmp_path: Path):
    """`bench tune --config` over two budgets: a study per (task, method, budget), the resolved file
    on each study's parent run; `--hparams tuned` then takes each budget's own study."""
    config = tmp_path / "tune.yaml"
    config.write_text(
        f"suite: tinyfolder\ndata_root: {noah_root}\ntasks: [alpha]\nmethods: [lora, adapter, linear]\n"
        "budgets: [4k, 8k]\ntrials: 1\n"
    )
    code, _, err = cli("tune", "--config", str(config))
    assert code == 0, err
    assert "adapter at budget 4k is left out" in err
    storage = default_storage(workdir)
    names = {s.study_name for s in optuna.get_all_study_summaries(storage)}
    assert names == {
        "tinyfolder/alpha/lora/b4k",
        "tinyfolder/alpha/lora/b8k",
        "tinyfolder/alpha/adapter/b8k",
        "tinyfolder/alpha/linear/published",
    }
    tracker = Tracker(default_tracking_uri(workdir))
    exp = tracker.client.get_experiment_by_name("bench/tinyfolder-tune")
    parents = tracker.client.search_runs([exp.experiment_id], f"tags.`{schema.KIND}` = '{schema.KIND_SWEEP}'")
    assert len(parents) == 4
    stored = tracker.client.download_artifacts(parents[0].info.run_id, schema.SWEEP_FILE, str(tmp_path))
    assert "trials: 1" in Path(stored).read_text() and "budgets: [4000, 8000]" in Path(stored).read_text()
    common = ("--suite", "tinyfolder", "--data-root", str(noah_root), "--tasks", "alpha", "--budget", "4k,8k")
    code, out, err = cli("run", *common, "--methods", "lora", "--hparams", "tuned", "--seeds", "0,")
    assert code == 0, err
    studies = {r.data.tags[schema.BUDGET]: r.data.tags[schema.STUDY] for r in _runs(workdir)}
    assert studies == {"4000": "tinyfolder/alpha/lora/b4k", "8000": "tinyfolder/alpha/lora/b8k"}
