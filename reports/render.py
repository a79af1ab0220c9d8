"""Tables as text: the same cells in Markdown (GitHub) and LaTeX (booktabs), their captions and notes.

Cells are built as strings first (bold best, underline second, a dagger after a significant
difference), then laid out: ``DataFrame.to_markdown`` (tabulate) for Markdown and
``Styler.to_latex`` (jinja2) for the booktabs ``tabular`` of a LaTeX fragment.

Numbers are typeset for print: a real minus sign (U+2212 in Markdown, ``$-$`` in LaTeX), p-values
below 0.001 as 7.5×10⁻⁷ / ``$7.5\\times10^{-7}$``, ``<`` and ``>`` in math mode in LaTeX (in a
plain OT1 document a text ``<`` prints as ¡). A caption is short (what is shown, the seeds, what ±
means, the test and its correction); the longer explanations are notes printed under the table.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import stats
from .tables import ALPHA, MIN_RANK_TASKS, VTAB_GROUPS, Ablation, Aggregates, task_keys

DECIMALS = 1  # accuracies are shown in percent with one decimal
DIFF_DECIMALS = 2  # differences in percentage points
MINUS = "\u2212"


@dataclass(frozen=True)
class Style:
    name: str
    best: str
    second: str
    dagger: str
    pm: str


MARKDOWN = Style("md", best="**{}**", second="<ins>{}</ins>", dagger="†", pm="±")
LATEX = Style("latex", best=r"\textbf{{{}}}", second=r"\underline{{{}}}", dagger=r"$^\dagger$", pm=r"$\pm$")

# How a LaTeX table fragment handles its width: shrink it to the line when it is wider (the
# default), leave it at its natural width, or set it in a table* that spans both columns of a
# two-column paper (and shrink it to the text width when wider).
LATEX_WIDTHS = ("fit", "natural", "wide")


def pct(x: float, decimals: int = DECIMALS) -> str:
    return "–" if x is None or not np.isfinite(x) else f"{100 * x:.{decimals}f}"


def signed(x: float, decimals: int = DIFF_DECIMALS, scale: float = 100.0) -> str:
    """``+0.41`` / ``−0.41`` (a real minus sign) of ``scale·x``; a value that rounds to zero has no sign."""
    if x is None or not np.isfinite(x):
        return "–"
    text = f"{abs(scale * x):.{decimals}f}"
    if float(text) == 0.0:
        return text
    return ("+" if x > 0 else MINUS) + text


def fmt_p(p: float, style: Style) -> str:
    """p as 0.034 or 0.0012, and below 0.001 as 7.5×10⁻⁷ (Markdown) / $7.5\\times10^{-7}$ (LaTeX)."""
    if p is None or not np.isfinite(p):
        return "–"
    if p >= 1e-3:
        return f"{p:.2g}"
    if p <= 0:
        return "$<10^{-16}$" if style is LATEX else "< 10⁻¹⁶"
    exponent = math.floor(math.log10(p))
    mantissa = p / 10**exponent
    if round(mantissa, 1) >= 10:
        mantissa, exponent = mantissa / 10, exponent + 1
    if style is LATEX:
        return f"${mantissa:.1f}\\times10^{{{exponent}}}$"
    sup = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")
    return f"{mantissa:.1f}×10{str(exponent).translate(sup)}"


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


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


# ---------------------------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------------------------

TEST_SE = "Test SE"


def main_table(cells: pd.DataFrame, resources: pd.DataFrame, reference: str, style: Style, split_se=None):
    """Rows: tasks, then parameter rows. Columns: methods (reference first), then the test-split SE."""
    methods = list(dict.fromkeys([reference, *cells["method"]]))
    se = {}
    if split_se is not None and split_se.get("se", pd.Series(dtype=float)).notna().any():
        se = {(r.task, None if pd.isna(r.shots) else int(r.shots)): r.se for r in split_se.itertuples()}
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
        if se:
            row[TEST_SE] = pct(se.get((task, shots), np.nan), 2)
        rows[task_label(task, shots)] = row
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
    columns = methods + ([TEST_SE] if se else [])
    return pd.DataFrame.from_dict(rows, orient="index", columns=columns).fillna("")


def _interval_cell(est: float, low: float, high: float, mark: str, style: Style) -> str:
    return _mark(pct(est), mark, style) + f" [{pct(low)}, {pct(high)}]"


def aggregate_table(agg: Aggregates, reference: str, style: Style) -> pd.DataFrame:
    """Rows: methods. Columns: each group mean, the mean of group means, the mean of all tasks, the IQM."""
    if not len(agg.rows):
        return pd.DataFrame()
    methods = list(dict.fromkeys([reference, *agg.rows["method"]]))
    cols: dict[str, dict[str, str]] = {}
    for name, sub in agg.rows.groupby("row", sort=False):
        s = sub.set_index("method")
        marks = stats.mark_best(np.array([100 * s["estimate"][m] for m in methods]), DECIMALS)
        cols[name] = {
            m: _interval_cell(s["estimate"][m], s["low"][m], s["high"][m], mk, style)
            for m, mk in zip(methods, marks, strict=True)
        }
    q = agg.iqm.set_index("method")
    marks = stats.mark_best(np.array([100 * q["estimate"][m] for m in methods]), DECIMALS)
    cols["IQM"] = {
        m: _interval_cell(q["estimate"][m], q["low"][m], q["high"][m], mk, style)
        for m, mk in zip(methods, marks, strict=True)
    }
    return pd.DataFrame(cols, index=methods)


def delta_header(agg: Aggregates) -> str:
    if agg.single_task:
        return "Δ (pp) [95% Welch CI]"
    return f"Δ {agg.headline[0].lower() + agg.headline[1:]} (pp) [95% CI]"


def comparison_table(agg: Aggregates, reference: str, style: Style, cells: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per method vs the reference: Δ and its interval first, then P(A>B), then the tests (daggers last)."""
    if not len(agg.comparisons):
        return pd.DataFrame()
    delta = delta_header(agg)
    rows = {}
    if agg.single_task:
        bh = {}
        if cells is not None and len(cells):
            bh = cells.set_index("method")["p_bh"].to_dict()
        rows[reference] = {delta: "reference", "P(A>B)": "–", "Welch p (BH)": "–"}
        for _, c in agg.comparisons.iterrows():
            p_bh = bh.get(c["method"], np.nan)
            sig = np.isfinite(p_bh) and p_bh < ALPHA
            rows[c["method"]] = {
                delta: f"{signed(c['diff'])} [{signed(c['diff_low'])}, {signed(c['diff_high'])}]"
                + (style.dagger if sig else ""),
                "P(A>B)": f"{c['prob_superiority']:.2f}",
                "Welch p (BH)": f"{fmt_p(c['welch_p'], style)} ({fmt_p(p_bh, style)})",
            }
        return pd.DataFrame.from_dict(rows, orient="index")
    rank = {}
    if agg.friedman is not None:
        rank = dict(zip([reference, *agg.comparisons["method"]], agg.friedman.avg_ranks, strict=True))
    ref_row = {delta: "reference", "P(A>B) [95% CI]": "–", "W/T/L": "–", "Wilcoxon p (Holm)": "–"}
    if rank:
        ref_row["Avg rank"] = f"{rank[reference]:.2f}"
    rows[reference] = ref_row
    for _, c in agg.comparisons.iterrows():
        sig = c["holm_p"] < ALPHA and (c["diff_low"] > 0 or c["diff_high"] < 0)
        row = {
            delta: f"{signed(c['diff'])} [{signed(c['diff_low'])}, {signed(c['diff_high'])}]"
            + (style.dagger if sig else ""),
            "P(A>B) [95% CI]": f"{c['prob_superiority']:.2f} [{c['poi_low']:.2f}, {c['poi_high']:.2f}]",
            "W/T/L": f"{c['wins']}/{c['ties']}/{c['losses']}",
            "Wilcoxon p (Holm)": "–"
            if not np.isfinite(c["wilcoxon_p"])
            else f"{fmt_p(c['wilcoxon_p'], style)} ({fmt_p(c['holm_p'], style)})",
        }
        if rank:
            row["Avg rank"] = f"{rank[c['method']]:.2f}"
        rows[c["method"]] = row
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
            m: _interval_cell(s["estimate"][m], s["low"][m], s["high"][m], mk, style)
            for m, mk in zip(methods, marks, strict=True)
        }
        diffs[label] = {
            m: "reference"
            if m == reference
            else f"{signed(s['diff'][m], 1)} [{signed(s['diff_low'][m], 1)}, {signed(s['diff_high'][m], 1)}], "
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
    warm = resources["warmup_s"] if "warmup_s" in resources else pd.Series(dtype=float)
    if warm.notna().any():  # runs that measured their warm-up: where a run's time went
        for name, key in (("Warm-up / run (s)", "warmup_s"), ("Steady train / run (s)", "steady_s")):
            out[name] = resources[key].map(lambda v: "–" if not np.isfinite(v) else f"{v:,.1f}").to_numpy()
    util = resources["gpu_util"] if "gpu_util" in resources else pd.Series(dtype=float)
    if util.notna().any():  # runs that sampled their GPU (nvidia-ml-py): mean utilisation beside throughput
        column = util.map(lambda v: "–" if not np.isfinite(v) else f"{v:.0f}")
        out.insert(out.columns.get_loc("Train img/s") + 1, "GPU util. (%)", column.to_numpy())
    out.index = resources["method"]
    out.index.name = None
    return out


def tuning_effort_table(effort: pd.DataFrame) -> pd.DataFrame:
    def number(v: float, digits: int = 0) -> str:
        return "unrecorded" if not np.isfinite(v) else f"{v:,.{digits}f}"

    def budget(lo: float, hi: float) -> str:
        return number(lo) if not (np.isfinite(lo) and np.isfinite(hi)) or lo == hi else f"{lo:,.0f}–{hi:,.0f}"

    out = pd.DataFrame(
        {
            "Studies": effort["studies"].astype(int).astype(str),
            "Scheduler": effort["scheduler"],
            "Budget / study (trial-epochs)": [
                budget(a, b) for a, b in zip(effort["budget_min"], effort["budget_max"], strict=True)
            ],
            "Trial-epochs used": effort["trial_epochs"].map(number),
            "Training time (s)": effort["train_s"].map(lambda v: number(v, 1)),
        }
    )
    out.index = effort["method"]
    out.index.name = None
    return out


def tuning_effort_caption(suite: str) -> str:
    return (
        "Tuning effort per method: each study (one per task and budget) was given the same budget in trial-epochs; "
        "a pruned trial is charged the epochs it trained, a failed one a full trial. Trial-epochs and training time "
        f"(evaluation excluded) are summed over the method's studies, from each study's parent run in bench/{suite}-tune."
    )


# ---------------------------------------------------------------------------------------------
# Markdown and LaTeX
# ---------------------------------------------------------------------------------------------


def _markdown_cell(value):
    return value.replace("|", r"\|") if isinstance(value, str) else value  # a | in a name would split the row


def to_markdown(table: pd.DataFrame) -> str:
    shown = table.map(_markdown_cell)
    shown.index = shown.index.map(_markdown_cell)
    shown.columns = shown.columns.map(_markdown_cell)
    return shown.to_markdown(tablefmt="github")


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
    "[": "{[}",  # a bracket after \\\\ would open the row end's optional argument
    "]": "{]}",
    "<": r"$<$",  # a text < or > prints as ¡ or ¿ in an OT1 document
    ">": r"$>$",
}

