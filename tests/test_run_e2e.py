"""`bench run` end to end on generated NOAH folders, with a real MLflow store."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from safetensors.torch import load

from bench.tracking import Tracker, default_tracking_uri


def _client(workdir: Path) -> MlflowClient:
    return MlflowClient(default_tracking_uri(workdir))


def _runs(workdir: Path, suite: str = "tinyfolder", kind: str = "run"):
    return Tracker(default_tracking_uri(workdir)).search(f"bench/{suite}", kind=kind)


def test_run_logs_every_run_with_tags_metrics_and_artifacts(cli, workdir: Path, noah_root: Path):
    code, out, err = cli(
        "run",
        "--suite",
        "tinyfolder",
        "--methods",
        "lora,linear",
        "--seeds",
        "2",
        "--data-root",
        str(noah_root),
        "--tasks",
        "alpha",
    )
    assert code == 0, err
    assert "4 run(s) trained, 0 already finished" in out
    assert "alpha" in out and "lora" in out and "linear" in out

    runs = _runs(workdir)
    assert len(runs) == 4
    assert {(r.data.tags["bench.method"], r.data.tags["bench.seed"]) for r in runs} == {
        ("lora", "0"),
        ("lora", "1"),
        ("linear", "0"),
        ("linear", "1"),
    }
    client = _client(workdir)
    for r in runs:
        t, m = r.data.tags, r.data.metrics
        assert r.info.status == "FINISHED"
        assert t["bench.suite"] == "tinyfolder" and t["bench.task"] == "alpha" and t["bench.stage"] == "final"
        assert t["bench.preset"] == "tiny" and t["bench.budget"] == "none" and len(t["bench.run_key"]) == 32
        assert t["bench.checkpoint"] == "random-init:seed0" and t["bench.merged_eval"] == "true"
        assert 0.0 <= m["test/acc"] <= 1.0
        assert m["params/head"] == 3 * 65  # (embed_dim + 1) x classes
        assert m["params/trainable"] == (0 if t["bench.method"] == "linear" else 4 * 8 * (64 + 192))
        assert m["throughput/train_img_s"] > 0 and m["throughput/infer_img_s"] > 0
        assert m["throughput/train_img_s_steady"] > 0  # epochs 2.. of 3: the first (compilation on CUDA) left out
        history = client.get_metric_history(r.info.run_id, "train/loss")
        assert [h.step for h in history] == [0, 1, 2]  # one value per epoch
        assert client.get_metric_history(r.info.run_id, "val/acc") == []  # final stage: no eval during training
        assert r.data.params["hp.epochs"] == "3" and r.data.params["hp.lr"] == "0.01"
        assert "parentRunId" in " ".join(t)  # a child of the sweep's parent run

        local = Path(client.download_artifacts(r.info.run_id, "", str(workdir / "dl" / r.info.run_id)))
        resolved = json.loads((local / "config/resolved.json").read_text())
        assert resolved["run_key"] == t["bench.run_key"]
        assert resolved["normalization"] == {"mean": [0.5] * 3, "std": [0.5] * 3}
        rows = list(csv.DictReader(io.StringIO((local / "eval/predictions.csv").read_text())))
        assert len(rows) == 15 and rows[0]["path"] == "images/test/000000.png"
        accuracy = sum(row["label"] == row["prediction"] for row in rows) / len(rows)
        assert accuracy == pytest.approx(m["test/acc"])
        state = load((local / "checkpoints/trainable.safetensors").read_bytes())
        assert "head.weight" in state
        assert any(".lora_A." in k for k in state) == (t["bench.method"] == "lora")

    [parent] = _runs(workdir, kind="sweep")
    assert parent.info.status == "FINISHED" and parent.data.tags["bench.trained"] == "4"


def test_rerunning_a_finished_sweep_trains_nothing(cli, workdir: Path, noah_root: Path):
    args = ("run", "--suite", "tinyfolder", "--methods", "linear", "--seeds", "2", "--data-root", str(noah_root))
    assert cli(*args)[0] == 0
    first = {r.info.run_id for r in _runs(workdir)}
    code, out, _ = cli(*args)
    assert code == 0 and "0 run(s) trained, 4 already finished and reused" in out
    assert {r.info.run_id for r in _runs(workdir)} == first  # no new child runs
    assert len(_runs(workdir, kind="sweep")) == 1  # the same parent is reopened
    # A different seed set is a different sweep, but the shared runs are still reused.
    code, out, _ = cli(*args[:-4], "--seeds", "0,1,2", "--data-root", str(noah_root))
    assert code == 0 and "2 run(s) trained, 4 already finished" in out


def test_runs_listing(cli, noah_root: Path):
    cli(
        "run",
        "--suite",
        "tinyfolder",
        "--methods",
        "lora",
        "--seeds",
        "1",
        "--data-root",
        str(noah_root),
        "--tasks",
        "beta",
    )
    code, out, _ = cli("runs", "--suite", "tinyfolder", "--json")
    assert code == 0
    [row] = json.loads(out)
    assert row["method"] == "lora" and row["task"] == "beta" and row["seed"] == 0 and row["stage"] == "final"
    assert row["status"] == "FINISHED" and row["trainable_params"] == 8192 and 0 <= row["test_acc"] <= 1
    code, out, _ = cli("runs", "--suite", "tinyfolder")
    assert code == 0 and row["run_key"][:8] in out


def test_tune_stage_scores_val_every_epoch_and_never_reads_test(cli, workdir: Path, noah_root: Path):
    (noah_root / "alpha" / "test.txt").unlink()
    code, _, err = cli(
        "run",
        "--suite",
        "tinyfolder",
        "--methods",
        "lora",
        "--seeds",
        "1",
        "--stage",
        "tune",
        "--data-root",
        str(noah_root),
        "--tasks",
        "alpha",
    )
    assert code == 0, err
    [r] = _runs(workdir)
    assert r.data.tags["bench.stage"] == "tune" and "test/acc" not in r.data.metrics
    assert [h.step for h in _client(workdir).get_metric_history(r.info.run_id, "val/acc")] == [0, 1, 2]


def test_same_seed_same_result_other_seed_other_result(cli, workdir: Path, noah_root: Path):
    base = ("run", "--suite", "tinyfolder", "--methods", "lora", "--data-root", str(noah_root), "--tasks", "alpha")
    assert cli(*base, "--seeds", "0,1")[0] == 0
    client = _client(workdir)
    losses = {
        r.data.tags["bench.seed"]: [h.value for h in client.get_metric_history(r.info.run_id, "train/loss")]
        for r in _runs(workdir)
    }
    assert losses["0"] != losses["1"]
    # a fresh store, the same seed: bit-identical training curve
    other = workdir.parent / "other"
    from bench.cli import run_cli

    assert run_cli(["--workdir", str(other), *base, "--seeds", "0,"]) == 0
    [r] = Tracker(default_tracking_uri(other)).search("bench/tinyfolder")
    assert [
        h.value for h in MlflowClient(default_tracking_uri(other)).get_metric_history(r.info.run_id, "train/loss")
    ] == losses["0"]


def test_relative_workdir_and_data_root(noah_root: Path, mlflow_template: Path, monkeypatch, capsys):
    """The defaults a user types: `./runs` and a relative --data-root (a regression: paths mixed)."""
    import shutil

    from bench.cli import run_cli

    monkeypatch.chdir(noah_root.parent)
    Path("runs").mkdir()
    shutil.copy(mlflow_template, "runs/mlflow.db")
    code = run_cli(
        [
            "run",
            "--suite",
            "tinyfolder",
            "--methods",
            "linear",
            "--seeds",
            "1",
            "--data-root",
            "data",
            "--tasks",
            "beta",
        ]
    )
    assert code == 0, capsys.readouterr().err
    [r] = Tracker(default_tracking_uri(Path("runs"))).search("bench/tinyfolder")
    assert r.info.status == "FINISHED" and Path(r.data.params["data.task_dir"]).is_absolute()
