"""System metrics (MLflow's names, sampled where the run trains) in a run on the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from bench import schema
from bench.sysmetrics import SystemSampler
from bench.tracking import Tracker, default_tracking_uri


def _run(workdir: Path, task: str):
    [run] = [
        r
        for r in Tracker(default_tracking_uri(workdir)).search("bench/tinyfolder")
        if r.data.tags["bench.task"] == task
    ]
    return run


@pytest.mark.slow
def test_system_metrics_appear_per_epoch_and_can_be_turned_off(cli, workdir: Path, noah_root: Path):
    base = ("run", "--suite", "tinyfolder", "--methods", "linear", "--seeds", "0,", "--data-root", str(noah_root))
    assert cli(*base, "--tasks", "alpha")[0] == 0
    run = _run(workdir, "alpha")
    client = MlflowClient(default_tracking_uri(workdir))
    cpu = client.get_metric_history(run.info.run_id, "system/cpu_utilization_percentage")
    assert [m.step for m in cpu] == [0, 1, 2]  # one average per epoch, at the epoch's step
    assert all(0.0 <= m.value <= 100.0 * 64 for m in cpu)
    ram = run.data.metrics["system/system_memory_usage_megabytes"]
    assert 0 < ram < 1e9 and 0 < run.data.metrics["system/system_memory_usage_percentage"] <= 100
    assert schema.GPU_UTILIZATION_MEAN not in run.data.metrics  # no GPU, no GPU figures

    assert cli(*base, "--tasks", "beta", "--no-system-metrics")[0] == 0
    quiet = _run(workdir, "beta")
    assert not [k for k in quiet.data.metrics if k.startswith(schema.SYSTEM_PREFIX)]
    assert "train/loss" in quiet.data.metrics


def test_sampler_averages_since_the_last_take():
    import torch

    with SystemSampler(torch.device("cpu"), interval=0.05) as sampler:
        assert sampler.available
        first = sampler.take()
        second = sampler.take()  # nothing sampled since: one fresh sample, never an empty epoch
    assert set(first) == set(second) >= {"cpu_utilization_percentage", "system_memory_usage_megabytes"}


def test_cost_table_shows_mean_gpu_utilisation_only_where_runs_sampled_it():
    import numpy as np
    import pandas as pd

    from reports.render import resources_table

    row = {"params_trainable": 1e5, "mean_acc": 0.5, "train_img_s": 900.0, "infer_img_s": 3000.0}
    row |= {"peak_mem_mb": 1200.0, "train_s": 10.0}
    sampled = pd.DataFrame([{"method": "lora", **row, "gpu_util": 87.4}, {"method": "dtl", **row, "gpu_util": np.nan}])
    table = resources_table(sampled)
    assert list(table.columns).index("GPU util. (%)") == list(table.columns).index("Train img/s") + 1
    assert table.loc["lora", "GPU util. (%)"] == "87" and table.loc["dtl", "GPU util. (%)"] == "–"
    assert "GPU util. (%)" not in resources_table(sampled.assign(gpu_util=np.nan)).columns
