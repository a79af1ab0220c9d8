"""The numbers of a report, as data frames: per-task cells, aggregate rows, comparisons, few-shot.

Everything statistical is delegated to :mod:`reports.stats` (small pure functions with their own
tests); this module only arranges runs into the arrays those functions take:

* per task: mean over seeds ± 95 % Student-t half-width; against the reference a Welch t-test
  (difference, its CI, P(A>B)); the per-task markers use Benjamini–Hochberg over every
  (task, method) test of the table;
* across tasks: group means, the mean of group means and the mean of all tasks, each with a
  two-level paired bootstrap CI (tasks within groups, then seeds) and the CI of the difference to
  the reference from the same draws; Wilcoxon signed-rank on per-task means with Holm over the
  methods compared with the reference; Friedman with Iman–Davenport, average ranks, Nemenyi CD;
* few-shot: per shot, the mean over datasets with a seed-bootstrap CI (datasets fixed) and the
  difference to the reference with its CI and P(A>B); no p-values across five datasets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from . import stats
from .runs import ReportRuns

ALPHA = 0.05
N_BOOT = 10_000
BOOT_SEED = 0


@dataclass
class Aggregates:
    """Across-task results of one table (only tasks every method completed take part)."""

    tasks: list[str]
    rows: pd.DataFrame  # row, method, estimate, low, high, diff, diff_low, diff_high
    comparisons: pd.DataFrame  # method vs reference: diff, CI, Wilcoxon p, Holm p, P(A>B), W/T/L, avg rank
    friedman: stats.FriedmanResult | None


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


def aggregates(runs: ReportRuns, reference: str) -> Aggregates:
    methods = method_order(runs, reference)
    tasks = [k for k in complete_tasks(runs, methods) if k[1] is None]
    if not tasks:
        return Aggregates([], pd.DataFrame(), pd.DataFrame(), None)
    cube = seed_cube(runs, methods, tasks)
    group_of = runs.frame.drop_duplicates("task").set_index("task")["group"].to_dict()
    groups = np.array([group_of.get(t, "") or "" for t, _ in tasks])

    rows = []
    named_groups = [g for g in dict.fromkeys(groups) if g]
    if len(named_groups) > 1:  # with one group, its mean is the mean of all tasks
        for g in named_groups:  # each group's mean over its own tasks
            rows += _bootstrap_rows(g, cube[:, groups == g], None, methods)
        rows += _bootstrap_rows("Mean of group means", cube, groups, methods)
    rows += _bootstrap_rows(f"Mean of {len(tasks)} task{'s' if len(tasks) != 1 else ''}", cube, None, methods)

    means = cube.mean(axis=2)  # (methods, tasks)
    comp = []
    for i, m in enumerate(methods[1:], start=1):
        w = stats.wilcoxon_signed_rank(means[i], means[0])
        p_sup = np.mean([stats.prob_superiority(cube[i, j], cube[0, j]) for j in range(len(tasks))])
        comp.append(
            {
                "method": m,
                "tasks": len(tasks),
                "wilcoxon_p": w.pvalue,
                "wins": w.wins,
                "ties": w.ties,
                "losses": w.losses,
                "prob_superiority": p_sup,
            }
        )
    comparisons = pd.DataFrame(comp)
    if len(comparisons):
        comparisons["holm_p"] = stats.holm(comparisons["wilcoxon_p"].to_numpy())
        last = [r for r in rows if r["row"] == rows[-1]["row"]]
        diff = {r["method"]: r for r in last}
        for col in ("diff", "diff_low", "diff_high"):
            comparisons[col] = [diff[m][col] for m in comparisons["method"]]
    friedman = stats.friedman(means.T, alpha=ALPHA) if len(methods) >= 2 and len(tasks) >= 2 else None
    if friedman is not None and len(comparisons):
        rank = dict(zip(methods, friedman.avg_ranks, strict=True))
        comparisons["avg_rank"] = [rank[m] for m in comparisons["method"]]
    return Aggregates([t for t, _ in tasks], pd.DataFrame(rows), comparisons, friedman)


def _bootstrap_rows(name: str, cube: np.ndarray, groups: np.ndarray | None, methods: list[str]) -> list[dict]:
    summary = stats.bootstrap_summary(cube, groups, reference_index=0, n_boot=N_BOOT, seed=BOOT_SEED)
    out = []
    for i, m in enumerate(methods):
        out.append(
            {
                "row": name,
                "method": m,
                "estimate": float(summary.estimate[i]),
                "low": float(summary.low[i]),
                "high": float(summary.high[i]),
                "diff": np.nan if i == 0 else float(summary.diff[i]),
                "diff_low": np.nan if i == 0 else float(summary.diff_low[i]),
                "diff_high": np.nan if i == 0 else float(summary.diff_high[i]),
            }
        )
    return out


def few_shot_table(runs: ReportRuns, reference: str) -> pd.DataFrame:
    """Per shot count: each method's mean over datasets (seed-bootstrap CI) and its difference to the reference."""
    methods = method_order(runs, reference)
    keys = [k for k in complete_tasks(runs, methods) if k[1] is not None]
    rows = []
    for shots in sorted({k[1] for k in keys}):
        tasks = [k for k in keys if k[1] == shots]
        cube = seed_cube(runs, methods, tasks)
        summary = stats.bootstrap_summary(
            cube, None, reference_index=0, n_boot=N_BOOT, seed=BOOT_SEED, resample_datasets=False
        )
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
                d = stats.few_shot_difference(cube[i], cube[0], n_boot=N_BOOT, seed=BOOT_SEED)
                row.update(diff=d.diff, diff_low=d.low, diff_high=d.high, prob_superiority=d.prob_superiority)
            rows.append(row)
    return pd.DataFrame(rows)


def method_resources(runs: ReportRuns, reference: str) -> pd.DataFrame:
    """Per method: trainable and head parameters, training and eval speed, peak memory and mean GPU
    utilisation (medians over runs)."""
    rows = []
    for m in method_order(runs, reference):
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
                "runs": len(sub),
                "mean_acc": float(sub["acc"].mean()),
            }
        )
    return pd.DataFrame(rows)
