"""Equal tuning effort in trial-epochs, schedulers, and resuming a study: real Optuna, real MLflow,
tiny models trained on generated images."""

from __future__ import annotations

import json
import time
from pathlib import Path

import optuna
import pytest
import torch

import bench.studies as studies
from bench.engine.driver import SilentReporter
from bench.errors import BenchError
from bench.studies import (
    EPOCHS_CHARGED,
    INTERRUPTED,
    RETRY_OF,
    TRAIN_SECONDS,
    TUNE_SEED,
    default_storage,
    effort_used,
    fail_stale_trials,
    open_study,
    requeue_interrupted,
)
from bench.tracking import KIND_SWEEP, Tracker, default_tracking_uri
from bench.tune import effort_budget

EPOCHS = 3  # the tinyfolder preset's
TINY = ("--suite", "tinyfolder", "--tasks", "alpha", "--device", "cpu", "--json")


def _tune(cli, noah_root: Path, *args: str) -> list[dict]:
    code, out, err = cli("tune", *TINY, "--data-root", str(noah_root), *args)
    assert code == 0, err
    return json.loads(out)


def _study(workdir: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=default_storage(workdir))


def _parent(workdir: Path, name: str):
    [parent] = [
        r
        for r in Tracker(default_tracking_uri(workdir)).search("bench/tinyfolder-tune", kind=KIND_SWEEP)
        if r.data.tags.get("bench.study") == name and "bench.trial" not in r.data.tags
    ]
    return parent


# -- the effort: --trials or --budget-epochs ------------------------------------------------------


def test_effort_is_trials_times_epochs_or_the_budget_given():
    assert effort_budget(4, None, 25) == 100
    assert effort_budget(None, 120, 25) == 120
    for trials, budget, match in ((4, 100, "not both"), (None, None, "not neither"), (None, 10, "less than one full")):
        with pytest.raises(BenchError, match=match):
            effort_budget(trials, budget, 25)


def test_a_pruned_trial_is_charged_its_epochs_a_failed_one_a_full_trial():
    study = optuna.create_study(direction="maximize")
    dist = optuna.distributions.FloatDistribution(0, 1)

    def add(state, values, **attrs):
        study.add_trial(
            optuna.trial.create_trial(
                state=state,
                value=values[-1] if state.name == "COMPLETE" else None,
                params={"x": 0.5},
                distributions={"x": dist},
                intermediate_values=dict(enumerate(values)),
                user_attrs=attrs,
            )
        )

    S = optuna.trial.TrialState
    add(S.COMPLETE, [0.1, 0.2, 0.3], **{EPOCHS_CHARGED: 3, TRAIN_SECONDS: 3.0})
    add(S.PRUNED, [0.1, 0.1], **{EPOCHS_CHARGED: 2, TRAIN_SECONDS: 2.0})
    add(S.FAIL, [0.1], **{EPOCHS_CHARGED: 3, TRAIN_SECONDS: 1.0})
    add(S.FAIL, [0.1], **{INTERRUPTED: True, EPOCHS_CHARGED: 1, TRAIN_SECONDS: 1.0})  # not charged
    add(S.PRUNED, [0.1])  # stored before charges were recorded: the epochs it reported
    add(S.FAIL, [])  # likewise: a failed trial costs a full trial
    effort = effort_used(study.trials, 3)
    assert (effort.trials, effort.epochs, effort.seconds) == (5, 3 + 2 + 3 + 1 + 3, 6.0)


# -- stale trials: a dead process's are failed and queued again, a live one's left alone -----------


