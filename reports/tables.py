"""The numbers of a report, as data frames: per-task cells, aggregate rows, comparisons, few-shot.

Everything statistical is delegated to :mod:`reports.stats` (small pure functions with their own
tests); this module only arranges runs into the arrays those functions take, and decides which
statistics the data can carry:

* per task: mean over seeds ± 95 % Student-t half-width; against the reference a Welch t-test
  (difference, its CI, P(A>B)); the per-task markers use Benjamini–Hochberg over every
  (task, method) test of the table;
* across tasks (two or more complete tasks): group means, the mean of group means and the mean of
  all tasks, each with a Welch-Satterthwaite t interval that keeps the tasks fixed (or, only on
  request and from ``MIN_TASKS_RESAMPLED`` tasks, a t interval over tasks within each group), and
  the interval of the difference to the reference; the IQM with its conservative interval; the
  average probability of improvement with its score interval; Wilcoxon signed-rank on per-task
  means with Holm over the methods compared with the reference; Friedman with Iman–Davenport,
  average ranks and the Nemenyi CD from ``MIN_RANK_TASKS`` tasks on;
* one task: no aggregate: the comparison is that task's Welch t-test;
* few-shot: per shot, the mean over datasets with its fixed-dataset t interval and the difference
  to the reference with its interval and P(A>B); no p-values across five datasets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from bench.errors import BenchError

from . import stats
from .runs import ReportRuns, method_base

ALPHA = 0.05
# Below 5 tasks rank statistics mislead: the Friedman/Iman-Davenport p-values rest on asymptotics
# that need many more blocks (at N = 3 the F p-value can be 20 times smaller than the exact
# permutation p), autorank refuses N < 5, and the Nemenyi CD joins methods the per-task tests
# separate.
MIN_RANK_TASKS = 5
# --resample-tasks asks how the result generalises to similar tasks: a t interval on the spread of
# the per-task means within each group, which rests on those means being roughly normal across
# tasks; with fewer than 10 tasks that cannot be checked, and a group needs two tasks to have a
# spread at all.
MIN_TASKS_RESAMPLED = 10
MIN_GROUP_TASKS_RESAMPLED = 2
VTAB_GROUPS = ("natural", "specialized", "structured")  # the literature's order (VPT, NOAH, FacT, DTL)


@dataclass
class Aggregates:
    """Across-task results of one table (only tasks every method completed take part)."""

    tasks: list[str]
    rows: pd.DataFrame  # row, group, method, estimate, low, high, diff, diff_low, diff_high
    comparisons: pd.DataFrame  # method vs reference: diff and CI, P(A>B) and CI, Wilcoxon/Holm p, W/T/L, rank
    friedman: stats.FriedmanResult | None
    iqm: pd.DataFrame = None  # method, estimate, low, high
    headline: str = ""  # the row the comparison's Δ comes from
    resample_tasks: bool = False
    groups: list[str] = None  # group names in table order (empty without groups)
    members: dict = None  # group -> its tasks, in table order

    @property
    def single_task(self) -> bool:
        return len(self.tasks) == 1

    @property
    def ranked(self) -> bool:
        return self.friedman is not None


def method_order(runs: ReportRuns, reference: str) -> list[str]:
    """The reference first, then the others in the order they appear."""
    return [reference] + [m for m in runs.methods if m != reference]


def task_keys(frame: pd.DataFrame) -> list[tuple[str, int | None]]:
    """(task, shots) pairs in a stable order: tasks alphabetically, shots ascending."""
    keys = {(t, None if pd.isna(k) else int(k)) for t, k in zip(frame["task"], frame["shots"], strict=True)}
    return sorted(keys, key=lambda x: (x[0], -1 if x[1] is None else x[1]))


def _cell_runs(frame: pd.DataFrame, task: str, shots: int | None, method: str) -> pd.DataFrame:
    sel = (frame["task"] == task) & (frame["method"] == method)
    sel &= frame["shots"].isna() if shots is None else (frame["shots"] == shots)
    return frame[sel].sort_values("seed")


def task_cells(runs: ReportRuns, reference: str) -> pd.DataFrame:
    """One row per (task, shots, method): seeds, mean, t half-width, and the Welch test vs the reference."""
    frame = runs.frame
    rows = []
    for task, shots in task_keys(frame):
        ref = _cell_runs(frame, task, shots, reference)["acc"].to_numpy()
        for method in method_order(runs, reference):
            sub = _cell_runs(frame, task, shots, method)
            if sub.empty:
                continue
            acc = sub["acc"].to_numpy()
            ci = stats.t_interval(acc)
            row = {
                "task": task,
                "shots": shots,
                "group": sub["group"].iloc[0],
                "method": method,
                "n": len(acc),
                "seeds": ",".join(map(str, sub["seed"])),
                "mean": ci.mean,
                "half_width": ci.half_width,
                "sd": float(np.std(acc, ddof=1)) if len(acc) > 1 else np.nan,
                "params_trainable": float(sub["params_trainable"].median()),
                "params_head": float(sub["params_head"].median()),
                "diff": np.nan,
                "diff_low": np.nan,
                "diff_high": np.nan,
                "p": np.nan,
                "prob_superiority": np.nan,
            }
            if method != reference and len(ref) >= 2 and len(acc) >= 2:
                c = stats.compare_seeds(acc, ref)
                row.update(
                    diff=c.diff, diff_low=c.low, diff_high=c.high, p=c.pvalue, prob_superiority=c.prob_superiority
                )
            rows.append(row)
    cells = pd.DataFrame(rows)
    cells["p_bh"] = stats.benjamini_hochberg(cells["p"].to_numpy()) if len(cells) else []
    cells["significant"] = cells["p_bh"] < ALPHA
    return cells


def seed_cube(runs: ReportRuns, methods: list[str], tasks: list[tuple[str, int | None]]) -> np.ndarray:
    """Accuracies as (methods, tasks, seeds); seeds aligned by seed number across methods (paired)."""
    frame = runs.frame
    seeds = sorted(set(frame["seed"]))
    cube = np.full((len(methods), len(tasks), len(seeds)), np.nan)
    for i, m in enumerate(methods):
        for j, (task, shots) in enumerate(tasks):
            sub = _cell_runs(frame, task, shots, m)
            for seed, acc in zip(sub["seed"], sub["acc"], strict=True):
                cube[i, j, seeds.index(seed)] = acc
    return cube


def complete_tasks(runs: ReportRuns, methods: list[str]) -> list[tuple[str, int | None]]:
    """Tasks on which every method has every seed: the only ones across-task statistics may use."""
    keys = task_keys(runs.frame)
    cube = seed_cube(runs, methods, keys)
    return [k for j, k in enumerate(keys) if not np.isnan(cube[:, j, :]).any()]


def _group_order(groups: list[str]) -> list[str]:
    """Groups in the literature's VTAB order where they are VTAB groups, else as they come."""
    rank = {g: i for i, g in enumerate(VTAB_GROUPS)}
    return sorted(groups, key=lambda g: (rank.get(g.lower(), len(rank)), groups.index(g)))