# Non-ASCII characters the report uses, as macros: a plain pdflatex (OT1 or T1, no unicode setup)
# compiles it.
UNICODE_TO_LATEX = {
    "±": r"$\pm$",
    "†": r"$^\dagger$",
    "Δ": r"$\Delta$",
    "χ": r"$\chi$",
    "²": r"$^2$",
    "≥": r"$\geq$",
    "≤": r"$\leq$",
    "≈": r"$\approx$",
    "×": r"$\times$",
    "·": r"$\cdot$",
    "√": r"$\surd$",
    MINUS: r"$-$",
    "–": "--",
    "—": "---",
    "’": "'",
    "š": r"\v{s}",
    "é": r"\'e",
}


def latex_escape_text(text: str) -> str:
    """Escape prose for LaTeX: the ASCII characters that break a compile or misprint (unicode is mapped later)."""
    return "".join(LATEX_SPECIALS.get(ch, ch) for ch in text)


def latex_unicode(text: str) -> str:
    """Replace the report's non-ASCII characters by LaTeX macros, and any other by "?" (a plain
    pdflatex without unicode setup would stop on it; names in tables are ASCII in practice)."""
    text = _SUPERSCRIPT_RUN.sub(lambda m: "$^{" + m.group(0).translate(_FROM_SUPERSCRIPT) + "}$", text)
    return "".join(UNICODE_TO_LATEX.get(ch, ch if ord(ch) < 128 else "?") for ch in text)


