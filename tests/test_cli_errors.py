"""Every user error: one line naming the bad input and the fix, non-zero exit, no traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.tracking import Tracker, default_tracking_uri


def _assert_one_line_error(code: int, err: str, *fragments: str) -> str:
    """Exit 2; the error is a single line starting with `error:` (progress lines may precede it).
    Returns that line."""
    assert code == 2, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    assert err.rstrip().endswith(errors[0].rstrip()), "the error is the last thing printed"
    for fragment in fragments:
        assert fragment in errors[0], (fragment, errors[0])
    return errors[0]


def _run(cli, root: Path, *extra: str):
    return cli("run", "--suite", "tinyfolder", "--methods", "linear", "--seeds", "1", "--data-root", str(root), *extra)


def test_missing_data_root(cli, tmp_path: Path):
    code, _, err = _run(cli, tmp_path / "nope")
    _assert_one_line_error(code, err, "data root", "nope", "does not exist", "--data-root")


def test_missing_list_file(cli, noah_root: Path):
    (noah_root / "alpha" / "train800val200.txt").unlink()
    code, _, err = _run(cli, noah_root, "--tasks", "alpha")
    _assert_one_line_error(code, err, "alpha/train800val200.txt is missing")


@pytest.mark.parametrize(
    ("line", "fragments"),
    [
        ("images/test/000000.png", ("test.txt:16", "expected '<relative image path> <integer label>'")),
        ("images/test/000000.png 7", ("test.txt:16", "label 7 is out of range", "0..2")),
        ("../beta/images/test/000000.png 0", ("test.txt:16", "escapes the task folder")),
    ],
)
def test_bad_list_lines(cli, noah_root: Path, line: str, fragments: tuple[str, ...]):
    with (noah_root / "alpha" / "test.txt").open("a") as f:
        f.write(line + "\n")
    (noah_root / "alpha" / "classes.txt").write_text("a\nb\nc\n")
    code, _, err = _run(cli, noah_root, "--tasks", "alpha")
    _assert_one_line_error(code, err, *fragments)


def test_unknown_names(cli, noah_root: Path):
    code, _, err = cli("run", "--suite", "nosuch", "--methods", "lora", "--seeds", "1")
    _assert_one_line_error(code, err, "unknown suite 'nosuch'", "demo", "vtab1k")
    code, _, err = _run(cli, noah_root, "--tasks", "gamma")
    _assert_one_line_error(code, err, "unknown task 'gamma'", "alpha", "beta")
    code, _, err = cli(
        "run", "--suite", "tinyfolder", "--methods", "lora,lorra", "--seeds", "1", "--data-root", str(noah_root)
    )
    _assert_one_line_error(code, err, "unknown method 'lorra'", "bench methods list")
    code, _, err = cli("methods", "info", "nosuch")
    _assert_one_line_error(code, err, "unknown method 'nosuch'")
    code, _, err = _run(cli, noah_root, "--seeds", "x")
    _assert_one_line_error(code, err, "--seeds 'x'")
    code, _, err = cli(
        "run",
        "--suite",
        "tinyfolder",
        "--methods",
        "lora",
        "--seeds",
        "1",
        "--data-root",
        str(noah_root),
        "--set",
        "lora.rank=big",
    )
    _assert_one_line_error(code, err, "rank='big' is not a valid int")
    code, _, err = _run(cli, noah_root, "--backbone", "vit_nonexistent")
    _assert_one_line_error(code, err, "unknown backbone 'vit_nonexistent'")


def test_unreadable_image_fails_its_task_runs_and_the_others_finish(
    cli, workdir: Path, noah_root: Path, monkeypatch: pytest.MonkeyPatch
):
    import bench.cache

    decoded: list[str] = []
    real = bench.cache.decode_images

    def counting(entries, *args, **kwargs):  # the real decoder, counted per task
        decoded.append(entries[0].path.parts[-4])
        return real(entries, *args, **kwargs)

    monkeypatch.setattr(bench.cache, "decode_images", counting)
    (noah_root / "beta" / "images" / "train800" / "000003.png").write_bytes(b"this is not a png")
    code, _, err = cli(
        "run", "--suite", "tinyfolder", "--methods", "linear", "--seeds", "2", "--data-root", str(noah_root)
    )
    assert decoded.count("beta") == 1  # the bad task is decoded once, not once per run
    _assert_one_line_error(code, err, "2 of 4 run(s) failed", "train800val200.txt:4", "000003.png cannot be read")
    failed = [line for line in err.splitlines() if line.startswith("failed: ")]
    assert len(failed) == 2 and all(line.startswith("failed: linear/beta/") for line in failed), err
    assert all("train800val200.txt:4" in line and "000003.png cannot be read" in line for line in failed)
    runs = Tracker(default_tracking_uri(workdir)).search("bench/tinyfolder")
    status = {(r.data.tags["bench.task"], r.info.status) for r in runs}
    assert status == {("alpha", "FINISHED"), ("beta", "FAILED")} and len(runs) == 4
    assert all(
        "replace the file or delete its line" in r.data.tags["bench.error"] for r in runs if r.info.status == "FAILED"
    )
    [sweep] = Tracker(default_tracking_uri(workdir)).search("bench/tinyfolder", kind="sweep")
    assert sweep.info.status == "FAILED" and sweep.data.tags["bench.trained"] == "2"
    assert sweep.data.tags["bench.failed"] == "2"


def test_missing_image_file(cli, noah_root: Path):
    (noah_root / "alpha" / "images" / "test" / "000002.png").unlink()
    code, _, err = _run(cli, noah_root, "--tasks", "alpha")
    _assert_one_line_error(code, err, "test.txt:3", "000002.png does not exist")


def test_usage_errors_exit_non_zero(cli):
    code, _, err = cli("run", "--methods", "lora")
    assert code == 2 and "Missing option '--suite'" in err and "Traceback" not in err


def test_a_method_config_that_does_not_fit_the_backbone_fails_before_training(cli, workdir: Path, noah_root: Path):
    code, _, err = cli(
        "run",
        "--suite",
        "tinyfolder",
        "--methods",
        "linear,sparse_tuning",
        "--seeds",
        "1",
        "--data-root",
        str(noah_root),
        "--set",
        "sparse_tuning.drop_blocks=3,6,9",
    )
    _assert_one_line_error(code, err, "drop_blocks [6, 9] are not blocks of a 4-block ViT")
    assert Tracker(default_tracking_uri(workdir)).search("bench/tinyfolder") == []  # nothing started


def test_set_for_a_method_not_in_the_sweep_is_refused(cli, noah_root: Path):
    code, _, err = _run(cli, noah_root, "--set", "karst.rank=4")
    _assert_one_line_error(code, err, "--set names method(s) karst that are not in --methods")


def _claim_size(png: Path, width: int, height: int) -> None:
    """Rewrite a PNG's header to claim another size (a decompression bomb costs nothing to make)."""
    import struct
    import zlib

    data = bytearray(png.read_bytes())
    ihdr = data[12:29]  # chunk type + 13 bytes of IHDR data
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    png.write_bytes(bytes(data))


