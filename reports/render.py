"""Tables as text: the same cells in Markdown (GitHub) and LaTeX (booktabs), plus their captions.

Cells are built as strings first (bold best, underline second, a dagger for a significant
difference), then laid out by pandas: ``DataFrame.to_markdown`` (tabulate) and
``Styler.to_latex`` (jinja2), which handles booktabs rules and index escaping.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import stats
from .tables import ALPHA, Aggregates, method_order, task_keys

DECIMALS = 1  # accuracies are shown in percent with one decimal


@dataclass(frozen=True)
class Style:
    name: str
    best: str
    second: str
    dagger: str
    pm: str


MARKDOWN = Style("md", best="**{}**", second="<u>{}</u>", dagger="†", pm="±")
LATEX = Style("latex", best=r"\textbf{{{}}}", second=r"\underline{{{}}}", dagger=r"$^\dagger$", pm=r"$\pm$")


def pct(x: float, decimals: int = DECIMALS) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{100 * x:.{decimals}f}"


def fmt_params(n: float) -> str:
    if not np.isfinite(n):
        return "–"
    if n >= 1e6:
        return f"{n / 1e6:.2f}M"
    if n >= 1e3:
        return f"{n / 1e3:.1f}K"
    return f"{int(n)}"


def _mark(text: str, mark: str, style: Style) -> str:
    if mark == "best":
        return style.best.format(text)
    if mark == "second":
        return style.second.format(text)
    return text


def task_label(task: str, shots: int | None) -> str:
    return task if shots is None else f"{task} ({shots}-shot)"


def main_table(cells: pd.DataFrame, agg: Aggregates, resources: pd.DataFrame, reference: str, style: Style):
    """Rows: tasks, aggregate rows, parameter rows, W/T/L. Columns: methods (reference first)."""
    methods = list(dict.fromkeys([reference, *cells["method"]]))
    rows: dict[str, dict[str, str]] = {}
    for task, shots in task_keys(cells):
        sub = cells[(cells["task"] == task) & (cells["shots"].isna() if shots is None else cells["shots"] == shots)]
        by_method = sub.set_index("method")
        means = [100 * by_method["mean"].get(m, np.nan) for m in methods]
        marks = stats.mark_best(np.array(means, dtype=float), DECIMALS)
        row = {}
        for m, mark in zip(methods, marks, strict=True):
            if m not in by_method.index:
                row[m] = "–"
                continue
            c = by_method.loc[m]
            text = _mark(f"{pct(c['mean'])} {style.pm} {pct(c['half_width'])}", mark, style)
            if bool(c["significant"]):
                text += style.dagger
            row[m] = text
        rows[task_label(task, shots)] = row
    if len(agg.rows):
        for name, sub in agg.rows.groupby("row", sort=False):
            by_method = sub.set_index("method")
            marks = stats.mark_best(np.array([100 * by_method["estimate"][m] for m in methods]), DECIMALS)
            rows[name] = {
                m: _mark(pct(by_method["estimate"][m]), mark, style)
                + f" [{pct(by_method['low'][m])}, {pct(by_method['high'][m])}]"
                for m, mark in zip(methods, marks, strict=True)
            }
    res = resources.set_index("method")
    rows["Trainable params (head excl.)"] = {m: fmt_params(res["params_trainable"][m]) for m in methods}
    rows["Head params"] = {
        m: fmt_params(res["params_head_min"][m])
        + (
            ""
            if res["params_head_min"][m] == res["params_head_max"][m]
            else f"–{fmt_params(res['params_head_max'][m])}"
        )
        for m in methods
    }
    if len(agg.comparisons):
        comp = agg.comparisons.set_index("method")
        rows[f"W/T/L vs {reference}"] = {
            m: "–" if m == reference else f"{comp['wins'][m]}/{comp['ties'][m]}/{comp['losses'][m]}" for m in methods
        }
    return pd.DataFrame.from_dict(rows, orient="index", columns=methods)


def comparison_table(agg: Aggregates, reference: str, style: Style) -> pd.DataFrame:
    """Per method vs the reference: Δ of the mean over tasks with its bootstrap CI and the across-task tests."""
    if not len(agg.comparisons):
        return pd.DataFrame()
    rows = {}
    rank = {}
    if agg.friedman is not None:
        ordered = [reference, *agg.comparisons["method"]]
        rank = dict(zip(ordered, agg.friedman.avg_ranks, strict=True))
    rows[reference] = {
        f"Δ vs {reference} (pp) [95% CI]": "reference",
        "Wilcoxon p (Holm)": "–",
        "W/T/L": "–",
        "P(A>B)": "–",
        "Avg rank": f"{rank[reference]:.2f}" if rank else "–",
    }
    for _, c in agg.comparisons.iterrows():
        sig = c["holm_p"] < ALPHA and (c["diff_low"] > 0 or c["diff_high"] < 0)
        rows[c["method"]] = {
            f"Δ vs {reference} (pp) [95% CI]": f"{100 * c['diff']:+.2f} [{100 * c['diff_low']:+.2f}, {100 * c['diff_high']:+.2f}]",
            "Wilcoxon p (Holm)": "–"
            if not np.isfinite(c["wilcoxon_p"])
            else f"{c['wilcoxon_p']:.3g} ({c['holm_p']:.3g})" + (style.dagger if sig else ""),
            "W/T/L": f"{c['wins']}/{c['ties']}/{c['losses']}",
            "P(A>B)": f"{c['prob_superiority']:.2f}",
            "Avg rank": f"{rank[c['method']]:.2f}" if rank else "–",
        }
    return pd.DataFrame.from_dict(rows, orient="index")


def few_shot_tables(table: pd.DataFrame, reference: str, style: Style) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(means per shot, differences to the reference per shot), methods as columns."""
    if table.empty:
        return pd.DataFrame(), pd.DataFrame()
    methods = list(dict.fromkeys([reference, *table["method"]]))
    means, diffs = {}, {}
    for shots, sub in table.groupby("shots", sort=True):
        s = sub.set_index("method")
        marks = stats.mark_best(np.array([100 * s["estimate"][m] for m in methods]), DECIMALS)
        label = f"{shots}-shot ({int(s['datasets'].iloc[0])} datasets)"
        means[label] = {
            m: _mark(pct(s["estimate"][m]), mk, style) + f" [{pct(s['low'][m])}, {pct(s['high'][m])}]"
            for m, mk in zip(methods, marks, strict=True)
        }
        diffs[label] = {
            m: "reference"
            if m == reference
            else f"{100 * s['diff'][m]:+.1f} [{100 * s['diff_low'][m]:+.1f}, {100 * s['diff_high'][m]:+.1f}], "
            f"P(A>B) {s['prob_superiority'][m]:.2f}"
            for m in methods
        }
    return (pd.DataFrame.from_dict(means, orient="index"), pd.DataFrame.from_dict(diffs, orient="index"))