# A run of superscript characters (the exponent of 7.5×10⁻⁷ in a note) becomes one math superscript.
_SUPERSCRIPTS = "⁻⁰¹²³⁴⁵⁶⁷⁸⁹"
_SUPERSCRIPT_RUN = re.compile(f"[{_SUPERSCRIPTS}]+")
_FROM_SUPERSCRIPT = str.maketrans(_SUPERSCRIPTS, "-0123456789")


# Splitting wide tables. A table wider than the line is shrunk to fit; below about 7 pt text is
# hard to read, so a table whose estimated natural width needs more shrinking than that is split
# into several tabulars of whole columns (each repeating the row labels) in one float. The
# estimate counts the printed characters of each column at about 5 pt each (10 pt Latin Modern
# digits are 5 pt wide) plus the column gap, against the report's line (landscape A4 with 2 cm
# margins: about 730 pt); a paper's narrower line shrinks each part further.
CHAR_PT = 5.0
COLUMN_GAP_PT = 12.0
LINE_PT = 730.0
MIN_SCALE = 0.7  # 10 pt text at 0.7 is 7 pt


def visible_length(cell: str) -> int:
    """How many characters a LaTeX cell prints: commands, braces, $ and ^ do not count."""
    text = re.sub(r"\\(pm|times|approx|leq|geq|Delta|chi|cdot|surd)", "x", str(cell))
    text = re.sub(r"\\[a-zA-Z]+|[{}$^]", "", text)
    return len(text)


