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
    label = ["--weights-label", "tiny test ViT, random init"]
    assert run_cli([*args, "--methods", METHODS, "--seeds", "3", "--epochs", "2", *label]) == 0
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
    for stem in ("accuracy_vs_params", "forest_vs_reference", "performance_profile", "resources"):
        assert {f"{stem}.png", f"{stem}.pdf"} <= names
    assert "critical_difference.png" not in names  # two tasks: no rank statistics
    assert {"report.md", "report.tex", "results.csv", "summary.csv", "tables"} <= names
    assert {p.name for p in (out / "tables").iterdir()} == {"main.tex", "aggregates.tex", "comparison.tex", "cost.tex"}

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
    assert [c.strip() for c in header.strip("|").split("|")][1:] == [
        "karst",
        "lora",
        "linear",
        "Test SE",
    ]  # reference first
    assert "95 % Student-t" in md and "Benjamini–Hochberg" in md and "exclude the classification head" in md
    assert "3 seeds" in md
    # every mean shown in the Markdown table is the recomputed one at one decimal
    for _, row in summary.iterrows():
        assert f"{100 * row['mean']:.1f} ± {100 * row['half_width']:.1f}" in md
    # the weights label and the test-split standard error, from what the runs recorded
    assert '"tiny test ViT, random init"' in md
    assert set(results["weights_label"]) == {"tiny test ViT, random init"} and set(results["n_test"]) == {15}
    ref = summary[(summary["task"] == "alpha") & (summary["method"] == "karst")]["mean"].iloc[0]
    se = 100 * np.sqrt(ref * (1 - ref) / 15)
    row = next(line for line in md.splitlines() if line.startswith("| alpha"))
    assert row.rstrip(" |").endswith(f"{se:.2f}")
    tex = (out / "report.tex").read_text()
    assert r"\input{tables/main.tex}" in tex and r"\begin{document}" in tex and r"\usepackage{lmodern}" in tex
    fragment = (out / "tables" / "main.tex").read_text()
    assert r"\toprule" in fragment and r"\bottomrule" in fragment
    assert "alpha" in fragment and r"$\pm$" in fragment and all(ord(ch) < 128 for ch in tex + fragment)


def test_report_rebuilds_from_its_results_csv(swept, tmp_path: Path, capsys):
    workdir, _ = swept
    first, second = tmp_path / "a", tmp_path / "b"
    code, _, err = _invoke(capsys, workdir, "report", "--suite", "tinyfolder", "--format", "csv", "--out", str(first))
    assert code == 0, err
    code, _, err = _invoke(
        capsys,
        workdir,
        "report",
        "--suite",
        "tinyfolder",
        "--format",
        "csv",
        "--results-csv",
        str(first / "results.csv"),
        "--out",
        str(second),
    )
    assert code == 0, err
    pd.testing.assert_frame_equal(pd.read_csv(first / "summary.csv"), pd.read_csv(second / "summary.csv"))
    code, _, err = _invoke(capsys, workdir, "report", "--suite", "tinyfolder", "--results-csv", str(tmp_path / "no"))
    assert code == 2 and "--results-csv" in err and "does not exist" in err


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
    _assert_no_type3_fonts(out)


def _assert_no_type3_fonts(folder: Path) -> None:
    """Every figure PDF embeds its fonts as TrueType (ACM and IEEE reject Type 3); checked with pdffonts."""
    if shutil.which("pdffonts") is None:
        pytest.skip("pdffonts (poppler-utils) is not installed")
    pdfs = [p for p in folder.glob("*.pdf") if p.name != "report.pdf"]
    assert pdfs
    for pdf in pdfs:
        listing = subprocess.run(["pdffonts", str(pdf)], capture_output=True, text=True, check=True).stdout
        fonts = listing.splitlines()[2:]
        assert fonts, f"{pdf.name} embeds no fonts"
        assert all("TrueType" in line and "Type 3" not in line for line in fonts), listing


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
    code, _, err = _invoke(capsys, workdir, "report", "--suite", "tinyfolder", "--latex-width", "huge")
    assert code == 2 and "--latex-width 'huge'" in err and "fit" in err
    code, _, err = _invoke(capsys, workdir, "run", "--suite", "tinyfolder", "--methods", "lora", "--weights-label", " ")
    assert code == 2 and "--weights-label" in err and "one non-empty line" in err
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
        hparams="preset",
        hparams_sources="preset",
        params_trainable=10.0,
        params_head=3.0,
        train_step="eager",
        git_sha="unrecorded",
        weights_label="",
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
    mixed = select_runs(_frame(rows), suite="s", stage="final")  # several budgets: one table each
    assert mixed.budgets == [1000, 2000] and mixed.at_budget(2000).methods == ["karst"]
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


