"""The README's quick start works as written, in order, in a fresh folder."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.conftest import bench_subprocess

README = Path(__file__).resolve().parents[1] / "README.md"


def quick_start_commands() -> list[list[str]]:
    """The bench commands of the README's install-and-demo block, without the pip install."""
    text = README.read_text()
    section = text.split("## Install, run the demo", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands = []
    for line in block.splitlines():
        for part in line.split("&&"):
            words = shlex.split(part, comments=True)
            if words and words[0] != "pip":
                commands.append(words)
    return commands


def test_the_quick_start_block_is_found():
    commands = quick_start_commands()
    assert commands[0][:2] == ["bench", "run"] and all(c[0] == "bench" for c in commands)
    assert any(c[:2] == ["bench", "report"] for c in commands)


@pytest.mark.slow
def test_readme_quick_start_runs_as_written(tmp_path: Path):
    for words in quick_start_commands():
        proc = bench_subprocess(*words[1:], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = proc.communicate(timeout=900)
        assert proc.returncode == 0, (words, err.decode()[-2000:])
    assert (tmp_path / "runs" / "mlflow.db").is_file()