def aggregates(runs: ReportRuns, reference: str, resample_tasks: bool = False) -> Aggregates:
    methods = method_order(runs, reference)
    tasks = [k for k in complete_tasks(runs, methods) if k[1] is None]
    if not tasks:
        return Aggregates([], pd.DataFrame(), pd.DataFrame(), None, pd.DataFrame(), groups=[], members={})
    cube = seed_cube(runs, methods, tasks)
    names = [t for t, _ in tasks]
    if len(tasks) == 1:
        if resample_tasks:
            _refuse_resampling(1, {})
        return Aggregates(
            names, pd.DataFrame(), _single_task_comparisons(cube, methods), None, pd.DataFrame(), groups=[], members={}
        )

    group_of = runs.frame.drop_duplicates("task").set_index("task")["group"].to_dict()
    groups = np.array([group_of.get(t, "") or "" for t in names])
    named_groups = _group_order([g for g in dict.fromkeys(groups) if g])
    if len(named_groups) <= 1 or not all(groups):
        named_groups = []  # one group (or tasks without one): the mean of all tasks is the only average
    members = {g: [t for t, h in zip(names, groups, strict=True) if h == g] for g in named_groups}
    if resample_tasks:
        _refuse_resampling(len(tasks), members)
    rows = []
    for g in named_groups:  # each group's mean over its own tasks
        label = f"{g.capitalize()} ({int(np.sum(groups == g))} tasks)"
        rows += _summary_rows(label, g, _summary(cube[:, groups == g], None, resample_tasks), methods)
    headline = f"Mean of {len(tasks)} tasks"
    if named_groups:
        headline = f"Mean of {len(named_groups)} group means"
        rows += _summary_rows(headline, "", _summary(cube, groups, resample_tasks), methods)
    rows += _summary_rows(
        f"Mean of {len(tasks)} tasks",
        "" if not named_groups else "all tasks",
        _summary(cube, None, resample_tasks),
        methods,
    )
    rows = pd.DataFrame(rows)

    q = stats.iqm_interval(cube)
    iqm = pd.DataFrame({"method": methods, "estimate": q.estimate, "low": q.low, "high": q.high})

    means = cube.mean(axis=2)  # (methods, tasks)
    head = rows[rows["row"] == headline].set_index("method")
    comp = []
    for i, m in enumerate(methods[1:], start=1):
        w = stats.wilcoxon_signed_rank(means[i], means[0])
        poi = stats.improvement_interval(cube[i], cube[0])
        comp.append(
            {
                "method": m,
                "tasks": len(tasks),
                "diff": head["diff"][m],
                "diff_low": head["diff_low"][m],
                "diff_high": head["diff_high"][m],
                "prob_superiority": float(poi.estimate),
                "poi_low": float(poi.low),
                "poi_high": float(poi.high),
                "wilcoxon_p": w.pvalue,
                "wins": w.wins,
                "ties": w.ties,
                "losses": w.losses,
            }
        )
    comparisons = pd.DataFrame(comp)
    if len(comparisons):
        comparisons["holm_p"] = stats.holm(comparisons["wilcoxon_p"].to_numpy())
    friedman = None
    if len(methods) >= 2 and len(tasks) >= MIN_RANK_TASKS:
        friedman = stats.friedman(means.T, alpha=ALPHA)
        if len(comparisons):
            rank = dict(zip(methods, friedman.avg_ranks, strict=True))
            comparisons["avg_rank"] = [rank[m] for m in comparisons["method"]]
    return Aggregates(names, rows, comparisons, friedman, iqm, headline, resample_tasks, named_groups, members)