def test_cost_warnings_name_mixed_paths_and_uneven_throughput():
    from reports.render import cost_warnings

    same = _frame(_grid(["a", "b"], ["t"], [0, 1], train_img_s=100.0))
    assert cost_warnings(same) == []
    mixed = _frame(_grid(["a"], ["t"], [0, 1]) + _grid(["b"], ["t"], [0, 1], train_step="step-cudagraphs"))
    mixed.loc[0, "train_step"] = "unrecorded"  # a run from before the tag existed
    (warning,) = cost_warnings(mixed)
    assert "(eager: 1 run, step-cudagraphs: 2 runs, unrecorded: 1 run;" in warning
    old = _frame(_grid(["a"], ["t"], [0, 1], train_step="unrecorded"))
    assert "did not record their training-step path" in cost_warnings(old)[0]
    speed = {"t": 1000.0, "u": 2100.0, "v": 1500.0}
    rows = [{**r, "train_img_s": speed[r["task"]]} for r in _grid(["a"], list(speed), [0, 1])]
    rows += [{**r, "train_img_s": 1000.0 + 900 * (r["task"] == "u")} for r in _grid(["b"], list(speed), [0, 1])]
    (warning,) = cost_warnings(_frame(rows))  # a: 2.1x across tasks; b: 1.9x, below the threshold
    assert warning.startswith("a: training throughput differs 2.1× across tasks (1,000 img/s on t, 2,100 on u)")


def test_a_run_that_switched_to_its_compiled_step_counts_under_that_path():
    from reports.render import cost_warnings, steady_path

    assert steady_path("eager, then step-cudagraphs from epoch 3") == "step-cudagraphs"
    assert steady_path("step") == "step" and steady_path("eager") == "eager"
    rows = _grid(["a", "b"], ["t"], [0, 1], train_step="step-cudagraphs", train_img_s=100.0)
    rows[0]["train_step"] = "eager, then step-cudagraphs from epoch 2"  # the first run of a cold kind
    assert cost_warnings(_frame(rows)) == []


def test_the_cost_table_shows_where_a_run_s_time_went_where_runs_measured_it(tmp_path: Path):
    from reports.render import resources_table
    from reports.tables import method_resources

    runs = _synthetic_runs(3)
    assert "Warm-up / run (s)" not in resources_table(method_resources(runs, "karst")).columns  # older runs
    runs.frame["warmup_s"] = runs.frame["method"].map({"karst": 4.0, "lora": 2.5, "linear": 1.0})
    runs.frame["steady_s"] = 20.0
    runs.frame.loc[runs.frame.index[0], "warmup_s"] = 40.0  # karst's first run compiled: the median ignores it
    table = resources_table(method_resources(runs, "karst"))
    assert table.loc["karst", "Warm-up / run (s)"] == "4.0" and table.loc["lora", "Warm-up / run (s)"] == "2.5"
    assert set(table["Steady train / run (s)"]) == {"20.0"}
    _, _, md, _ = _report(tmp_path, runs)
    assert "Warm-up / run (s)" in md and "before a run's first steady step" in md


def test_aggregate_rows_follow_groups_and_equal_a_direct_welch_satterthwaite_interval():

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
    assert list(dict.fromkeys(agg.rows["row"])) == [
        "Natural (3 tasks)",
        "Structured (3 tasks)",
        "Mean of 2 group means",
        "Mean of 6 tasks",
    ]
    cube = np.array([[[table[(m, t, s)] for s in range(3)] for t in tasks] for m in "ab"])
    labels = np.array([group[t] for t in tasks])
    row = agg.rows[(agg.rows["row"] == "Mean of 2 group means") & (agg.rows["method"] == "b")].iloc[0]
    # by hand: weights 1/6 per task, variance Σ w²(s_a² + s_b²)/3, Welch–Satterthwaite df over 12 parts
    parts = np.concatenate([cube[1].var(axis=1, ddof=1), cube[0].var(axis=1, ddof=1)]) / 3 / 36
    df = parts.sum() ** 2 / np.sum(parts**2 / 2)
    half = sps.t.ppf(0.975, df) * np.sqrt(parts.sum())
    diff = cube[1].mean() - cube[0].mean()
    assert row["diff_low"] == pytest.approx(diff - half) and row["diff_high"] == pytest.approx(diff + half)
    assert row["group"] == ""  # the headline row; groups name their own rows
    assert set(agg.rows["group"]) == {"Natural", "Structured", "", "all tasks"}
    means = cube.mean(axis=2)
    expected = np.mean([means[1, labels == g].mean() for g in ("Natural", "Structured")])
    assert row["estimate"] == pytest.approx(expected)
    comp = agg.comparisons.iloc[0]
    w = sps.wilcoxon(np.round(means[1] - means[0], 6), zero_method="pratt")
    assert comp["wilcoxon_p"] == pytest.approx(w.pvalue)
    assert comp["wins"] + comp["ties"] + comp["losses"] == 6


