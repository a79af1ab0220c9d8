"""`bench export`: finished runs out as peft adapters, merged timm checkpoints and bench's format.

Each round trip loads the export the way its model card says (peft's ``PeftModel.from_pretrained``,
``timm.create_model`` + ``load_state_dict``, ``load_bench_export``) and compares its predictions
on the run's test split with the predictions the run stored in MLflow.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from bench import export
from bench.cli import run_cli
from bench.tracking import Tracker, default_tracking_uri


def _stored(workdir: Path, ref: str) -> export.StoredRun:
    client = MlflowClient(default_tracking_uri(workdir))
    return export.load_stored_run(client, export.find_run(client, ref))


def _card_fields(folder: Path) -> str:
    card = (folder / "README.md").read_text()
    for needle in ("backbone weights", "method config", "suite / task", "seed", "test/acc", "Package versions"):
        assert needle in card
    return card


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory, mlflow_template):
    """LoRA, KARST and DTL trained on the demo (one epoch each), in one store."""
    import shutil

    from bench.cli import run_cli

    workdir = tmp_path_factory.mktemp("export") / "runs"
    workdir.mkdir()
    shutil.copy(mlflow_template, workdir / "mlflow.db")
    code = run_cli(
        ["--workdir", str(workdir), "run", "--suite", "demo", "--methods", "lora,karst,dtl", "--seeds", "0,"]
        + ["--epochs", "1", "--device", "cpu"]
    )
    assert code == 0
    return workdir


@pytest.mark.slow
def test_lora_exports_as_a_peft_adapter_that_reproduces_the_run(demo_runs: Path, tmp_path: Path, capsys):
    import timm
    from peft import PeftModel

    from bench.cli import run_cli

    out = tmp_path / "lora-peft"
    code = run_cli(["--workdir", str(demo_runs), "export", "lora/digits/s0", "--format", "peft", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= {p.name for p in out.iterdir()}
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 8 and config["modules_to_save"] == ["head"]
    card = _card_fields(out)
    assert "bench --workdir" in card and "--methods lora,karst,dtl" in card  # the command that trained it

    stored = _stored(demo_runs, "lora/digits/s0")
    import bench.backbone  # noqa: F401  (registers vit_demo_tiny in timm)

    torch.manual_seed(0)  # the demo backbone: timm's random init from seed 0, as the card says
    base = timm.create_model("vit_demo_tiny", num_classes=10, img_size=32)
    model = PeftModel.from_pretrained(base, str(out)).eval()
    images, _, stored_preds = export.eval_split(stored)
    assert len(stored_preds) == 797
    assert torch.equal(export.predict(model, stored, images), stored_preds)


@pytest.mark.slow
def test_karst_exports_merged_into_a_plain_timm_model(demo_runs: Path, tmp_path: Path, capsys):
    import timm

    from bench.cli import run_cli

    out = tmp_path / "karst"
    code = run_cli(["--workdir", str(demo_runs), "export", "karst/digits/s0", "--out", str(out), "--verify"])
    assert code == 0, capsys.readouterr().err
    assert "797 of 797 test predictions equal" in capsys.readouterr().out
    state = load_file(str(out / "model.safetensors"))
    assert not any("karst" in k.lower() or "kernel" in k for k in state)  # folded into plain linears
    assert json.loads((out / "config.json").read_text())["num_classes"] == 10
    _card_fields(out)

    stored = _stored(demo_runs, "karst/digits/s0")
    model = timm.create_model("vit_demo_tiny", num_classes=10)
    model.load_state_dict(state)  # strict: exactly timm's keys
    images, _, stored_preds = export.eval_split(stored)
    assert torch.equal(export.predict(model.eval(), stored, images), stored_preds)


@pytest.mark.slow
def test_dtl_exports_in_bench_format_and_refuses_merged(demo_runs: Path, tmp_path: Path, capsys):
    from bench.cli import run_cli

    args = ["--workdir", str(demo_runs), "export", "dtl/digits/s0"]
    assert run_cli([*args, "--format", "merged", "--out", str(tmp_path / "no")]) == 2
    assert "cannot merge" in capsys.readouterr().err and not any((tmp_path / "no").glob("*.safetensors"))
    out = tmp_path / "dtl"
    assert run_cli([*args, "--out", str(out)]) == 0
    resolved = json.loads((out / "resolved.json").read_text())
    assert resolved["spec"]["method"] == "dtl"
    _card_fields(out)

    stored = _stored(demo_runs, "dtl/digits/s0")
    model = export.load_bench_export(out)
    images, _, stored_preds = export.eval_split(stored)
    assert torch.equal(export.predict(model, stored, images), stored_preds)


def test_export_finds_runs_by_key_prefix_label_and_run_id_and_refuses_the_rest(cli, workdir: Path, noah_root: Path):
    base = ("run", "--suite", "tinyfolder", "--methods", "linear", "--seeds", "0,", "--data-root", str(noah_root))
    assert cli(*base, "--tasks", "alpha")[0] == 0
    assert cli(*base, "--tasks", "alpha", "--stage", "tune")[0] == 0  # a second run labelled linear/alpha/s0
    client = MlflowClient(default_tracking_uri(workdir))
    code, _, err = cli("export", "linear/alpha/s0", "--out", str(workdir / "x"))
    assert code == 2 and "2 different runs match 'linear/alpha/s0'" in err and "pass one run key" in err
    assert len(err.strip().splitlines()) == 1

    runs = {r.data.tags["bench.stage"]: r for r in Tracker(default_tracking_uri(workdir)).search("bench/tinyfolder")}
    final = runs["final"]
    key, run_id = final.data.tags["bench.run_key"], final.info.run_id
    assert export.find_run(client, key[:8]).info.run_id == run_id
    assert export.find_run(client, run_id).info.run_id == run_id

    code, _, err = cli("export", "nothing/like/this", "--out", str(workdir / "y"))
    assert code == 2 and "no finished run matches 'nothing/like/this'" in err and "bench runs --suite" in err

    code, _, err = cli("export", key, "--format", "peft", "--out", str(workdir / "z"))
    assert code == 2 and "does not run through peft" in err and "--format merged or --format bench" in err
    assert len(err.strip().splitlines()) == 1

    out = workdir / "linear"
    code, stdout, err = cli("export", key, "--out", str(out), "--verify")
    assert code == 0, err
    assert "exported linear/alpha/s0 as merged" in stdout and "15 of 15 test predictions equal" in stdout


def test_push_to_hub_fails_in_one_line_offline(cli, workdir: Path, noah_root: Path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    base = ("run", "--suite", "tinyfolder", "--methods", "linear", "--seeds", "0,", "--data-root", str(noah_root))
    assert cli(*base, "--tasks", "beta")[0] == 0
    out = workdir / "beta"
    code, stdout, err = cli("export", "linear/beta/s0", "--out", str(out), "--push-to-hub", "someone/beta-linear")
    assert code == 2
    assert (out / "model.safetensors").is_file() and "exported" in stdout  # the local export is kept
    assert "HF_HUB_OFFLINE is set" in err and "someone/beta-linear" in err
    assert len(err.strip().splitlines()) == 1


PEFT_METHODS = ("lora", "ia3", "loha", "lokr", "vera", "oft", "fourierft", "ln_tuning", "boft", "glora")
# LoRA's options on a task of their own, so that the run keeps a label lora/TASK/s0 (init=noah
# only changes A's starting values, so it exports as plain LoRA; PiSSA also changes the frozen weight)
LORA_OPTIONS = {"beta": ("init=pissa", "use_dora=true", "use_rslora=true")}


@pytest.fixture(scope="module")
def peft_runs(tmp_path_factory, mlflow_template):
    """Every peft-built method for one epoch on a generated three-class task (the tiny ViT of the
    demo), and LoRA with its options on another, in one store."""
    import shutil

    from bench.cli import run_cli

    from .conftest import write_task

    base = tmp_path_factory.mktemp("peft-export")
    workdir, root = base / "runs", base / "data"
    workdir.mkdir()
    shutil.copy(mlflow_template, workdir / "mlflow.db")
    for task, seed in (("alpha", 0), ("beta", 1)):
        write_task(root / task, num_classes=3, seed=seed)
    common = ["--workdir", str(workdir), "run", "--suite", "tinyfolder", "--seeds", "0,", "--epochs", "1"]
    common += ["--device", "cpu", "--data-root", str(root)]
    assert run_cli([*common, "--tasks", "alpha", "--methods", ",".join(PEFT_METHODS)]) == 0
    for task, options in LORA_OPTIONS.items():
        sets = [arg for option in options for arg in ("--set", f"lora.{option}")]
        assert run_cli([*common, "--tasks", task, "--methods", "lora", *sets]) == 0
    return workdir


PEFT_CASES = [f"{m}/alpha/s0" for m in PEFT_METHODS] + [f"lora/{task}/s0" for task in LORA_OPTIONS]


@pytest.mark.slow
@pytest.mark.parametrize("label", PEFT_CASES)
def test_every_peft_method_exports_through_peft_and_loads_back(peft_runs: Path, tmp_path: Path, label: str, capsys):
    """peft's own save_pretrained writes the adapter with the head; PeftModel.from_pretrained on a
    fresh backbone gives the run's predictions and, within float error, the run's logits."""
    from bench.cli import run_cli

    out = tmp_path / "peft"
    code = run_cli(["--workdir", str(peft_runs), "export", label, "--format", "peft", "--out", str(out), "--verify"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "15 of 15 test predictions equal" in captured.out
    config = json.loads((out / "adapter_config.json").read_text())
    method = label.split("/")[0]
    assert config["peft_type"] == method.upper() and config["modules_to_save"] == ["head"]
    saved = load_file(str(out / "adapter_model.safetensors"))
    assert any(k.startswith("base_model.model.head.") for k in saved) and len(saved) > 2

    stored = _stored(peft_runs, label)
    loaded = export.load_export(out, "peft", stored)
    trained, _, _ = export.rebuild_model(stored)
    images, _, _ = export.eval_split(stored)
    x = images[:8].float().div(255)  # the same input to both: the logits must agree
    with torch.no_grad():
        assert torch.allclose(loaded(x), trained(x), atol=1e-5)


def test_a_moved_work_directory_keeps_its_artifacts_and_exports_old_and_new_runs(
    workdir: Path, noah_root: Path, tmp_path: Path, capsys
):
    def bench(wd: Path, *args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = run_cli(["--workdir", str(wd), *args])
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    base = ("run", "--suite", "tinyfolder", "--methods", "linear", "--tasks", "alpha", "--data-root", str(noah_root))
    assert bench(workdir, *base, "--seeds", "0,", "--epochs", "1")[0] == 0
    moved = tmp_path / "moved"
    shutil.move(workdir, moved)
    code, out, err = bench(moved, *base, "--seeds", "0,1", "--epochs", "1")
    assert code == 0, err
    assert "1 run(s) trained, 1 already finished and reused" in out
    assert not workdir.exists()  # nothing is written to the old place
    for label in ("linear/alpha/s0", "linear/alpha/s1"):
        code, out, err = bench(moved, "export", label, "--out", str(tmp_path / label.replace("/", "-")), "--verify")
        assert code == 0, err
        assert "15 of 15 test predictions equal" in out
    for run in Tracker(default_tracking_uri(moved)).search("bench/tinyfolder"):
        assert run.info.artifact_uri.startswith((moved / "artifacts").resolve().as_uri() + "/")


def _timm_pipeline_inputs(folder: Path, stored: export.StoredRun, model=None) -> torch.Tensor:
    """The run's test images through timm's own preprocessing, as the export's config.json defines it."""
    from PIL import Image
    from timm.data import create_transform, resolve_data_config

    if model is not None:
        data_config = resolve_data_config(model=model)
    else:
        data_config = resolve_data_config(
            pretrained_cfg=json.loads((folder / "config.json").read_text())["pretrained_cfg"]
        )
    transform = create_transform(**data_config)
    root = Path(stored.resolved["data"]["task_dir"])
    batch = []
    for row in stored.predictions:
        with Image.open(root / row["path"]) as img:
            batch.append(transform(img.convert("RGB")))
    return torch.stack(batch)


