"""``bench report``: finished runs -> report.md, report.tex, results.csv, summary.csv and figures.

The pipeline is: :func:`reports.runs.load_runs` (select, de-duplicate, refuse incomparable runs)
-> :mod:`reports.tables` (statistics, as data frames) -> :mod:`reports.render` (cells as text)
and :mod:`reports.figures` (PNG + PDF). Nothing here computes a statistic itself.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from bench import __version__
from bench.errors import BenchError

from . import figures, render, tables
from .runs import ReportRuns

FORMATS = ("md", "latex", "csv")


@dataclass
class Report:
    runs: ReportRuns
    reference: str
    cells: pd.DataFrame
    agg: tables.Aggregates
    few_shot: pd.DataFrame
    resources: pd.DataFrame
    figures: list[Path] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    @property
    def n_seeds(self) -> int:
        return int(self.runs.frame["seed"].nunique())


def build_report(runs: ReportRuns, reference: str | None) -> Report:
    methods = runs.methods
    if reference is None:
        reference = methods[0]
    if reference not in methods:
        raise BenchError(
            f"--reference {reference!r} has no finished runs in this selection; choose one of {', '.join(methods)}"
        )
    cells = tables.task_cells(runs, reference)
    agg = tables.aggregates(runs, reference)
    few = tables.few_shot_table(runs, reference) if runs.few_shot else pd.DataFrame()
    resources = tables.method_resources(runs, reference)
    return Report(runs, reference, cells, agg, few, resources)


def write_report(report: Report, out: Path, formats: tuple[str, ...] = FORMATS) -> list[Path]:
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise BenchError(f"--format {','.join(unknown)} is not supported; use any of {','.join(FORMATS)}")
    if out.exists() and not out.is_dir():
        raise BenchError(f"--out {out} is a file; pass a folder for the report (it is created if missing)")
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    report.figures = _figures(report, out)
    written += report.figures
    if "csv" in formats:
        results = out / "results.csv"
        report.runs.frame.drop(columns=["end_time"]).to_csv(results, index=False)
        summary = out / "summary.csv"
        report.cells.to_csv(summary, index=False)
        written += [results, summary]
    if "md" in formats:
        path = out / "report.md"
        path.write_text(markdown(report), encoding="utf-8")
        written.append(path)
    if "latex" in formats:
        path = out / "report.tex"
        path.write_text(latex(report), encoding="utf-8")
        written.append(path)
    report.files = written
    return written


def _context(report: Report) -> list[tuple[str, str]]:
    f = report.runs.frame
    budgets = sorted({"published" if pd.isna(b) else f"{int(b):,}" for b in f["budget"]})
    shots = sorted({int(k) for k in f["shots"].dropna()})
    rows = [
        ("suite", report.runs.suite),
        (
            "stage",
            f"{report.runs.stage} ({'test scored once after the last epoch' if report.runs.stage == 'final' else 'validation'})",
        ),
        ("backbone", f["backbone"].iloc[0]),
        ("weights", f["checkpoint"].iloc[0]),
        ("preset", f"{f['preset'].iloc[0]} ({f['protocol'].iloc[0]})"),
        ("hyperparameters", f["hparams"].iloc[0]),
        ("budget", ", ".join(budgets) + " (trainable parameters, head excluded)"),
        ("seeds", ", ".join(map(str, sorted(set(f["seed"]))))),
        ("methods", ", ".join(report.runs.methods)),
        ("reference", report.reference),
        ("tasks", str(f["task"].nunique()) + (f" × shots {', '.join(map(str, shots))}" if shots else "")),
        ("runs", f"{len(f)} finished runs, de-duplicated by run key"),
        ("generated", f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC by bench {__version__}"),
    ]
    return rows


def markdown(report: Report) -> str:
    ref, n = report.reference, report.n_seeds
    style = render.MARKDOWN
    lines = [f"# bench report: {report.runs.suite}", ""]
    lines += [f"- **{k}**: {v}" for k, v in _context(report)]
    lines += ["", "## Accuracy per task", ""]
    lines += [render.to_markdown(render.main_table(report.cells, report.agg, report.resources, ref, style)), ""]
    lines += [render.main_caption(n, ref, report.agg, report.runs.stage), ""]
    note = render.missing_note(report.runs.missing)
    if note:
        lines += [f"**Missing runs.** {note}", ""]
    comp = render.comparison_table(report.agg, ref, style)
    if len(comp):
        lines += ["## Against the reference, across tasks", "", render.to_markdown(comp), ""]
        lines += [render.comparison_caption(report.agg, ref, n), ""]
        if len(report.agg.tasks) < 6:
            lines += [
                f"With {len(report.agg.tasks)} task(s) the signed-rank test cannot reach p < 0.05 "
                "(its smallest two-sided p is 2/2^N); read the intervals, not the p-values.",
                "",
            ]
    if not report.few_shot.empty:
        means, diffs = render.few_shot_tables(report.few_shot, ref, style)
        lines += ["## Few-shot: per shot count", "", render.to_markdown(means), ""]
        lines += [render.to_markdown(diffs), "", render.few_shot_caption(n, ref), ""]
    lines += ["## Cost", "", render.to_markdown(render.resources_table(report.resources)), ""]
    lines += [render.resources_caption(report.runs.frame), ""]
    lines += ["## Figures", ""]
    for p in report.figures:
        if p.suffix == ".png":
            lines += [f"![{p.stem}]({p.name})", ""]
    return "\n".join(lines)


LATEX_PREAMBLE = r"""\documentclass[10pt]{article}
\usepackage[T1]{fontenc}
\usepackage[margin=2cm,landscape]{geometry}
\usepackage{booktabs}
\usepackage{graphicx}
\usepackage{caption}
\begin{document}
"""


def latex(report: Report) -> str:
    ref, n = report.reference, report.n_seeds
    style = render.LATEX
    esc = render.latex_escape_text
    parts = [LATEX_PREAMBLE, r"\section*{bench report: " + esc(report.runs.suite) + "}", r"\begin{itemize}"]
    parts += [rf"\item \textbf{{{esc(k)}}}: {esc(v)}" for k, v in _context(report)]
    parts += [r"\end{itemize}"]
    main = render.main_table(report.cells, report.agg, report.resources, ref, style)
    parts.append(render.to_latex(main, render.main_caption(n, ref, report.agg, report.runs.stage), "tab:main"))
    note = render.missing_note(report.runs.missing)
    if note:
        parts.append(r"\paragraph{Missing runs.} " + esc(note))
    comp = render.comparison_table(report.agg, ref, style)
    if len(comp):
        parts.append(render.to_latex(comp, render.comparison_caption(report.agg, ref, n), "tab:comparison"))
    if not report.few_shot.empty:
        means, diffs = render.few_shot_tables(report.few_shot, ref, style)
        parts.append(render.to_latex(means, render.few_shot_caption(n, ref), "tab:fewshot"))
        parts.append(render.to_latex(diffs, f"Few-shot differences to {ref}.", "tab:fewshot-diff"))
    parts.append(
        render.to_latex(
            render.resources_table(report.resources), render.resources_caption(report.runs.frame), "tab:cost"
        )
    )
    for p in report.figures:
        if p.suffix == ".pdf":
            parts += [
                r"\begin{figure}[htbp]\centering",
                rf"\includegraphics[width=0.7\linewidth]{{{p.name}}}",
                rf"\caption{{{esc(p.stem.replace('_', ' '))}}}",
                r"\end{figure}",
            ]
    parts.append(r"\end{document}")
    return render.latex_unicode("\n".join(parts) + "\n")


def _figures(report: Report, out: Path) -> list[Path]:
    paths: list[Path] = []
    ref = report.reference
    agg = report.agg
    res = report.resources.set_index("method")
    if len(agg.rows):
        last = agg.rows[agg.rows["row"] == agg.rows["row"].iloc[-1]].set_index("method")
        title = f"{agg.rows['row'].iloc[-1]}, 95 % two-level bootstrap interval"
    else:  # no task complete for every method: fall back to each method's mean over its own runs
        last = pd.DataFrame(
            {"estimate": res["mean_acc"], "low": res["mean_acc"], "high": res["mean_acc"]}, index=res.index
        )
        title = "mean accuracy over runs (no complete task: no interval)"
    points = pd.DataFrame(
        {
            "method": last.index,
            "params": [res["params_trainable"][m] for m in last.index],
            "estimate": last["estimate"].to_numpy(),
            "low": last["low"].to_numpy(),
            "high": last["high"].to_numpy(),
        }
    )
    paths += figures.accuracy_vs_params(points, out, title)
    scores, blocks = _rank_blocks(report)
    if scores is not None:
        from . import stats

        fr = stats.friedman(scores.to_numpy())
        paths += figures.cd_diagram(scores, fr.cd, out, f"average ranks over {blocks}; Nemenyi CD = {fr.cd:.2f}")
    paths += figures.forest_plot(report.cells, ref, out)
    paths += figures.resources_plot(report.resources, out)
    return paths


def _rank_blocks(report: Report) -> tuple[pd.DataFrame | None, str]:
    """Blocks for the rank diagram: complete tasks (and shots); with a single task, its seeds (descriptive)."""
    methods = tables.method_order(report.runs, report.reference)
    keys = tables.complete_tasks(report.runs, methods)
    if len(methods) < 2 or not keys:
        return None, ""
    cube = tables.seed_cube(report.runs, methods, keys)
    if len(keys) >= 2:
        return pd.DataFrame(cube.mean(axis=2).T, columns=methods), f"{len(keys)} tasks"
    if cube.shape[2] >= 2:
        return pd.DataFrame(cube[:, 0, :].T, columns=methods), f"the {cube.shape[2]} seeds of one task (descriptive)"
    return None, ""