# -- what a report shows on 1, 3 and 19 tasks (hand-made runs, real statistics and rendering) -----


def _synthetic_runs(n_tasks: int, methods=("karst", "lora", "linear"), seeds=(0, 1, 2, 3, 4), groups=None, seed=0):
    rng = np.random.default_rng(seed)
    level = {t: rng.uniform(0.5, 0.9) for t in range(n_tasks)}
    effect = {m: 0.012 * i for i, m in enumerate(methods)}
    rows = [
        {
            **r,
            "acc": float(level[int(r["task"][1:])] + effect[r["method"]] + rng.normal(0, 0.01)),
            "group": groups[int(r["task"][1:])] if groups else "",
            "params_trainable": 0.0 if r["method"] == "linear" else 1000.0 * (1 + methods.index(r["method"])),
            "n_test": 2000,
            "train_img_s": 500.0,
            "weights_label": "ViT-T, synthetic",
        }
        for r in _grid(list(methods), [f"t{i:02d}" for i in range(n_tasks)], list(seeds))
    ]
    return select_runs(_frame(rows), suite="s", stage="final")


def _report(tmp_path: Path, runs, **kwargs):
    from reports.report import build_report, write_report

    report = build_report(runs, "karst", **{k: v for k, v in kwargs.items() if k == "resample_tasks"})
    out = tmp_path / "rep"
    write_report(report, out, latex_width=kwargs.get("latex_width", "fit"))
    return report, out, (out / "report.md").read_text(), (out / "report.tex").read_text()


def _tex_text(out: Path, tex: str) -> str:
    """report.tex with its \\input fragments inlined: what the LaTeX reader sees."""
    for fragment in sorted((out / "tables").glob("*.tex")):
        tex = tex.replace(f"\\input{{tables/{fragment.name}}}", fragment.read_text())
    return tex


def test_three_tasks_seed_only_intervals_and_no_rank_statistics(tmp_path: Path):
    runs = _synthetic_runs(3)
    report, out, md, tex = _report(tmp_path, runs)
    tex = _tex_text(out, tex)
    agg = report.agg
    assert agg.friedman is None and "avg_rank" not in agg.comparisons
    assert not (out / "critical_difference.png").exists()
    # the aggregate interval keeps the tasks fixed: the Welch–Satterthwaite t interval of the seeds
    cube = tables.seed_cube(runs, ["karst", "lora", "linear"], [(f"t{i:02d}", None) for i in range(3)])
    from reports import stats

    direct = stats.aggregate_summary(cube, None, 0)
    row = agg.rows[(agg.rows["row"] == "Mean of 3 tasks") & (agg.rows["method"] == "lora")].iloc[0]
    assert (row["low"], row["high"]) == pytest.approx((direct.low[1], direct.high[1]))
    assert row["high"] - row["low"] < 0.02  # far narrower than the spread of the task means
    for text in (md, tex):
        assert "tasks fixed" in text
        assert "No Friedman or Iman" in text and "critical-difference diagram" in text
        assert "cannot go below p = 2/8 = 0.25" in text  # the Wilcoxon floor, in report.tex too
        assert "Friedman $\\chi$" not in text and "Friedman χ²" not in text
    assert "Δ mean of 3 tasks (pp) [95% CI]" in md and "P(A>B) [95% CI]" in md
    assert "P(A$>$B) {[}95\\% CI{]}" in tex  # no text ">" (¡ in OT1); brackets braced (a row end's option)
    header = next(line for line in md.splitlines() if "Δ mean of 3 tasks" in line)
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert columns[1].startswith("Δ") and columns[-1] == "Wilcoxon p (Holm)"  # Δ leads, tests follow
    with pytest.raises(BenchError, match="--resample-tasks needs at least 10 complete tasks, this report has 3"):
        tables.aggregates(runs, "karst", resample_tasks=True)