def _logits_argmax(model, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x).argmax(1)


@pytest.mark.parametrize(("img_size", "resize"), [(32, None), (9, 14), (224, 256), (20, 23)])
def test_squash_crop_pct_makes_timms_eval_transform_decode_as_bench_does(tmp_path: Path, img_size, resize):
    """timm's ``crop_mode='squash'`` with the chosen ``crop_pct`` gives bench's pixels exactly, for a
    direct resize and for resize-then-centre-crop (9/(9/14) alone floors to 13)."""
    import numpy as np
    from PIL import Image
    from timm.data import create_transform

    from suites.images import decode_images
    from suites.lists import ListEntry

    path = tmp_path / "x.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (37, 51, 3), dtype=np.uint8)).save(path)
    expected, _ = decode_images([ListEntry(path, 0, "x")], resize or img_size, "bicubic", img_size if resize else None)
    pct = export.squash_crop_pct(img_size, resize)
    transform = create_transform((3, img_size, img_size), crop_pct=pct, crop_mode="squash", interpolation="bicubic")
    with Image.open(path) as img:
        got = transform(img.convert("RGB"))  # normalised with timm's defaults: undo it to compare pixels
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    assert torch.equal(torch.round((got * std + mean) * 255).to(torch.uint8), expected[0])


def test_a_merged_export_gives_timms_standard_pipeline_the_runs_inputs(cli, workdir: Path, noah_root: Path):
    """``timm.create_model("local-dir:…")`` + ``resolve_data_config`` + ``create_transform`` on the
    export turn the run's test images into the tensors the run scored, and give its predictions."""
    import timm

    import bench.backbone  # noqa: F401  (registers vit_demo_tiny in timm)
    from bench.train import Normalize

    base = ("run", "--suite", "tinyfolder", "--methods", "linear", "--seeds", "0,", "--data-root", str(noah_root))
    assert cli(*base, "--tasks", "alpha")[0] == 0
    out = workdir / "linear-merged"
    code, _, err = cli("export", "linear/alpha/s0", "--out", str(out))
    assert code == 0, err
    stored = _stored(workdir, "linear/alpha/s0")
    cfg = json.loads((out / "config.json").read_text())["pretrained_cfg"]
    assert cfg["crop_mode"] == "squash" and cfg["crop_pct"] == 1.0 and cfg["input_size"] == [3, 32, 32]

    model = timm.create_model(f"local-dir:{out}", pretrained=True)
    x = _timm_pipeline_inputs(out, stored, model)
    images, _, stored_preds = export.eval_split(stored)
    norm = stored.resolved["normalization"]
    assert torch.allclose(x, Normalize(tuple(norm["mean"]), tuple(norm["std"]))(images), atol=1e-5)
    assert torch.equal(_logits_argmax(model, x), stored_preds)


