"""The runs a report is built from: finished runs read from MLflow, de-duplicated and checked.

A table may only hold runs that are comparable. :func:`load_runs` therefore refuses, with a
message naming the culprits, to mix presets (protocol: epochs, batch size, image size,
augmentation), backbones, checkpoints, budgets or hyperparameter sources, and refuses a method
that holds two configurations of the same (task, seed). What it cannot refuse (a method missing
some seeds on a task) it reports in :attr:`ReportRuns.missing`; the tables never average over an
incomplete set silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from bench import schema
from bench.errors import BenchError
from bench.sources import REPORT_SOURCES, normalize_source, run_sources

# Protocol-defining settings: runs that differ in any of these are not one comparison. Learning
# rate, weight decay and drop-path are left out on purpose: tuning sets them per method.
PROTOCOL_PARAMS = ("hp.epochs", "hp.img_size", "hp.augmentation", "hp.interpolation")

COLUMNS = [
    "run_id",
    "run_key",
    "suite",
    "task",
    "group",
    "method",
    "method_base",
    "seed",
    "shots",
    "split_seed",
    "stage",
    "preset",
    "protocol",
    "batch_size",
    "budget",
    "backbone",
    "checkpoint",
    "weights_label",
    "hparams",
    "hparams_sources",
    "acc",
    "n_test",
    "params_trainable",
    "params_head",
    "train_img_s",
    "infer_img_s",
    "peak_mem_mb",
    "gpu_util",
    "train_s",
    "warmup_s",
    "steady_s",
    "train_step",
    "git_sha",
    "end_time",
]


# One row per tuning study: the effort it was given and spent (its parent run's tune/* metrics).
TUNING_COLUMNS = [
    "study",
    "method",
    "task",
    "budget",
    "scheduler",
    "budget_epochs",
    "trial_epochs",
    "train_s",
    "trials",
]


@dataclass
class ReportRuns:
    """Comparable finished runs, one row per run key, plus what is missing for a complete table."""

    frame: pd.DataFrame
    suite: str
    stage: str
    missing: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # incomplete (method, task[, shots]) cells left out
    # Sizeable methods of the selection before a budget was picked: the methods each budget's table expects.
    expected: list[str] = field(default_factory=list)
    # What sweep parents recorded as not fittable: {"method", "budget", "reason"} (schema.UNREACHABLE).
    unreachable: list[dict] = field(default_factory=list)
    selection: dict = field(default_factory=dict)  # the select_runs arguments, to re-select one budget
    # The tuning studies the tuned runs took their settings from, one row each (:func:`tuning_effort`).
    tuning: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=TUNING_COLUMNS))

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(self.frame["method"]))

    @property
    def few_shot(self) -> bool:
        return bool(self.frame["shots"].notna().any())

    @property
    def budgets(self) -> list[int | str]:
        """The budgets of the sizeable methods' runs, ascending, then "published" (their own sizes)."""
        return budgets_of(self.frame)

    def at_budget(self, budget: int | str) -> ReportRuns:
        """The runs of one budget's table (reference methods join every budget), selected and checked."""
        selection = {**self.selection, "budget": budget}
        part = select_runs(self.frame, suite=self.suite, stage=self.stage, **selection)
        part.expected = self.expected
        part.unreachable = self.unreachable
        part.tuning = self.tuning
        return part

    def not_reached(self, budget: int | str | None = None) -> list[tuple[str, str]]:
        """(method, reason) for each method this table expects that has no run at ``budget``.

        The reason is what a sweep parent recorded (``bench.unreachable``) for that method and
        budget, the newest first; without one, "no runs at this budget".
        """
        present = set(self.frame["method"])
        wanted = self.selection.get("methods")
        recorded = {}
        for entry in self.unreachable:
            if budget is not None and budget != "published" and entry["budget"] == budget:
                recorded.setdefault(entry["method"], entry["reason"])
        names = list(dict.fromkeys([*self.expected, *recorded]))
        out = []
        for name in names:
            if name in present or (wanted and name not in wanted):
                continue
            out.append((name, recorded.get(name, "no runs at this budget")))
        return out


