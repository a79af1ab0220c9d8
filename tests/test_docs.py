"""The documentation: the site builds strictly, the CLI reference is the CLI's own help, every
command's help ends with examples that parse, and the product speaks only of itself."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import bench.schema as schema
from bench.cli import click_command
from bench.cli_reference import WIDTH, command_paths, help_text, markdown

ROOT = Path(__file__).resolve().parents[1]


def test_the_docs_site_builds_in_strict_mode(tmp_path: Path):
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (site / "reference" / "cli" / "index.html").is_file()
    assert (site / "changelog" / "index.html").is_file()
    # the measurement files the performance pages link to are published with the site
    published = {p.name for p in (site / "benchmarks").glob("results_*.json")}
    assert published == {p.name for p in (ROOT / "benchmarks").glob("results_*.json")} and published


def test_the_committed_cli_reference_is_the_generated_one():
    committed = (ROOT / "docs" / "reference" / "cli.md").read_text()
    assert committed == markdown() + "\n", "regenerate it: python -m bench.cli_reference > docs/reference/cli.md"


def test_the_cli_reference_covers_every_command():
    page = markdown()
    paths = command_paths()
    assert ("run",) in paths and ("methods", "budget") in paths and ("data", "fetch") in paths
    for path in paths:
        assert f"## `{' '.join(('bench', *path))}`" in page


@pytest.mark.slow
def test_the_cli_reference_equals_bench_help_in_a_terminal():
    """What a user's ``bench … --help`` prints, in a fresh process, is what the reference shows."""
    env = {**os.environ, "COLUMNS": str(WIDTH), "NO_COLOR": "1", "TERM": "dumb"}
    for path in command_paths():
        proc = subprocess.run(
            [sys.executable, "-m", "bench", *path, "--help"], env=env, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, proc.stderr
        printed = "\n".join(line.rstrip() for line in proc.stdout.strip("\n").splitlines())
        assert printed == help_text(path), path


def _examples(text: str) -> list[str]:
    tail = text.rsplit("Examples:", 1)
    assert len(tail) == 2, "no Examples: section"
    return [line.strip() for line in tail[1].splitlines() if line.strip()]


def _parse(words: list[str]) -> None:
    """Parse a command line as the CLI would, without running it: options, types and choices."""
    command, name, args, parent = click_command(), "bench", list(words), None
    while True:
        ctx = command.make_context(name, args, parent=parent)
        if not getattr(command, "commands", None):
            return
        rest = [*ctx._protected_args, *ctx.args]  # a group keeps its subcommand and its arguments
        if not rest:
            return
        command, name, args, parent = command.commands[rest[0]], rest[0], rest[1:], ctx


@pytest.mark.parametrize("path", command_paths(), ids=lambda p: " ".join(p) or "bench")
def test_every_help_ends_with_examples_that_parse_and_shows_no_flag_type(path: tuple[str, ...]):
    text = help_text(path)
    assert "<bool>" not in text
    examples = _examples(text)
    assert 1 <= len(examples) <= 2, examples
    for line in examples:
        assert len(line) <= 78, f"an example must fit an 80-column terminal: {line}"
        words = shlex.split(line)
        assert words[0] == "bench"
        # an example of a group (or of the whole CLI) may show any of its subcommands
        assert tuple(w for w in words[1:] if not w.startswith("-"))[: len(path)] == path or len(path) < 2, line
        _parse(words[1:])


def test_a_bad_example_would_be_caught():
    with pytest.raises(Exception, match="no-such-flag|No such option"):
        _parse(["runs", "--suite", "demo", "--no-such-flag"])
    with pytest.raises(Exception, match="required|Missing"):
        _parse(["methods", "budget", "--backbone", "vit_demo_tiny"])


def test_every_tracking_name_is_documented():
    page = (ROOT / "docs" / "reference" / "tracking-schema.md").read_text()
    names = {v for k, v in vars(schema).items() if k.isupper() and isinstance(v, str)}
    missing = sorted(n for n in names if f"`{n}`" not in page)
    assert not missing, f"add to docs/reference/tracking-schema.md: {missing}"


# What the product's own text must not contain: references to how or where it was built, to
# issue numbers, or to documents and files outside the repository.
FORBIDDEN = [
    r"\bissues? *#? *\d+",
    r"DESIGN\.md",
    r"DESIGN *§",
    r"shared notes",
    r"\bshared/(data|tools|notes)",
    r"imgfocus_backbone",
    r"this was built",
    r"\brented\b",
    r"the issue\b",
]


def _product_text_files() -> list[Path]:
    files = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "mkdocs.yml", ROOT / "pyproject.toml"]
    for folder in ("bench", "methods", "suites", "reports", "benchmarks", "examples", "docs", "tests", ".ci"):
        files += [
            p for p in (ROOT / folder).rglob("*") if p.is_file() and p.suffix in {".py", ".md", ".sh", ".toml", ""}
        ]
    return [p for p in files if p.name != "test_docs.py" and "__pycache__" not in p.parts]