def test_stale_trials_are_failed_and_queued_again_live_ones_are_left(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(studies, "STALE_AFTER_S", 1)
    study = open_study(f"sqlite:///{tmp_path / 'optuna.db'}", "s/t/m/published", EPOCHS)

    def ask(x: float) -> optuna.Trial:
        study.enqueue_trial({"x": x})
        with pytest.warns(UserWarning, match="Heartbeat"):  # Optuna's, for ask() outside optimize()
            trial = study.ask()
        trial.suggest_float("x", 0, 1)
        return trial

    beaten, silent, live = ask(0.1), ask(0.2), ask(0.3)
    for trial in (beaten, live):
        study._storage.record_heartbeat(trial._trial_id)
        trial.set_user_attr(studies.BEATING, True)
    time.sleep(2.2)
    study._storage.record_heartbeat(live._trial_id)  # its process is alive
    fail_stale_trials(study)
    requeue_interrupted(study)
    states = {t.number: t.state.name for t in study.trials}
    assert states[beaten.number] == states[silent.number] == "FAIL" and states[live.number] == "RUNNING"
    retries = {t.user_attrs[RETRY_OF]: t for t in study.trials if RETRY_OF in t.user_attrs}
    assert set(retries) == {beaten.number, silent.number}
    assert all(t.state.name == "WAITING" for t in retries.values())
    assert retries[beaten.number].system_attrs["fixed_params"] == {"x": 0.1}
    requeue_interrupted(study)  # idempotent
    assert len(study.trials) == 5


# -- a scheduler prunes; every method gets the same trial-epochs ------------------------------------


def test_asha_prunes_charges_pruned_epochs_and_gives_every_method_the_same_budget(cli, workdir, noah_root):
    summaries = _tune(cli, noah_root, "--methods", "lora,bitfit", "--scheduler", "asha", "--trials", "2")
    assert {s["method"] for s in summaries} == {"lora", "bitfit"}
    pruned = 0
    for summary in summaries:
        assert summary["budget_epochs"] == summary["epochs_used"] == 2 * EPOCHS
        study = _study(workdir, summary["name"])
        assert study.user_attrs["scheduler"] == "asha"
        charged = [t.user_attrs[EPOCHS_CHARGED] for t in study.trials]
        assert sum(charged) == 2 * EPOCHS
        for t in study.trials:
            assert t.user_attrs[EPOCHS_CHARGED] == (
                EPOCHS if t.state.name == "COMPLETE" else len(t.intermediate_values)
            )
        pruned += sum(t.state.name == "PRUNED" for t in study.trials)
        parent = _parent(workdir, summary["name"])
        metrics = parent.data.metrics
        assert metrics["tune/budget_epochs"] == metrics["tune/trial_epochs"] == 2 * EPOCHS
        seconds = sum(t.user_attrs[TRAIN_SECONDS] for t in study.trials)
        assert metrics["tune/train_s"] == pytest.approx(seconds) and seconds > 0
        assert summary["train_seconds"] == pytest.approx(seconds)
    # A pruned trial leaves room: more trials than the two full ones the budget is worth.
    assert pruned >= 1 and sum(len(_study(workdir, s["name"]).trials) for s in summaries) > 4


def test_a_study_keeps_its_scheduler(cli, workdir, noah_root):
    _tune(cli, noah_root, "--methods", "linear", "--scheduler", "none", "--trials", "1")
    code, _, err = cli("tune", *TINY, "--data-root", str(noah_root), "--methods", "linear", "--trials", "2")
    assert code == 2 and "tuned with other scheduler" in err and "--scheduler none" in err
    code, _, err = cli(
        "tune", *TINY, "--data-root", str(noah_root), "--methods", "linear", "--scheduler", "x", "--trials", "1"
    )
    assert code == 2 and "--scheduler 'x' must be one of none, asha, hyperband" in err


# -- resuming: new draws, interrupted trials trained again -------------------------------------------


class _InterruptAtFirstEpoch(SilentReporter):
    """Ctrl-C after the first epoch of the first trial."""

    def epoch_done(self, run, metrics) -> None:
        raise KeyboardInterrupt


def _interrupt_once(workdir: Path, noah_root: Path) -> None:
    from bench.engine import ExecutorOptions, Recorder, make_executor
    from bench.sweep import SweepRequest
    from bench.tune import run_tuning

    request = SweepRequest(
        suite="tinyfolder", methods=["lora"], seeds=[0], tasks=["alpha"], data_root=noah_root, device="cpu"
    )
    recorder = Recorder(Tracker(default_tracking_uri(workdir), artifact_root=workdir / "artifacts"))
    with pytest.raises(KeyboardInterrupt):
        run_tuning(
            request,
            2,
            workdir,
            recorder,
            default_storage(workdir),
            make_executor(ExecutorOptions(), "cpu"),
            _InterruptAtFirstEpoch(),
            scheduler="none",
        )


def _counted_params(study: optuna.Study) -> list[dict]:
    return [t.params for t in study.trials if t.state.name == "COMPLETE"]


def test_an_interrupted_trial_0_trains_again_and_a_resume_draws_new_configurations(cli, workdir, noah_root):
    name = "tinyfolder/alpha/lora/published"
    for _ in range(3):  # three Ctrl-C, each in the first epoch of the study's next trial: trial 0 every time
        _interrupt_once(workdir, noah_root)
    study = _study(workdir, name)
    assert [t.user_attrs.get(INTERRUPTED) for t in study.trials if t.state.name == "FAIL"] == [True] * 3
    published = study.trials[0].params
    assert published["lr"] == 1e-2  # the tiny preset's: trial 0 is the published configuration

    summaries = _tune(cli, noah_root, "--methods", "lora", "--scheduler", "none", "--trials", "2")
    assert summaries[0]["trials"] == {"interrupted": 3, "complete": 2}
    study = _study(workdir, name)
    first, second = _counted_params(study)
    assert first == published  # the published configuration was trained after all
    assert study.trials[3].user_attrs[RETRY_OF] == 2  # the last interrupted copy's retry
    assert second != first

    summaries = _tune(cli, noah_root, "--methods", "lora", "--scheduler", "none", "--trials", "3")
    assert summaries[0]["trials"] == {"interrupted": 3, "complete": 3}
    third = _counted_params(_study(workdir, name))[2]
    assert third not in (first, second)  # a new draw, not a replay of the second


@pytest.mark.slow
def test_an_interrupted_study_ends_as_an_uninterrupted_one(cli, workdir, noah_root, tmp_path, mlflow_template):
    """Interruptions and resumes change nothing: the same configurations are trained, in the same
    order, as by one uninterrupted command."""
    import shutil

    from bench.cli import run_cli

    name = "tinyfolder/alpha/lora/published"
    _interrupt_once(workdir, noah_root)
    _tune(cli, noah_root, "--methods", "lora", "--scheduler", "none", "--trials", "2")
    _tune(cli, noah_root, "--methods", "lora", "--scheduler", "none", "--trials", "3")
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(mlflow_template, other / "mlflow.db")
    args = ["--workdir", str(other), "tune", *TINY, "--data-root", str(noah_root), "--methods", "lora"]
    assert run_cli([*args, "--scheduler", "none", "--trials", "3"]) == 0
    ours, theirs = _study(workdir, name), _study(other, name)
    assert _counted_params(ours) == _counted_params(theirs)
    assert [t.value for t in ours.trials if t.state.name == "COMPLETE"] == pytest.approx(
        [t.value for t in theirs.trials if t.state.name == "COMPLETE"]
    )


def test_a_second_process_on_the_same_study_counts_the_others_trial_and_leaves_it_alone(cli, workdir, noah_root):
    """A trial another live `bench tune` is training (its heartbeat is fresh) is neither failed nor
    run twice: this process counts it as a full trial and tops the study up around it."""
    name = "tinyfolder/alpha/lora/published"
    _tune(cli, noah_root, "--methods", "lora", "--scheduler", "none", "--trials", "1")
    study = open_study(default_storage(workdir), name, EPOCHS, scheduler="none")
    with pytest.warns(UserWarning, match="Heartbeat"):
        elsewhere = study.ask()  # what the other process is training now
    elsewhere.suggest_float("lr", 1e-4, 1e-2, log=True)
    study._storage.record_heartbeat(elsewhere._trial_id)
    elsewhere.set_user_attr(studies.BEATING, True)

    summaries = _tune(cli, noah_root, "--methods", "lora", "--scheduler", "none", "--trials", "3")
    study = _study(workdir, name)
    assert study.trials[elsewhere.number].state.name == "RUNNING"  # untouched
    assert summaries[0]["trials"] == {"complete": 2, "running": 1}  # one trial here: 2 + the other's = 3
    study.tell(elsewhere.number, 0.5)  # the other process finishes its trial
    assert effort_used(study.trials, EPOCHS).epochs == 3 * EPOCHS


def test_the_chosen_configuration_is_reproducible_from_the_stored_study(cli, workdir, noah_root):
    """Retraining the best trial from what the study stored (its parameters, the study's
    settings, the tuning seed) gives the same per-epoch val accuracy it was chosen for."""
    from bench.engine import Epoch, Work, run_work
    from bench.engine.work import placement
    from bench.studies import tuned_settings
    from bench.sweep import PlannedRun, SweepRequest, TaskLoader, plan_sweep

    _tune(cli, noah_root, "--methods", "lora", "--scheduler", "none", "--trials", "2")
    request = SweepRequest(
        suite="tinyfolder", methods=["lora"], seeds=[TUNE_SEED], tasks=["alpha"], data_root=noah_root,
        device="cpu", stage="tune",
    )  # fmt: skip
    plan = plan_sweep(request, workdir)
    [run] = plan.runs
    preset, config, tags = tuned_settings(
        default_storage(workdir), "tinyfolder", run.task, run.method, run.config, None, plan.preset, plan.backbone,
        plan.weights,
    )  # fmt: skip
    best = _study(workdir, tags["bench.study"]).trials[int(tags["bench.trial"])]
    assert best.value == max(t.value for t in _study(workdir, tags["bench.study"]).trials if t.value is not None)
    again = PlannedRun(run.spec, run.task, run.method, config, preset)
    data = TaskLoader(plan, workdir / "cache" / "images")(again)
    epochs: list[float] = []

    def emit(event) -> bool:
        if isinstance(event, Epoch):
            epochs.append(event.metrics.eval_acc)
        return False

    device = torch.device("cpu")
    end = run_work(Work(0, again, plan.stage, plan.weights, False), data.train, data.evaluate, device,
                   placement("inline", "local", device), emit)  # fmt: skip
    assert type(end).__name__ == "Done"
    assert epochs == pytest.approx([best.intermediate_values[i] for i in range(EPOCHS)])
    assert end.result.epochs[-1].eval_acc == pytest.approx(best.value)


def test_effort_options_on_the_command_line(cli, noah_root, tmp_path):
    base = ("tune", *TINY, "--data-root", str(noah_root), "--methods", "lora")
    code, _, err = cli(*base)
    assert code == 2 and "pass --trials N" in err and "--budget-epochs" in err
    code, _, err = cli(*base, "--trials", "2", "--budget-epochs", "6")
    assert code == 2 and "not both" in err
    # a sweep file's trials: gives way to --budget-epochs on the command line (here too small: refused)
    sweep = tmp_path / "tune.yaml"
    sweep.write_text("suite: tinyfolder\nmethods: [lora]\ntrials: 2\nscheduler: asha\n")
    code, _, err = cli("tune", "--config", str(sweep), "--data-root", str(noah_root), "--budget-epochs", "1")
    assert code == 2 and "--budget-epochs 1 is less than one full trial (3 epochs)" in err
    sweep.write_text("suite: tinyfolder\nmethods: [lora]\nscheduler: fifo\ntrials: 1\n")
    code, _, err = cli("tune", "--config", str(sweep), "--data-root", str(noah_root))
    assert code == 2 and "--scheduler 'fifo' must be one of none, asha, hyperband" in err
