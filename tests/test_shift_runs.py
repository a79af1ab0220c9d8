"""`bench analyze shift --suite …`: the feature shift of many runs, summarised with intervals.

The runs are real (trained by the CLI on generated images into a real MLflow store). The summary is
checked against a recomputation written here: per-run values from each run's own logged analysis,
per-task means and Student-t intervals from scipy, paired differences from ``scipy.stats.ttest_rel``,
and the over-task estimate as the mean of task means.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from scipy import stats

from bench import export, schema
from bench.tracking import default_tracking_uri
from tests.conftest import write_task

METHODS = ["karst", "karst[rescale=none]"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, mlflow_template):
    """KARST and KARST without re-scaling (one sweep, as variants) and Sparse-Tuning (whose forward
    bypasses the blocks, so it cannot be measured), on two generated tasks with two seeds each."""
    from bench.cli import run_cli

    root = tmp_path_factory.mktemp("shift_runs")
    data = root / "data"
    write_task(data / "alpha", num_classes=3, seed=0)
    write_task(data / "beta", num_classes=3, seed=1)
    workdir = root / "runs"
    workdir.mkdir()
    shutil.copy(mlflow_template, workdir / "mlflow.db")
    args = ["--workdir", str(workdir), "run", "--suite", "tinyfolder", "--seeds", "2", "--data-root", str(data)]
    args += ["--device", "cpu", "--epochs", "1", "--methods", ",".join([*METHODS, "sparse_tuning"])]
    assert run_cli(args) == 0
    return workdir, data


@pytest.fixture
def cli_in(capsys):
    from bench.cli import run_cli

    def invoke(workdir: Path, *args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = run_cli(["--workdir", str(workdir), *args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return invoke


def _logged_blocks(client: MlflowClient, run_key: str, tmp: Path) -> pd.DataFrame:
    """A run's own analysis as `bench analyze shift RUN` logged it: its rows against the frozen backbone."""
    run = export.find_run(client, run_key)
    path = client.download_artifacts(run.info.run_id, f"{schema.SHIFT_DIR}/{schema.SHIFT_BLOCKS}", str(tmp))
    blocks = pd.read_csv(path)
    return blocks[blocks["model_b"] == "frozen"].set_index("block")