def _int_or_none(value: str | None) -> int | None:
    if value in (None, "", "none"):
        return None
    return int(value)


def runs_frame(records: list, stage: str) -> pd.DataFrame:
    """One row per FINISHED MLflow run of ``stage`` (all keys, duplicates included)."""
    metric = schema.TEST_ACC if stage == "final" else schema.VAL_ACC
    rows = []
    for r in records:
        if r.info.status != "FINISHED":
            continue
        t, m, p = r.data.tags, r.data.metrics, r.data.params
        if t.get(schema.STAGE) != stage or metric not in m:
            continue
        rows.append(
            {
                "run_id": r.info.run_id,
                "run_key": t.get(schema.RUN_KEY),
                "suite": t.get(schema.SUITE),
                "task": t.get(schema.TASK),
                "group": t.get(schema.GROUP, ""),
                "method": t.get(schema.METHOD),
                "method_base": t.get(schema.METHOD_BASE) or method_base(t.get(schema.METHOD) or ""),
                "seed": int(t.get(schema.SEED, -1)),
                "shots": _int_or_none(t.get(schema.SHOTS)),
                "split_seed": _int_or_none(t.get(schema.SPLIT_SEED)),
                "stage": stage,
                "preset": t.get(schema.PRESET),
                "protocol": ", ".join(f"{k[3:]}={p.get(k, '?')}" for k in PROTOCOL_PARAMS),
                "batch_size": p.get("hp.batch_size", "?"),
                "budget": _int_or_none(t.get(schema.BUDGET)),
                "backbone": t.get(schema.BACKBONE),
                "checkpoint": t.get(schema.CHECKPOINT),
                "weights_label": t.get(schema.WEIGHTS_LABEL, ""),
                "hparams": _hparams_source(t),
                "hparams_sources": ",".join(run_sources(t)),
                "acc": float(m[metric]),
                "n_test": m.get(schema.EVAL_EXAMPLES, np.nan),  # runs older than the metric: unknown
                "params_trainable": m.get(schema.PARAMS_TRAINABLE, np.nan),
                "params_head": m.get(schema.PARAMS_HEAD, np.nan),
                # steady state (first epoch, with compilation, left out) where the run logged it
                "train_img_s": m.get(schema.TRAIN_IMG_S_STEADY, m.get(schema.TRAIN_IMG_S, np.nan)),
                "infer_img_s": m.get(schema.INFER_IMG_S, np.nan),
                "peak_mem_mb": m.get(schema.PEAK_MEMORY_MB, np.nan),
                "gpu_util": m.get(schema.GPU_UTILIZATION_MEAN, np.nan),  # runs on a GPU with nvidia-ml-py
                "train_s": m.get(schema.TRAIN_SECONDS, np.nan),
                "warmup_s": m.get(schema.WARMUP_SECONDS, np.nan),  # runs older than the metric: unknown
                "steady_s": m.get(schema.STEADY_SECONDS, np.nan),
                # how the cost figures were produced (runs older than these tags: "unrecorded")
                "train_step": t.get(schema.TRAIN_STEP, "unrecorded"),
                "git_sha": t.get(schema.GIT_SHA, "unrecorded"),
                "end_time": r.info.end_time or 0,
            }
        )
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["shots"] = frame["shots"].astype("Int64")
    frame["split_seed"] = frame["split_seed"].astype("Int64")
    frame["budget"] = frame["budget"].astype("Int64")
    return frame


def method_base(label: str) -> str:
    """The method a label varies: ``karst`` for ``karst[rescale=none]``; a plain name or a
    composition (``karst+bitfit``) is its own base."""
    if "+" in label:
        return label
    return label.split("[", 1)[0]