def test_exported_files_follow_the_users_umask(cli, workdir: Path, noah_root: Path):
    import os
    import stat

    base = ("run", "--suite", "tinyfolder", "--methods", "linear", "--seeds", "0,", "--data-root", str(noah_root))
    assert cli(*base, "--tasks", "beta")[0] == 0
    old = os.umask(0o022)
    try:
        for fmt in ("merged", "bench"):
            out = workdir / fmt
            assert cli("export", "linear/beta/s0", "--format", fmt, "--out", str(out))[0] == 0
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()}
            assert modes and set(modes.values()) == {0o644}, modes
    finally:
        os.umask(old)


@pytest.mark.slow
def test_demo_exports_reproduce_the_stored_predictions_through_timms_pipeline(demo_runs: Path, tmp_path: Path):
    """The demo's 797 test images through timm's ``create_transform``: the merged KARST model and the
    LoRA peft adapter (with its base's timm config) give the stored predictions, image for image."""
    import timm
    from peft import PeftModel

    import bench.backbone  # noqa: F401
    from bench.cli import run_cli

    merged = tmp_path / "karst"
    assert run_cli(["--workdir", str(demo_runs), "export", "karst/digits/s0", "--out", str(merged)]) == 0
    stored = _stored(demo_runs, "karst/digits/s0")
    model = timm.create_model(f"local-dir:{merged}", pretrained=True)
    preds = _logits_argmax(model, _timm_pipeline_inputs(merged, stored, model))
    assert len(preds) == 797
    assert torch.equal(preds, export.eval_split(stored)[2])

    adapter = tmp_path / "lora"
    assert (
        run_cli(["--workdir", str(demo_runs), "export", "lora/digits/s0", "--format", "peft", "--out", str(adapter)])
        == 0
    )
    stored = _stored(demo_runs, "lora/digits/s0")
    torch.manual_seed(0)
    base = timm.create_model("vit_demo_tiny", num_classes=10, img_size=32)
    model = PeftModel.from_pretrained(base, str(adapter))
    preds = _logits_argmax(model, _timm_pipeline_inputs(adapter, stored))
    assert torch.equal(preds, export.eval_split(stored)[2])