@pytest.mark.slow
def test_suite_summary_matches_a_recomputation_resumes_and_leaves_out_what_it_cannot_measure(sweep, tmp_path, cli_in):
    workdir, _ = sweep
    out = tmp_path / "summary"
    args = ("analyze", "shift", "--suite", "tinyfolder", "--images", "12", "--device", "cpu", "--out", str(out))
    code, stdout, err = cli_in(workdir, *args)
    assert code == 0, err
    assert "8 run(s) measured, 0 read back" in stdout
    # Sparse-Tuning's four runs are left out, each named with the reason; the others are summarised
    left_out = [line for line in err.splitlines() if line.startswith("left out:")]
    assert len(left_out) == 4 and all("sparse_tuning/" in line and "without calling block" in line for line in left_out)
    assert {p.name for p in out.iterdir()} >= {
        "shift_runs.csv", "shift_summary.csv", "shift_summary.json", "shift_summary.png", "shift_summary.pdf",
        "shift_alpha.png", "shift_beta.png",
    }  # fmt: skip

    per_run = pd.read_csv(out / schema.SHIFT_RUNS_CSV)
    summary = pd.read_csv(out / schema.SHIFT_SUMMARY_CSV)
    assert sorted(set(per_run["method"])) == sorted(METHODS)
    assert len(per_run) == 2 * 2 * 2 * 4  # methods × tasks × seeds × blocks

    # every per-run value is the run's own analysis, as logged to its MLflow run
    client = MlflowClient(default_tracking_uri(workdir))
    for key, rows in per_run.groupby("run_key"):
        logged = _logged_blocks(client, key, tmp_path / key)
        for r in rows.itertuples():
            assert r.w1 == pytest.approx(logged.loc[r.block, "w1"], rel=1e-12)
            assert r.cka == pytest.approx(logged.loc[r.block, "cka"], rel=1e-12)

    # per task: mean, Student-t interval, and the paired difference to the reference (karst)
    def seeds(method: str, task: str, block: str, metric: str) -> np.ndarray:
        sel = (per_run["method"] == method) & (per_run["task"] == task) & (per_run["block"] == block)
        return per_run[sel].sort_values("seed")[metric].to_numpy()

    for task in ("alpha", "beta"):
        for block in ("blocks.0", "blocks.3"):
            for metric in ("w1", "cka", "mean_shift"):
                row = summary[(summary["scope"] == task) & (summary["block"] == block) & (summary["metric"] == metric)]
                row = row.set_index("method")
                x, ref = seeds(METHODS[1], task, block, metric), seeds(METHODS[0], task, block, metric)
                low, high = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
                assert row.loc[METHODS[1], "estimate"] == pytest.approx(x.mean(), rel=1e-12)
                assert row.loc[METHODS[1], "low"] == pytest.approx(low, rel=1e-9)
                assert row.loc[METHODS[1], "high"] == pytest.approx(high, rel=1e-9)
                ci = stats.ttest_rel(x, ref).confidence_interval(0.95)
                assert row.loc[METHODS[1], "diff"] == pytest.approx(x.mean() - ref.mean(), rel=1e-9, abs=1e-15)
                assert row.loc[METHODS[1], "diff_low"] == pytest.approx(ci.low, rel=1e-9)
                assert row.loc[METHODS[1], "diff_test"] == "paired t"

    # over the two tasks: the mean of task means, with a Welch-Satterthwaite t interval (tasks fixed)
    head = summary[summary["scope"] == "mean of 2 tasks"]
    assert len(head) == 2 * 4 * 4  # methods × blocks × metrics
    for r in head.itertuples():
        per_task = [seeds(r.method, t, r.block, r.metric) for t in ("alpha", "beta")]
        assert r.estimate == pytest.approx(np.mean([v.mean() for v in per_task]), rel=1e-12)
        parts = np.array([v.var(ddof=1) / len(v) / len(per_task) ** 2 for v in per_task])
        if not parts.sum() > 0:
            continue  # no spread over seeds: no interval
        df = parts.sum() ** 2 / sum(p**2 / (len(v) - 1) for p, v in zip(parts, per_task, strict=True))
        half = stats.t.ppf(0.975, df) * np.sqrt(parts.sum())
        assert r.low == pytest.approx(r.estimate - half, rel=1e-9) and r.high == pytest.approx(
            r.estimate + half, rel=1e-9
        )
        if r.method == METHODS[1]:
            ref = [seeds(METHODS[0], t, r.block, r.metric).mean() for t in ("alpha", "beta")]
            assert r.diff == pytest.approx(r.estimate - np.mean(ref), rel=1e-9, abs=1e-15)
            assert r.diff_low <= r.diff <= r.diff_high
    # re-scaling moves the features further from the frozen backbone's than no re-scaling, which
    # at one epoch barely moves them: the headline difference is negative with its interval below 0
    last = head[(head["block"] == "blocks.3") & (head["metric"] == "w1")].set_index("method")
    assert last.loc[METHODS[1], "diff_high"] < 0

    # a rerun reads every analysis back from the store and writes the same summary
    code, stdout, err = cli_in(workdir, *args[:-1], str(tmp_path / "again"))
    assert code == 0 and "0 run(s) measured, 8 read back" in stdout, err
    again = pd.read_csv(tmp_path / "again" / schema.SHIFT_SUMMARY_CSV)
    pd.testing.assert_frame_equal(summary, again)
    # another image sample is measured afresh
    code, stdout, err = cli_in(workdir, *args[:4], "--methods", METHODS[0], "--images", "6", "--device", "cpu")
    assert code == 0 and "4 run(s) measured, 0 read back" in stdout, err
    assert "feature shift against the frozen backbone: mean of 2 tasks" in stdout and "blocks.3" in stdout


