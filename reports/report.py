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
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import psutil

from bench import __version__
from bench.errors import BenchError

from . import figures, render, tables
from .runs import ReportRuns, budget_adjustable, budget_label, budgets_of, sources_text

FORMATS = ("md", "latex", "csv")
# tables/<name>.tex, and with several budgets <name>_b<budget> / <name>_published; ablation_<base>[…]
FRAGMENTS = (
    "main",
    "aggregates",
    "comparison",
    "fewshot",
    "fewshot_diff",
    "cost",
    "tuning_effort",
    "ablation",
    "budget_curve",
)


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
    ablations: list[tables.Ablation] = field(default_factory=list)
    budget: int | str | None = None  # the one budget of this table (None: runs without budgets)
    not_reached: list[tuple[str, str]] = field(default_factory=list)  # (method, reason) at this budget
    parts: list[Report] = field(default_factory=list)  # several budgets: one report per budget
    tuning: pd.DataFrame = field(default_factory=pd.DataFrame)  # per method: the effort its tuning studies spent

    @property
    def n_seeds(self) -> int:
        return int(self.runs.frame["seed"].nunique())

    @property
    def curve(self) -> bool:
        """Whether this report spans several budgets (one table per budget and a budget curve)."""
        return bool(self.parts)


def build_report(runs: ReportRuns, reference: str | None, resample_tasks: bool = False) -> Report:
    budgets = runs.budgets
    if runs.selection.get("budget") is None and len(budgets) > 1:
        return _budget_report(runs, reference, budgets, resample_tasks)
    report = _one_budget_report(runs, reference, resample_tasks)
    report.budget = runs.selection.get("budget") or (budgets[0] if budgets else None)
    if report.budget is not None:
        report.not_reached = runs.not_reached(report.budget)
    return report


def _budget_report(runs: ReportRuns, reference: str | None, budgets: list, resample_tasks: bool) -> Report:
    """One report per budget (reference methods join each), under one that holds them all."""
    selected = {b: runs.at_budget(b) for b in budgets}
    everywhere = [m for m in runs.methods if all(m in part.methods for part in selected.values())]
    if reference is None:
        if not everywhere:
            raise BenchError(
                f"no method has runs at every budget ({', '.join(budget_label(b) for b in budgets)}), so one "
                "reference cannot serve every table; pass --budget N to report one budget, or run a reference "
                "method such as linear, which serves every budget"
            )
        reference = everywhere[0]
    elif reference not in everywhere:
        absent = [budget_label(b) for b, part in selected.items() if reference not in part.methods]
        raise BenchError(
            f"--reference {reference!r} has no runs at {', '.join(absent)}; pick a method with runs at every "
            f"budget ({', '.join(everywhere) or 'none has: run linear, which serves every budget'}) or pass --budget N"
        )
    parts = []
    for b, part in selected.items():
        one = _one_budget_report(part, reference, resample_tasks)
        one.budget = b
        one.not_reached = part.not_reached(b)
        parts.append(one)
    cells = pd.concat([p.cells.assign(budget=render.budget_text(p.budget)) for p in parts], ignore_index=True)
    return Report(runs, reference, cells, parts[0].agg, pd.DataFrame(), pd.DataFrame(), parts=parts)


def _one_budget_report(runs: ReportRuns, reference: str | None, resample_tasks: bool) -> Report:
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
    return Report(
        runs,
        reference,
        cells,
        agg,
        few,
        resources,
        split_se,
        ablations=tables.ablations(runs),
        tuning=tables.tuning_effort(runs, reference),
    )


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
    if report.curve:
        out = []
        for part in report.parts:
            suffix = "_b" + str(part.budget) if part.budget != "published" else "_published"
            title = budget_label(part.budget).capitalize() + ": "
            for section in _sections(part):
                for item in section.items:
                    if isinstance(item, Table):
                        item.name += suffix
                        item.caption = f"{budget_label(part.budget).capitalize()}. {item.caption}"
                section.title = title + section.title[0].lower() + section.title[1:]
                out.append(section)
        out.append(_curve_section(report))
        return out
    return _sections(report)


