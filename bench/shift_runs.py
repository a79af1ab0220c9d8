"""Feature shift over many runs (``bench analyze shift --suite …``): every selected run measured
against its frozen backbone, then summarised per method and block with intervals over seeds and
tasks, and each method's difference to a reference.

The runs are selected as ``bench report`` selects them (:func:`reports.runs.load_runs`: finished
runs of one stage, one per run key, comparable preset, protocol, backbone and checkpoint). Each
run's own analysis is what ``bench analyze shift RUN`` computes and logs to the run
(:mod:`bench.shift`); one already logged with the same ``--images`` and ``--tokens-per-image`` is
read back instead of recomputed, so an interrupted command resumes where it stopped and a rerun
with other ``--methods`` measures only the runs it has not seen. A run that cannot be measured
(its images have moved, its method bypasses the blocks' forward) is reported and left out; the
others are still summarised.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from reports.feature_shift import SHIFT_METRICS, shift_figure, summarize_shift, summary_series

from . import __version__, schema
from .errors import BenchError
from .shift import FROZEN, ShiftSettings, analyze_shift

RUN_COLUMNS = ["method", "task", "shots", "seed", "run_key", "block", "index", "stage", *SHIFT_METRICS, "source"]


@dataclass
class ShiftSummary:
    summary: pd.DataFrame  # reports.feature_shift.SUMMARY_COLUMNS rows
    per_run: pd.DataFrame  # RUN_COLUMNS rows: one per run and block
    methods: list[str]  # the reference first
    headline: str  # the scope of the main figure
    folder: Path
    skipped: list[str] = field(default_factory=list)  # "label: why", one per run left out
    files: list[str] = field(default_factory=list)

    def runs_from(self, source: str) -> int:
        """How many runs were ``computed`` now, or ``reused`` from their logged analysis."""
        runs = self.per_run.drop_duplicates("run_key")
        return int((runs["source"] == source).sum())


def stored_blocks(client: Any, run_id: str, settings: ShiftSettings) -> list[dict] | None:
    """The run's logged analysis against the frozen backbone, if it was made with the same image
    and token sample; None otherwise."""
    try:
        listed = {a.path for a in client.list_artifacts(run_id, schema.SHIFT_DIR)}
    except Exception:  # a store without the folder answers with an error on some backends
        return None
    wanted = [f"{schema.SHIFT_DIR}/{schema.SHIFT_INFO}", f"{schema.SHIFT_DIR}/{schema.SHIFT_BLOCKS}"]
    if not all(path in listed for path in wanted):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        info = json.loads(Path(client.download_artifacts(run_id, wanted[0], tmp)).read_text())
        if any(info.get(key) != value for key, value in settings.sample.items()):
            return None
        blocks = pd.read_csv(client.download_artifacts(run_id, wanted[1], tmp))
    mine = blocks[(blocks["model_a"] == info["run"]["name"]) & (blocks["model_b"] == FROZEN)]
    return mine.to_dict("records") or None


def _per_run_rows(run: Any, blocks: list[dict], source: str) -> list[dict]:
    shots = None if pd.isna(run.shots) else int(run.shots)
    return [
        {
            "method": run.method,
            "task": run.task,
            "shots": shots,
            "seed": int(run.seed),
            "run_key": run.run_key,
            "block": b["block"],
            "index": int(b["index"]),
            "stage": int(b["stage"]),
            **{m: float(b[m]) for m in SHIFT_METRICS},
            "source": source,
        }
        for b in blocks
    ]


def _label(run: Any) -> str:
    shots = "" if pd.isna(run.shots) else f"/k{int(run.shots)}"
    return f"{run.method}/{run.task}{shots}/s{run.seed}"


def analyze_shift_runs(
    tracker: Any,
    suite: str,
    *,
    stage: str = "final",
    selection: dict[str, Any] | None = None,
    reference: str | None = None,
    out: Path | None = None,
    workdir: Path = Path("runs"),
    settings: ShiftSettings = ShiftSettings(),
    progress: Callable[[str], None] = lambda line: None,
) -> ShiftSummary:
    """Measure (or read back) every selected run's feature shift and write the summary to ``out``.

    ``selection``: what :func:`reports.runs.load_runs` selects by (``methods``, ``budget``, ``hparams``)."""
    from reports.runs import budget_label, load_runs

    selection = selection or {}
    runs = load_runs(tracker, suite, stage, **selection)
    if selection.get("budget") is None and len(runs.budgets) > 1:
        labels = ", ".join(budget_label(b) for b in runs.budgets)
        raise BenchError(f"the runs of suite {suite!r} hold several budgets ({labels}); pass --budget to pick one")
    wanted = selection.get("methods")
    order = runs.methods if not wanted else [m for m in wanted if m in runs.methods]
    reference = reference or order[0]
    if reference not in order:
        raise BenchError(f"--reference {reference!r} has no selected runs; choose one of {', '.join(order)}")

    folder = out or workdir / "analysis" / f"shift-{suite}"
    rows: list[dict] = []
    skipped: list[str] = []
    frame = runs.frame.sort_values(["method", "task", "shots", "seed"])
    for i, run in enumerate(frame.itertuples(index=False), start=1):
        label, step = _label(run), f"[{i}/{len(frame)}]"
        blocks = stored_blocks(tracker.client, run.run_id, settings)
        if blocks is not None:
            rows += _per_run_rows(run, blocks, "reused")
            progress(f"{step} {label}: logged analysis reused")
            continue
        try:
            one = analyze_shift(
                tracker, run.run_id, out=folder / "runs" / label.replace("/", "-"), workdir=workdir, settings=settings
            )
        except BenchError as exc:  # one run that cannot be measured leaves the others' summary intact
            skipped.append(f"{label}: {exc}")
            progress(f"{step} {label}: left out ({exc})")
            continue
        rows += _per_run_rows(run, one.blocks, "computed")
        progress(f"{step} {label}: measured in {one.info['seconds']} s")
    if not rows:
        raise BenchError(
            f"none of the {len(frame)} selected run(s) could be measured; the first: {skipped[0]}"
            if skipped
            else f"no runs of suite {suite!r} to analyze"
        )

    per_run = pd.DataFrame(rows, columns=RUN_COLUMNS)
    measured = set(per_run["method"])
    if reference not in measured:
        raise BenchError(f"no run of the reference {reference!r} could be measured; pass another --reference")
    order = [reference] + [m for m in order if m != reference and m in measured]
    summary = summarize_shift(per_run, order)
    scopes = list(dict.fromkeys(summary["scope"]))
    headline = next((s for s in scopes if s.startswith("mean of")), scopes[0])
    result = ShiftSummary(summary, per_run, order, headline, folder, skipped)
    backbone = str(runs.frame["backbone"].iloc[0])
    result.files = _write(result, suite, stage, backbone, settings)
    return result


def _write(result: ShiftSummary, suite: str, stage: str, backbone: str, settings: ShiftSettings) -> list[str]:
    """Write the CSVs, one figure per scope and the JSON into ``result.folder``; the file names."""
    folder = result.folder
    folder.mkdir(parents=True, exist_ok=True)
    result.per_run.to_csv(folder / schema.SHIFT_RUNS_CSV, index=False)
    result.summary.to_csv(folder / schema.SHIFT_SUMMARY_CSV, index=False)
    files = [schema.SHIFT_RUNS_CSV, schema.SHIFT_SUMMARY_CSV, schema.SHIFT_SUMMARY_INFO]
    for scope in dict.fromkeys(result.summary["scope"]):
        stem = "shift_summary" if scope == result.headline else "shift_" + scope.replace(" ", "_").replace("=", "")
        paths = [folder / f"{stem}.png", folder / f"{stem}.pdf"]
        title = f"{backbone} on {suite}: {scope}, against the frozen backbone (95 % intervals)"
        shift_figure(summary_series(result.summary, scope), paths, title, series="series")
        files += [p.name for p in paths]
    info = {
        "suite": suite,
        "backbone": backbone,
        "stage": stage,
        "methods": result.methods,
        "reference": result.methods[0],
        "headline": result.headline,
        "runs_measured": result.runs_from("computed"),
        "runs_reused": result.runs_from("reused"),
        "runs_left_out": result.skipped,
        **settings.sample,
        "metrics": list(SHIFT_METRICS),
        "against": FROZEN,
        "bench_version": __version__,
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
    }
    (folder / schema.SHIFT_SUMMARY_INFO).write_text(json.dumps(info, indent=2) + "\n")
    return sorted(files)


def summary_table(result: ShiftSummary) -> Any:
    """The headline scope per block and method: W1 and CKA against the frozen backbone, and W1's
    difference to the reference, each with its 95 % interval, as a rich table."""
    from rich.markup import escape
    from rich.table import Table

    part = result.summary[result.summary["scope"] == result.headline]
    interval = part["interval"].iloc[0]
    reference = result.methods[0]
    table = Table(title=f"feature shift against the frozen backbone: {result.headline} ({interval}, 95 %)")
    for name in ("block", "method", "W1", "CKA", f"W1 − {reference}"):
        table.add_column(escape(name), justify="left" if name in ("block", "method") else "right")
    cell = part.set_index(["block", "metric", "method"])

    def shown(value: float, low: float, high: float) -> str:
        return f"{value:.4f}" + ("" if pd.isna(low) else f" [{low:.4f}, {high:.4f}]")

    for block in dict.fromkeys(part.sort_values("index")["block"]):
        for method in result.methods:
            if (block, "w1", method) not in cell.index:
                continue
            w1, cka = cell.loc[(block, "w1", method)], cell.loc[(block, "cka", method)]
            diff = "" if method == reference else shown(w1["diff"], w1["diff_low"], w1["diff_high"])
            table.add_row(
                block if method == reference else "",
                escape(method),
                shown(w1["estimate"], w1["low"], w1["high"]),
                shown(cka["estimate"], cka["low"], cka["high"]),
                diff,
            )
    return table