def test_an_image_claiming_20000_pixels_a_side_is_a_data_error(cli, noah_root: Path):
    _claim_size(noah_root / "alpha" / "images" / "test" / "000004.png", 20000, 20000)
    code, _, err = _run(cli, noah_root, "--tasks", "alpha")
    _assert_one_line_error(code, err, "test.txt:5", "000004.png is too large to decode safely", "delete its line")


def test_a_backbone_that_is_not_a_vit(cli, noah_root: Path):
    code, _, err = _run(cli, noah_root, "--backbone", "resnet18")
    _assert_one_line_error(code, err, "backbone 'resnet18' is a ResNet", "ViT or Swin")
    code, _, err = cli("methods", "budget", "--budget", "0.3M", "--backbone", "resnet18")
    _assert_one_line_error(code, err, "backbone 'resnet18' is a ResNet")


@pytest.mark.parametrize(
    ("setting", "fragments"),
    [
        ("lora.alpha=inf", ("lora alpha=inf is not a finite number",)),
        ("lora.alpha=nan", ("lora alpha=nan is not a finite number",)),
        ("lora.alpha=1e30", ("lora alpha=1e+30 is out of range", "(0, 800]")),
        ("lora.alpha=0", ("lora alpha=0 is out of range",)),
        ("kadaptation.scale=1e9", ("kadaptation scale=1e+09 is out of range", "(0, 10000]")),
        ("karst.alpha=-1", ("karst alpha=-1 is out of range", "(0, 800]")),
    ],
)
def test_method_values_outside_their_range(cli, workdir: Path, noah_root: Path, setting: str, fragments):
    method = setting.split(".")[0]
    code, _, err = cli(
        "run", "--suite", "tinyfolder", "--methods", method, "--seeds", "1", "--data-root", str(noah_root),
        "--set", setting,
    )  # fmt: skip
    _assert_one_line_error(code, err, *fragments)
    assert Tracker(default_tracking_uri(workdir)).search("bench/tinyfolder") == []


def test_image_sizes_a_backbone_cannot_take(cli):
    code, _, err = cli("methods", "info", "lora", "--backbone", "vit_demo_tiny", "--img-size", "2")
    _assert_one_line_error(code, err, "--img-size 2 is smaller than the 4-pixel patches", "at least 4")
    code, _, err = cli("methods", "info", "lora", "--backbone", "vit_demo_tiny", "--img-size", "-4")
    _assert_one_line_error(code, err, "--img-size -4 must be a positive number")