def _sections(report: Report) -> list[Section]:
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
    if note := render.not_reached_note(report.not_reached):
        main.items.append(note)
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
    if report.ablations:
        section = Section("Ablations")
        for ab in report.ablations:
            section.items.append(
                Table(
                    "ablation_" + _stem(ab.base),
                    *(render.ablation_table(ab, s) for s in (render.MARKDOWN, render.LATEX)),
                    render.ablation_caption(ab, n),
                    render.ablation_notes(ab),
                )
            )
        out.append(section)
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
    items = [
        Table(
            "cost",
            cost,
            cost,
            render.resources_caption(report.runs.frame, report.resources),
            ["Warning: " + w for w in warnings],
        )
    ]
    if not report.tuning.empty:
        effort = render.tuning_effort_table(report.tuning)
        items.append(Table("tuning_effort", effort, effort, render.tuning_effort_caption(report.runs.suite)))
    out.append(Section("Cost", items))
    return out


def _stem(name: str) -> str:
    """A file-name-safe form of a method label (ablation_karst, ablation_karst_bitfit)."""
    return "".join(ch if ch.isalnum() else "_" for ch in name).strip("_")


def _curve_section(report: Report) -> Section:
    points = curve_points(report)
    interval = "its 95 % interval (" + _interval_name(report.parts[0]) + ")"
    absent = [m for part in report.parts for m, _ in part.not_reached]
    return Section(
        "Budget curves",
        [
            Table(
                "budget_curve",
                *(render.budget_curve_table(points, s, absent) for s in (render.MARKDOWN, render.LATEX)),
                render.budget_curve_caption(interval, report.n_seeds),
                [
                    "The figure accuracy_vs_budget draws these values against the parameters each method has at each "
                    "budget (log x), with the same intervals as bands; a reference method is one point. Published "
                    "sizes, where the runs have them, are open markers, not joined to the curve. Per-budget figures: "
                    "report one budget with --budget N."
                ]
                + [
                    render.not_reached_note(part.not_reached, budget_label(part.budget))
                    for part in report.parts
                    if part.not_reached
                ],
            )
        ],
    )


def _interval_name(report: Report) -> str:
    if len(report.agg.rows):
        return f"{report.agg.headline}; {render.interval_phrase(report.agg)}"
    if report.agg.single_task:
        return f"{report.agg.tasks[0]}; Student-t over seeds"
    return "no complete task: no interval"


def headline_points(report: Report) -> tuple[pd.DataFrame, str]:
    """Per method of a one-budget report: params, headline estimate and its interval, and a title
    that names them (the aggregate's interval, or on one task the t-interval over seeds)."""
    ref, agg = report.reference, report.agg
    methods = tables.method_order(report.runs, ref)
    res = report.resources.set_index("method")
    if len(agg.rows):
        head = agg.rows[agg.rows["row"] == agg.headline].set_index("method")
        title = f"{agg.headline}, 95 % interval ({render.interval_phrase(agg)})"
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
    return points, title


def curve_points(report: Report) -> pd.DataFrame:
    """One row per (method, budget) of a several-budget report: budget, method, params, estimate,
    low, high, and whether the method is a reference (one size, the same runs at every budget)."""
    frames = []
    for part in report.parts:
        points, _ = headline_points(part)
        frames.append(points.assign(budget=part.budget))
    points = pd.concat(frames, ignore_index=True)
    points["reference_method"] = ~points["method"].map(budget_adjustable).astype(bool)
    return points[["budget", "method", "params", "estimate", "low", "high", "reference_method"]]


def write_report(report: Report, out: Path, formats: tuple[str, ...] = FORMATS, latex_width: str = "fit") -> list[Path]:
    """Write the report into ``out``; a folder holding ``report.md`` or ``report.tex`` holds a whole report.

    Everything is made in a hidden folder beside ``out`` first (the figures and statistics take
    the time). Then the old ``report.md``/``report.tex`` are removed, the new files moved in, and
    the new ``report.md``/``report.tex`` moved in last: a report killed at any point leaves either
    the old report untouched or new files without a stale ``report.md`` beside them. Files of
    ``out`` that the report does not write are left alone.
    """
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise BenchError(f"--format {','.join(unknown)} is not supported; use any of {','.join(FORMATS)}")
    if latex_width not in render.LATEX_WIDTHS:
        raise BenchError(f"--latex-width {latex_width!r} must be one of {', '.join(render.LATEX_WIDTHS)}")
    if out.exists() and not out.is_dir():
        raise BenchError(f"--out {out} is a file; pass a folder for the report (it is created if missing)")
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_staging(out)
    staging = out.parent / f"{STAGING_PREFIX}{out.name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        staged = _write_files(report, staging, formats, latex_width)
        out.mkdir(exist_ok=True)
        for name in DOCUMENTS:
            (out / name).unlink(missing_ok=True)
        if "latex" in formats and (out / "tables").is_dir():
            for stale in (out / "tables").glob("*.tex"):  # an earlier report may have had tables this one has not
                if stale.stem.startswith(FRAGMENTS):
                    stale.unlink()
        for path in sorted(staged, key=lambda p: p.name in DOCUMENTS):  # the documents last
            target = out / path.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report.figures = [out / p.relative_to(staging) for p in report.figures]
    report.files = [out / p.relative_to(staging) for p in staged]
    return report.files


