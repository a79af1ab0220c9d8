"""Adding a method: the attention-bias example installs as its own package and registers by entry point."""

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
def plugin_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/attn_bias installed with pip into a private folder (the environment stays untouched)."""
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
            str(REPO / "examples" / "attn_bias"),
        ],
        check=True,
        cwd=build,
        capture_output=True,
    )
    assert list(target.glob("bench_attn_bias-*.dist-info"))
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


def test_attn_bias_plugin_is_found_checked_and_runs(plugin_site: Path, workdir: Path):
    listed = _bench(plugin_site, "methods", "list", "--json", workdir=workdir)
    [plugin] = [m for m in json.loads(listed.stdout) if m["name"] == "attn_bias"]
    assert plugin["module"] == "bench_attn_bias"

    check = _bench(plugin_site, "methods", "check", "attn_bias", workdir=workdir)
    assert check.returncode == 0, check.stdout + check.stderr

    info = _bench(
        plugin_site, "methods", "info", "attn_bias", "--backbone", "vit_base_patch16_224", "--json", workdir=workdir
    )
    # ViT-B/16: 12 blocks x (qkv bias 2304 + proj bias 768)
    assert json.loads(info.stdout)["trainable_params"] == 12 * (2304 + 768)

    run = _bench(
        plugin_site,
        "run",
        "--suite",
        "demo",
        "--methods",
        "attn_bias",
        "--seeds",
        "1",
        "--epochs",
        "1",
        workdir=workdir,
    )
    assert run.returncode == 0, run.stderr
    assert "attn_bias" in run.stdout and "1 run(s) trained" in run.stdout
