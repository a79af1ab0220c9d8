"""The other commands: demo, listings, method info/check, data verify and fetch, vtab1k offline."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import save_file

from bench.tracking import Tracker, default_tracking_uri
from suites import DataError
from suites.fetch import extract_task_folders, fetch_suite
from tests.conftest import write_task


def test_demo_suite_runs_from_nothing(cli, workdir: Path):
    code, out, err = cli("run", "--suite", "demo", "--methods", "lora,linear", "--seeds", "2", "--epochs", "2")
    assert code == 0, err
    assert "test accuracy over seeds" in out and "4 run(s) trained" in out
    # each run's line gives its time and, while runs remain, the time left (also without a terminal)
    assert err.count("(trained in ") == 4 and "3 left, about" in err and "1 left, about" in err
    digits = workdir / "data" / "demo" / "digits"
    counts = {
        n: len((digits / n).read_text().splitlines())
        for n in ("train800.txt", "val200.txt", "train800val200.txt", "test.txt")
    }
    assert counts == {"train800.txt": 800, "val200.txt": 200, "train800val200.txt": 1000, "test.txt": 797}
    runs = Tracker(default_tracking_uri(workdir)).search("bench/demo")
    assert len(runs) == 4 and all(r.data.tags["bench.backbone"] == "vit_demo_tiny" for r in runs)
    assert all(r.data.metrics["test/acc"] > 0.1 for r in runs)  # above chance (10 classes)


def test_methods_list_info_check(cli):
    code, out, _ = cli("methods", "list", "--json")
    names = {m["name"]: m for m in json.loads(out)}
    assert code == 0 and {"linear", "full", "lora"} <= set(names)
    assert names["lora"]["defaults"] == {
        "rank": 8,
        "alpha": None,
        "dropout": 0.0,
        "targets": "qkv",
        "use_dora": False,
        "use_rslora": False,
        "init": "peft",
    }

    code, out, _ = cli("methods", "info", "lora", "--backbone", "vit_base_patch16_224", "--json")
    info = json.loads(out)
    assert code == 0 and info["trainable_params"] == 294_912 == info["trainable_params_built"]
    code, out, _ = cli("methods", "info", "lora", "--backbone", "vit_small_patch16_224", "--set", "rank=4", "--json")
    assert json.loads(out)["trainable_params"] == 4 * 12 * (384 + 1152)

    code, out, _ = cli("methods", "check", "lora", "--json")
    assert code == 0 and all(r["passed"] for r in json.loads(out))


def test_suites_list_and_info(cli):
    code, out, _ = cli("suites", "list", "--json")
    assert code == 0 and {"vtab1k", "folder", "demo"} <= {s["name"] for s in json.loads(out)}
    code, out, _ = cli("suites", "info", "vtab1k", "--json")
    info = json.loads(out)
    assert info["preset"]["lr"] == 1e-3 and info["preset"]["epochs"] == 100 and info["preset"]["drop_path"] == 0.1
    assert info["default_backbone"] == "vit_base_patch16_224.orig_in21k"
    assert {t["name"]: t["num_classes"] for t in info["tasks"]}["sun397"] == 397
    code, out, _ = cli("suites", "info", "vtab1k")
    assert code == 0 and "smallnorb_ele" in out


def test_data_verify_reports_every_problem(cli, noah_root: Path):
    code, out, _ = cli("data", "verify", "--suite", "folder", "--data-root", str(noah_root), "--json")
    reports = json.loads(out)
    assert code == 0 and all(r["ok"] for r in reports) and len(reports) == 2
    assert reports[0]["lines"] == {"train800.txt": 24, "val200.txt": 9, "train800val200.txt": 33, "test.txt": 15}
    assert reports[0]["images_checked"] == 48
    # the same fingerprint a run of that stage records
    from suites import get_stage, get_suite, resolve_tasks

    [alpha] = resolve_tasks(get_suite("folder"), noah_root, ["alpha"], get_stage("final"))
    assert reports[0]["fingerprints"] == {
        "tune": alpha.fingerprint(get_stage("tune")),
        "final": alpha.fingerprint(get_stage("final")),
    }

    (noah_root / "alpha" / "images" / "test" / "000001.png").write_bytes(b"broken")
    (noah_root / "beta" / "val200.txt").unlink()
    code, out, _ = cli("data", "verify", "--suite", "folder", "--data-root", str(noah_root), "--json")
    problems = {r["task"]: r["problems"] for r in json.loads(out)}
    assert code == 1
    assert any("test.txt:2" in p and "cannot be read" in p for p in problems["alpha"])
    assert any("val200.txt is missing" in p for p in problems["beta"])


def test_data_verify_checks_vtab_split_sizes(cli, tmp_path: Path):
    write_task(tmp_path / "dtd", num_classes=3)
    code, out, _ = cli(
        "data", "verify", "--suite", "vtab1k", "--data-root", str(tmp_path), "--tasks", "dtd,kitti", "--json"
    )
    reports = {r["task"]: r for r in json.loads(out)}
    assert code == 1
    assert "train800.txt has 24 lines, expected 800" in " ".join(reports["dtd"]["problems"])
    assert "no folder named kitti" in reports["kitti"]["problems"][0]


def test_fetch_extracts_noah_folders_and_refuses_escapes(tmp_path: Path):
    src = write_task(tmp_path / "src" / "vtab-1k" / "dtd")
    archive = tmp_path / "vtab-1k.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in src.rglob("*"):
            zf.write(p, p.relative_to(tmp_path / "src"))
    root = extract_task_folders(archive, tmp_path / "out")
    assert root == tmp_path / "out" / "vtab-1k" and (root / "dtd" / "test.txt").is_file()

    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("../outside.txt", "x")
    with pytest.raises(DataError, match="escaping the target folder"):
        extract_task_folders(evil, tmp_path / "out2")
    with pytest.raises(DataError, match="no public source"):
        fetch_suite("folder", tmp_path / "x")
    with pytest.raises(DataError, match="could not download vtab-1k.zip .* --data-root"):
        fetch_suite("vtab1k", tmp_path / "x")  # HF_HUB_OFFLINE=1 in tests


def test_vtab1k_protocol_offline_with_a_checkpoint(cli, workdir: Path, tmp_path: Path):
    """The real vtab1k preset (224 px, bicubic) on a local folder with a local backbone file."""
    root = tmp_path / "vtab"
    write_task(root / "eurosat", num_classes=10, sizes={"train800": 20, "val200": 10, "test": 10}, img_size=40)
    torch.manual_seed(0)
    backbone = timm.create_model("vit_tiny_patch16_224", num_classes=0)
    ckpt = tmp_path / "vit_tiny.safetensors"
    save_file(backbone.state_dict(), str(ckpt))
    code, out, err = cli(
        "run",
        "--suite",
        "vtab1k",
        "--methods",
        "lora",
        "--seeds",
        "1",
        "--tasks",
        "eurosat",
        "--data-root",
        str(root),
        "--backbone",
        "vit_tiny_patch16_224",
        "--checkpoint",
        str(ckpt),
        "--epochs",
        "1",
    )
    assert code == 0, err
    [r] = Tracker(default_tracking_uri(workdir)).search("bench/vtab1k")
    assert r.data.tags["bench.task"] == "eurosat" and r.data.tags["bench.group"] == "specialized"
    assert r.data.tags["bench.checkpoint"].startswith("sha256:")
    assert r.data.params["hp.img_size"] == "224" and r.data.params["hp.interpolation"] == "bicubic"
    assert r.data.params["hp.epochs"] == "1" and r.data.params["hp.warmup_epochs"] == "0"
    assert r.data.params["num_classes"] == "10"
    assert r.data.metrics["params/trainable"] == 12 * 8 * (192 + 576)


def test_methods_info_counts_at_the_runs_image_size(cli):
    """Regression: full fine-tuning's count includes the position embedding, whose size
    follows the input size. ViT-S/14 DINOv2 defaults to 518 px, runs use the preset's 224 px, and
    `methods info` must be able to report the count the runs log."""

    code, out, err = cli("methods", "info", "full", "--backbone", "vit_small_patch14_dinov2", "--json")
    assert code == 0, err
    default = json.loads(out)["trainable_params"]
    code, out, err = cli(
        "methods", "info", "full", "--backbone", "vit_small_patch14_dinov2", "--img-size", "224", "--json"
    )
    assert code == 0, err
    at_224 = json.loads(out)
    with torch.device("meta"):
        model = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=224, num_classes=0)
    assert at_224["trainable_params"] == at_224["trainable_params_built"] == sum(p.numel() for p in model.parameters())
    assert default - at_224["trainable_params"] == (37 * 37 - 16 * 16) * 384  # the position grid, 518 vs 224 px


def test_help_prints_method_entries_with_their_brackets(cli):
    """rich would read karst[rescale=none] as markup and print "karst"; the help keeps it literal."""
    from bench.cli_reference import help_text

    def flat(text: str) -> str:  # the help's words, without the panel borders
        return " ".join(text.replace("│", " ").split())

    assert "a variant karst[rescale=none]; a composition" in flat(help_text(("run",)))
    assert "variants as karst[rescale=none]; required" in flat(help_text(("tune",)))
    assert "variant (karst[kernels=4])" in flat(help_text(("methods", "info")))
    reference = (Path(__file__).parents[1] / "docs" / "reference" / "cli.md").read_text()
    assert "a variant karst[rescale=none]; a composition" in flat(reference)


def test_version(cli):
    from bench import __version__

    code, out, _ = cli("--version")
    assert code == 0 and out.strip() == f"bench {__version__}"


@pytest.mark.slow
def test_the_cli_module_imports_no_heavy_library():
    """``bench --help``, ``--version`` and ``suites list`` stay quick: torch, mlflow, optuna and ray load
    only inside the commands that need them."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from bench.cli import run_cli\n"
        "for args in (['--version'], ['--help'], ['suites', 'list']):\n"
        "    run_cli(args)\n"
        "print(sorted(m for m in ('torch', 'mlflow', 'optuna', 'ray', 'timm', 'pandas') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_creating_a_tracking_store_prints_nothing(tmp_path: Path, capfd):
    """MLflow logs its migrations at INFO ("Creating initial MLflow database tables..."); a user's
    first command shows none of it."""
    Tracker(default_tracking_uri(tmp_path))
    captured = capfd.readouterr()
    assert (tmp_path / "mlflow.db").is_file()
    assert "mlflow.store.db.utils" not in captured.err and "database tables" not in captured.err