def column_chunks(table: pd.DataFrame, line_pt: float = LINE_PT, min_scale: float = MIN_SCALE) -> list[list]:
    """The table's columns split into consecutive groups, each narrow enough to print at
    ``min_scale`` or larger on a line of ``line_pt`` (a single column wider than that stays alone)."""
    label = max([visible_length(i) for i in table.index] + [0]) * CHAR_PT + COLUMN_GAP_PT
    widths = [
        max([visible_length(c)] + [visible_length(v) for v in table[c]]) * CHAR_PT + COLUMN_GAP_PT
        for c in table.columns
    ]
    budget = line_pt / min_scale
    chunks: list[list] = [[]]
    used = label
    for column, w in zip(table.columns, widths, strict=True):
        if chunks[-1] and used + w > budget:
            chunks.append([])
            used = label
        chunks[-1].append(column)
        used += w
    return chunks


def latex_table(table: pd.DataFrame, caption: str, label: str, width: str = "fit") -> str:
    """A paste-ready LaTeX fragment: one ``table`` (or ``table*``) with a booktabs ``tabular``.

    It needs ``\\usepackage{booktabs}`` (and ``graphicx`` unless ``width="natural"``), which a
    comment on its first line says. ``width``: see ``LATEX_WIDTHS``. With ``fit`` and ``wide``, a
    table too wide to shrink to the line above 7 pt is split into several tabulars of whole columns
    (:func:`column_chunks`). ASCII only.
    """
    if width not in LATEX_WIDTHS:
        raise ValueError(f"width must be one of {', '.join(LATEX_WIDTHS)}, got {width!r}")
    shown = table.copy()
    shown.index = [latex_escape_text(str(i)) for i in shown.index]
    shown.columns = [latex_escape_text(str(c)) for c in shown.columns]
    env = "table*" if width == "wide" else "table"
    line = r"\textwidth" if width == "wide" else r"\linewidth"
    packages = r"\usepackage{booktabs}" + ("" if width == "natural" else r", \usepackage{graphicx}")
    chunks = [list(shown.columns)] if width == "natural" or shown.empty else column_chunks(shown)
    bodies = []
    for columns in chunks:
        part = shown[columns]
        tabular = part.style.to_latex(hrules=True, column_format="l" + "c" * len(part.columns)).strip()
        if width != "natural":  # shrink to the line only when wider than it (graphicx's \width)
            tabular = rf"\resizebox{{\ifdim\width>{line}{line}\else\width\fi}}{{!}}{{%" + "\n" + tabular + "}"
        bodies.append(tabular)
    parts = [
        f"% bench report table ({label}); needs {packages}",
        rf"\begin{{{env}}}[htbp]",
        r"\centering",
        rf"\caption{{{latex_escape_text(caption)}}}",
        rf"\label{{{label}}}",
        "\n\n\\medskip\n".join(bodies),
        rf"\end{{{env}}}",
    ]
    return latex_unicode("\n".join(parts) + "\n")


# ---------------------------------------------------------------------------------------------
# Captions and notes
# ---------------------------------------------------------------------------------------------


def main_caption(n_seeds: int, reference: str, stage: str, has_se: bool) -> str:
    split = "test" if stage == "final" else "validation"
    text = (
        f"Top-1 {split} accuracy (%), mean ± 95 % Student-t half-width over {plural(n_seeds, 'seed')}. "
        f"Bold: best; underlined: second. †: Welch p < {ALPHA} vs {reference}, Benjamini–Hochberg-adjusted "
        "over all cells. Parameters exclude the classification head. "
    )
    if has_se:
        text += (
            f"Results are conditional on one fixed {split} split; {TEST_SE}: binomial standard error (pp) "
            f"of {reference}'s accuracy on it."
        )
    else:
        text += f"Results are conditional on one fixed {split} split (its size was not recorded)."
    return text


