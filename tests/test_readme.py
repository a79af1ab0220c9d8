"""Every command in the README works as written, except the install line and `pytest` itself.

The quick start runs in a fresh folder, in order. The VTAB-1K lines need the dataset, the
network and a ViT-B/16 checkpoint, none of which a test may use: they are parsed by the CLI
itself, and run offline in a fresh home folder, where each must stop at the missing data or
network with one `error:` line (exit 2), not at a bad option. Every link of the README resolves.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.conftest import bench_subprocess
from tests.test_docs import _parse

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _block(heading: str) -> list[list[str]]:
    """The commands of the first bash block under a README heading (comments dropped, && split)."""
    section = README.read_text().split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands = []
    for line in block.splitlines():
        for part in line.split("&&"):
            words = shlex.split(part, comments=True)
            if words:
                commands.append(words)
    return commands


def quick_start_commands() -> list[list[str]]:
    return [c for c in _block("Install, run the demo") if c[0] != "pip"]


def vtab_commands() -> list[list[str]]:
    return _block("VTAB-1K in five lines")


def test_every_readme_command_is_accounted_for():
    """No bash block of the README escapes these tests: each is the quick start, the test
    command (which cannot run inside itself), or the VTAB-1K block."""
    blocks = re.findall(r"```bash\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) == 3
    assert blocks[1].strip() == "pytest"
    quick, vtab = quick_start_commands(), vtab_commands()
    assert quick[0][:2] == ["bench", "run"] and any(c[:2] == ["bench", "report"] for c in quick)
    assert len(vtab) == 5 and all(c[0] == "bench" for c in vtab)


def test_every_readme_command_parses():
    for words in quick_start_commands() + vtab_commands():
        _parse(words[1:])


def test_every_readme_link_resolves():
    text = README.read_text()
    targets = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", text)
    local = [t for t in targets if not re.match(r"https?://", t)]
    assert local
    missing = [t for t in local if not (ROOT / t).exists()]
    assert not missing, missing


@pytest.mark.slow
def test_readme_quick_start_runs_as_written(tmp_path: Path):
    for words in quick_start_commands():
        proc = bench_subprocess(*words[1:], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, (words, err.decode()[-2000:])
    assert (tmp_path / "runs" / "mlflow.db").is_file()
    assert (tmp_path / "report" / "report.md").is_file()


@pytest.mark.slow
def test_readme_vtab_lines_stop_only_at_the_missing_data_or_network(tmp_path: Path):
    home = tmp_path / "home"
    home.mkdir()
    for words in vtab_commands():
        args = [str(home) + w[1:] if w.startswith("~/") else w for w in words[1:]]  # as a shell expands ~
        proc = bench_subprocess(
            *args,
            cwd=tmp_path,
            env_extra={"HOME": str(home), "HF_HUB_OFFLINE": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        _, err = proc.communicate(timeout=300)
        errors = [line for line in err.decode().splitlines() if line.startswith("error:")]
        assert proc.returncode == 2 and len(errors) == 1, (words, err.decode()[-2000:])
        assert re.search(r"data root|Hub|no finished|no tracking store", errors[0]), errors[0]
        assert "Traceback" not in err.decode()