def resources_table(resources: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame(
        {
            "Trainable params (head excl.)": resources["params_trainable"].map(fmt_params),
            "Mean acc. (%)": resources["mean_acc"].map(pct),
            "Train img/s": resources["train_img_s"].map(lambda v: "–" if not np.isfinite(v) else f"{v:,.0f}"),
            "Eval img/s": resources["infer_img_s"].map(lambda v: "–" if not np.isfinite(v) else f"{v:,.0f}"),
            "Peak GPU mem (MB)": resources["peak_mem_mb"].map(lambda v: "–" if not np.isfinite(v) else f"{v:,.0f}"),
            "Train time / run (s)": resources["train_s"].map(lambda v: "–" if not np.isfinite(v) else f"{v:,.1f}"),
        }
    )
    util = resources["gpu_util"] if "gpu_util" in resources else pd.Series(dtype=float)
    if util.notna().any():  # runs that sampled their GPU (nvidia-ml-py): mean utilisation beside throughput
        column = util.map(lambda v: "–" if not np.isfinite(v) else f"{v:.0f}")
        out.insert(out.columns.get_loc("Train img/s") + 1, "GPU util. (%)", column.to_numpy())
    out.index = resources["method"]
    out.index.name = None
    return out


def to_markdown(table: pd.DataFrame) -> str:
    return table.to_markdown(tablefmt="github")


def to_latex(table: pd.DataFrame, caption: str, label: str) -> str:
    """A booktabs table; index and header escaped for LaTeX (task names hold underscores)."""
    styler = table.style.format_index(escape="latex", axis=0).format_index(escape="latex", axis=1)
    return styler.to_latex(
        hrules=True,
        column_format="l" + "c" * len(table.columns),
        caption=latex_escape_text(caption),
        label=label,
        position_float="centering",
        position="htbp",
    )


LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}

# Non-ASCII characters the report uses, as macros: a plain pdflatex (T1, no unicode setup) compiles it.
UNICODE_TO_LATEX = {
    "±": r"$\pm$",
    "†": r"$^\dagger$",
    "Δ": r"$\Delta$",
    "χ": r"$\chi$",
    "²": r"$^2$",
    "≥": r"$\geq$",
    "≤": r"$\leq$",
    "×": r"$\times$",
    "·": r"$\cdot$",
    "–": "--",
    "—": "---",
    "’": "'",
}