def main_notes(split_se: pd.DataFrame, n_seeds: int) -> list[str]:
    notes = [
        "Bold and underline are decided at the displayed precision (ties share the mark). "
        "± is the half-width of the 95 % Student-t interval over seeds: with a handful of seeds a bootstrap "
        "would cover far less than 95 %.",
    ]
    known = split_se.dropna(subset=["se"]) if len(split_se) else split_se
    if len(known):
        lo, hi = 100 * known["se"].min(), 100 * known["se"].max()
        span = f"{lo:.2f}" if f"{lo:.2f}" == f"{hi:.2f}" else f"{lo:.2f}–{hi:.2f}"
        notes.append(
            f"Seeds vary the training, not the test split: every interval here is conditional on the one test set "
            f"of each task. Its own sampling error, the binomial SE √(p(1−p)/n) of the reference's accuracy, is "
            f"{span} pp ({TEST_SE} column), often as large as the spread over seeds."
        )
    else:
        notes.append(
            "Seeds vary the training, not the test split: every interval here is conditional on the one test set "
            "of each task. These runs did not record the test-set size (the eval/examples metric), so its "
            "binomial standard error √(p(1−p)/n) is not shown."
        )
    return notes


def interval_phrase(agg: Aggregates) -> str:
    if agg.resample_tasks:
        return "t over the tasks of each group, tasks as a sample of similar tasks"
    return "Welch–Satterthwaite t over seeds, tasks fixed"


def aggregate_caption(agg: Aggregates, n_seeds: int) -> str:
    return (
        f"Aggregate top-1 accuracy (%) over {plural(len(agg.tasks), 'task')} and {plural(n_seeds, 'seed')}, "
        f"with 95 % intervals ({interval_phrase(agg)}). IQM: interquartile mean over all runs, with a "
        "conservative 95 % interval."
    )


VTAB_TASK_COUNTS = {"natural": 7, "specialized": 4, "structured": 8}


def aggregate_notes(agg: Aggregates) -> list[str]:
    notes = []
    if agg.groups:
        names = ", ".join(g.capitalize() for g in agg.groups)
        notes.append(
            f"Two averages are shown and named: the mean of the {len(agg.groups)} group means ({names}; each group "
            f"weighs equally) and the mean over all {len(agg.tasks)} tasks (each task weighs equally). "
            + " ".join(f"{g.capitalize()}: {', '.join(agg.members[g])}." for g in agg.groups)
        )
        if tuple(sorted(g.lower() for g in agg.groups)) == VTAB_GROUPS:
            counts = {g.lower(): len(agg.members[g]) for g in agg.groups}
            if counts == VTAB_TASK_COUNTS:
                notes.append(
                    "For VTAB-1K, papers in the VPT lineage (VPT, NOAH, FacT, DTL) give the mean of the three group "
                    "means as their headline number; V-PETL Bench gives the mean over the 19 tasks. They differ by "
                    "several points: full fine-tuning in the VPT paper is 68.9 by the first and 65.6 by the second. "
                    "Compare a number only with one of the same kind."
                )
            else:
                short = ", ".join(
                    f"{g} {counts[g]} of {k}" for g, k in VTAB_TASK_COUNTS.items() if counts.get(g, 0) != k
                )
                notes.append(
                    f"Not all 19 VTAB-1K tasks take part ({short}), so neither average compares with published "
                    "VTAB-1K numbers."
                )
    if agg.resample_tasks:
        notes.append(
            "--resample-tasks: each interval treats the tasks of a group as a sample of similar tasks. It is a t "
            "interval on the spread of the per-task means within each group (Welch–Satterthwaite df across "
            "groups); that spread already holds the seed noise. Its target is the mean over such tasks, not over "
            "these."
        )
    else:
        notes.append(
            "Each interval targets the average over these fixed tasks of each task's expected accuracy over seeds: "
            "a t interval on the average of per-task seed means, with variance Σ w²s²/n from the seed variances and "
            "Welch–Satterthwaite degrees of freedom. With one seed, or no spread over seeds anywhere, there is no "
            "interval (–). Simulations with known truth measured its coverage at 94.8–98.3 % for 2–10 seeds, 3–19 "
            "tasks and seed SDs of 0.2–3 pp (see the statistics reference)."
        )
    notes.append(
        "IQM: the mean of the middle 50 % of all runs (exactly 25 % cut at each end; a run at the boundary counts "
        "partly). Its interval bounds the variance by the Efron–Stein inequality (moving one of N runs moves the "
        "IQM by at most 2/N of the move), so it is wider than needed: measured coverage 99–100 %."
    )
    return notes