def budget_adjustable(label: str) -> bool:
    """Whether a method (variant, or composition of methods) is fitted to budgets; reference
    methods such as linear and full have one size and serve every budget."""
    import methods

    for part in label.split("+"):
        try:
            if bool(methods.get_method(method_base(part)).budget_adjustable):
                return True
        except BenchError:  # a plugin that is no longer installed: treat it like the sizeable methods
            return True
    return False


def budgets_of(frame: pd.DataFrame) -> list[int | str]:
    """The budgets of the sizeable methods' runs, ascending, then "published" (their own sizes)."""
    sizeable = frame["method"].map(budget_adjustable).astype(bool)
    fitted = frame.loc[sizeable, "budget"]
    budgets: list[int | str] = sorted({int(b) for b in fitted.dropna()})
    if fitted.isna().any():
        budgets.append("published")
    return budgets


def budget_label(budget: int | str | None) -> str:
    if budget is None or budget == "published":
        return "published sizes"
    return f"budget {int(budget):,}"


def _refuse_mixed(frame: pd.DataFrame, column: str, what: str, fix: str) -> None:
    values = frame.groupby(column, dropna=False)["method"].agg(lambda s: ", ".join(sorted(set(s))))
    if len(values) > 1:
        detail = "; ".join(f"{v!s} ({ms})" for v, ms in values.items())
        raise BenchError(f"the runs mix {len(values)} {what}: {detail}. One table needs one; {fix}")


def _protocol_fix(frame: pd.DataFrame, suite: str, stage: str) -> str:
    """How to get one protocol: report the methods of one protocol alone with ``--methods``, or
    re-run the others at the protocol most methods have (``--epochs`` where only epochs differ)."""
    groups = frame.groupby("protocol")["method"].agg(lambda s: sorted(set(s)))
    if len(groups) < 2:
        return ""
    by_method = frame.groupby("method")["protocol"].nunique()
    alone = [ms for ms in groups if all(by_method[m] == 1 for m in ms)]
    hints = []
    if len(alone) == len(groups):  # each method ran under one protocol: --methods separates them
        options = " or ".join(f"--methods {','.join(ms)}" for ms in alone)
        hints.append(f"report one protocol with {options}")
    majority = max(groups.index, key=lambda p: (len(groups[p]), p))
    others = sorted({m for p, ms in groups.items() if p != majority for m in ms})
    # protocols read "epochs=20, img_size=32, …": do they differ in the epochs alone?
    rest = {p.split(", ", 1)[1] if ", " in p else "" for p in groups.index}
    epochs = majority.split(", ", 1)[0].removeprefix("epochs=")
    stage_opt = "" if stage == "final" else f" --stage {stage}"
    rerun = f"`bench run --suite {suite}{stage_opt} --methods {','.join(others)}"
    rerun += f" --epochs {epochs}`" if len(rest) == 1 and epochs != "?" else " …` with the others' settings"
    hints.append(f"re-run {', '.join(others)} like the rest: {rerun}")
    return "; or ".join(hints)