def _refuse_resampling(n_tasks: int, members: dict) -> None:
    if n_tasks < MIN_TASKS_RESAMPLED:
        raise BenchError(
            f"--resample-tasks needs at least {MIN_TASKS_RESAMPLED} complete tasks, this report has {n_tasks}: "
            "with so few tasks their spread says little about similar tasks; "
            "drop the option (the default interval keeps the tasks fixed)"
        )
    small = {g: ts for g, ts in members.items() if len(ts) < MIN_GROUP_TASKS_RESAMPLED}
    if small:
        listed = "; ".join(f"{g}: {', '.join(ts)}" for g, ts in small.items())
        raise BenchError(
            f"--resample-tasks needs at least {MIN_GROUP_TASKS_RESAMPLED} complete tasks in every group, and "
            f"{listed} has fewer: a group mean over one task has no spread over tasks to generalise from; "
            "complete the group's tasks or drop the option"
        )


def _single_task_comparisons(cube: np.ndarray, methods: list[str]) -> pd.DataFrame:
    """One task: each method against the reference by the Welch t-test over seeds."""
    rows = []
    for i, m in enumerate(methods[1:], start=1):
        c = stats.compare_seeds(cube[i, 0], cube[0, 0])
        rows.append(
            {
                "method": m,
                "tasks": 1,
                "diff": c.diff,
                "diff_low": c.low,
                "diff_high": c.high,
                "welch_p": c.pvalue,
                "prob_superiority": c.prob_superiority,
            }
        )
    return pd.DataFrame(rows)


def _summary(cube: np.ndarray, groups: np.ndarray | None, resample_tasks: bool) -> stats.AggregateSummary:
    return stats.aggregate_summary(cube, groups, reference_index=0, random_tasks=bool(resample_tasks))


def _summary_rows(name: str, group: str, summary: stats.AggregateSummary, methods: list[str]) -> list[dict]:
    """``group``: the group a row averages, "" for the headline (overall) row, "all" for the mean of
    all tasks when the headline is the mean of group means."""
    out = []
    for i, m in enumerate(methods):
        ref = i == summary.reference_index
        out.append(
            {
                "row": name,
                "group": group,
                "method": m,
                "estimate": float(summary.estimate[i]),
                "low": float(summary.low[i]),
                "high": float(summary.high[i]),
                "diff": np.nan if ref else float(summary.diff[i]),
                "diff_low": np.nan if ref else float(summary.diff_low[i]),
                "diff_high": np.nan if ref else float(summary.diff_high[i]),
            }
        )
    return out