def comparison_caption(agg: Aggregates, reference: str, n_seeds: int) -> str:
    if agg.single_task:
        return (
            f"Each method against {reference} on its one task, over {plural(n_seeds, 'seed')}: Δ with its 95 % Welch "
            f"t-interval; P(A>B): probability that a seed of the method beats a seed of {reference}; "
            f"Welch p with its Benjamini–Hochberg adjustment. †: adjusted p < {ALPHA}."
        )
    return (
        f"Each method against {reference} over {plural(len(agg.tasks), 'task')} ({plural(n_seeds, 'seed')} each): "
        f"Δ of the {agg.headline[0].lower() + agg.headline[1:]} with its 95 % Welch–Satterthwaite interval; "
        f"P(A>B), averaged over tasks, with its 95 % interval; Wilcoxon signed-rank p on per-task means, "
        f"Holm-adjusted. †: adjusted p < {ALPHA} and the Δ interval excludes 0."
    )


def comparison_notes(agg: Aggregates, reference: str) -> list[str]:
    """The small-N guards and what the rank statistics say, in words (identical in Markdown and LaTeX)."""
    n = len(agg.tasks)
    notes = []
    if agg.single_task:
        notes.append(
            "One task: no aggregate row and no rank statistics. The only interval for a method is its "
            "Student-t interval over seeds, and the only test the Welch t-test on that task; the differences above "
            "are those of the forest plot."
        )
        return notes
    notes.append(
        "W/T/L: tasks won, tied (equal per-task means), lost against the reference. P(A>B): the chance that a run "
        "of the method beats a run of the reference, averaged over tasks; its interval is a Wilson-type score "
        "interval from the largest variance a Mann–Whitney estimate can have (Birnbaum & Klose 1957), so it is "
        "conservative (measured coverage 97–100 %) and never collapses to a point."
    )
    if n < 6:
        floor = 2 / 2**n
        notes.append(
            f"With {plural(n, 'task')} the two-sided signed-rank test cannot go below p = 2/{2**n} = {floor:.3g}, so it "
            "cannot reach p < 0.05 whatever the data; read the intervals, not the p-values."
        )
    f = agg.friedman
    if f is None:
        notes.append(
            f"No Friedman or Iman–Davenport test, average ranks or critical-difference diagram: with fewer than "
            f"{MIN_RANK_TASKS} tasks their p-values rest on large-sample approximations that do not hold (at 3 tasks "
            "the Iman–Davenport p can be an order of magnitude below the exact permutation p), and a rank diagram "
            "would contradict the intervals above."
        )
    elif np.isfinite(f.chi2):
        notes.append(
            f"Friedman χ² = {f.chi2:.2f} (p = {fmt_p(f.p_chi2, MARKDOWN)}); Iman–Davenport F = {f.iman_davenport_f:.2f} "
            f"(p = {fmt_p(f.p_f, MARKDOWN)}); Nemenyi critical difference of average ranks = {f.cd:.2f} at {ALPHA}. "
            "Pairwise claims rest on the Wilcoxon tests, not on the ranks: a mean-rank verdict on two methods "
            "depends on which others are in the pool."
        )
    return notes


def few_shot_caption(n_seeds: int, reference: str) -> str:
    return (
        f"Few-shot top-1 accuracy (%): per shot count, the mean over datasets of the mean over {plural(n_seeds, 'seed')}, "
        "with a 95 % Welch–Satterthwaite t interval over seeds (datasets fixed)."
    )


def few_shot_diff_caption(reference: str) -> str:
    return (
        f"Few-shot differences to {reference} (pp) with the same kind of interval, and P(A>B) averaged over "
        "datasets; no p-values across so few datasets."
    )


def resources_caption(runs: pd.DataFrame | None = None, resources: pd.DataFrame | None = None) -> str:
    n = int(resources["acc_tasks"].iloc[0]) if resources is not None and "acc_tasks" in resources else None
    where = "the tasks every method completed" if n is None else plural(n, "task") + " every method completed"
    text = (
        "Cost per method: medians over runs. Throughput and memory are what each run measured on its own device. "
        f"Mean acc.: the mean over the {where} of each task's mean over seeds, the same tasks for every method."
    )
    if runs is not None and "warmup_s" in runs and runs["warmup_s"].notna().any():
        text += (
            " Warm-up is the time before a run's first steady step (building the model, loading or compiling the "
            "training step, capturing CUDA graphs); steady train is the rest of its training time."
        )
    if runs is not None and "gpu_util" in runs and runs["gpu_util"].notna().any():
        text += (
            " GPU util. is each run's mean over its epochs of its GPU's utilisation (NVML, through MLflow's system "
            "metrics); runs packed on one GPU share it."
        )
    return text


