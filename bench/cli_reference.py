"""The CLI reference page, generated from the command tree itself so that it cannot drift.

``python -m bench.cli_reference > docs/reference/cli.md`` writes it; a test checks that the
committed page equals this output, and that every section equals what ``bench … --help`` prints
in a terminal of the same width.
"""

from __future__ import annotations

from typer.testing import CliRunner

from .cli import click_command, run_cli

WIDTH = 100  # columns the reference is rendered at (the help adapts to the terminal otherwise)


def command_paths(command=None, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command path, depth first in the order ``bench --help`` lists them: (), ("run",), ("methods", "list"), …"""
    command = command or click_command()
    paths = [prefix]
    for name, sub in getattr(command, "commands", {}).items():
        if not getattr(sub, "hidden", False):
            paths.extend(command_paths(sub, (*prefix, name)))
    return paths


def help_text(path: tuple[str, ...]) -> str:
    """What ``bench PATH --help`` prints in a terminal ``WIDTH`` columns wide, without colour."""
    with CliRunner().isolation(env={"COLUMNS": str(WIDTH), "NO_COLOR": "1"}) as streams:
        code = run_cli([*path, "--help"])
        output = streams[0].getvalue().decode()
    if code != 0:
        raise RuntimeError(f"bench {' '.join(path)} --help exited {code}: {output}")
    return "\n".join(line.rstrip() for line in output.strip("\n").splitlines())


def markdown() -> str:
    """The reference page: one section per command, its help verbatim."""
    parts = [
        "# Command line",
        "",
        "Every `bench` command with its `--help`, generated from the command line itself",
        "(`python -m bench.cli_reference > docs/reference/cli.md`). Global options (`--workdir`) go",
        "before the command: `bench --workdir DIR run …`.",
        "",
    ]
    for path in command_paths():
        title = " ".join(("bench", *path))
        parts += [f"## `{title}`", "", "```text", help_text(path), "```", ""]
    return "\n".join(parts)


if __name__ == "__main__":
    print(markdown())