def test_a_tracking_uri_in_a_missing_folder_is_not_created(cli, tmp_path: Path):
    code, _, err = cli("runs", "--suite", "demo", "--tracking-uri", f"sqlite:///{tmp_path}/no/such/mlflow.db")
    _assert_one_line_error(code, err, f"folder {tmp_path}/no/such does not exist")
    assert not (tmp_path / "no").exists()
    # a writing command (bench run, tune) is refused too, naming the missing folder
    from bench.errors import BenchError
    from bench.tracking import Tracker

    with pytest.raises(BenchError, match=f"folder {tmp_path}/no/such does not exist"):
        Tracker(f"sqlite:///{tmp_path}/no/such/mlflow.db")
    assert not (tmp_path / "no").exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "other backbone"])
def test_a_bad_checkpoint_fails_before_any_run_is_recorded(cli, workdir: Path, noah_root: Path, damage: str):
    from safetensors.torch import save_file

    from bench.backbone import create_backbone

    path = noah_root.parent / ("weights.pth" if damage == "garbage" else "weights.safetensors")
    name = "vit_tiny_patch16_224" if damage == "other backbone" else "vit_demo_tiny"
    state = {k: v.contiguous() for k, v in create_backbone(name, num_classes=0).state_dict().items()}
    save_file(state, str(path))
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x80\x04 not a pickle" * 50)
    code, _, err = _run(cli, noah_root, "--checkpoint", str(path))
    expected = "does not fit backbone 'vit_demo_tiny'" if damage == "other backbone" else "cannot be read"
    _assert_one_line_error(code, err, f"checkpoint {path}", expected)
    assert Tracker(default_tracking_uri(workdir)).search("bench/tinyfolder") == []
    assert Tracker(default_tracking_uri(workdir)).search("bench/tinyfolder", kind="sweep") == []


def _folder_run(cli, root: Path):
    return cli("run", "--suite", "folder", "--methods", "linear", "--seeds", "1", "--data-root", str(root))


def test_the_folder_suite_offline_fails_at_once(cli, workdir: Path, noah_root: Path, monkeypatch):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(workdir / "empty-hf-home"))  # no cached weights to fall back on
    started = time.monotonic()
    code, _, err = _folder_run(cli, noah_root)
    assert time.monotonic() - started < 5
    _assert_one_line_error(code, err, "HF_HUB_OFFLINE is set", "--checkpoint PATH")
    assert Tracker(default_tracking_uri(workdir)).search("bench/folder") == []


def test_the_folder_suite_with_the_hub_unreachable_fails_at_once(cli, workdir: Path, noah_root: Path, monkeypatch):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens
    monkeypatch.setenv("HF_HOME", str(workdir / "empty-hf-home"))
    started = time.monotonic()
    code, _, err = _folder_run(cli, noah_root)
    assert time.monotonic() - started < 5
    _assert_one_line_error(code, err, "cannot reach the Hugging Face Hub at http://127.0.0.1:9", "--checkpoint PATH")


def test_a_stray_test_label_does_not_size_the_head(cli, workdir: Path, noah_root: Path):
    with (noah_root / "alpha" / "test.txt").open("a") as f:
        f.write("images/test/000000.png 999\n")
    code, _, err = _run(cli, noah_root, "--tasks", "alpha")
    _assert_one_line_error(code, err, "alpha/test.txt:16", "label 999 is out of range", "0..2", "classes.txt")
    assert Tracker(default_tracking_uri(workdir)).search("bench/tinyfolder") == []


def test_a_class_missing_from_training_is_refused(cli, noah_root: Path):
    lists = noah_root / "beta"
    for name in ("train800.txt", "val200.txt", "train800val200.txt", "test.txt"):
        lines = (lists / name).read_text().splitlines()
        (lists / name).write_text("\n".join(ln[:-1] + "3" if ln.endswith(" 1") else ln for ln in lines) + "\n")
    code, _, err = _run(cli, noah_root, "--tasks", "beta")
    _assert_one_line_error(code, err, "train800val200.txt:2", "label 3 implies 4 classes", "no example of class 1, 2")


def test_classes_txt_states_the_class_count(cli, noah_root: Path):
    with (noah_root / "alpha" / "test.txt").open("a") as f:
        f.write("images/test/000000.png 4\n")
    (noah_root / "alpha" / "classes.txt").write_text("a\nb\nc\nd\ne\n")
    code, out, err = _run(cli, noah_root, "--tasks", "alpha", "--epochs", "1")
    assert code == 0, err
    assert "1 run(s) trained" in out


class _Payload:
    """A pickle that runs a command when loaded: what a malicious .pth carries."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_pickle_checkpoint_is_refused_unexecuted(cli, workdir: Path, noah_root: Path, tmp_path: Path):
    import torch

    marker = tmp_path / "executed"
    path = tmp_path / "weights.pth"
    torch.save({"pos_embed": _Payload(marker)}, path)
    code, _, err = _run(cli, noah_root, "--checkpoint", str(path))
    _assert_one_line_error(code, err, f"checkpoint {path} cannot be read", "weights-only torch state dict")
    assert not marker.exists()
    assert Tracker(default_tracking_uri(workdir)).search("bench/tinyfolder") == []