def steady_path(train_step: str) -> str:
    """The training-step path a run's steady epochs took: ``eager, then X from epoch N`` -> X."""
    head, sep, rest = str(train_step).partition(", then ")
    return rest.split(" from epoch")[0] if sep else head


def cost_warnings(runs: pd.DataFrame, ratio: float = 2.0) -> list[str]:
    """Why the cost table's medians may mislead: a method whose training throughput differs more than
    ``ratio``× across tasks, and runs from different or unrecorded training-step paths."""
    out = []
    for method, sub in runs.groupby("method", sort=False):
        per_task = sub.groupby(["task", "shots"], dropna=False)["train_img_s"].median().dropna()
        per_task = per_task[per_task > 0]
        if len(per_task) >= 2 and per_task.max() > ratio * per_task.min():
            slow, fast = per_task.idxmin(), per_task.idxmax()
            out.append(
                f"{method}: training throughput differs {per_task.max() / per_task.min():.1f}× across tasks "
                f"({per_task.min():,.0f} img/s on {task_label(slow[0], None if pd.isna(slow[1]) else int(slow[1]))}, "
                f"{per_task.max():,.0f} on {task_label(fast[0], None if pd.isna(fast[1]) else int(fast[1]))}); "
                "its median hides that, see results.csv."
            )
    # a run that started eagerly while its step compiled ("eager, then step-cudagraphs from epoch 3")
    # trained its steady epochs through the compiled path
    counts = runs["train_step"].map(steady_path).value_counts()
    if len(counts) > 1:
        paths = ", ".join(f"{step}: {plural(int(n), 'run')}" for step, n in counts.sort_index().items())
        out.append(
            f"The runs trained through different training-step paths ({paths}; the tag bench.train_step), "
            "so their throughputs compare only within one path; per-run figures are in results.csv."
        )
    elif len(counts) == 1 and counts.index[0] == "unrecorded":
        out.append(
            "The runs did not record their training-step path (the tag bench.train_step; runs from before it "
            "existed), so whether their throughputs are comparable is unknown."
        )
    return out


def not_reached_note(entries: list[tuple[str, str]], where: str = "this budget") -> str:
    """The methods a budget's table expected and has no runs of, each with the recorded reason."""
    if not entries:
        return ""
    return f"Not reached at {where}: " + "; ".join(f"{m} ({reason.rstrip('.')})" for m, reason in entries) + "."


# ---------------------------------------------------------------------------------------------
# Ablations and budget curves
# ---------------------------------------------------------------------------------------------

PARAMS_COLUMN = "Trainable params (head excl.)"


def ablation_table(ab: Ablation, style: Style) -> pd.DataFrame:
    """Rows: the base, then its variants. Columns: parameters, accuracy with its interval, Δ to the
    base with its interval, and the test (Wilcoxon over tasks, Welch on one task; Holm-adjusted over
    the base's variants either way)."""
    agg = ab.agg
    acc_col = "Mean (%) ± 95% t" if agg.single_task else f"{agg.headline} (%) [95% CI]"
    delta = f"Δ vs {ab.base} (pp) " + ("[95% Welch CI]" if agg.single_task else "[95% CI]")
    test = "Welch p (Holm)" if agg.single_task else "Wilcoxon p (Holm)"
    comp = agg.comparisons.set_index("method") if len(agg.comparisons) else pd.DataFrame()
    marks = stats.mark_best(100 * ab.rows["estimate"].to_numpy(dtype=float), DECIMALS)
    rows = {}
    for (_, r), mark in zip(ab.rows.iterrows(), marks, strict=True):
        m = r["method"]
        if agg.single_task:
            acc = _mark(f"{pct(r['estimate'])} {style.pm} {pct(r['estimate'] - r['low'])}", mark, style)
        else:
            acc = _interval_cell(r["estimate"], r["low"], r["high"], mark, style)
        row = {PARAMS_COLUMN: fmt_params(r["params_trainable"]), acc_col: acc}
        if m == ab.base:
            row.update({delta: "base", test: "–"})
            if not agg.single_task:
                row["W/T/L"] = "–"
        elif agg.single_task:
            c = comp.loc[m]
            row.update(
                {
                    delta: f"{signed(c['diff'])} [{signed(c['diff_low'])}, {signed(c['diff_high'])}]",
                    test: f"{fmt_p(c['welch_p'], style)} ({fmt_p(c['holm_p'], style)})",
                }
            )
        else:
            c = comp.loc[m]
            sig = c["holm_p"] < ALPHA and (c["diff_low"] > 0 or c["diff_high"] < 0)
            row.update(
                {
                    delta: f"{signed(c['diff'])} [{signed(c['diff_low'])}, {signed(c['diff_high'])}]"
                    + (style.dagger if sig else ""),
                    "W/T/L": f"{c['wins']}/{c['ties']}/{c['losses']}",
                    test: "–"
                    if not np.isfinite(c["wilcoxon_p"])
                    else f"{fmt_p(c['wilcoxon_p'], style)} ({fmt_p(c['holm_p'], style)})",
                }
            )
        rows[m] = row
    columns = [PARAMS_COLUMN, acc_col, delta] + ([] if agg.single_task else ["W/T/L"]) + [test]
    return pd.DataFrame.from_dict(rows, orient="index")[columns]