def select_runs(
    frame: pd.DataFrame,
    *,
    suite: str,
    stage: str,
    methods: list[str] | None = None,
    budget: int | str | None = None,  # an int, "published", or None (refuse a mix)
    hparams: str | None = None,
    complete_only: bool = True,
    mix_hparams: bool = False,
) -> ReportRuns:
    """Filter, de-duplicate by run key (newest wins), check comparability, find missing runs.

    ``hparams`` selects the runs that serve one source (a run reused for a second source serves
    both); without it, the one source every run serves is used. Runs of different sources are
    ranked together only with ``mix_hparams``, each method with its own source.
    """
    if frame.empty:
        raise BenchError(
            f"no finished {stage} runs of suite {suite!r} in this tracking store; run "
            f"`bench run --suite {suite} …` first or pass the store with --tracking-uri"
        )
    if methods:
        unknown = sorted(set(methods) - set(frame["method"]))
        if unknown:
            raise BenchError(
                f"--methods names {', '.join(unknown)} but the store has no finished {stage} runs of "
                f"{'it' if len(unknown) == 1 else 'them'}; it has {', '.join(sorted(set(frame['method'])))}"
            )
        frame = frame[frame["method"].isin(methods)]
    frame = _select_source(frame, hparams)
    sizeable = frame["method"].map(budget_adjustable).astype(bool)
    expected = list(dict.fromkeys(frame.loc[sizeable, "method"]))
    if budget == "published":  # the methods' own published sizes, no --budget fitting
        frame = frame[~sizeable | frame["budget"].isna()]
    elif budget is not None:
        # Reference methods (linear, full) have one size and serve every budget's table.
        frame = frame[~sizeable | (frame["budget"] == budget)]
        if not (frame["budget"] == budget).any():
            raise BenchError(f"no finished runs at --budget {budget}; `bench runs --suite {suite}` lists what exists")
    frame = frame.sort_values("end_time").drop_duplicates("run_key", keep="last")
    _refuse_mixed(frame, "preset", "presets", "select one with a separate --tracking-uri or re-run")
    _refuse_mixed(
        frame,
        "protocol",
        "protocols (epochs, image size, augmentation, interpolation)",
        _protocol_fix(frame, suite, stage),
    )
    _refuse_mixed(frame, "backbone", "backbones", "report each backbone from its own store")
    _refuse_mixed(frame, "checkpoint", "checkpoints", "report each checkpoint from its own store")
    _refuse_mixed_sources(frame, mix_hparams)

    # The batch size may follow the task (few-shot: min(64, list size)) but not the method, unless
    # the method's own recipe sets it (--hparams paper).
    shared = frame[frame["hparams"] != "paper"]
    batch = shared.groupby(["task", "shots"], dropna=False)["batch_size"].nunique()
    if (batch > 1).any():
        task, shots = batch[batch > 1].index[0]
        sizes = shared[
            (shared["task"] == task) & (shared["shots"].isna() if pd.isna(shots) else shared["shots"] == shots)
        ]
        detail = "; ".join(f"{b} ({', '.join(sorted(set(g['method'])))})" for b, g in sizes.groupby("batch_size"))
        raise BenchError(
            f"the runs on {task} use different batch sizes: {detail}. One table needs one; re-run one of them"
        )

    cell = ["method", "budget", "task", "shots", "split_seed", "seed"]
    dup = frame.groupby(cell, dropna=False)["run_key"].nunique()
    dup = dup[dup > 1]
    if not dup.empty:
        method, _, task, shots, _, seed = dup.index[0]
        where = f"{task}" + (f" k={shots}" if not pd.isna(shots) else "")
        raise BenchError(
            f"method {method!r} has {dup.iloc[0]} different configurations on {where} seed {seed} "
            "(different --set values or method configs); keep one per store or pass --budget/--hparams to select"
        )

    selection = {"methods": methods, "hparams": hparams, "complete_only": complete_only, "mix_hparams": mix_hparams}
    if budget is None and len(budgets_of(frame)) > 1:
        # Several budgets: each budget's table selects and checks its own runs (ReportRuns.at_budget).
        runs = ReportRuns(frame.reset_index(drop=True), suite, stage, expected=expected, selection=selection)
        for b in runs.budgets:
            part = runs.at_budget(b)
            runs.missing += [f"{line} ({budget_label(b)})" for line in part.missing]
            runs.dropped += [f"{line} ({budget_label(b)})" for line in part.dropped]
        return runs
    # A run that finished without an accuracy (NaN) counts as missing, named, never averaged away.
    unscored = frame["acc"].isna()
    nan_runs = set(zip(frame.loc[unscored, "method"], frame.loc[unscored, "task"],
                       frame.loc[unscored, "shots"].fillna(-1), frame.loc[unscored, "seed"], strict=True))  # fmt: skip
    frame = frame[~unscored]
    if frame.empty:
        raise BenchError(f"every finished {stage} run of suite {suite!r} has a NaN accuracy; nothing to report")
    missing, dropped = _missing(frame, nan_runs)
    if complete_only and dropped:
        keys = frame.set_index(["method", "task", "shots"]).index
        bad = pd.MultiIndex.from_tuples([d[0] for d in dropped], names=["method", "task", "shots"])
        kept = frame[~keys.isin(bad)]
        if kept.empty:
            ran = "; ".join(
                f"{m} ran seed {', '.join(map(str, sorted(set(g['seed']))))}"
                for m, g in frame.groupby("method", sort=False)
            )
            raise BenchError(
                f"no task has every method at every seed ({ran}); run the same seeds for every method "
                "(--seeds) or pick methods that share them with --methods"
            )
        frame = kept
    return ReportRuns(
        frame.reset_index(drop=True),
        suite,
        stage,
        missing=missing,
        dropped=[d[1] for d in dropped],
        expected=expected,
        selection={**selection, "budget": budget},
    )


