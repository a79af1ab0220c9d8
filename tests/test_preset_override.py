"""`--set preset.FIELD=VALUE`: a recorded, run-keyed change of the preset's hyperparameters."""

from __future__ import annotations

from pathlib import Path

from bench.tracking import Tracker, default_tracking_uri
from tests.test_cli_errors import _assert_one_line_error

RUN = ("run", "--suite", "tinyfolder", "--seeds", "1", "--tasks", "beta", "--epochs", "1")


def _runs(workdir: Path, experiment: str = "bench/tinyfolder"):
    return Tracker(default_tracking_uri(workdir)).search(experiment)


def test_a_preset_override_is_a_new_recorded_run(cli, workdir: Path, noah_root: Path):
    root = ("--data-root", str(noah_root))
    code, _, err = cli(*RUN, *root, "--methods", "linear")
    assert code == 0, err
    code, out, err = cli(
        *RUN, *root, "--methods", "linear", "--set", "preset.lr=1e-4", "--set", "preset.drop_path=0.05"
    )
    assert code == 0, err
    assert "1 run(s) trained, 0 already finished" in out  # a new run key, not the preset run reused
    runs = {r.data.tags["bench.hparams"]: r for r in _runs(workdir)}
    assert set(runs) == {"preset", "override"}
    override = runs["override"]
    assert override.data.params["hp.lr"] == "0.0001" and override.data.params["hp.drop_path"] == "0.05"
    assert override.data.tags["bench.preset_overrides"] == "drop_path=0.05,lr=0.0001"
    assert override.data.tags["bench.run_key"] != runs["preset"].data.tags["bench.run_key"]
    assert runs["preset"].data.params["hp.lr"] == "0.01"

    code, _, err = cli("report", "--suite", "tinyfolder", "--out", str(workdir / "report"))
    _assert_one_line_error(code, err, "hyperparameter sources", "--hparams preset, paper, tuned or override")
    code, out, err = cli("report", "--suite", "tinyfolder", "--hparams", "override", "--out", str(workdir / "r2"))
    assert code == 0, err
    assert "override: drop_path=0.05,lr=0.0001" in (workdir / "r2" / "report.md").read_text()


def test_a_preset_override_works_with_a_budget(cli, workdir: Path, noah_root: Path):
    code, _, err = cli(
        *RUN, "--data-root", str(noah_root), "--methods", "lora", "--budget", "6k", "--set", "preset.weight_decay=0",
    )  # fmt: skip
    assert code == 0, err
    [run] = _runs(workdir)
    assert run.data.params["hp.weight_decay"] == "0.0" and run.data.tags["bench.budget"] == "6000"
    assert run.data.tags["bench.hparams"] == "override"


def test_tuning_trains_with_the_preset_override(cli, workdir: Path, noah_root: Path):
    code, _, err = cli(
        "tune", "--suite", "tinyfolder", "--methods", "linear", "--trials", "1", "--tasks", "beta", "--epochs", "1",
        "--data-root", str(noah_root), "--set", "preset.label_smoothing=0.2",
    )  # fmt: skip
    assert code == 0, err
    [trial] = _runs(workdir, "bench/tinyfolder-tune")
    assert trial.data.params["hp.label_smoothing"] == "0.2"


def test_bad_preset_overrides_are_one_line(cli, noah_root: Path):
    root = ("--data-root", str(noah_root), "--methods", "linear")
    code, _, err = cli(*RUN, *root, "--set", "preset.learning_rate=1e-4")
    _assert_one_line_error(code, err, "preset.learning_rate", "valid: lr, weight_decay, drop_path")
    code, _, err = cli(*RUN, *root, "--set", "preset.img_size=64")
    _assert_one_line_error(code, err, "preset.img_size is not a preset setting a run may change")
    code, _, err = cli(*RUN, *root, "--set", "preset.lr=fast")
    _assert_one_line_error(code, err, "preset.lr='fast' is not a valid float")
    code, _, err = cli(*RUN, *root, "--set", "preset.lr=inf")
    _assert_one_line_error(code, err, "preset lr=inf is out of range", "(0, 1]")
    code, _, err = cli(*RUN, *root, "--set", "preset.warmup_epochs=5")
    _assert_one_line_error(code, err, "preset.warmup_epochs=5 must be in 0..0")
    code, _, err = cli(*RUN, *root, "--set", "preset.lr=1e-3", "--hparams", "tuned")
    _assert_one_line_error(code, err, "--set preset.… and --hparams tuned")