@pytest.mark.slow
def test_suite_summary_refusals_are_one_line_each(sweep, cli_in):
    workdir, _ = sweep

    def fails(*args: str) -> str:
        code, _, err = cli_in(workdir, "analyze", "shift", *args, "--device", "cpu")
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        return err

    assert "name a RUN to analyze, or pass --suite" in fails()
    assert "--suite selects many runs but RUN 'karst/alpha/s0' names one" in fails("karst/alpha/s0", "--suite", "x")
    assert "with --suite every method is compared with --reference" in fails(
        "--suite", "tinyfolder", "--against", "karst/alpha/s0"
    )
    assert "unknown suite 'nope'" in fails("--suite", "nope")
    # a bad measurement option stops the command before any run is rebuilt (no progress line)
    assert "--tokens-per-image -1 must be 0" in fails("--suite", "tinyfolder", "--tokens-per-image", "-1")
    assert "--images 1 is too few" in fails("--suite", "tinyfolder", "--images", "1")
    err = fails("--suite", "tinyfolder", "--methods", "karst", "--reference", "lora")
    assert "--reference 'lora' has no selected runs" in err
    # every run left out: one progress line per run, then the error in one line
    code, _, err = cli_in(workdir, "analyze", "shift", "--suite", "tinyfolder", "--methods", "sparse_tuning",
                          "--images", "4", "--device", "cpu")  # fmt: skip
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 5 and "Traceback" not in err
    assert all(": left out (" in line for line in lines[:4])
    assert (
        lines[4].startswith("error: none of the 4 selected run(s) could be measured") and "without calling" in lines[4]
    )


def test_summary_statistics_on_constructed_values():
    """Two methods, two tasks, three seeds, one block: exact values written by hand."""
    from reports.feature_shift import summarize_shift

    rows = []
    for method, offset in (("a", 0.0), ("b", 1.0)):
        for task, base in (("t1", 1.0), ("t2", 3.0)):
            for seed, noise in enumerate((-0.1, 0.0, 0.1)):
                value = base + offset + noise * (2 if method == "b" else 1)
                rows.append(dict(method=method, task=task, shots=np.nan, seed=seed, block="blocks.0", index=0,
                                 stage=0, w1=value, cka=1.0))  # fmt: skip
    summary = summarize_shift(pd.DataFrame(rows), ["a", "b"], metrics=("w1", "cka"))
    one = summary[(summary["scope"] == "t1") & (summary["metric"] == "w1")].set_index("method")
    assert one.loc["a", "estimate"] == pytest.approx(1.0) and one.loc["b", "estimate"] == pytest.approx(2.0)
    half = stats.t.ppf(0.975, 2) * 0.1 / np.sqrt(3)  # sd of (-0.1, 0, 0.1) is 0.1
    assert one.loc["a", "high"] - one.loc["a", "estimate"] == pytest.approx(half)
    d = stats.t.ppf(0.975, 2) * 0.1 / np.sqrt(3)  # b - a per seed: 1 + (-0.1, 0, 0.1)
    assert (one.loc["b", "diff"], one.loc["b", "diff_high"]) == pytest.approx((1.0, 1.0 + d))
    head = summary[(summary["scope"] == "mean of 2 tasks") & (summary["metric"] == "w1")].set_index("method")
    assert (head.loc["a", "estimate"], head.loc["b", "estimate"]) == pytest.approx((2.0, 3.0))
    assert (
        head.loc["b", "diff"] == pytest.approx(1.0)
        and head.loc["a", "interval"] == "Welch-Satterthwaite t, tasks fixed"
    )
    cka = summary[summary["metric"] == "cka"]
    assert (cka["estimate"] == 1.0).all()
    # constant values: per task the t formula gives zero width; over tasks there is no spread to build an
    # interval from, so none is given
    assert (cka[cka["tasks"] == 1]["low"] == 1.0).all() and cka[cka["tasks"] == 2]["low"].isna().all()
    # a task one method lacks a seed on is summarised alone, and no over-task row is made from it
    partial = pd.DataFrame([r for r in rows if not (r["method"] == "b" and r["task"] == "t2" and r["seed"] == 2)])
    summary = summarize_shift(partial, ["a", "b"], metrics=("w1",))
    assert set(summary["scope"]) == {"t1", "t2"}
    t2 = summary[summary["scope"] == "t2"].set_index("method")
    assert t2.loc["b", "seeds"] == "0,1" and t2.loc["b", "diff_test"] == "welch"


def test_the_per_run_csv_columns_are_documented():
    from bench.shift_runs import RUN_COLUMNS
    from reports.feature_shift import SUMMARY_COLUMNS

    page = (Path(__file__).parents[1] / "docs" / "guide" / "feature-shift.md").read_text()
    for column in [*RUN_COLUMNS, *SUMMARY_COLUMNS]:
        assert f"`{column}`" in page, column
