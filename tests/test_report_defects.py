"""Report defects an independent audit found, each pinned by a test on hand-made runs (real statistics,
rendering and figures; no store needed)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.errors import BenchError
from reports import figures, render, tables
from reports.report import build_report, write_report
from reports.runs import select_runs
from tests.test_report import _frame, _grid

VTAB = ["natural"] * 7 + ["specialized"] * 4 + ["structured"] * 8


def _runs(n_tasks=6, methods=("ref", "a"), seeds=(0, 1, 2), groups=None, effect=0.03, sd=0.01, seed=0, extra=None):
    rng = np.random.default_rng(seed)
    level = rng.uniform(0.5, 0.9, n_tasks)
    rows = []
    for r in _grid(list(methods), [f"t{i:02d}" for i in range(n_tasks)], list(seeds)):
        i = int(r["task"][1:])
        gain = effect * methods.index(r["method"])
        rows.append(
            {
                **r,
                "acc": float(level[i] + gain + rng.normal(0, sd)),
                "group": groups[i] if groups else "",
                "params_trainable": 1000.0 * (1 + methods.index(r["method"])),
            }
        )
    return _frame(rows + (extra or []))


def _report(tmp_path: Path, frame: pd.DataFrame, reference="ref", **kw):
    runs = select_runs(frame, suite="s", stage="final")
    report = build_report(runs, reference, **kw)
    out = tmp_path / "rep"
    write_report(report, out)
    return report, out, (out / "report.md").read_text(), (out / "report.tex").read_text()


def _comparison_line(md: str, method: str = "a") -> str:
    lines = md.splitlines()
    start = next(i for i, li in enumerate(lines) if "P(A>B) [95% CI]" in li)
    return next(li for li in lines[start:] if li.startswith(f"| {method} "))


# -- zero-width intervals and p = 0 -------------------------------------------------------------


def test_one_seed_gives_no_interval_and_no_dagger(tmp_path: Path):
    """With one seed there is no seed variance to build an interval from; the Wilcoxon test over 8
    tasks alone must not earn a † with a zero-width interval."""
    report, _, md, _ = _report(tmp_path, _runs(n_tasks=8, seeds=(0,), effect=0.05))
    row = report.agg.comparisons.iloc[0]
    assert row["holm_p"] < 0.05  # the signed-rank test does see 8 wins of 8
    assert np.isnan(row["diff_low"]) and np.isnan(row["diff_high"])
    line = _comparison_line(md)
    assert "†" not in line and "[–, –]" in line


def test_two_constant_samples_give_no_p_and_leave_the_bh_family_alone():
    frame = _runs(n_tasks=4)
    base = tables.task_cells(select_runs(frame, suite="s", stage="final"), "ref")
    constant = _frame(
        [{**r, "acc": 0.8 if r["method"] == "a" else 0.7} for r in _grid(["ref", "a"], ["zz"], [0, 1, 2])]
    )
    cells = tables.task_cells(select_runs(pd.concat([frame, constant]), suite="s", stage="final"), "ref")
    zz = cells[(cells["task"] == "zz") & (cells["method"] == "a")].iloc[0]
    assert np.isnan(zz["p"]) and np.isnan(zz["p_bh"]) and not zz["significant"]
    others = cells[cells["task"] != "zz"].set_index(["task", "method"])["p_bh"]
    assert others.to_numpy() == pytest.approx(base.set_index(["task", "method"])["p_bh"].to_numpy(), nan_ok=True)


def test_dagger_follows_the_printed_interval_and_no_bound_is_approximate(tmp_path: Path):
    for seed in range(4):
        report, _, md, _ = _report(tmp_path / str(seed), _runs(n_tasks=8, effect=0.004, sd=0.01, seed=seed))
        c = report.agg.comparisons.iloc[0]
        line = _comparison_line(md)
        excludes = c["diff_low"] > 0 or c["diff_high"] < 0
        assert ("†" in line) == bool(c["holm_p"] < 0.05 and excludes)
        assert "≈" not in md and "Monte Carlo" not in md


# -- --resample-tasks ---------------------------------------------------------------------------


def test_resample_tasks_refuses_a_group_of_one_task():
    groups = ["natural"] * 6 + ["specialized"] * 5 + ["structured"]
    runs = select_runs(_runs(n_tasks=12, groups=groups), suite="s", stage="final")
    with pytest.raises(BenchError, match="structured: t11 has fewer"):
        tables.aggregates(runs, "ref", resample_tasks=True)
    groups = ["natural"] * 6 + ["specialized"] * 4 + ["structured"] * 2  # two tasks: a t interval, df 1
    runs = select_runs(_runs(n_tasks=12, groups=groups), suite="s", stage="final")
    agg = tables.aggregates(runs, "ref", resample_tasks=True)
    row = agg.rows[(agg.rows["group"] == "structured") & (agg.rows["method"] == "a")].iloc[0]
    from reports import stats

    cube = tables.seed_cube(runs, ["ref", "a"], [("t10", None), ("t11", None)])
    direct = stats.random_task_mean(cube[1].mean(axis=1))
    assert (row["low"], row["high"]) == pytest.approx((float(direct.low), float(direct.high)))


# -- LaTeX ----------------------------------------------------------------------------------------


def test_small_p_values_in_notes_compile_as_math_superscripts():
    text = render.latex_unicode("Friedman χ² = 9.1 (p = 2.9×10⁻²); F p = 7.5×10⁻¹¹")
    assert "?" not in text
    assert r"2.9$\times$10$^{-2}$" in text and r"10$^{-11}$" in text


def test_a_wide_table_is_split_instead_of_shrunk_below_7pt():
    methods = [f"method_{i}[rank={i}]" for i in range(11)]
    table = pd.DataFrame(
        {m: [r"$-$1.23 {[}$-$2.34, 0.12{]}, P(A$>$B) 0.45"] * 3 for m in methods}, index=["1-shot", "2-shot", "4-shot"]
    )
    frag = render.latex_table(table, "Caption.", "tab:x")
    parts = frag.count(r"\begin{tabular}")
    assert parts >= 3
    for chunk in render.column_chunks(table):
        natural = sum(
            max(render.visible_length(c), *(render.visible_length(v) for v in table[c])) * render.CHAR_PT
            + render.COLUMN_GAP_PT
            for c in chunk
        )
        assert render.LINE_PT / natural >= render.MIN_SCALE
    assert all(m.replace("_", r"\_").replace("[", "{[}").replace("]", "{]}") in frag for m in methods)
    narrow = render.latex_table(table.iloc[:, :2], "Caption.", "tab:y")
    assert narrow.count(r"\begin{tabular}") == 1


def test_report_tex_places_waiting_tables_before_each_heading(tmp_path: Path):
    _, _, _, tex = _report(tmp_path, _runs())
    assert r"\newcommand{\placewaitingtables}" in tex
    headings = tex.count(r"\subsection*{")
    assert tex.count("\\placewaitingtables\n\\subsection*{") == headings > 2


# -- missing values --------------------------------------------------------------------------------


def test_a_nan_accuracy_is_named_and_the_task_leaves_every_average(tmp_path: Path):
    frame = _runs(n_tasks=4)
    frame.loc[(frame["method"] == "a") & (frame["task"] == "t02") & (frame["seed"] == 1), "acc"] = np.nan
    report, out, md, _ = _report(tmp_path, frame)
    assert "a on t02: seed 1 has a NaN accuracy" in md
    assert "leaves every across-task number for every method" in md
    assert report.agg.tasks == ["t00", "t01", "t03"]
    summary = pd.read_csv(out / "summary.csv")
    assert not ((summary["task"] == "t02") & (summary["method"] == "a")).any()  # no n = 3 row with an empty SD
    assert summary["sd"].notna().all() and (summary["n"] == 3).all()


def test_the_run_summary_counts_only_seeds_with_a_result():
    from reports.summary import summarize

    frame = pd.DataFrame({"task": ["t"] * 3, "method": ["a"] * 3, "acc": [0.7, np.nan, 0.8]})
    row = summarize(frame).iloc[0]
    assert row["n"] == 2 and row["mean"] == pytest.approx(0.75) and np.isfinite(row["sd"])


def test_methods_on_different_seeds_are_refused_naming_them():
    frame = _frame(_grid(["a"], ["t", "u"], [0, 1, 2]) + _grid(["b"], ["t", "u"], [3, 4, 5]))
    with pytest.raises(BenchError, match=r"a ran seed 0, 1, 2; b ran seed 3, 4, 5"):
        select_runs(frame, suite="s", stage="final")


def test_cost_table_accuracy_is_the_mean_over_the_shared_tasks(tmp_path: Path):
    """b wins on the tasks both methods completed; its missing run on its best task must not make the
    cost table rank it below a (a plain mean over each method's own runs did)."""
    rows = []
    for r in _grid(["a", "b"], ["easy", "hard", "mid"], [0, 1, 2]):
        level = {"easy": 0.95, "hard": 0.40, "mid": 0.70}[r["task"]]
        rows.append({**r, "acc": level + (0.02 if r["method"] == "b" else 0.0) + 0.001 * r["seed"]})
    rows = [r for r in rows if not (r["method"] == "b" and r["task"] == "easy" and r["seed"] == 2)]
    report, _, md, _ = _report(tmp_path, _frame(rows), reference="a")
    res = report.resources.set_index("method")
    head = report.agg.rows[report.agg.rows["row"] == report.agg.headline].set_index("method")
    assert res.loc["b", "mean_acc"] > res.loc["a", "mean_acc"]
    assert res["mean_acc"].to_numpy() == pytest.approx(head.loc[["a", "b"], "estimate"].to_numpy())
    assert "Mean acc.: the mean over the 2 tasks every method completed" in md


# -- VTAB groups ------------------------------------------------------------------------------------


def test_vtab_groups_in_the_literature_order_with_their_members_and_an_honest_note(tmp_path: Path):
    full = _runs(n_tasks=19, groups=VTAB, seeds=(0, 1))
    agg = tables.aggregates(select_runs(full, suite="s", stage="final"), "ref")
    assert agg.groups == ["natural", "specialized", "structured"]
    assert list(dict.fromkeys(agg.rows["row"]))[:3] == [
        "Natural (7 tasks)",
        "Specialized (4 tasks)",
        "Structured (8 tasks)",
    ]
    notes = " ".join(render.aggregate_notes(agg))
    assert "Specialized: t07, t08, t09, t10." in notes and "VPT lineage" in notes
    dropped = full[~((full["task"] == "t08") & (full["method"] == "a") & (full["seed"] == 1))]
    agg = tables.aggregates(select_runs(dropped, suite="s", stage="final"), "ref")
    notes = " ".join(render.aggregate_notes(agg))
    assert "VPT lineage" not in notes
    assert "Not all 19 VTAB-1K tasks take part (specialized 3 of 4)" in notes


# -- CSV ---------------------------------------------------------------------------------------------


def test_every_table_is_written_as_csv_in_percentage_points(tmp_path: Path):
    report, out, _, _ = _report(tmp_path, _runs(n_tasks=6, groups=["natural"] * 3 + ["structured"] * 3))
    agg = pd.read_csv(out / "aggregates.csv", keep_default_na=False, na_values=[""])
    assert list(agg.columns) == ["method", "group", "estimate", "low", "high", "diff", "diff_low", "diff_high"]
    assert len(agg) == 2 * 4  # two methods × (two groups, the headline, the mean of all tasks)
    head = agg[agg["group"].isna()].set_index("method")
    rows = report.agg.rows[report.agg.rows["row"] == report.agg.headline].set_index("method")
    assert head.loc["a", "estimate"] == pytest.approx(100 * rows.loc["a", "estimate"])
    assert head.loc["a", "diff_low"] == pytest.approx(100 * rows.loc["a", "diff_low"])
    for name in ("comparison", "iqm", "cost"):
        assert (out / f"{name}.csv").exists()
    comp = pd.read_csv(out / "comparison.csv").set_index("method")
    assert comp.loc["a", "poi_low"] < comp.loc["a", "prob_superiority"] <= comp.loc["a", "poi_high"]


# -- figures ------------------------------------------------------------------------------------------


def test_twenty_methods_get_twenty_colours_and_more_never_repeat():
    for n in (11, 20, 27):
        colours = figures.palette([f"m{i}" for i in range(n)])
        assert len({tuple(np.round(c[:3], 4)) for c in colours.values()}) == n


def test_equal_average_ranks_draw_a_normal_sized_diagram(tmp_path: Path):
    from PIL import Image

    scores = pd.DataFrame(np.full((6, 3), 0.5), columns=["a", "b", "c"])
    (png, _) = figures.cd_diagram(scores, 1.35, tmp_path, "title")
    assert Image.open(png).size[0] < 2000


def test_a_190_row_forest_plot_is_paginated(tmp_path: Path):
    from PIL import Image

    rng = np.random.default_rng(0)
    methods = ["ref"] + [f"m{i}" for i in range(10)]
    cells = pd.DataFrame(
        [
            {"task": f"t{t:02d}", "shots": None, "method": m, "diff": d, "diff_low": d - 0.01, "diff_high": d + 0.01}
            for m in methods[1:]
            for t in range(19)
            for d in [rng.normal(0, 0.01)]
        ]
    )
    paths = figures.forest_plot(cells, "ref", tmp_path, figures.palette(methods))
    pngs = [p for p in paths if p.suffix == ".png"]
    assert len(pngs) >= 5 and pngs[0].name == "forest_vs_reference.png"
    assert all(Image.open(p).size[1] < 2500 for p in pngs)


def test_params_axis_has_no_overlapping_minor_labels_and_no_empty_pareto_entry(tmp_path: Path, monkeypatch):
    captured = {}

    def keep(fig, out, stem):  # the figure itself, to read its legend and ticks
        captured[stem] = fig
        return []

    monkeypatch.setattr(figures, "_save", keep)
    points = pd.DataFrame(
        {
            "method": ["lin", "a"],
            "params": [0.0, 3000.0],
            "estimate": [0.7, 0.8],
            "low": [0.69, 0.79],
            "high": [0.71, 0.81],
        }
    )
    figures.accuracy_vs_params(points, tmp_path, "t", figures.palette(["lin", "a"]))
    fig = captured["accuracy_vs_params"]
    fig.canvas.draw()
    ax = fig.axes[-1]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "Pareto front" not in labels  # one point on the log axis: no line, so no entry
    points = pd.DataFrame(
        {
            "method": ["a", "b"],
            "params": [2000.0, 7000.0],
            "estimate": [0.7, 0.8],
            "low": [0.69, 0.79],
            "high": [0.71, 0.81],
        }
    )
    figures.accuracy_vs_params(points, tmp_path, "t", figures.palette(["a", "b"]))
    fig = captured["accuracy_vs_params"]
    fig.canvas.draw()
    ax = fig.axes[-1]
    assert not [t.get_text() for t in ax.xaxis.get_minorticklabels() if t.get_text()]
    assert "Pareto front" in [t.get_text() for t in ax.get_legend().get_texts()]
    shown = [t.get_text() for t in ax.xaxis.get_majorticklabels() if t.get_text()]
    assert {"2K", "5K"} <= set(shown)


def test_one_task_profile_draws_no_band(tmp_path: Path):
    report, out, md, _ = _report(tmp_path, _runs(n_tasks=1))
    assert "descriptive, no band" in md


def test_report_names_the_weights_of_runs_that_recorded_none(tmp_path: Path):
    from bench.cli import run_cli

    frame = _runs(n_tasks=2).assign(suite="folder")
    frame.loc[frame["method"] == "a", "weights_label"] = "ViT-T, own label"
    frame.drop(columns=["end_time"]).to_csv(tmp_path / "results.csv", index=False)
    out = tmp_path / "rep"
    args = ["report", "--suite", "folder", "--results-csv", str(tmp_path / "results.csv"), "--out", str(out)]
    assert run_cli([*args, "--weights-label", "ViT-T, DINOv2 init", "--format", "md"]) == 0
    line = next(li for li in (out / "report.md").read_text().splitlines() if li.startswith("- **weights**"))
    assert '"ViT-T, DINOv2 init"' in line and '"ViT-T, own label"' in line  # an existing label is kept
    assert run_cli([*args, "--weights-label", " ", "--format", "md"]) == 2


@pytest.mark.slow
@pytest.mark.skipif(
    shutil.which("pdflatex") is None or shutil.which("pdftotext") is None, reason="pdflatex/pdftotext not installed"
)
def test_eleven_methods_print_no_text_below_7pt(tmp_path: Path):
    """Eleven methods with long labels, few-shot tables with wide cells, a forest plot of 250 rows: in
    the compiled report.tex no word is smaller than 7 pt (body text is 10 pt)."""
    import re
    import subprocess

    rng = np.random.default_rng(0)
    methods = ["karst"] + [f"method_{i}[rank={4 * i},alpha={i}]" for i in range(10)]
    rows = []
    for shots in (1, 2, 4, 8, 16):
        for r in _grid(methods, ["pets", "cars", "flowers", "food", "aircraft"], [0, 1, 2], shots=shots):
            acc = 0.3 + 0.05 * np.log2(shots) + rng.normal(0, 0.01)
            rows.append({**r, "run_key": r["run_key"] + str(shots), "acc": acc, "split_seed": r["seed"]})
    _, out, _, _ = _report(tmp_path, _frame(rows), reference="karst")
    proc = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "report.tex"],
        cwd=out,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    bbox = subprocess.run(["pdftotext", "-bbox", "report.pdf", "-"], cwd=out, capture_output=True, text=True).stdout
    heights = [float(b) - float(a) for a, b in re.findall(r'yMin="([\d.]+)" xMax="[\d.]+" yMax="([\d.]+)"', bbox)]
    body = float(np.median(heights[:100]))  # the first page: 10 pt text
    assert min(heights) >= 0.69 * body, (min(heights), body)
