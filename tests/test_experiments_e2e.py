"""The paper's kinds of experiment in one sweep file: variants, a composition and two budgets,
trained by the CLI into one store and reported together; every figure is recomputed here from the
runs themselves."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest

from bench import schema
from bench.backbone import backbone_spec
from bench.cli import run_cli
from methods import get_method, make_config
from tests.conftest import write_task


@pytest.mark.slow
def test_variants_composition_and_budgets_from_one_sweep_file_into_one_report(
    tmp_path: Path, mlflow_template: Path, capsys
):
    root = tmp_path / "data"
    write_task(root / "alpha", num_classes=3, seed=0)
    write_task(root / "beta", num_classes=2, seed=1)
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(mlflow_template, work / "mlflow.db")
    sweep = tmp_path / "ablation.yaml"
    sweep.write_text(
        "suite: tinyfolder\n"
        f"data_root: {root}\n"
        "methods: [karst, 'karst[rescale=none]', 'karst+bitfit', lora, linear]\n"
        "budgets: [4k, 16k]\n"
        "seeds: 2\n"
        "epochs: 1\n"
    )

    def bench(*args: str) -> tuple[str, str]:
        capsys.readouterr()
        code = run_cli(["--workdir", str(work), *args])
        captured = capsys.readouterr()
        assert code == 0, captured.err
        return captured.out, captured.err

    _, err = bench("run", "--config", str(sweep))
    # on the tiny ViT, bitfit's 2,944 biases leave KARST too little of 4k to fit
    left_out = set(re.findall(r"warning: (\S+) at budget (\d+)k is left out", err))
    assert left_out == {("karst+bitfit", "4")}
    again, _ = bench("run", "--config", str(sweep))
    assert "0 run(s) trained" in again  # the same file resumes: nothing is trained twice

    from bench.tracking import Tracker, default_tracking_uri

    tracker = Tracker(default_tracking_uri(work))
    records = [r for r in tracker.search("bench/tinyfolder") if r.info.status == "FINISHED"]
    runs = pd.DataFrame(
        {
            "run_id": r.info.run_id,
            "method": r.data.tags[schema.METHOD],
            "base": r.data.tags[schema.METHOD_BASE],
            "budget": r.data.tags[schema.BUDGET],
            "task": r.data.tags[schema.TASK],
            "acc": r.data.metrics[schema.TEST_ACC],
            "params": r.data.metrics[schema.PARAMS_TRAINABLE],
        }
        for r in records
    )
    labels = ("karst", "karst[rescale=none]", "karst+bitfit")
    planned = {(m, b) for m in (*labels, "lora") for b in ("4000", "16000")} - {("karst+bitfit", "4000")}
    assert set(zip(runs["method"], runs["budget"], strict=True)) == planned | {("linear", "none")}
    assert len(runs) == 2 * 2 * 8  # tasks × seeds × cells
    assert set(runs[runs["method"] == "karst[rescale=none]"]["base"]) == {"karst"}

    # a composition counts exactly what its parts count at the sizes the run used
    spec = backbone_spec("vit_demo_tiny", 32)
    for run_id, params in runs[runs["method"] == "karst+bitfit"][["run_id", "params"]].itertuples(index=False):
        local = tracker.client.download_artifacts(run_id, schema.RESOLVED_CONFIG, str(tmp_path))
        parts = json.loads(Path(local).read_text())["spec"]["method_config"]
        assert set(parts) == {"karst", "bitfit"}
        expected = sum(get_method(p).count(spec, make_config(get_method(p), cfg)) for p, cfg in parts.items())
        assert params == expected

    out = tmp_path / "report"
    bench("report", "--suite", "tinyfolder", "--reference", "linear", "--out", str(out))
    md = (out / "report.md").read_text()
    # the planner recorded why each cell was left out; the report quotes it rather than "no runs"
    assert "Not reached at this budget: karst+bitfit (" in md
    assert "Not reached at this budget: karst+bitfit (no runs at this budget)" not in md

    # the ablation of each budget: a variant against its base, recomputed from the runs' accuracies
    ablation = pd.read_csv(out / "ablation.csv")
    assert sorted(ablation["budget"].astype(int).unique()) == [4000, 16000]
    for budget, rows in ablation.groupby(ablation["budget"].astype(int)):
        rows = rows.set_index("method")
        assert list(rows.index) == ["karst", "karst[rescale=none]"]  # a composition is its own base
        sel = runs[runs["budget"] == str(budget)]
        per_task = sel.groupby(["method", "task"])["acc"].mean().unstack()
        diff = (per_task.loc["karst[rescale=none]"] - per_task.loc["karst"]).mean()
        assert rows.loc["karst[rescale=none]", "diff"] == pytest.approx(diff)
        counts = sel.groupby("method")["params"].median()
        assert rows.loc["karst[rescale=none]", "params_trainable"] == counts["karst[rescale=none]"]
    curve = pd.read_csv(out / "budget_curve.csv", dtype={"budget": str})
    assert set(zip(curve["budget"], curve["method"], strict=True)) >= {(b, m) for m, b in planned}