STAGING_PREFIX = ".report-staging-"
DOCUMENTS = ("report.md", "report.tex")  # moved in last: their presence means the report is whole


def _remove_abandoned_staging(out: Path) -> None:
    """Remove the staging folders of reports into ``out`` that were killed (their process is gone)."""
    for folder in out.parent.glob(f"{STAGING_PREFIX}{out.name}-*"):
        pid = folder.name.rpartition("-")[2]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _write_files(report: Report, out: Path, formats: tuple[str, ...], latex_width: str) -> list[Path]:
    """Every file of the report, written into the empty folder ``out``."""
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
        written += _table_csvs(report, out)
        if report.curve:
            curve = out / "budget_curve.csv"
            curve_points(report).to_csv(curve, index=False)
            written.append(curve)
        if any(p.ablations for p in [report, *report.parts]):
            ablation = out / "ablation.csv"
            ablation_frame(report).to_csv(ablation, index=False)
            written.append(ablation)
    if "md" in formats:
        path = out / "report.md"
        path.write_text(markdown(report, parts), encoding="utf-8")
        written.append(path)
    if "latex" in formats:
        folder = out / "tables"
        folder.mkdir(exist_ok=True)
        for section in parts:
            for item in section.items:
                if isinstance(item, Table):
                    path = folder / f"{item.name}.tex"
                    path.write_text(render.latex_table(item.tex, item.caption, f"tab:{item.name}", latex_width))
                    written.append(path)
        path = out / "report.tex"
        path.write_text(latex(report, parts), encoding="ascii")
        written.append(path)
    return written


AGGREGATE_COLUMNS = ["method", "group", "estimate", "low", "high", "diff", "diff_low", "diff_high"]


def aggregates_frame(agg: tables.Aggregates) -> pd.DataFrame:
    """aggregates.csv: one row per method and averaged group, in percentage points. ``group`` is empty
    for the headline (overall) row, a group's name for its mean, and "all tasks" for the mean of all
    tasks where the headline is the mean of group means."""
    if not len(agg.rows):
        return pd.DataFrame(columns=AGGREGATE_COLUMNS)
    frame = agg.rows[AGGREGATE_COLUMNS].copy()
    values = AGGREGATE_COLUMNS[2:]
    frame[values] = 100 * frame[values]
    return frame


def _table_csvs(report: Report, out: Path) -> list[Path]:
    """Every table the report prints, as numbers (percentage points for accuracies and differences):
    aggregates.csv, comparison.csv, iqm.csv, fewshot.csv and cost.csv (with several budgets, one of
    each per budget, suffixed _b<budget>)."""
    written = []
    for part in report.parts or [report]:
        suffix = "" if not report.curve else ("_b" + str(part.budget) if part.budget != "published" else "_published")
        agg = part.agg
        frames = {"aggregates": aggregates_frame(agg)}
        if len(agg.comparisons):
            comp = agg.comparisons.copy()
            for c in ("diff", "diff_low", "diff_high"):
                comp[c] = 100 * comp[c]
            frames["comparison"] = comp
        if agg.iqm is not None and len(agg.iqm):
            frames["iqm"] = agg.iqm.assign(**{c: 100 * agg.iqm[c] for c in ("estimate", "low", "high")})
        if not part.few_shot.empty:
            few = part.few_shot.copy()
            for c in ("estimate", "low", "high", "diff", "diff_low", "diff_high"):
                few[c] = 100 * few[c]
            frames["fewshot"] = few
        if len(part.resources):
            frames["cost"] = part.resources.assign(mean_acc=100 * part.resources["mean_acc"])
        for name, frame in frames.items():
            path = out / f"{name}{suffix}.csv"
            frame.to_csv(path, index=False)
            written.append(path)
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
    budgets = [render.budget_text(b) for b in budgets_of(f)] or ["published"]
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
        ("hyperparameters", sources_text(f)),
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
    "accuracy_vs_budget": "Accuracy against trainable parameters per method at each budget, with interval bands; "
    "reference methods as single points.",
    "accuracy_vs_params": "Accuracy against trainable parameters (head excluded), with the Pareto front.",
    "critical_difference": "Average ranks over tasks with the Nemenyi critical difference.",
    "forest_vs_reference": "Per-task difference to the reference with its Welch 95 % interval.",
    "performance_profile": "Performance profiles: the fraction of runs above each accuracy (descriptive, no band).",
    "resources": "Accuracy, training throughput and peak GPU memory per method.",
}