def test_split_errors(runs: ReportRuns, cells: pd.DataFrame, reference: str) -> pd.DataFrame:
    """Per task: test-set size and the binomial standard error of the reference's mean accuracy on it.

    Every interval of the report is conditional on this one test split; this is the sampling error
    of the split itself, which the seeds do not see. NaN where the runs did not record the size.
    """
    rows = []
    for task, shots in task_keys(cells):
        sel = (runs.frame["task"] == task) & (
            runs.frame["shots"].isna() if shots is None else runs.frame["shots"] == shots
        )
        sizes = runs.frame.loc[sel, "n_test"].dropna().unique()
        n = float(sizes[0]) if len(sizes) == 1 else np.nan
        ref = cells[(cells["task"] == task) & (cells["method"] == reference)]
        ref = ref[ref["shots"].isna()] if shots is None else ref[ref["shots"] == shots]
        acc = float(ref["mean"].iloc[0]) if len(ref) else np.nan
        rows.append({"task": task, "shots": shots, "n_test": n, "acc": acc, "se": stats.binomial_se(acc, n)})
    return pd.DataFrame(rows)


def few_shot_table(runs: ReportRuns, reference: str) -> pd.DataFrame:
    """Per shot count: each method's mean over datasets (fixed-dataset t interval) and its difference to the reference."""
    methods = method_order(runs, reference)
    keys = [k for k in complete_tasks(runs, methods) if k[1] is not None]
    rows = []
    for shots in sorted({k[1] for k in keys}):
        tasks = [k for k in keys if k[1] == shots]
        cube = seed_cube(runs, methods, tasks)
        summary = stats.aggregate_summary(cube, None, reference_index=0)
        for i, m in enumerate(methods):
            row = {
                "shots": shots,
                "datasets": len(tasks),
                "method": m,
                "estimate": float(summary.estimate[i]),
                "low": float(summary.low[i]),
                "high": float(summary.high[i]),
                "diff": np.nan,
                "diff_low": np.nan,
                "diff_high": np.nan,
                "prob_superiority": np.nan,
            }
            if i:
                row.update(
                    diff=float(summary.diff[i]),
                    diff_low=float(summary.diff_low[i]),
                    diff_high=float(summary.diff_high[i]),
                    prob_superiority=np.mean(
                        [stats.prob_superiority(cube[i, d], cube[0, d]) for d in range(len(tasks))]
                    ),
                )
            rows.append(row)
    return pd.DataFrame(rows)


def tuning_effort(runs: ReportRuns, reference: str) -> pd.DataFrame:
    """Per method with tuned runs: its studies, their scheduler(s), the budget each study was given
    (trial-epochs; a range if they differ), and the trial-epochs and training seconds the studies
    spent, summed. Only the studies of the (task, budget) cells this report holds."""
    frame = runs.frame[runs.frame["hparams"] == "tuned"]
    cells = {(r.method, r.task, None if pd.isna(r.budget) else int(r.budget)) for r in frame.itertuples()}
    study = runs.tuning
    if study.empty or not cells:
        return pd.DataFrame()
    keep = [
        (m, t, None if pd.isna(b) else int(b)) in cells
        for m, t, b in zip(study["method"], study["task"], study["budget"], strict=True)
    ]
    study = study[keep]
    rows = []
    for m in method_order(runs, reference):
        sub = study[study["method"] == m]
        if sub.empty:
            continue
        rows.append(
            {
                "method": m,
                "studies": len(sub),
                "scheduler": ", ".join(sorted(set(sub["scheduler"]))),
                "budget_min": float(sub["budget_epochs"].min()),
                "budget_max": float(sub["budget_epochs"].max()),
                "trial_epochs": float(sub["trial_epochs"].sum(min_count=len(sub))),
                "train_s": float(sub["train_s"].sum(min_count=len(sub))),
            }
        )
    return pd.DataFrame(rows)


