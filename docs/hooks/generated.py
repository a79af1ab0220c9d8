"""mkdocs hooks: files from outside `docs/` that the site publishes.

- ``benchmarks/results_*.json``: the measurement files the performance pages link to;
- ``changelog.md``: the repository's ``CHANGELOG.md``.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File


def on_files(files, config):
    root = Path(config["config_file_path"]).parent
    for path in sorted((root / "benchmarks").glob("results_*.json")):
        files.append(File.generated(config, f"benchmarks/{path.name}", abs_src_path=str(path)))
    files.append(File.generated(config, "changelog.md", abs_src_path=str(root / "CHANGELOG.md")))
    return files