def ablation_caption(ab: Ablation, n_seeds: int) -> str:
    agg = ab.agg
    if agg.single_task:
        return (
            f"Ablation of {ab.base} on {agg.tasks[0]}: each variant against {ab.base}, over {plural(n_seeds, 'seed')}. "
            f"Accuracy: mean ± 95 % Student-t half-width; Δ with its 95 % Welch t-interval and the Welch p, "
            f"Holm-adjusted over the variants of {ab.base}. Parameters exclude the classification head."
        )
    return (
        f"Ablation of {ab.base}: each variant against {ab.base} over {plural(len(agg.tasks), 'task')} "
        f"({plural(n_seeds, 'seed')} each). Accuracy: the {agg.headline[0].lower() + agg.headline[1:]} with its 95 % "
        f"Welch–Satterthwaite t interval (tasks fixed); Δ with its 95 % Welch–Satterthwaite interval; Wilcoxon signed-rank p on per-task means, Holm-adjusted over the variants of {ab.base}. "
        f"†: adjusted p < {ALPHA} and the Δ interval excludes 0. Parameters exclude the classification head."
    )


def ablation_notes(ab: Ablation) -> list[str]:
    n = len(ab.agg.tasks)
    notes = []
    if ab.agg.single_task:
        notes.append(
            "One task: the only interval is the t-interval over seeds and the only test Welch's t-test on that task; "
            "no signed-rank test."
        )
        return notes
    if n < 6:
        notes.append(
            f"With {plural(n, 'task')} the two-sided signed-rank test cannot go below p = 2/{2**n} = {2 / 2**n:.3g}, "
            "so it cannot reach p < 0.05 whatever the data; read the intervals, not the p-values."
        )
    return notes


def budget_text(budget) -> str:
    return "published" if budget == "published" else f"{int(budget):,}"


def budget_curve_table(points: pd.DataFrame, style: Style, not_reached: list[str] = ()) -> pd.DataFrame:
    """Rows: methods (then those with no run at any budget). Columns: budgets. A cell: the headline
    accuracy [95 % interval] and, in parentheses, the trainable parameters the method has there."""
    budgets = list(dict.fromkeys(points["budget"]))
    rows: dict[str, dict[str, str]] = {}
    for m in dict.fromkeys([*points["method"], *not_reached]):
        rows[m] = {}
    for b in budgets:
        sub = points[points["budget"] == b].set_index("method")
        marks = dict(
            zip(sub.index, stats.mark_best(100 * sub["estimate"].to_numpy(dtype=float), DECIMALS), strict=True)
        )
        for m, r in sub.iterrows():
            rows[m][budget_text(b)] = (
                _interval_cell(r["estimate"], r["low"], r["high"], marks[m], style) + f" ({fmt_params(r['params'])})"
            )
    columns = [budget_text(b) for b in budgets]
    return pd.DataFrame.from_dict(rows, orient="index", columns=columns).fillna("not reached")


def budget_curve_caption(interval: str, n_seeds: int) -> str:
    return (
        f"Accuracy (%) per budget (trainable parameters, head excluded): the headline aggregate with {interval}, over "
        f"{plural(n_seeds, 'seed')}; in parentheses the parameters each method has at that budget. Reference methods "
        "(one size) join every budget; not reached: no run at that budget."
    )


def missing_note(missing: list[str]) -> str:
    if not missing:
        return ""
    return (
        "A method without every seed on a task: " + "; ".join(missing) + ". Its runs on that task leave the tables; "
        "the task leaves every across-task number for every method (the aggregate means and group means, the IQM, "
        "P(A>B), the signed-rank and rank tests, and the cost table's mean accuracy), so all methods are averaged "
        "over the same tasks."
    )


__all__ = [
    "LATEX",
    "LATEX_WIDTHS",
    "MARKDOWN",
    "aggregate_table",
    "comparison_table",
    "cost_warnings",
    "few_shot_tables",
    "latex_table",
    "main_table",
    "resources_table",
    "tuning_effort_caption",
    "tuning_effort_table",
    "to_markdown",
]