def test_one_task_shows_only_t_intervals_and_welch(tmp_path: Path):
    runs = _synthetic_runs(1)
    report, out, md, tex = _report(tmp_path, runs)
    tex = _tex_text(out, tex)
    assert report.agg.rows.empty and report.agg.friedman is None
    assert "## Across tasks" not in md and "Mean of 1 task" not in md
    assert not (out / "critical_difference.png").exists() and not (out / "tables" / "aggregates.tex").exists()
    acc = runs.frame.pivot_table(index="seed", columns="method", values="acc")
    welch = sps.ttest_ind(acc["lora"], acc["karst"], equal_var=False)
    ci = welch.confidence_interval(0.95)
    comp = report.agg.comparisons.set_index("method").loc["lora"]
    assert (comp["diff_low"], comp["diff_high"]) == pytest.approx((ci.low, ci.high))
    cell = report.cells[report.cells["method"] == "lora"].iloc[0]
    assert (cell["diff_low"], cell["diff_high"]) == pytest.approx((ci.low, ci.high))  # one quantity, one interval
    for text in (md, tex):
        assert "One task: no aggregate row and no rank statistics" in text
        assert "bootstrap interval" not in text
    assert "Δ (pp) [95% Welch CI]" in md


@pytest.mark.slow
def test_vtab_groups_give_both_averages_named_and_rank_statistics(tmp_path: Path):
    groups = ["natural"] * 7 + ["specialized"] * 4 + ["structured"] * 8
    runs = _synthetic_runs(
        19,
        methods=("karst", "lora", "linear", "dtl", "full", "kadaptation", "sparse_tuning"),
        seeds=(0, 1, 2),
        groups=groups,
    )
    report, out, md, tex = _report(tmp_path, runs)
    agg = report.agg
    assert agg.headline == "Mean of 3 group means"
    names = list(dict.fromkeys(agg.rows["row"]))
    assert names == [
        "Natural (7 tasks)",
        "Specialized (4 tasks)",
        "Structured (8 tasks)",
        "Mean of 3 group means",
        "Mean of 19 tasks",
    ]
    means = runs.frame.groupby(["method", "task", "group"])["acc"].mean().reset_index()
    lora = means[means["method"] == "lora"]
    by_group = lora.groupby("group")["acc"].mean().mean()
    rows = agg.rows[agg.rows["method"] == "lora"].set_index("row")["estimate"]
    assert rows["Mean of 3 group means"] == pytest.approx(by_group)
    assert rows["Mean of 19 tasks"] == pytest.approx(lora["acc"].mean())
    assert "VPT lineage" in md and "68.9" in md and "65.6" in md
    assert agg.friedman is not None and (out / "critical_difference.pdf").exists()
    assert "Iman–Davenport F" in md and "Iman--Davenport F" in _tex_text(out, tex)
    # IQM over all 57 runs: exactly a quarter trimmed at each end (trim_mean would cut 14 of 57 per end)
    iqm = agg.iqm.set_index("method")["estimate"]
    cube = tables.seed_cube(runs, tables.method_order(runs, "karst"), tables.complete_tasks(runs, list(iqm.index)))
    ordered = np.sort(cube[1].ravel())
    assert iqm["lora"] == pytest.approx((ordered[15:42].sum() + 0.75 * (ordered[14] + ordered[42])) / 28.5)
    assert set(report.agg.comparisons["method"]) == set(iqm.index) - {"karst"}
    # task resampling is allowed from 10 tasks on, and labelled
    resampled = tables.aggregates(runs, "karst", resample_tasks=True)
    assert resampled.resample_tasks
    from reports.render import aggregate_caption

    assert "tasks as a sample of similar tasks" in aggregate_caption(resampled, 3)