def method_resources(runs: ReportRuns, reference: str) -> pd.DataFrame:
    """Per method: trainable and head parameters, training and eval speed, peak memory and mean GPU
    utilisation (medians over runs), and ``mean_acc``: the mean over the tasks every method completed
    of its per-task seed means (``acc_tasks`` of them), the same numbers the aggregate table averages,
    so a method with an extra or a missing task is not compared on other tasks."""
    methods = method_order(runs, reference)
    keys = complete_tasks(runs, methods)
    task_means = seed_cube(runs, methods, keys).mean(axis=2) if keys else np.empty((len(methods), 0))
    rows = []
    for i, m in enumerate(methods):
        sub = runs.frame[runs.frame["method"] == m]
        rows.append(
            {
                "method": m,
                "params_trainable": float(sub["params_trainable"].median()),
                "params_trainable_min": float(sub["params_trainable"].min()),
                "params_trainable_max": float(sub["params_trainable"].max()),
                "params_head_min": float(sub["params_head"].min()),
                "params_head_max": float(sub["params_head"].max()),
                "train_img_s": float(sub["train_img_s"].median()),
                "infer_img_s": float(sub["infer_img_s"].median()),
                "peak_mem_mb": float(sub["peak_mem_mb"].median()),
                "gpu_util": float(sub["gpu_util"].median()) if "gpu_util" in sub else np.nan,
                "train_s": float(sub["train_s"].median()),
                "warmup_s": float(sub["warmup_s"].median()) if "warmup_s" in sub else np.nan,
                "steady_s": float(sub["steady_s"].median()) if "steady_s" in sub else np.nan,
                "runs": len(sub),
                "mean_acc": float(task_means[i].mean()) if keys else np.nan,
                "acc_tasks": len(keys),
            }
        )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# Ablations: each variant of a method against the method itself
# ---------------------------------------------------------------------------------------------


@dataclass
class Ablation:
    """Variants of one base method against the base, with the statistics the comparison table uses.

    ``agg`` is :func:`aggregates` over the base and its variants alone (the base as reference), so
    the Δ interval is the fixed-task Welch-Satterthwaite interval and the test the Wilcoxon signed-rank on per-task means with Holm over this base's
    variants; with one task, the Welch t-test and interval. ``rows``: method, params_trainable,
    estimate, low, high (the base first).
    """

    base: str
    variants: list[str]
    agg: Aggregates
    rows: pd.DataFrame


def variant_groups(runs: ReportRuns) -> dict[str, list[str]]:
    """{base: [variants]} for every base method of the report that has at least one variant in it."""
    frame = runs.frame
    base_of = dict(zip(frame["method"], frame["method_base"], strict=True)) if "method_base" in frame else {}
    present = set(frame["method"])
    groups: dict[str, list[str]] = {}
    for m in runs.methods:
        tagged = base_of.get(m)
        base = tagged if isinstance(tagged, str) and tagged else method_base(m)
        if base != m and base in present:
            groups.setdefault(base, []).append(m)
    return groups


def ablations(runs: ReportRuns) -> list[Ablation]:
    out = []
    for base, variants in variant_groups(runs).items():
        members = [base, *variants]
        sub = ReportRuns(runs.frame[runs.frame["method"].isin(members)].reset_index(drop=True), runs.suite, runs.stage)
        agg = aggregates(sub, base)
        params = sub.frame.groupby("method")["params_trainable"].median()
        rows = []
        if len(agg.rows):
            head = agg.rows[agg.rows["row"] == agg.headline].set_index("method")
            for m in members:
                rows.append(
                    {"method": m, "params_trainable": float(params[m]), **head.loc[m, ["estimate", "low", "high"]]}
                )
        elif agg.single_task:
            cube = seed_cube(sub, members, [(agg.tasks[0], None)])
            for i, m in enumerate(members):
                ci = stats.t_interval(cube[i, 0])
                rows.append(
                    {
                        "method": m,
                        "params_trainable": float(params[m]),
                        "estimate": ci.mean,
                        "low": ci.low,
                        "high": ci.high,
                    }
                )
        if agg.single_task and len(agg.comparisons):  # several variants: their Welch tests are a family
            agg.comparisons["holm_p"] = stats.holm(agg.comparisons["welch_p"].to_numpy())
        if rows:  # no complete task: nothing to compare on
            out.append(Ablation(base, variants, agg, pd.DataFrame(rows)))
    return out
