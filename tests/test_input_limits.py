"""Inputs at the edge: seeds torch cannot tell apart, paths that block or leave their folder,
stored artifacts changed after the run, lists too large to decode. Each is one `error:` line."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest
import torch

from bench.errors import BenchError
from bench.seeds import MAX_SEED, MAX_SEEDS, parse_seeds
from bench.sweepfile import load_sweep_file
from suites.base import DataError
from suites.images import decode_images
from suites.lists import read_list
from suites.resolve import count_classes
from tests.test_cli_errors import _assert_one_line_error

# ---------------------------------------------------------------------------------------------
# seeds


def test_seed_two_to_the_32_would_repeat_seed_0():
    """Why the range stops at 2**32-1: torch's generator keeps a seed's low 32 bits."""
    same = torch.rand(4, generator=torch.Generator().manual_seed(2**32))
    assert torch.equal(same, torch.rand(4, generator=torch.Generator().manual_seed(0)))
    top = torch.rand(4, generator=torch.Generator().manual_seed(MAX_SEED))
    assert not torch.equal(top, torch.rand(4, generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("4294967296,", "seed 4294967296 is outside 0..4294967295"),
        ("0,4294967296", "seed 4294967296 is outside 0..4294967295"),
        ("1000000000000000000000000000000", "a seed count must be 1..1000"),
        ("1000000000000000000000000000000,", "outside 0..4294967295"),
        ("30000000", "asks for 30000000 seeds"),
        (",".join(map(str, range(MAX_SEEDS + 1))), f"at most {MAX_SEEDS}"),
        ("-1,", "seed -1 is outside"),
        ("1,1", "distinct"),
    ],
)
def test_seeds_out_of_range_or_too_many_are_refused(value: str, fragment: str):
    with pytest.raises(BenchError, match=None) as info:
        parse_seeds(value)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_seeds_in_range_are_kept():
    assert parse_seeds("3") == [0, 1, 2]
    assert parse_seeds(f"{MAX_SEED},") == [MAX_SEED]
    assert parse_seeds(str(MAX_SEEDS)) == list(range(MAX_SEEDS))


@pytest.mark.parametrize(
    ("seeds", "fragment"),
    [("30000000", "asks for 30000000 seeds"), ("[0, 4294967296]", "seed 4294967296 is outside")],
)
def test_sweep_file_seeds_get_the_same_checks(tmp_path: Path, seeds: str, fragment: str):
    path = tmp_path / "sweep.yaml"
    path.write_text(f"suite: demo\nmethods: [linear]\nseeds: {seeds}\n")
    with pytest.raises(BenchError) as info:
        load_sweep_file(path)
    assert fragment in str(info.value) and str(path) in str(info.value)


def test_cli_refuses_a_seed_count_at_once(cli):
    code, _, err = cli("run", "--suite", "demo", "--methods", "linear", "--seeds", "30000000")
    _assert_one_line_error(code, err, "--seeds '30000000'", "1..1000")
    code, _, err = cli("run", "--suite", "demo", "--methods", "linear", "--seeds", "1000000000000000000000000000000")
    _assert_one_line_error(code, err, "a seed count must be 1..1000")


# ---------------------------------------------------------------------------------------------
# messages are printed as text


def test_error_text_is_not_turned_into_emoji(cli):
    code, _, err = cli("run", "--suite", "demo", "--methods", ":x:", "--seeds", "1")
    line = _assert_one_line_error(code, err, "':x:'")
    assert "\u274c" not in line


# ---------------------------------------------------------------------------------------------
# files that block, links and paths that leave the data


def _task(noah_root: Path) -> Path:
    return noah_root / "alpha"


class _FifoWatch:
    """Replaces an image with a FIFO nothing writes to and, after ``patience`` seconds, releases
    any reader blocked on it (opening it for writing, then closing: the reader sees the end of
    the file), so a test that would hang fails instead."""

    def __init__(self, path: Path, patience: float = 20.0):
        os.unlink(path)
        os.mkfifo(path)
        self.path, self.blocked = path, False
        self._timer = threading.Timer(patience, self._release)
        self._timer.start()

    def _release(self) -> None:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)  # succeeds only with a reader waiting
        except OSError:
            return
        self.blocked = True
        os.close(fd)

    def stop(self) -> None:
        self._timer.cancel()


def test_image_that_is_a_fifo_is_refused_not_waited_on(noah_root: Path):
    entries = read_list(_task(noah_root), "test.txt", 3)
    watch = _FifoWatch(entries[0].path)
    try:
        with pytest.raises(DataError) as info:
            decode_images(entries, 16)
    finally:
        watch.stop()
    assert not watch.blocked, "decoding blocked on the FIFO"
    assert "test.txt:1" in str(info.value) and "not a regular file" in str(info.value)


def test_data_verify_reports_a_fifo_image(cli, noah_root: Path):
    entries = read_list(_task(noah_root), "test.txt", 3)
    watch = _FifoWatch(entries[1].path)
    try:
        code, out, _ = cli("data", "verify", "--suite", "folder", "--data-root", str(noah_root), "--json")
    finally:
        watch.stop()
    assert not watch.blocked, "bench data verify blocked on the FIFO"
    problems = [p for task in json.loads(out) for p in task["problems"]]
    assert code != 0
    assert any("not a regular file" in p and "test.txt:2" in p for p in problems), problems


def test_list_file_linked_outside_the_task_folder_is_refused(noah_root: Path, tmp_path: Path):
    secret = tmp_path / "secret.txt"
    secret.write_text("top-secret-first-line\n")
    task = _task(noah_root)
    (task / "test.txt").unlink()
    (task / "test.txt").symlink_to(secret)
    with pytest.raises(DataError) as info:
        read_list(task, "test.txt", 3)
    message = str(info.value)
    assert "test.txt is a link to" in message and "outside the task folder" in message
    assert "top-secret" not in message


def test_task_folder_that_is_a_link_still_reads(noah_root: Path, tmp_path: Path):
    """A linked task folder is common (data on another disk); only links leaving it are refused."""
    moved = tmp_path / "elsewhere"
    shutil.move(str(_task(noah_root)), moved)
    (noah_root / "alpha").symlink_to(moved)
    assert len(read_list(noah_root / "alpha", "test.txt", 3)) == 15


def test_one_class_task_is_refused(noah_root: Path):
    task = _task(noah_root)
    for name in ("train800.txt", "val200.txt", "train800val200.txt", "test.txt"):
        path = task / name
        path.write_text("".join(line.rsplit(" ", 1)[0] + " 0\n" for line in path.read_text().splitlines()))
    with pytest.raises(DataError) as info:
        count_classes(task, ["train800val200.txt", "test.txt"])
    assert "defines 1 class" in str(info.value) and "at least 2" in str(info.value)
    (task / "classes.txt").write_text("only\n")
    with pytest.raises(DataError, match="classes.txt defines 1 class"):
        count_classes(task, ["train800val200.txt"])


def test_cli_refuses_a_one_class_task(cli, noah_root: Path):
    (noah_root / "beta" / "classes.txt").write_text("only\n")
    code, _, err = cli(
        "run", "--suite", "tinyfolder", "--methods", "linear", "--seeds", "1", "--data-root", str(noah_root)
    )
    _assert_one_line_error(code, err, "classes.txt defines 1 class", "at least 2")


# ---------------------------------------------------------------------------------------------
# a list too large to decode


@pytest.mark.slow
def test_million_line_list_is_refused_before_decoding(noah_root: Path):
    task = _task(noah_root)
    lines = (task / "train800val200.txt").read_text().splitlines()
    (task / "big.txt").write_text("".join(lines[i % len(lines)] + "\n" for i in range(10**6)))
    entries = read_list(task, "big.txt", 3)
    assert len(entries) == 10**6
    import psutil

    side = int((psutil.virtual_memory().available / (3 * 10**6)) ** 0.5) + 8  # more than this machine holds
    with pytest.raises(DataError) as info:
        decode_images(entries, side)
    assert "big.txt" in str(info.value) and "1000000 images" in str(info.value) and "GiB" in str(info.value)


# ---------------------------------------------------------------------------------------------
# stored artifacts changed after the run


@pytest.fixture
def trained(cli, workdir: Path, noah_root: Path) -> Path:
    """One finished linear run on the tiny folder suite, in ``workdir``'s store."""
    code, _, err = cli(
        "run", "--suite", "tinyfolder", "--methods", "linear", "--seeds", "0,", "--tasks", "alpha",
        "--data-root", str(noah_root), "--device", "cpu",
    )  # fmt: skip
    assert code == 0, err
    return workdir


