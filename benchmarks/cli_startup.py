"""How long ``bench`` takes to answer the commands that should answer at once.

Each command runs as a user runs it (``python -m bench ARGS`` in a fresh interpreter, output to
/dev/null) ``--repeat`` times; the table gives the median and the fastest wall time. On a shared
machine the fastest is the figure closest to the command's own cost; the load average at the
start and the end is recorded beside it. Run from the repository root:

    python benchmarks/cli_startup.py [--repeat 5] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime

COMMANDS = (("--help",), ("--version",), ("suites", "list"), ("methods", "list"))


def time_command(args: tuple[str, ...], workdir: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "bench", "--workdir", workdir, *args],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "COLUMNS": "100"},
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--out", help="also write the results as JSON to this file")
    opts = parser.parse_args()
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for args in COMMANDS:
            times = [time_command(args, workdir) for _ in range(opts.repeat)]
            rows.append(
                {"command": "bench " + " ".join(args), "median_s": statistics.median(times), "min_s": min(times)}
            )
    result = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, Python {platform.python_version()}",
        "load_average_1min": {"start": round(load_before[0], 1), "end": round(os.getloadavg()[0], 1)},
        "repeat": opts.repeat,
        "command_line": "python benchmarks/cli_startup.py " + " ".join(sys.argv[1:]),
        "commands": rows,
    }
    print("| command | median (s) | fastest (s) |\n|---|---|---|")
    for row in rows:
        print(f"| `{row['command']}` | {row['median_s']:.2f} | {row['min_s']:.2f} |")
    print(f"\n{result['machine']}; load average {result['load_average_1min']}; {result['date']}")
    if opts.out:
        with open(opts.out, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main()