def latex_escape_text(text: str) -> str:
    """Escape prose for LaTeX: the ASCII characters that break a compile (unicode is handled later)."""
    return "".join(LATEX_SPECIALS.get(ch, ch) for ch in text)


def latex_unicode(text: str) -> str:
    """Replace the report's non-ASCII characters by LaTeX macros, and any other by "?" (a plain
    pdflatex without unicode setup would stop on it; names in tables are ASCII in practice)."""
    return "".join(UNICODE_TO_LATEX.get(ch, ch if ord(ch) < 128 else "?") for ch in text)


def main_caption(n_seeds: int, reference: str, agg: Aggregates, stage: str) -> str:
    split = "test" if stage == "final" else "validation"
    parts = [
        f"Top-1 {split} accuracy (%), mean over {n_seeds} seed{'s' if n_seeds != 1 else ''}; "
        "± is the half-width of the 95 % Student-t confidence interval over seeds.",
        "Bold: best, underlined: second best, at displayed precision (ties share the mark).",
        f"† marks a difference to {reference} that is significant at 0.05 by a Welch t-test over seeds, "
        "after Benjamini–Hochberg correction over all cells of the table.",
    ]
    if len(agg.rows):
        parts.append(
            "Aggregate rows show the estimate and its 95 % two-level paired bootstrap interval "
            f"({len(agg.tasks)} task{'s' if len(agg.tasks) != 1 else ''} resampled within groups, then seeds; "
            f"{10_000:,} draws)."
        )
    parts.append("Parameter counts exclude the classification head, which is listed separately.")
    return " ".join(parts)


def comparison_caption(agg: Aggregates, reference: str, n_seeds: int) -> str:
    parts = [
        f"Each method against {reference} across {len(agg.tasks)} task{'s' if len(agg.tasks) != 1 else ''} "
        f"(per-task means over {n_seeds} seeds).",
        "Δ: difference of the mean over tasks with its 95 % two-level paired bootstrap interval.",
        "Wilcoxon signed-rank test on per-task means (zero differences kept, Pratt), "
        "Holm-adjusted over the methods compared; † where the adjusted p < 0.05 and the Δ interval excludes 0.",
        "W/T/L: tasks won, tied (equal per-task means), lost; P(A>B): probability that a seed of the method "
        "beats a seed of the reference, averaged over tasks.",
    ]
    f = agg.friedman
    if f is not None and np.isfinite(f.chi2):
        parts.append(
            f"Friedman χ² = {f.chi2:.2f} (p = {f.p_chi2:.3g}); Iman–Davenport F = {f.iman_davenport_f:.2f} "
            f"(p = {f.p_f:.3g}); Nemenyi critical difference of average ranks = {f.cd:.2f} at 0.05."
        )
    return " ".join(parts)


def few_shot_caption(n_seeds: int, reference: str) -> str:
    return (
        f"Few-shot top-1 accuracy (%), per shot count the mean over datasets of the mean over {n_seeds} seeds, "
        "with a 95 % bootstrap interval over seeds (datasets fixed). Differences to "
        f"{reference} carry the same bootstrap interval and P(A>B); no p-values are given across so few datasets."
    )


def resources_caption(runs: pd.DataFrame) -> str:
    """The cost table's caption; it says so when the runs' throughput came from different code paths."""
    text = "Medians over runs. Throughput and memory are what each run measured on its own device."
    if "gpu_util" in runs and runs["gpu_util"].notna().any():
        text += (
            " GPU util. is each run's mean over its epochs of its GPU's utilisation (NVML, through MLflow's system "
            "metrics); runs packed on one GPU share it."
        )
    counts = runs["train_step"].value_counts()
    if len(counts) > 1:
        paths = ", ".join(f"{step}: {n} runs" for step, n in counts.sort_index().items())
        text += (
            f" The runs trained through different training-step paths ({paths}; the tag bench.train_step), "
            "so their throughputs compare only within one path; per-run figures are in results.csv."
        )
    return text


def missing_note(missing: list[str]) -> str:
    if not missing:
        return ""
    return "Left out of every average (a method without all seeds on a task): " + "; ".join(missing) + "."


__all__ = [
    "LATEX",
    "MARKDOWN",
    "comparison_table",
    "few_shot_tables",
    "main_table",
    "method_order",
    "resources_caption",
    "resources_table",
    "to_latex",
    "to_markdown",
]