def _artifact(workdir: Path, name: str) -> Path:
    (path,) = [p for p in workdir.rglob(name) if "artifacts" in p.parts]
    return path


@pytest.mark.slow
def test_export_of_a_stored_tensor_with_the_wrong_shape_is_one_line(cli, trained: Path, tmp_path: Path):
    from safetensors.torch import load_file, save_file

    path = _artifact(trained, "trainable.safetensors")
    state = load_file(str(path))
    name = sorted(state)[0]
    state[name] = torch.zeros(*state[name].shape[:-1], state[name].shape[-1] + 1)
    save_file(state, str(path))
    code, _, err = cli("export", "linear/alpha/s0", "--format", "bench", "--out", str(tmp_path / "x"))
    _assert_one_line_error(code, err, f"stored tensor {name} has shape", "train the run again")


@pytest.mark.slow
def test_verify_refuses_stored_prediction_paths_that_leave_the_task_folder(cli, trained: Path, tmp_path: Path):
    secret = tmp_path / "secret.png"
    secret.write_bytes(b"not for bench")
    path = _artifact(trained, "predictions.csv")
    lines = path.read_text().splitlines()
    index, _, label, prediction = lines[1].split(",")
    lines[1] = ",".join([index, os.path.relpath(secret, noah := trained.parent / "data" / "alpha"), label, prediction])
    assert ".." in lines[1] and noah.is_dir()
    path.write_text("\n".join(lines) + "\n")
    code, _, err = cli("export", "linear/alpha/s0", "--format", "bench", "--out", str(tmp_path / "x"), "--verify")
    _assert_one_line_error(code, err, "predictions.csv:0", "escapes the task folder")


