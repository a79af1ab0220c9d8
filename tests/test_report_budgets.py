"""Budget curves and ablation tables in `bench report`: one table per budget, methods not reached
at a budget listed with their reason, and each variant of a method against the method itself.

The fast tests build runs by hand (real statistics, rendering, figures and pdflatex); the slow one
trains real runs at two budgets and a variant and reports them from MLflow and from results.csv.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from bench import schema
from bench.errors import BenchError
from reports import figures, stats
from reports.report import build_report, curve_points, write_report
from reports.runs import select_runs
from tests.conftest import write_task
from tests.test_report import _frame, _grid

TASKS = ["t0", "t1", "t2"]
SEEDS = [0, 1, 2]
HAS_PDFLATEX = shutil.which("pdflatex") is not None


def _acc(rng, level):
    return float(np.clip(level + rng.normal(0, 0.01), 0, 1))


def _budget_frame() -> pd.DataFrame:
    """karst at 1,000 and 4,000; lora at 1,000 only; linear once (it serves every budget)."""
    rng = np.random.default_rng(1)
    rows = []
    for budget, gain in ((1000, 0.0), (4000, 0.03)):
        for m, base in (("karst", 0.62), ("lora", 0.6)):
            if m == "lora" and budget == 4000:
                continue
            for r in _grid([m], TASKS, SEEDS, budget=budget):
                scale = 1.0 if m != "lora" else 0.98
                rows.append(
                    {**r, "acc": _acc(rng, base + gain), "params_trainable": scale * budget, "suite": "tinyfolder"}
                )
    for r in _grid(["linear"], TASKS, SEEDS):
        rows.append({**r, "acc": _acc(rng, 0.5), "params_trainable": 0.0, "suite": "tinyfolder"})
    frame = _frame(rows)
    frame["method_base"] = frame["method"]
    return frame


def _cube(frame: pd.DataFrame, methods: list[str]) -> np.ndarray:
    """(methods × tasks × seeds), built with pandas from the runs, independently of reports.tables."""
    return np.stack(
        [frame[frame["method"] == m].pivot(index="task", columns="seed", values="acc").to_numpy() for m in methods]
    )


def _overfull(log: str) -> list[float]:
    return [float(x) for x in re.findall(r"Overfull \\hbox \(([\d.]+)pt too wide\)", log)]


def _pdflatex(folder: Path, name: str) -> str:
    proc = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", name],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    return (folder / name.replace(".tex", ".log")).read_text(errors="replace")


def test_several_budgets_give_one_table_each_a_curve_and_the_methods_not_reached(tmp_path: Path):
    frame = _budget_frame()
    runs = select_runs(frame, suite="tinyfolder", stage="final")
    assert runs.budgets == [1000, 4000]
    runs.unreachable = [{"method": "dtl", "budget": 4000, "reason": "4,000 is below dtl's smallest structure"}]
    report = build_report(runs, "linear")
    assert [p.budget for p in report.parts] == [1000, 4000]
    assert [set(p.runs.methods) for p in report.parts] == [{"linear", "karst", "lora"}, {"linear", "karst"}]
    assert report.parts[0].not_reached == [] and report.parts[1].not_reached == [
        ("lora", "no runs at this budget"),
        ("dtl", "4,000 is below dtl's smallest structure"),
    ]
    out = tmp_path / "rep"
    write_report(report, out)
    assert {p.stem for p in (out / "tables").iterdir()} == {
        *(f"{t}_b{b}" for t in ("main", "aggregates", "comparison", "cost") for b in (1000, 4000)),
        "budget_curve",
    }
    assert {"accuracy_vs_budget.png", "accuracy_vs_budget.pdf", "budget_curve.csv"} <= {p.name for p in out.iterdir()}

    # every point of the curve against a recomputation from the runs: the mean of 3 tasks and its
    # Welch–Satterthwaite t interval (tasks fixed)
    curve = pd.read_csv(out / "budget_curve.csv", dtype={"budget": str})
    assert len(curve) == 3 + 2  # linear, karst, lora at 1,000; linear, karst at 4,000
    for budget in (1000, 4000):
        sub = frame[(frame["budget"] == budget) | frame["budget"].isna()]
        methods = ["linear", "karst"] + (["lora"] if budget == 1000 else [])
        cube = _cube(sub, methods)
        direct = stats.aggregate_summary(cube, None, 0)
        got = curve[curve["budget"] == str(budget)].set_index("method")
        for i, m in enumerate(methods):
            assert got.loc[m, "estimate"] == pytest.approx(sub[sub["method"] == m].groupby("task")["acc"].mean().mean())
            assert (got.loc[m, "low"], got.loc[m, "high"]) == pytest.approx((direct.low[i], direct.high[i]))
            assert got.loc[m, "params"] == sub[sub["method"] == m]["params_trainable"].median()
    assert (
        curve[curve["method"] == "linear"]["reference_method"].all()
        and not curve[curve["method"] == "karst"]["reference_method"].any()
    )

    md = (out / "report.md").read_text()
    assert "## Budget 1,000: accuracy per task" in md and "## Budget 4,000: accuracy per task" in md
    assert (
        "Not reached at this budget: lora (no runs at this budget); dtl (4,000 is below dtl's smallest structure)."
        in md
    )
    row = next(line for line in md.splitlines() if line.startswith("| lora ") and "not reached" in line)
    assert row.count("not reached") == 1  # reached at 1,000, not at 4,000
    row = next(line for line in md.splitlines() if line.startswith("| dtl ") and "not reached" in line)
    assert row.count("not reached") == 2  # no run at any budget, still listed
    tex = (out / "tables" / "budget_curve.tex").read_text()
    assert "not reached" in tex and r"\input{tables/budget_curve.tex}" in (out / "report.tex").read_text()

    # the figure: one curve per budget-fitted method through its two budgets, linear as one point
    points = curve_points(report)
    fig = figures.budget_curve_figure(points, "t", figures.palette(["linear", "karst", "lora"]))
    ax = fig.axes[-1]
    curves = {
        line.get_label(): len(line.get_xdata()) for line in ax.get_lines() if not line.get_label().startswith("_")
    }
    assert curves == {"karst": 2, "lora": 1}  # linear: one errorbar point, no curve
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["linear", "karst", "lora"]
    figures.plt.close(fig)

    # --budget still selects one budget: one table, dtl listed as not reached there
    one = select_runs(frame, suite="tinyfolder", stage="final", budget=4000)
    one.unreachable = runs.unreachable
    single = build_report(one, "linear")
    assert not single.curve and set(single.runs.methods) == {"linear", "karst"}
    assert single.not_reached == [
        ("lora", "no runs at this budget"),
        ("dtl", "4,000 is below dtl's smallest structure"),
    ]


def test_a_reference_missing_at_a_budget_is_refused_in_one_line():
    runs = select_runs(_budget_frame(), suite="tinyfolder", stage="final")
    with pytest.raises(BenchError, match=r"--reference 'lora' has no runs at budget 4,000; pick a method with runs"):
        build_report(runs, "lora")
    assert build_report(runs, None).reference == "karst"  # the first method present at every budget


def _variant_frame(tasks=TASKS) -> pd.DataFrame:
    rng = np.random.default_rng(7)
    level = {
        "karst": 0.64,
        "karst[rescale=none]": 0.63,
        "karst[factor=16,kernels=4]": 0.645,
        "lora": 0.62,
        "lora[rank=4]": 0.6,
        "linear": 0.5,
        "karst+bitfit": 0.65,
    }
    params = {
        "karst": 1000,
        "karst[rescale=none]": 950,
        "karst[factor=16,kernels=4]": 1200,
        "lora": 1000,
        "lora[rank=4]": 500,
        "linear": 0,
        "karst+bitfit": 1300,
    }
    rows = [
        {
            **r,
            "acc": _acc(rng, level[r["method"]] + 0.05 * int(r["task"][1:])),
            "params_trainable": float(params[r["method"]]),
            "suite": "tinyfolder",
            "n_test": 500,
        }
        for r in _grid(list(level), tasks, SEEDS)
    ]
    return _frame(rows)


def test_variants_get_an_ablation_table_per_base_that_matches_a_direct_recomputation(cli, tmp_path: Path):
    frame = _variant_frame()
    csv = tmp_path / "results.csv"
    frame.drop(columns=["method_base", "end_time"]).to_csv(csv, index=False)  # as from an older report
    out = tmp_path / "rep"
    code, _, err = cli(
        "report", "--suite", "tinyfolder", "--results-csv", str(csv), "--reference", "linear", "--out", str(out)
    )
    assert code == 0, err
    ablation = pd.read_csv(out / "ablation.csv")
    assert list(ablation["base"].unique()) == ["karst", "lora"]  # karst+bitfit is a composition, not a variant
    blocks = {b: list(g["method"]) for b, g in ablation.groupby("base", sort=False)}
    assert blocks == {
        "karst": ["karst", "karst[rescale=none]", "karst[factor=16,kernels=4]"],
        "lora": ["lora", "lora[rank=4]"],
    }
    for base, members in blocks.items():
        cube = _cube(frame, members)
        means = cube.mean(axis=2)
        direct = stats.aggregate_summary(cube, None, 0)
        raw = [
            sps.wilcoxon(np.round(means[i] - means[0], 6), zero_method="pratt").pvalue for i in range(1, len(members))
        ]
        order = np.argsort(raw)
        holm = np.empty(len(raw))
        running = 0.0
        for k, i in enumerate(order):
            running = max(running, min(1.0, (len(raw) - k) * raw[i]))
            holm[i] = running
        got = ablation[ablation["base"] == base].set_index("method")
        for i, m in enumerate(members):
            assert got.loc[m, "params_trainable"] == frame[frame["method"] == m]["params_trainable"].iloc[0]
            assert got.loc[m, "estimate"] == pytest.approx(means[i].mean())
            if i == 0:
                assert np.isnan(got.loc[m, "diff"])
                continue
            assert got.loc[m, "diff"] == pytest.approx(means[i].mean() - means[0].mean())
            assert (got.loc[m, "diff_low"], got.loc[m, "diff_high"]) == pytest.approx(
                (direct.diff_low[i], direct.diff_high[i])
            )
            assert got.loc[m, "p"] == pytest.approx(raw[i - 1]) and got.loc[m, "p_holm"] == pytest.approx(holm[i - 1])

    md = (out / "report.md").read_text()
    assert "## Ablations" in md and "Holm-adjusted over the variants of karst" in md
    assert "cannot go below p = 2/8 = 0.25" in md.split("## Ablations")[1]
    assert {p.name for p in (out / "tables").iterdir()} >= {"ablation_karst.tex", "ablation_lora.tex"}
    # the variant labels are ordinary rows and columns everywhere, escaped for LaTeX
    header = next(line for line in md.splitlines() if line.startswith("|") and "karst[rescale=none]" in line)
    assert "karst[factor=16,kernels=4]" in header and "karst+bitfit" in header
    tex = (out / "tables" / "ablation_karst.tex").read_text()
    assert r"karst{[}factor=16,kernels=4{]}" in tex and "[factor" not in tex
    # Markdown and LaTeX give the same Δ cells
    for m in blocks["karst"][1:]:
        section = md.split("## Ablations")[1]
        md_row = next(line for line in section.splitlines() if line.startswith(f"| {m} "))
        delta = md_row.split("|")[4].strip().replace("\u2212", "$-$").replace("†", r"$^\dagger$")
        assert delta in tex

    if HAS_PDFLATEX:
        log = _pdflatex(out, "report.tex")
        assert not [x for x in _overfull(log) if x >= 2.0]
        body = "\n".join(f"\\input{{tables/{p.name}}}" for p in sorted((out / "tables").glob("*.tex")))
        (out / "paper.tex").write_text(
            "\\documentclass{article}\n\\usepackage{booktabs}\n\\usepackage{graphicx}\n\\begin{document}\n"
            + body
            + "\n\\end{document}\n"
        )
        assert not [x for x in _overfull(_pdflatex(out, "paper.tex")) if x >= 2.0]


def test_one_task_ablation_uses_the_welch_interval(tmp_path: Path):
    frame = _variant_frame(tasks=["t0"])
    frame["method_base"] = ["karst" if m.startswith("karst[") else m for m in frame["method"]]  # the tag, when set
    report = build_report(select_runs(frame, suite="tinyfolder", stage="final"), "karst")
    karst = next(ab for ab in report.ablations if ab.base == "karst")
    acc = frame.pivot(index="seed", columns="method", values="acc")
    welch = sps.ttest_ind(acc["karst[rescale=none]"], acc["karst"], equal_var=False)
    comp = karst.agg.comparisons.set_index("method").loc["karst[rescale=none]"]
    ci = welch.confidence_interval(0.95)
    assert (comp["diff_low"], comp["diff_high"], comp["welch_p"]) == pytest.approx((ci.low, ci.high, welch.pvalue))
    # the two variants' Welch tests are one family: Holm-adjusted, as statsmodels computes it
    from statsmodels.stats.multitest import multipletests

    variants = ["karst[factor=16,kernels=4]", "karst[rescale=none]"]
    welch_p = [sps.ttest_ind(acc[v], acc["karst"], equal_var=False).pvalue for v in variants]
    expected = multipletests(welch_p, method="holm")[1]
    comps = karst.agg.comparisons.set_index("method")
    assert [comps.loc[v, "holm_p"] for v in variants] == pytest.approx(expected)
    write_report(report, tmp_path / "rep", formats=("md", "csv"))
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "Δ vs karst (pp) [95% Welch CI]" in md and "One task: the only interval is the t-interval" in md
    assert "Welch p (Holm)" in md and "Holm-adjusted over the variants of karst" in md
    ablation = pd.read_csv(tmp_path / "rep" / "ablation.csv").set_index("method")
    assert [ablation.loc[v, "p_holm"] for v in variants] == pytest.approx(expected)


@pytest.mark.slow
def test_real_runs_at_two_budgets_and_a_variant_from_mlflow_and_results_csv(
    tmp_path: Path, mlflow_template: Path, capsys
):
    """Real training at 4k and 16k into one store, a sweep parent that recorded an unreachable cell,
    and a KARST variant trained with --set in a second store, joined through results.csv."""
    from mlflow import MlflowClient

    from bench.cli import run_cli

    root = tmp_path / "data"
    write_task(root / "alpha", num_classes=3, seed=0)
    write_task(root / "beta", num_classes=2, seed=1)
    stores = {}
    for name in ("main", "variant"):
        stores[name] = tmp_path / name
        stores[name].mkdir()
        shutil.copy(mlflow_template, stores[name] / "mlflow.db")

    def bench(store, *args):
        capsys.readouterr()
        code = run_cli(["--workdir", str(stores[store]), *args])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        return captured.out, captured.err

    common = ["run", "--suite", "tinyfolder", "--data-root", str(root), "--seeds", "2", "--epochs", "1"]
    bench("main", *common, "--methods", "karst,lora,linear", "--budget", "4k")
    bench("main", *common, "--methods", "karst", "--budget", "16k")
    bench("main", *common, "--methods", "karst")  # its published size
    # a variant changes the structure, so it runs at its published size too (--set cannot meet --budget)
    bench("variant", *common, "--methods", "karst", "--set", "karst.rescale=none")
    # what a sweep over --budget 4k,16k records on its parent for a cell it could not fit
    client = MlflowClient(f"sqlite:///{stores['main'] / 'mlflow.db'}")
    exp = client.get_experiment_by_name("bench/tinyfolder")
    (parent, *_) = client.search_runs([exp.experiment_id], f"tags.`{schema.KIND}` = '{schema.KIND_SWEEP}'")
    reason = "16,000 is above every structure lora can take here"
    client.set_tag(
        parent.info.run_id, schema.UNREACHABLE, json.dumps([{"method": "lora", "budget": 16000, "reason": reason}])
    )

    out = tmp_path / "rep"
    bench("main", "report", "--suite", "tinyfolder", "--reference", "linear", "--out", str(out))
    listing, _ = bench("main", "runs", "--suite", "tinyfolder", "--json")
    runs = pd.DataFrame(json.loads(listing))
    runs = runs[runs["status"] == "FINISHED"]
    results = pd.read_csv(out / "results.csv")
    assert len(results) == len(runs) == 2 * 2 * 5  # tasks × seeds × (karst 4k, 16k, published; lora 4k; linear)
    curve = pd.read_csv(out / "budget_curve.csv", dtype={"budget": str})
    expected = [("4000", m) for m in ("linear", "karst", "lora")] + [("16000", m) for m in ("linear", "karst")]
    expected += [("published", "linear"), ("published", "karst")]
    assert sorted(zip(curve["budget"], curve["method"], strict=True)) == sorted(expected)
    for (budget, method), grp in results.groupby([results["budget"].fillna(-1).astype(int), "method"]):
        if budget == -1 and method == "linear":
            budgets = ["4000", "16000", "published"]  # a reference method serves every budget
        else:
            budgets = ["published" if budget == -1 else str(budget)]
        for b in budgets:
            got = curve[(curve["budget"] == b) & (curve["method"] == method)].iloc[0]
            assert got["estimate"] == pytest.approx(grp.groupby("task")["acc"].mean().mean())
            assert got["params"] == grp["params_trainable"].median()
    md = (out / "report.md").read_text()
    assert "## Budget 4,000: accuracy per task" in md and "## Published sizes: accuracy per task" in md
    assert f"Not reached at this budget: lora ({reason})." in md
    assert (out / "accuracy_vs_budget.png").stat().st_size > 0 and (out / "accuracy_vs_budget.pdf").exists()

    # results.csv has no sweep parents: the same cell is there, without a recorded reason
    again = tmp_path / "again"
    args = ["report", "--suite", "tinyfolder", "--reference", "linear"]
    bench("main", *args, "--results-csv", str(out / "results.csv"), "--out", str(again))
    rebuilt = (again / "report.md").read_text()
    assert reason not in rebuilt and rebuilt.count("Not reached at this budget: lora (no runs at this budget).") == 2
    assert md.count("Not reached at this budget: lora (no runs at this budget).") == 1  # published sizes

    # the variant's runs labelled as a sweep of variants labels them, joined with the base's runs
    bench("variant", "report", "--suite", "tinyfolder", "--format", "csv", "--out", str(tmp_path / "v"))
    variant = pd.read_csv(tmp_path / "v" / "results.csv").assign(method="karst[rescale=none]", method_base="karst")
    base = results[results["budget"].isna()]  # karst and linear at their published sizes
    joined = tmp_path / "joined.csv"
    pd.concat([base, variant], ignore_index=True).to_csv(joined, index=False)
    abl = tmp_path / "abl"
    bench("main", *args, "--results-csv", str(joined), "--out", str(abl))
    ablation = pd.read_csv(abl / "ablation.csv").set_index("method")
    assert list(ablation.index) == ["karst", "karst[rescale=none]"]
    per_task = pd.concat([base, variant]).groupby(["method", "task"])["acc"].mean().unstack()
    diff = (per_task.loc["karst[rescale=none]"] - per_task.loc["karst"]).mean()
    assert ablation.loc["karst[rescale=none]", "diff"] == pytest.approx(diff)
    # channel-wise re-scaling adds parameters: the variant without it has fewer
    assert ablation.loc["karst[rescale=none]", "params_trainable"] < ablation.loc["karst", "params_trainable"]