def _missing(frame: pd.DataFrame, nan_runs: set = frozenset()) -> tuple[list[str], list[tuple[tuple, str]]]:
    """Runs absent for a full method × task (× shots) × seed grid, and the cells they leave incomplete.
    ``nan_runs``: (method, task, shots or -1, seed) of runs left out for a NaN accuracy, named as such."""
    seeds = sorted(set(frame["seed"]) | {r[3] for r in nan_runs})
    tasks = frame[["task", "shots"]].drop_duplicates().itertuples(index=False)
    tasks = sorted(tasks, key=lambda t: (t.task, -1 if pd.isna(t.shots) else int(t.shots)))
    have = set(zip(frame["method"], frame["task"], frame["shots"].fillna(-1), frame["seed"], strict=True))
    missing, dropped = [], []
    for method in dict.fromkeys(frame["method"]):
        for t in tasks:
            shots = -1 if pd.isna(t.shots) else int(t.shots)
            absent = [s for s in seeds if (method, t.task, shots, s) not in have]
            if absent:
                where = t.task + (f" k={shots}" if shots >= 0 else "")
                nan = [s for s in absent if (method, t.task, shots, s) in nan_runs]
                gone = [s for s in absent if s not in nan]
                why = [f"seed {', '.join(map(str, gone))} missing"] if gone else []
                why += [f"seed {', '.join(map(str, nan))} has a NaN accuracy"] if nan else []
                missing.append(f"{method} on {where}: {'; '.join(why)}")
                dropped.append(((method, t.task, t.shots), f"{method} on {where}"))
    return missing, dropped


def load_runs(tracker, suite: str, stage: str = "final", **selection) -> ReportRuns:
    """Finished runs of ``suite`` from ``tracker`` (a :class:`bench.tracking.Tracker`), selected and checked."""
    from bench.tracking import experiment_name

    records = tracker.search(experiment_name(suite), extra_filter="attributes.status = 'FINISHED'")
    runs = select_runs(runs_frame(records, stage), suite=suite, stage=stage, **selection)
    runs.unreachable = unreachable_cells(tracker.search(experiment_name(suite), kind=schema.KIND_SWEEP))
    selected = set(runs.frame["run_id"])
    studies = {
        r.data.tags[schema.STUDY]
        for r in records
        if r.info.run_id in selected and schema.STUDY in r.data.tags and r.data.tags.get(schema.HPARAMS) == "tuned"
    }
    if studies:
        parents = tracker.search(experiment_name(suite, tune=True), kind=schema.KIND_SWEEP)
        runs.tuning = tuning_effort(parents, studies)
    return runs


