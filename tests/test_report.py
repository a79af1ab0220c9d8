"""`bench report` end to end on real runs, and the run selection rules it enforces."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from bench.errors import BenchError
from reports import tables
from reports.runs import COLUMNS, select_runs
from tests.conftest import write_task

METHODS = "lora,linear,karst"


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory, mlflow_template: Path):
    """One small real sweep (2 tasks × 3 methods × 3 seeds, 2 epochs) shared by the tests below."""
    from bench.cli import run_cli

    base = tmp_path_factory.mktemp("report")
    root = base / "data"
    write_task(root / "alpha", num_classes=3, seed=0)
    write_task(root / "beta", num_classes=2, seed=1)
    workdir = base / "runs"
    workdir.mkdir()
    shutil.copy(mlflow_template, workdir / "mlflow.db")
    args = ["--workdir", str(workdir), "run", "--suite", "tinyfolder", "--data-root", str(root)]
    assert run_cli([*args, "--methods", METHODS, "--seeds", "3", "--epochs", "2"]) == 0
    return workdir, root


def _invoke(capsys, workdir: Path, *args: str) -> tuple[int, str, str]:
    from bench.cli import run_cli

    capsys.readouterr()
    code = run_cli(["--workdir", str(workdir), *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_report_writes_every_file_and_its_numbers_match_the_runs(swept, tmp_path: Path, capsys):
    workdir, _ = swept
    out = tmp_path / "rep"
    code, stdout, err = _invoke(
        capsys, workdir, "report", "--suite", "tinyfolder", "--reference", "karst", "--out", str(out)
    )
    assert code == 0, err
    names = {p.name for p in out.iterdir()}
    for stem in ("accuracy_vs_params", "critical_difference", "forest_vs_reference", "resources"):
        assert {f"{stem}.png", f"{stem}.pdf"} <= names
    assert {"report.md", "report.tex", "results.csv", "summary.csv"} <= names

    code, listing, err = _invoke(capsys, workdir, "runs", "--suite", "tinyfolder", "--json")
    assert code == 0, err
    runs = pd.DataFrame(json.loads(listing))
    runs = runs[runs["status"] == "FINISHED"]
    results = pd.read_csv(out / "results.csv")
    assert len(results) == len(runs) == 18
    summary = pd.read_csv(out / "summary.csv")
    for (task, method), grp in runs.groupby(["task", "method"]):
        row = summary[(summary["task"] == task) & (summary["method"] == method)].iloc[0]
        acc = grp["test_acc"].to_numpy(dtype=float)
        assert row["mean"] == pytest.approx(acc.mean(), abs=1e-12)
        half = sps.t.ppf(0.975, len(acc) - 1) * acc.std(ddof=1) / np.sqrt(len(acc))
        assert row["half_width"] == pytest.approx(half, abs=1e-12)
        if method != "karst":
            ref = runs[(runs["task"] == task) & (runs["method"] == "karst")]["test_acc"].to_numpy(dtype=float)
            welch = sps.ttest_ind(acc, ref, equal_var=False)
            if np.isfinite(welch.pvalue):
                assert row["p"] == pytest.approx(welch.pvalue, rel=1e-9)
    assert (
        summary["params_trainable"] == summary["method"].map(runs.groupby("method")["trainable_params"].first())
    ).all()

    md = (out / "report.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("|") and "karst" in line)
    assert [c.strip() for c in header.strip("|").split("|")][1:] == ["karst", "lora", "linear"]  # reference first
    assert "95 % Student-t" in md and "Benjamini–Hochberg" in md and "exclude the classification head" in md
    assert "3 seeds" in md
    # every mean shown in the Markdown table is the recomputed one at one decimal
    for _, row in summary.iterrows():
        assert f"{100 * row['mean']:.1f} ± {100 * row['half_width']:.1f}" in md
    tex = (out / "report.tex").read_text()
    assert r"\toprule" in tex and r"\bottomrule" in tex and r"\begin{document}" in tex
    assert "alpha" in tex and r"$\pm$" in tex and all(ord(ch) < 128 for ch in tex)  # plain pdflatex compiles it


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed")
def test_latex_report_compiles(swept, tmp_path: Path, capsys):
    workdir, _ = swept
    out = tmp_path / "rep"
    code, _, err = _invoke(capsys, workdir, "report", "--suite", "tinyfolder", "--format", "latex", "--out", str(out))
    assert code == 0, err
    proc = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "report.tex"],
        cwd=out,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert (out / "report.pdf").stat().st_size > 10_000


def test_report_lists_missing_runs_and_leaves_them_out(swept, tmp_path: Path, capsys):
    workdir, root = swept
    # a fourth method with one seed only on one task: listed as missing, never averaged
    code, _, err = _invoke(
        capsys,
        workdir,
        "run",
        "--suite",
        "tinyfolder",
        "--data-root",
        str(root),
        "--methods",
        "dtl",
        "--seeds",
        "0,",
        "--tasks",
        "alpha",
        "--epochs",
        "2",
    )
    assert code == 0, err
    out = tmp_path / "rep"
    code, _, err = _invoke(
        capsys, workdir, "report", "--suite", "tinyfolder", "--reference", "karst", "--out", str(out)
    )
    assert code == 0, err
    assert "missing: dtl on alpha: seed 1, 2 missing" in err
    md = (out / "report.md").read_text()
    assert "Missing runs" in md and "dtl on beta: seed 0, 1, 2 missing" in md
    summary = pd.read_csv(out / "summary.csv")
    assert "dtl" not in set(summary["method"])


def test_report_errors_are_one_line(swept, tmp_path: Path, capsys):
    workdir, _ = swept
    code, _, err = _invoke(capsys, workdir, "report", "--suite", "tinyfolder", "--reference", "full")
    assert code == 2 and "--reference 'full'" in err and "karst" in err
    code, _, err = _invoke(capsys, workdir, "report", "--suite", "tinyfolder", "--methods", "lora,vpt")
    assert code == 2 and "vpt" in err
    code, _, err = _invoke(capsys, workdir, "report", "--suite", "demo")
    assert code == 2 and "no finished final runs of suite 'demo'" in err
    code, _, err = _invoke(capsys, workdir, "report", "--suite", "tinyfolder", "--format", "md,docx")
    assert code == 2 and "docx" in err
    a_file = tmp_path / "taken"
    a_file.write_text("")
    code, _, err = _invoke(capsys, workdir, "report", "--suite", "tinyfolder", "--out", str(a_file))
    assert code == 2 and "is a file" in err


# -- selection rules on hand-made frames (pure functions: no store needed) -------------------------


def _frame(rows: list[dict]) -> pd.DataFrame:
    base = {c: np.nan for c in COLUMNS}
    base.update(
        suite="s",
        group="",
        stage="final",
        preset="p",
        protocol="epochs=1",
        backbone="b",
        checkpoint="c",
        hparams="published",
        params_trainable=10.0,
        params_head=3.0,
        train_step="eager",
        git_sha="unrecorded",
        end_time=0,
        shots=None,
        split_seed=None,
        budget=None,
    )
    frame = pd.DataFrame([{**base, **r} for r in rows], columns=COLUMNS)
    for col in ("shots", "split_seed", "budget"):
        frame[col] = frame[col].astype("Int64")
    return frame


def _grid(methods, tasks, seeds, acc=lambda m, t, s: 0.5, **extra) -> list[dict]:
    return [
        {"run_key": f"{m}{t}{s}{extra}", "method": m, "task": t, "seed": s, "acc": acc(m, t, s), **extra}
        for m in methods
        for t in tasks
        for s in seeds
    ]


def test_mixed_backbones_budgets_and_presets_are_refused_with_the_culprits_named():
    rows = _grid(["a"], ["t"], [0, 1]) + _grid(["b"], ["t"], [0, 1], backbone="other")
    with pytest.raises(BenchError, match=r"mix 2 backbones.*b \(a\).*other \(b\)"):
        select_runs(_frame(rows), suite="s", stage="final")
    rows = _grid(["lora"], ["t"], [0, 1], budget=1000) + _grid(["karst"], ["t"], [0, 1], budget=2000)
    with pytest.raises(BenchError, match="mix budgets"):
        select_runs(_frame(rows), suite="s", stage="final")
    picked = select_runs(_frame(rows + _grid(["linear"], ["t"], [0, 1])), suite="s", stage="final", budget=1000)
    assert set(picked.frame["method"]) == {"lora", "linear"}  # the reference joins every budget
    rows = _grid(["a"], ["t"], [0, 1]) + _grid(["b"], ["t"], [0, 1], protocol="epochs=2")
    with pytest.raises(BenchError, match="protocols"):
        select_runs(_frame(rows), suite="s", stage="final")


def test_two_configurations_of_one_method_are_refused_and_reruns_of_a_key_deduplicated():
    rows = _grid(["a"], ["t"], [0, 1]) + [{"run_key": "other", "method": "a", "task": "t", "seed": 0, "acc": 0.1}]
    with pytest.raises(BenchError, match="2 different configurations on t seed 0"):
        select_runs(_frame(rows), suite="s", stage="final")
    rows = _grid(["a"], ["t"], [0, 1]) + [
        {"run_key": "a" + "t" + "0{}", "method": "a", "task": "t", "seed": 0, "acc": 0.9, "end_time": 5}
    ]
    picked = select_runs(_frame(rows), suite="s", stage="final")
    assert len(picked.frame) == 2
    assert picked.frame.set_index("seed")["acc"][0] == 0.9  # the newest record of a key wins


def test_cost_caption_says_when_throughput_comes_from_different_training_paths():
    from reports.render import resources_caption

    same = _frame(_grid(["a", "b"], ["t"], [0, 1]))
    assert "training-step paths" not in resources_caption(same)
    mixed = _frame(_grid(["a"], ["t"], [0, 1]) + _grid(["b"], ["t"], [0, 1], train_step="step-cudagraphs"))
    mixed.loc[0, "train_step"] = "unrecorded"  # a run from before the tag existed
    caption = resources_caption(mixed)
    assert "(eager: 1 runs, step-cudagraphs: 2 runs, unrecorded: 1 runs;" in caption


def test_aggregate_rows_follow_groups_and_equal_a_direct_bootstrap():
    from reports import stats

    rng = np.random.default_rng(0)
    tasks = [f"t{i}" for i in range(6)]
    group = {t: ("Natural" if i < 3 else "Structured") for i, t in enumerate(tasks)}
    table = {(m, t, s): float(rng.uniform(0.4, 0.9)) for m in "ab" for t in tasks for s in range(3)}
    rows = [
        {**r, "group": group[r["task"]]}
        for r in _grid(["a", "b"], tasks, [0, 1, 2], acc=lambda m, t, s: table[(m, t, s)])
    ]
    runs = select_runs(_frame(rows), suite="s", stage="final")
    agg = tables.aggregates(runs, "a")
    assert list(dict.fromkeys(agg.rows["row"])) == ["Natural", "Structured", "Mean of group means", "Mean of 6 tasks"]
    cube = np.array([[[table[(m, t, s)] for s in range(3)] for t in tasks] for m in "ab"])
    labels = np.array([group[t] for t in tasks])
    draws = stats.two_level_bootstrap(cube, labels, n_boot=tables.N_BOOT, seed=tables.BOOT_SEED)
    row = agg.rows[(agg.rows["row"] == "Mean of group means") & (agg.rows["method"] == "b")].iloc[0]
    lo, hi = np.percentile(draws[:, 1] - draws[:, 0], [2.5, 97.5])
    assert row["diff_low"] == pytest.approx(lo) and row["diff_high"] == pytest.approx(hi)
    means = cube.mean(axis=2)
    expected = np.mean([means[1, labels == g].mean() for g in ("Natural", "Structured")])
    assert row["estimate"] == pytest.approx(expected)
    comp = agg.comparisons.iloc[0]
    w = sps.wilcoxon(np.round(means[1] - means[0], 6), zero_method="pratt")
    assert comp["wilcoxon_p"] == pytest.approx(w.pvalue)
    assert comp["wins"] + comp["ties"] + comp["losses"] == 6