def test_the_product_speaks_only_of_itself():
    hits = []
    for path in _product_text_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for pattern in FORBIDDEN:
            for match in re.finditer(pattern, text, re.IGNORECASE):
                line = text.count("\n", 0, match.start()) + 1
                hits.append(f"{path.relative_to(ROOT)}:{line}: {match.group(0)!r}")
    assert not hits, "\n".join(hits)


def test_the_readme_is_short():
    words = len((ROOT / "README.md").read_text().split())
    assert words <= 1500, words


def test_speed_tables_in_the_docs_are_their_results_files():
    """A `<!-- speed-table: FILE -->` block is exactly what benchmarks/speed_table.py renders from FILE."""
    import importlib.util
    import re

    spec = importlib.util.spec_from_file_location("speed_table", ROOT / "benchmarks" / "speed_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    blocks = 0
    for page in (ROOT / "docs").rglob("*.md"):
        text = page.read_text()
        for source, body in re.findall(r"<!-- speed-table: (\S+) -->\n(.*?)\n<!-- /speed-table -->", text, re.S):
            results = json.loads((ROOT / source).read_text())
            assert body.strip() == module.speed_table(results), f"{page}: regenerate from {source}"
            blocks += 1
    assert blocks >= 1


def _method_rows(path: Path) -> dict[str, list[str]]:
    """Rows of the method tables in ``path``: the method's name -> its cells."""
    rows = {}
    for line in path.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        found = re.match(r"\[?`([a-z0-9_]+)`", cells[0]) if line.startswith("|") else None
        if found:
            rows[found.group(1)] = cells
    return rows


def _first_count(cell: str) -> int | None:
    found = re.match(r"([\d,]+)", cell)
    return int(found.group(1).replace(",", "")) if found else None


def test_method_tables_list_every_method_with_its_exact_counts():
    """README and the methods index list every registered method; each count is the method's own
    closed form at its defaults, on ViT-B/16 (and, in the index, on Swin-B)."""
    from bench.backbone import backbone_spec
    from methods import available_methods, get_method, make_config

    vit = backbone_spec("vit_base_patch16_224")
    swin = backbone_spec("swin_base_patch4_window7_224")
    readme = _method_rows(ROOT / "README.md")
    index = _method_rows(ROOT / "docs" / "methods" / "index.md")
    assert set(readme) >= set(available_methods()) and set(index) >= set(available_methods())
    for name in available_methods():
        method = get_method(name)
        config = make_config(method)
        assert _first_count(readme[name][3]) == method.count(vit, config), f"README row of {name}"
        assert _first_count(index[name][2]) == method.count(vit, config), f"index row of {name}"
        if "swin" in method.families:
            assert _first_count(index[name][3]) == method.count(swin, config), f"index Swin-B cell of {name}"
        else:
            assert index[name][3].startswith("refused")