def tuning_effort(parents: list, studies: set[str]) -> pd.DataFrame:
    """One row per study in ``studies``, from its parent run in the tuning experiment: the effort
    it was given and spent. A study whose parent predates these metrics has NaN there."""
    rows, seen = [], set()
    for r in sorted(parents, key=lambda r: -(r.info.start_time or 0)):
        t, m, p = r.data.tags, r.data.metrics, r.data.params
        study = t.get(schema.STUDY)
        if study not in studies or study in seen:
            continue
        seen.add(study)
        rows.append(
            {
                "study": study,
                "method": t.get(schema.METHOD),
                "task": t.get(schema.TASK),
                "budget": _int_or_none(t.get(schema.BUDGET)),
                "scheduler": p.get("scheduler", "unrecorded"),
                "budget_epochs": m.get(schema.TUNE_BUDGET_EPOCHS, np.nan),
                "trial_epochs": m.get(schema.TUNE_TRIAL_EPOCHS, np.nan),
                "train_s": m.get(schema.TUNE_TRAIN_SECONDS, np.nan),
                "trials": m.get(schema.TUNE_TRIALS, np.nan),
            }
        )
    frame = pd.DataFrame(rows, columns=TUNING_COLUMNS)
    frame["budget"] = frame["budget"].astype("Int64")
    return frame


def unreachable_cells(parents: list) -> list[dict]:
    """The (method, budget) cells sweep parents recorded as not fittable (tag ``bench.unreachable``,
    a JSON list of {"method", "budget", "reason"}), newest parent first; unreadable entries are skipped."""
    import json

    out = []
    for r in sorted(parents, key=lambda r: -(r.info.start_time or 0)):
        text = r.data.tags.get(schema.UNREACHABLE)
        if not text:
            continue
        try:
            entries = json.loads(text)
        except ValueError:
            continue
        for e in entries if isinstance(entries, list) else []:
            if isinstance(e, dict) and "method" in e and "budget" in e:
                try:
                    cell = {"method": str(e["method"]), "budget": int(e["budget"]), "reason": str(e.get("reason", ""))}
                except (TypeError, ValueError):
                    continue
                cell["reason"] = cell["reason"] or "recorded as not reachable, no reason given"
                out.append(cell)
    return out


def runs_from_results_csv(path, suite: str, stage: str = "final", **selection) -> ReportRuns:
    """The runs of an earlier report's ``results.csv`` (one row per run), selected and checked as
    :func:`load_runs` does: a report can be rebuilt without the MLflow store it came from.

    Columns that older reports did not write (``weights_label``, ``n_test``) count as unrecorded.
    """
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise BenchError(f"--results-csv {path} does not exist; pass the results.csv of an earlier `bench report`")
    frame = pd.read_csv(path, keep_default_na=False, na_values=[""])
    needed = {"run_key", "suite", "task", "method", "seed", "acc", "stage"}
    if not needed <= set(frame.columns):
        raise BenchError(
            f"--results-csv {path} lacks the columns {', '.join(sorted(needed - set(frame.columns)))}; "
            "pass the results.csv that `bench report` wrote"
        )
    frame = frame[(frame["suite"] == suite) & (frame["stage"] == stage)].copy()
    defaults = {
        "weights_label": "",
        "n_test": np.nan,
        "warmup_s": np.nan,
        "steady_s": np.nan,
        "end_time": 0,
        "train_step": "unrecorded",
        "git_sha": "unrecorded",
    }
    # sources as runs record them now: reports written before them name one source, "published" for the preset
    frame["hparams"] = (
        frame["hparams"].fillna("preset").astype(str).map(normalize_source) if "hparams" in frame else "preset"
    )
    if "hparams_sources" not in frame.columns:
        frame["hparams_sources"] = frame["hparams"].str.split(":").str[0]
    for column in COLUMNS:
        if column not in frame.columns:
            frame[column] = defaults.get(column, np.nan)
    frame = frame[COLUMNS]
    for column in ("group", "weights_label"):
        frame[column] = frame[column].fillna("").astype(str)
    derived = frame["method"].astype(str).map(method_base)
    frame["method_base"] = frame["method_base"].where(frame["method_base"].notna(), derived).astype(str)
    for column in ("shots", "split_seed", "budget"):
        frame[column] = pd.array(frame[column], dtype="Float64").astype("Int64")
    frame["seed"] = frame["seed"].astype(int)
    return select_runs(frame.reset_index(drop=True), suite=suite, stage=stage, **selection)