def test_text_is_typeset_for_print():
    from reports import render

    assert (
        render.signed(-0.0041) == "\u22120.41" and render.signed(0.0041) == "+0.41" and render.signed(-1e-6) == "0.00"
    )
    assert render.fmt_p(7.5e-7, render.LATEX) == r"$7.5\times10^{-7}$"
    assert render.fmt_p(7.5e-7, render.MARKDOWN) == "7.5×10⁻⁷"
    assert render.fmt_p(0.0312, render.MARKDOWN) == "0.031" and render.fmt_p(0.00999, render.LATEX) == "0.01"
    assert render.MARKDOWN.second.format("x") == "<ins>x</ins>"  # GitHub strips <u>
    assert render.latex_unicode(render.latex_escape_text("p < 0.05, Δ −0.4 ± 1_2")) == (
        r"p $<$ 0.05, $\Delta$ $-$0.4 $\pm$ 1\_2"
    )
    table = pd.DataFrame({"P(A>B)": ["0.50"]}, index=["a_b"])
    for width, env, fit in (("fit", "table", True), ("natural", "table", False), ("wide", "table*", True)):
        frag = render.latex_table(table, "Short caption.", "tab:x", width)
        assert frag.startswith("% bench report table (tab:x); needs \\usepackage{booktabs}")
        assert f"\\begin{{{env}}}" in frag and ("\\resizebox" in frag) == fit and "P(A$>$B)" in frag


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed")
def test_latex_fragments_paste_into_a_plain_article_and_the_report_compiles(tmp_path: Path):
    methods = ("karst", "lora", "linear", "dtl", "full", "kadaptation", "sparse_tuning")
    runs = _synthetic_runs(6, methods=methods, seeds=(0, 1, 2))
    _, out, _, _ = _report(tmp_path, runs)
    proc = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "report.tex"],
        cwd=out,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    _assert_no_type3_fonts(out)
    # every fragment pasted into a plain article (OT1, Computer Modern, portrait): compiles, fits
    body = "\n".join(f"\\input{{tables/{p.name}}}" for p in sorted((out / "tables").glob("*.tex")))
    (out / "paper.tex").write_text(
        "\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage{graphicx}\n\\begin{document}\n"
        "Text.\n" + body + "\n\\end{document}\n"
    )
    proc = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "paper.tex"],
        cwd=out,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    log = (out / "paper.log").read_text(errors="replace")
    import re

    overfull = [float(x) for x in re.findall(r"Overfull \\hbox \(([\d.]+)pt too wide\)", log)]
    assert all(x < 2.0 for x in overfull), overfull  # the 7-method table is shrunk to the line
    if shutil.which("pdftotext"):
        text = subprocess.run(["pdftotext", "paper.pdf", "-"], cwd=out, capture_output=True, text=True).stdout
        assert "¡" not in text and "P(A>B)" in text


def test_few_shot_tables_and_fragments(tmp_path: Path):
    rng = np.random.default_rng(4)
    rows = []
    for shots in (1, 4):
        for r in _grid(["karst", "lora"], ["pets", "cars"], [0, 1, 2], shots=shots):
            acc = 0.3 + 0.1 * np.log2(shots) + 0.02 * (r["method"] == "lora") + rng.normal(0, 0.01)
            rows.append({**r, "run_key": r["run_key"] + str(shots), "acc": acc, "split_seed": r["seed"]})
    runs = select_runs(_frame(rows), suite="s", stage="final")
    report, out, md, tex = _report(tmp_path, runs)
    assert "## Few-shot: per shot count" in md and "no p-values across so few datasets" in md
    assert {"fewshot.tex", "fewshot_diff.tex"} <= {p.name for p in (out / "tables").iterdir()}
    one = report.few_shot[(report.few_shot["shots"] == 4) & (report.few_shot["method"] == "lora")].iloc[0]
    frame = runs.frame[runs.frame["shots"] == 4]
    cube = np.stack(
        [
            frame[frame["method"] == m].pivot_table(index="task", columns="seed", values="acc").to_numpy()
            for m in ("karst", "lora")
        ]
    )
    from reports import stats

    direct = stats.few_shot_difference(cube[1], cube[0])
    assert one["diff"] == pytest.approx(direct.diff)
    assert (one["diff_low"], one["diff_high"]) == pytest.approx((direct.low, direct.high))
    assert one["prob_superiority"] == pytest.approx(direct.prob_superiority)


