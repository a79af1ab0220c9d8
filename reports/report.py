"""``bench report``: finished runs -> report.md, report.tex (+ one LaTeX fragment per table), CSVs, figures.

The pipeline is: :func:`reports.runs.load_runs` (select, de-duplicate, refuse incomparable runs)
-> :mod:`reports.tables` (statistics, as data frames) -> :mod:`reports.render` (cells as text)
and :mod:`reports.figures` (PNG + PDF). Nothing here computes a statistic itself.

Both documents are rendered from one list of sections, so the Markdown and the LaTeX report carry
the same tables, captions, notes and small-sample guards. Each table is also written on its own to
``tables/<name>.tex``, the fragment a paper pastes (or ``\\input``\\s); ``report.tex`` inputs exactly
those files.
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
FRAGMENTS = ("main", "aggregates", "comparison", "fewshot", "fewshot_diff", "cost")  # tables/<name>.tex


@dataclass
class Report:
    runs: ReportRuns
    reference: str
    cells: pd.DataFrame
    agg: tables.Aggregates
    few_shot: pd.DataFrame
    resources: pd.DataFrame
    split_se: pd.DataFrame = field(default_factory=pd.DataFrame)
    figures: list[Path] = field(default_factory=list)
    files: list[Path] = field(default_factory=list)

    @property
    def n_seeds(self) -> int:
        return int(self.runs.frame["seed"].nunique())


def build_report(runs: ReportRuns, reference: str | None, resample_tasks: bool = False) -> Report:
    methods = runs.methods
    if reference is None:
        reference = methods[0]
    if reference not in methods:
        raise BenchError(
            f"--reference {reference!r} has no finished runs in this selection; choose one of {', '.join(methods)}"
        )
    cells = tables.task_cells(runs, reference)
    agg = tables.aggregates(runs, reference, resample_tasks=resample_tasks)
    few = tables.few_shot_table(runs, reference) if runs.few_shot else pd.DataFrame()
    resources = tables.method_resources(runs, reference)
    split_se = tables.test_split_errors(runs, cells, reference)
    return Report(runs, reference, cells, agg, few, resources, split_se)


# ---------------------------------------------------------------------------------------------
# One document model, two renderings
# ---------------------------------------------------------------------------------------------


@dataclass
class Table:
    name: str  # the fragment's file stem and the LaTeX label tab:<name>
    md: pd.DataFrame
    tex: pd.DataFrame
    caption: str
    notes: list[str] = field(default_factory=list)


@dataclass
class Section:
    title: str
    items: list = field(default_factory=list)  # Table or str (a paragraph)


def sections(report: Report) -> list[Section]:
    ref, n, agg = report.reference, report.n_seeds, report.agg
    has_se = bool(len(report.split_se)) and report.split_se["se"].notna().any()
    out = []

    main = Section("Accuracy per task")
    main.items.append(
        Table(
            "main",
            *(
                render.main_table(report.cells, report.resources, ref, s, report.split_se)
                for s in (render.MARKDOWN, render.LATEX)
            ),
            render.main_caption(n, ref, report.runs.stage, has_se),
            render.main_notes(report.split_se, n),
        )
    )
    if note := render.missing_note(report.runs.missing):
        main.items.append("Missing runs. " + note)
    out.append(main)

    if len(agg.rows):
        out.append(
            Section(
                "Across tasks",
                [
                    Table(
                        "aggregates",
                        *(render.aggregate_table(agg, ref, s) for s in (render.MARKDOWN, render.LATEX)),
                        render.aggregate_caption(agg, n),
                        render.aggregate_notes(agg),
                    )
                ],
            )
        )
    if len(agg.comparisons):
        out.append(
            Section(
                "Against the reference",
                [
                    Table(
                        "comparison",
                        *(render.comparison_table(agg, ref, s, report.cells) for s in (render.MARKDOWN, render.LATEX)),
                        render.comparison_caption(agg, ref, n),
                        render.comparison_notes(agg, ref),
                    )
                ],
            )
        )
    if not report.few_shot.empty:
        md_means, md_diffs = render.few_shot_tables(report.few_shot, ref, render.MARKDOWN)
        tex_means, tex_diffs = render.few_shot_tables(report.few_shot, ref, render.LATEX)
        out.append(
            Section(
                "Few-shot: per shot count",
                [
                    Table("fewshot", md_means, tex_means, render.few_shot_caption(n, ref)),
                    Table("fewshot_diff", md_diffs, tex_diffs, render.few_shot_diff_caption(ref)),
                ],
            )
        )
    cost = render.resources_table(report.resources)
    warnings = render.cost_warnings(report.runs.frame)
    out.append(
        Section(
            "Cost",
            [
                Table(
                    "cost", cost, cost, render.resources_caption(report.runs.frame), ["Warning: " + w for w in warnings]
                )
            ],
        )
    )
    return out


def write_report(report: Report, out: Path, formats: tuple[str, ...] = FORMATS, latex_width: str = "fit") -> list[Path]:
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise BenchError(f"--format {','.join(unknown)} is not supported; use any of {','.join(FORMATS)}")
    if latex_width not in render.LATEX_WIDTHS:
        raise BenchError(f"--latex-width {latex_width!r} must be one of {', '.join(render.LATEX_WIDTHS)}")
    if out.exists() and not out.is_dir():
        raise BenchError(f"--out {out} is a file; pass a folder for the report (it is created if missing)")
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    report.figures = _figures(report, out)
    written += report.figures
    parts = sections(report)
    if "csv" in formats:
        results = out / "results.csv"
        report.runs.frame.drop(columns=["end_time"]).to_csv(results, index=False)
        summary = out / "summary.csv"
        report.cells.to_csv(summary, index=False)
        written += [results, summary]
    if "md" in formats:
        path = out / "report.md"
        path.write_text(markdown(report, parts), encoding="utf-8")
        written.append(path)
    if "latex" in formats:
        folder = out / "tables"
        folder.mkdir(exist_ok=True)
        for stale in FRAGMENTS:  # an earlier report into this folder may have had tables this one has not
            (folder / f"{stale}.tex").unlink(missing_ok=True)
        for section in parts:
            for item in section.items:
                if isinstance(item, Table):
                    path = folder / f"{item.name}.tex"
                    path.write_text(render.latex_table(item.tex, item.caption, f"tab:{item.name}", latex_width))
                    written.append(path)
        path = out / "report.tex"
        path.write_text(latex(report, parts), encoding="ascii")
        written.append(path)
    report.files = written
    return written


def _weights(frame: pd.DataFrame) -> str:
    labels = [x for x in dict.fromkeys(frame["weights_label"]) if x]
    checkpoint = frame["checkpoint"].iloc[0]
    if not labels:
        return f"{checkpoint} (no weights label recorded)"
    unlabelled = int((frame["weights_label"] == "").sum())
    text = "; ".join(f'"{x}"' for x in labels) + f" ({checkpoint})"
    if len(labels) > 1 or unlabelled:
        counts = frame["weights_label"].replace("", "no label").value_counts()
        text += " — runs per label: " + ", ".join(f"{k}: {v}" for k, v in counts.items())
    return text


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
        ("weights", _weights(f)),
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


FIGURE_CAPTIONS = {
    "accuracy_vs_params": "Accuracy against trainable parameters (head excluded), with the Pareto front.",
    "critical_difference": "Average ranks over tasks with the Nemenyi critical difference.",
    "forest_vs_reference": "Per-task difference to the reference with its Welch 95 % interval.",
    "performance_profile": "Performance profiles: the fraction of runs above each accuracy, with 95 % bands.",
    "resources": "Accuracy, training throughput and peak GPU memory per method.",
}


def markdown(report: Report, parts: list[Section] | None = None) -> str:
    parts = sections(report) if parts is None else parts
    lines = [f"# bench report: {report.runs.suite}", ""]
    lines += [f"- **{k}**: {v}" for k, v in _context(report)]
    for section in parts:
        lines += ["", f"## {section.title}", ""]
        for item in section.items:
            if isinstance(item, Table):
                lines += [render.to_markdown(item.md), "", item.caption, ""]
                lines += [note + "\n" for note in item.notes]
            else:
                lines += [item, ""]
    lines += ["", "## Figures", ""]
    for p in report.figures:
        if p.suffix == ".png":
            lines += [f"![{FIGURE_CAPTIONS.get(p.stem, p.stem)}]({p.name})", ""]
    return "\n".join(lines).rstrip() + "\n"


LATEX_PREAMBLE = r"""\documentclass[10pt]{article}
\usepackage[T1]{fontenc}
\usepackage{lmodern}
\usepackage[margin=2cm,landscape]{geometry}
\usepackage{booktabs}
\usepackage{graphicx}
\usepackage{caption}
\begin{document}
"""


def latex(report: Report, parts: list[Section] | None = None) -> str:
    parts = sections(report) if parts is None else parts
    esc = render.latex_escape_text
    doc = [LATEX_PREAMBLE, r"\section*{bench report: " + esc(report.runs.suite) + "}", r"\begin{itemize}"]
    doc += [rf"\item \textbf{{{esc(k)}}}: {esc(v)}" for k, v in _context(report)]
    doc += [r"\end{itemize}"]
    for section in parts:
        doc.append(r"\subsection*{" + esc(section.title) + "}")
        for item in section.items:
            if isinstance(item, Table):
                doc.append(rf"\input{{tables/{item.name}.tex}}")
                doc += [esc(note) + "\n" for note in item.notes]
            else:
                doc.append(esc(item) + "\n")
    doc.append(r"\clearpage")
    for p in report.figures:
        if p.suffix == ".pdf":
            doc += [
                r"\begin{figure}[htbp]\centering",
                rf"\includegraphics[width=0.8\linewidth,height=0.4\textheight,keepaspectratio]{{{p.name}}}",
                rf"\caption{{{esc(FIGURE_CAPTIONS.get(p.stem, p.stem.replace('_', ' ')))}}}",
                r"\end{figure}",
            ]
    doc.append(r"\end{document}")
    return render.latex_unicode("\n".join(doc) + "\n")


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def _figures(report: Report, out: Path) -> list[Path]:
    paths: list[Path] = []
    ref = report.reference
    agg = report.agg
    methods = tables.method_order(report.runs, ref)
    palette = figures.palette(methods)
    res = report.resources.set_index("method")
    if len(agg.rows):
        head = agg.rows[agg.rows["row"] == agg.headline].set_index("method")
        title = f"{agg.headline}, 95 % bootstrap interval ({render.interval_phrase(agg)})"
    elif agg.single_task:
        one = report.cells[(report.cells["task"] == agg.tasks[0]) & report.cells["shots"].isna()].set_index("method")
        head = pd.DataFrame(
            {"estimate": one["mean"], "low": one["mean"] - one["half_width"], "high": one["mean"] + one["half_width"]}
        )
        title = f"{agg.tasks[0]}: mean with its 95 % t-interval over seeds"
    else:  # no complete task: each method's mean over its own runs, no interval
        head = pd.DataFrame({"estimate": res["mean_acc"], "low": res["mean_acc"], "high": res["mean_acc"]})
        title = "mean accuracy over runs (no complete task: no interval)"
    head = head.reindex([m for m in methods if m in head.index])
    points = pd.DataFrame(
        {
            "method": head.index,
            "params": [res["params_trainable"][m] for m in head.index],
            "estimate": head["estimate"].to_numpy(),
            "low": head["low"].to_numpy(),
            "high": head["high"].to_numpy(),
        }
    )
    paths += figures.accuracy_vs_params(points, out, title, palette)
    if agg.ranked:
        from . import stats

        keys = [(t, None) for t in agg.tasks]
        cube = tables.seed_cube(report.runs, methods, keys)
        scores = pd.DataFrame(cube.mean(axis=2).T, columns=methods)
        fr = stats.friedman(scores.to_numpy())
        paths += figures.cd_diagram(
            scores, fr.cd, out, f"average ranks over {len(keys)} tasks; Nemenyi CD = {fr.cd:.2f} at 0.05", palette
        )
    paths += figures.forest_plot(report.cells, ref, out, palette)
    if len(agg.tasks):
        keys = [(t, None) for t in agg.tasks]
        cube = tables.seed_cube(report.runs, methods, keys)
        paths += figures.performance_profile(cube, methods, out, palette)
    paths += figures.resources_plot(report.resources, out, palette)
    return paths