def _select_source(frame: pd.DataFrame, hparams: str | None) -> pd.DataFrame:
    """The runs of source ``hparams``, each row's ``hparams`` set to it; without a selection, the one
    source every run serves where there is one (a ``tuned`` run reused from ``preset`` serves both)."""
    if frame.empty:
        return frame
    frame = frame.copy()
    served = frame["hparams_sources"].fillna("").astype(str).str.split(",")
    if hparams is not None:
        hparams = normalize_source(hparams)
        if hparams == "override":  # runs with any --set preset.…; distinct overrides are refused as a mix
            keep = frame["hparams"].astype(str).str.startswith("override")
        else:
            keep = served.map(lambda names: hparams in names)
            frame.loc[keep, "hparams"] = hparams
        frame = frame[keep]
        if frame.empty:
            raise BenchError(f"no finished runs with --hparams {hparams}")
        return frame
    if frame["hparams"].nunique() > 1:
        common = set.intersection(*(set(names) for names in served))
        for name in REPORT_SOURCES[:3]:  # preset, paper, tuned: override runs never serve another source
            if name in common:
                frame["hparams"] = name
                break
    return frame


def _refuse_mixed_sources(frame: pd.DataFrame, mix: bool) -> None:
    """Refuse to rank rows trained with different hyperparameter sources, unless asked; even then a
    method holds one source (two would be two rows of one name)."""
    if frame.empty or frame["hparams"].nunique() < 2:
        return
    if not mix:
        values = frame.groupby("hparams")["method"].agg(lambda s: ", ".join(sorted(set(s))))
        detail = "; ".join(f"{v} ({ms})" for v, ms in values.items())
        raise BenchError(
            f"the runs mix {len(values)} hyperparameter sources: {detail}. A ranking of methods trained with "
            "different setups measures the setups too; pass --hparams preset, paper, tuned or override to report "
            "one, or --mix-hparams to rank them anyway (each method's source is stated)"
        )
    per_method = frame.groupby("method")["hparams"].nunique()
    if (per_method > 1).any():
        method = per_method[per_method > 1].index[0]
        names = ", ".join(sorted(set(frame.loc[frame["method"] == method, "hparams"])))
        raise BenchError(
            f"method {method!r} has runs under several hyperparameter sources ({names}); a table holds one per "
            "method: pass --methods without it, or --hparams to pick one source"
        )


def sources_text(frame: pd.DataFrame) -> str:
    """The report's "hyperparameters" line: the one source, or each source with its methods."""
    sources = list(dict.fromkeys(frame["hparams"]))
    if len(sources) == 1:
        return _describe_source(sources[0])
    by = frame.groupby("hparams", sort=False)["method"].agg(lambda s: ", ".join(dict.fromkeys(s)))
    return "mixed (--mix-hparams): " + "; ".join(f"{_describe_source(k)}: {v}" for k, v in by.items())


def _describe_source(source: str) -> str:
    names = {
        "preset": "preset (the suite's shared preset)",
        "paper": "paper (each method's own recipe)",
        "tuned": "tuned (each study's best trial)",
    }
    return names.get(source, source)


def _hparams_source(tags: dict[str, str]) -> str:
    """preset, paper, tuned, or ``override: lr=0.0001`` (--set preset.…): distinct overrides never mix."""
    source = normalize_source(tags.get(schema.HPARAMS, "preset"))
    if source == "override":
        return f"override: {tags.get('bench.preset_overrides', '?')}"
    return source