# ---------------------------------------------------------------------------------------------
# a --ray-address where something else listens


@pytest.mark.slow
def test_ray_address_of_a_plain_tcp_listener_fails_in_bounded_time(workdir: Path, noah_root: Path, ray_tmp):
    import socket
    import subprocess
    import time

    from tests.conftest import bench_subprocess

    listener = socket.create_server(("127.0.0.1", 0))  # accepts, never answers: not Ray
    port = listener.getsockname()[1]
    held: list[socket.socket] = []
    threading.Thread(target=lambda: held.extend(listener.accept()[0] for _ in range(8)), daemon=True).start()
    started = time.monotonic()
    proc = bench_subprocess(
        "--workdir", str(workdir), "run", "--suite", "demo", "--methods", "linear", "--seeds", "1",
        "--executor", "ray", "--ray-address", f"127.0.0.1:{port}",
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        _, err = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("bench kept trying a --ray-address that is no Ray cluster for 90 s")
    finally:
        listener.close()
    assert time.monotonic() - started < 60
    _assert_one_line_error(proc.returncode, err, f"--ray-address 127.0.0.1:{port}", "not a Ray cluster")


# ---------------------------------------------------------------------------------------------
# a disk that fills up mid-sweep


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 24 MiB tmpfs of its own (mounting needs root; skipped where it is not permitted)."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({done.stderr.decode().strip() or 'mount failed'}); needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(disk: Path, leave: int) -> Path:
    """A file taking all but ``leave`` bytes of ``disk``."""
    filler = disk / "filler"
    free = shutil.disk_usage(disk).free
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


@pytest.mark.slow
def test_full_disk_mid_sweep_is_one_line_and_the_store_survives(
    small_disk: Path, mlflow_template: Path, noah_root: Path, capsys
):
    from bench.cli import run_cli

    workdir = small_disk / "runs"
    workdir.mkdir()
    shutil.copy(mlflow_template, workdir / "mlflow.db")

    def sweep(seeds: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = run_cli(
            ["--workdir", str(workdir), "run", "--suite", "tinyfolder", "--methods", "linear", "--seeds", seeds,
             "--tasks", "alpha", "--data-root", str(noah_root), "--device", "cpu"]
        )  # fmt: skip
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    code, _, err = sweep("0,1")
    assert code == 0, err
    filler = _fill(small_disk, leave=64 * 1024)
    code, _, err = sweep("0,1,2,3,4,5,6,7")
    line = _assert_one_line_error(code, err, "is full", "--workdir", "finished runs are kept")
    assert str(small_disk) in line
    assert "sqlite" not in err and "SELECT" not in err and "INSERT" not in err
    filler.unlink()
    code, out, err = sweep("0,1,2,3,4,5,6,7")  # the same command again, with room: the rest train
    assert code == 0, err
    assert "already finished and reused" in out
    reused = int(out.split(" already finished")[0].rsplit(" ", 1)[-1])
    assert reused >= 2
    code, out, err = (
        run_cli(["--workdir", str(workdir), "runs", "--suite", "tinyfolder", "--json"]),
        *capsys.readouterr(),
    )
    rows = [r for r in json.loads(out) if r["status"] == "FINISHED"]
    assert sorted(r["seed"] for r in rows) == list(range(8))


# ---------------------------------------------------------------------------------------------
# a large store: a small sweep looks up its own run keys


@pytest.mark.parametrize("keyed_max", [100, 2])
def test_runs_by_key_for_a_sweep_matches_the_whole_read(workdir: Path, monkeypatch, keyed_max: int):
    """Looking up a sweep's keys one query each finds exactly what reading the experiment finds
    for those keys (every status, repeated records of one key), above and below the threshold."""
    from bench import schema
    from bench.tracking import Tracker, default_tracking_uri

    monkeypatch.setattr(Tracker, "KEYED_LOOKUP_MAX", keyed_max)
    tracker = Tracker(default_tracking_uri(workdir))
    keys = [f"{i:064x}" for i in range(6)]
    for i, key in enumerate([*keys, keys[0]]):  # key 0 recorded twice: a killed run and its rerun
        run_id = tracker.start_child("bench/scale", None, f"r{i}", {schema.RUN_KEY: key}, {"seed": str(i)})
        if i != 3:  # run 3 stays RUNNING, as a killed process leaves it
            tracker.end_child(run_id, "KILLED" if i == 0 else "FINISHED")
    everything = tracker.runs_by_key("bench/scale")
    asked = [keys[0], keys[3], keys[5], "f" * 64]  # the last one was never recorded

    def ids(groups: dict) -> dict:
        return {k: sorted(r.info.run_id for r in v) for k, v in groups.items()}

    found = tracker.runs_by_key("bench/scale", asked)
    assert {k: v for k, v in ids(found).items() if k in asked} == {k: ids(everything)[k] for k in asked[:3]}
    if keyed_max >= len(asked):  # looked up key by key: nothing else is read
        assert set(found) == set(asked[:3])
    assert len(found[keys[0]]) == 2 and found[keys[3]][0].info.status == "RUNNING"
