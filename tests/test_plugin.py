"""Adding a method: the BitFit example installs as its own package and registers by entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bitfit_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/bitfit installed with pip into a private folder (the environment stays untouched)."""
    target = tmp_path_factory.mktemp("site")
    build = tmp_path_factory.mktemp("build")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(REPO / "examples" / "bitfit"),
        ],
        check=True,
        cwd=build,
        capture_output=True,
    )
    assert list(target.glob("bench_bitfit-*.dist-info"))
    return target


def _bench(site: Path, *args: str, workdir: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "bench", "--workdir", str(workdir), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_bitfit_plugin_is_found_checked_and_runs(bitfit_site: Path, workdir: Path):
    listed = _bench(bitfit_site, "methods", "list", "--json", workdir=workdir)
    [bitfit] = [m for m in json.loads(listed.stdout) if m["name"] == "bitfit"]
    assert bitfit["module"] == "bench_bitfit"

    check = _bench(bitfit_site, "methods", "check", "bitfit", workdir=workdir)
    assert check.returncode == 0, check.stdout + check.stderr

    info = _bench(
        bitfit_site, "methods", "info", "bitfit", "--backbone", "vit_base_patch16_224", "--json", workdir=workdir
    )
    # ViT-B/16: 12 blocks x (qkv 2304 + proj 768 + 2 norms 1536 + fc1 3072 + fc2 768) + patch embed + final norm
    assert json.loads(info.stdout)["trainable_params"] == 12 * (2304 + 768 + 1536 + 3072 + 768) + 768 + 768

    run = _bench(
        bitfit_site, "run", "--suite", "demo", "--methods", "bitfit", "--seeds", "1", "--epochs", "1", workdir=workdir
    )
    assert run.returncode == 0, run.stderr
    assert "bitfit" in run.stdout and "1 run(s) trained" in run.stdout