def _figure_height(stem: str) -> str:
    """A figure's height in report.tex, as a fraction of the text height: a forest-plot page (up to
    figures.MAX_FOREST_ROWS rows) gets the page, so its 7 pt labels print at about their size."""
    return "0.85" if stem.startswith("forest_vs_reference") else "0.4"


def _figure_caption(stem: str) -> str:
    """The caption of a figure file; pages of a split figure (forest_vs_reference_2) share their first's."""
    base, _, page = stem.rpartition("_")
    if page.isdigit() and base in FIGURE_CAPTIONS:
        return f"{FIGURE_CAPTIONS[base]} (page {page})"
    return FIGURE_CAPTIONS.get(stem, stem.replace("_", " "))


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
            lines += [f"![{_figure_caption(p.stem)}]({p.name})", ""]
    return "\n".join(lines).rstrip() + "\n"


LATEX_PREAMBLE = r"""\documentclass[10pt]{article}
\usepackage[T1]{fontenc}
\usepackage{lmodern}
\usepackage[margin=2cm,landscape]{geometry}
\usepackage{booktabs}
\usepackage{graphicx}
\usepackage{caption}
% Tables stay near their heading: floats may fill most of a page, and a table still deferred at the
% next heading is placed before it (a page break only when one is deferred).
\renewcommand{\topfraction}{0.95}
\renewcommand{\bottomfraction}{0.95}
\renewcommand{\textfraction}{0.05}
\renewcommand{\floatpagefraction}{0.8}
\makeatletter
\newcommand{\placewaitingtables}{\par\ifx\@deferlist\@empty\else\clearpage\fi}
\makeatother
\begin{document}
"""


def latex(report: Report, parts: list[Section] | None = None) -> str:
    parts = sections(report) if parts is None else parts
    esc = render.latex_escape_text
    doc = [LATEX_PREAMBLE, r"\section*{bench report: " + esc(report.runs.suite) + "}", r"\begin{itemize}"]
    doc += [rf"\item \textbf{{{esc(k)}}}: {esc(v)}" for k, v in _context(report)]
    doc += [r"\end{itemize}"]
    for section in parts:
        doc.append(r"\placewaitingtables")
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
                rf"\includegraphics[width=0.8\linewidth,height={_figure_height(p.stem)}\textheight,keepaspectratio]"
                rf"{{{p.name}}}",
                rf"\caption{{{esc(_figure_caption(p.stem))}}}",
                r"\end{figure}",
            ]
    doc.append(r"\end{document}")
    return render.latex_unicode("\n".join(doc) + "\n")


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------


def _figures(report: Report, out: Path) -> list[Path]:
    if report.curve:
        methods = list(dict.fromkeys([report.reference, *report.runs.methods]))
        return figures.budget_curves(
            curve_points(report), out, _interval_name(report.parts[0]), figures.palette(methods)
        )
    paths: list[Path] = []
    ref = report.reference
    agg = report.agg
    methods = tables.method_order(report.runs, ref)
    palette = figures.palette(methods)
    points, title = headline_points(report)
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


def ablation_frame(report: Report) -> pd.DataFrame:
    """Every ablation row of the report (all budgets): budget, base, method, params, the headline
    estimate and interval, Δ to the base with its interval, and the test's p with its Holm
    adjustment over the base's variants."""
    rows = []
    for part in report.parts or [report]:
        for ab in part.ablations:
            comp = ab.agg.comparisons.set_index("method") if len(ab.agg.comparisons) else pd.DataFrame()
            for _, r in ab.rows.iterrows():
                row = {"budget": part.budget, "base": ab.base, **r.to_dict(), "tasks": len(ab.agg.tasks)}
                if r["method"] in comp.index:
                    c = comp.loc[r["method"]]
                    row.update(diff=c["diff"], diff_low=c["diff_low"], diff_high=c["diff_high"])
                    row["p"] = c["welch_p"] if ab.agg.single_task else c["wilcoxon_p"]
                    row["p_holm"] = c["holm_p"]
                rows.append(row)
    return pd.DataFrame(rows)