def test_labels_with_tex_and_markup_characters_are_printed_as_written(tmp_path: Path):
    """A method or weights label is text: matplotlib must not parse $...$ or \\foo as mathtext,
    LaTeX must get it escaped, Markdown must not split a table row on its |."""
    odd = r"lora[note=$\foo$|x]"
    runs = _synthetic_runs(6, methods=("karst", odd, "linear"), seeds=(0, 1, 2))
    runs.frame["weights_label"] = r"\foo weights, $\bar$"
    report, out, md, tex = _report(tmp_path, runs)
    tex = _tex_text(out, tex)
    for stem in ("accuracy_vs_params", "forest_vs_reference", "performance_profile", "critical_difference"):
        assert (out / f"{stem}.png").stat().st_size > 0, stem
    assert r"lora{[}note=\$\textbackslash{}foo\$|x{]}" in tex and r"\foo" not in tex.replace(r"\textbackslash{}foo", "")
    row = next(line for line in md.splitlines() if line.startswith("|") and "note=" in line)
    assert r"lora[note=$\foo$\|x]" in row  # the | escaped: the row keeps its columns
    header = next(line for line in md.splitlines() if line.startswith("|"))
    assert row.count(" | ") == header.count(" | ")


# ---------------------------------------------------------------------------------------
# Writing the report: a folder with report.md holds a whole report


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_report_replaces_the_last_one_keeps_other_files_and_leaves_no_staging(tmp_path: Path):
    from reports.report import build_report, write_report

    out = tmp_path / "rep"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    first = write_report(build_report(_synthetic_runs(3, seed=0), "karst"), out)
    again = write_report(build_report(_synthetic_runs(3, seed=1), "karst"), out)
    assert [p.name for p in again] == [p.name for p in first] and again[-1] == out / "report.tex"
    assert all(p.is_file() and p.parent.is_relative_to(out) for p in again)
    assert (out / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]  # the staging folder is gone


_WRITE_B = """
import sys
from pathlib import Path
from reports.report import build_report, write_report
from tests.test_report import _synthetic_runs
report = build_report(_synthetic_runs(3, seed=1), "karst")
print("built", flush=True)
write_report(report, Path(sys.argv[1]))
"""


@pytest.mark.slow
def test_a_report_killed_while_writing_never_leaves_new_files_beside_the_old_report_md(tmp_path: Path):
    import sys
    import time

    from reports.report import build_report, write_report

    out = tmp_path / "rep"
    write_report(build_report(_synthetic_runs(3, seed=0), "karst"), out)
    old = _snapshot(out)
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITE_B, str(out)], stdout=subprocess.PIPE, cwd=Path(__file__).parent.parent
    )
    assert proc.stdout.readline().strip() == b"built"
    deadline = time.time() + 120
    while _snapshot(out) == old and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.kill()  # at the first change the writer makes to the folder
    proc.wait()
    now = _snapshot(out)
    assert now != old, "the writer ended before it changed the folder"
    if "report.md" in now:  # a report.md is only ever beside the files it was written with
        assert now["report.md"] != old["report.md"]
        assert all(now.get(name) != content for name, content in old.items() if name.endswith((".csv", ".md")))
    write_report(build_report(_synthetic_runs(3, seed=1), "karst"), out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]  # the killed writer's staging is removed too


def test_runs_of_different_epochs_name_the_methods_of_each_and_the_commands_that_fix_it():
    protocol = "epochs={}, img_size=32, augmentation=none, interpolation=bicubic"
    rows = _grid(["lora", "karst"], ["t"], [0, 1], protocol=protocol.format(20)) + _grid(
        ["linear"], ["t"], [0, 1], protocol=protocol.format(3)
    )
    with pytest.raises(BenchError) as raised:
        select_runs(_frame(rows), suite="demo", stage="final")
    message = str(raised.value)
    assert "epochs=20, img_size=32, augmentation=none, interpolation=bicubic (karst, lora)" in message
    assert "epochs=3, img_size=32, augmentation=none, interpolation=bicubic (linear)" in message
    assert "report one protocol with --methods karst,lora or --methods linear" in message
    assert "re-run linear like the rest: `bench run --suite demo --methods linear --epochs 20`" in message
    assert "\n" not in message

    # a method under both protocols: --methods cannot separate them, and another setting differs too
    rows += _grid(["linear"], ["u"], [0], protocol=protocol.format(20).replace("32", "64"))
    with pytest.raises(BenchError) as raised:
        select_runs(_frame(rows), suite="demo", stage="tune")
    message = str(raised.value)
    assert "--methods karst,lora or" not in message
    assert "`bench run --suite demo --stage tune --methods linear …` with the others' settings" in message
