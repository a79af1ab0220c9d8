"""How `bench run` start-up and `bench runs` grow with the number of runs in the tracking store.

The store is filled with N finished runs of the demo suite through bench's own planning and
recorder (``plan_sweep`` -> ``run_record`` -> ``Recorder.start`` / ``Recorder.end``, real MLflow,
sqlite): each has the tags, params and test accuracy of a trained run, without the training. Then
two commands are timed as a user runs them, each in a fresh interpreter:

* ``bench run --suite demo --methods linear --seeds 0,1,2``: three runs the store already holds,
  so the time is the start-up (planning, reading the store, reusing the runs), not training;
* ``bench runs --suite demo --json``: the listing of every run.

Example (run from the repository root):

    PYTHONPATH=$PWD python benchmarks/store_scale.py --runs 1000,3000 --out store_scale.json
    PYTHONPATH=$PWD python benchmarks/store_scale.py --runs 3000 --profile profile.txt
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SEEDS_PER_METHOD = 1000  # a sweep's cap on seeds; more runs use more methods
METHODS = ["linear", "lora", "bitfit", "full", "adapter", "vpt_shallow", "vpt_deep", "ln_tuning", "ssf", "fact_tt"]


def timed(workdir: Path, *args: str, profile: Path | None = None) -> float:
    """Wall seconds of one ``bench`` command in a fresh interpreter (it must succeed)."""
    prefix = [sys.executable, "-m", "cProfile", "-o", str(profile), "-m", "bench"] if profile else [
        sys.executable, "-m", "bench",
    ]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run([*prefix, "--workdir", str(workdir), *args], capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"bench {' '.join(args)} failed: {done.stderr[-2000:]}")
    return elapsed


def store_read(workdir: Path) -> dict[str, float]:
    """In-process seconds of what a 3-run sweep's start-up reads from the store: its own run keys
    (``keyed``, what `bench run` does) and, for comparison, every run of the experiment (``whole``,
    what it did before)."""
    from bench.sweep import SweepRequest, plan_sweep
    from bench.tracking import Tracker, default_tracking_uri

    plan = plan_sweep(SweepRequest(suite="demo", methods=["linear"], seeds=[0, 1, 2], epochs=1, device="cpu"), workdir)
    tracker = Tracker(default_tracking_uri(workdir))
    keys = [run.spec.run_key for run in plan.runs]
    started = time.perf_counter()
    keyed = tracker.runs_by_key(plan.experiment, keys)
    keyed_s = time.perf_counter() - started
    started = time.perf_counter()
    whole = tracker.runs_by_key(plan.experiment)
    whole_s = time.perf_counter() - started
    assert all(k in keyed and k in whole for k in keys), "the store lacks the sweep's runs"
    return {"store_read_keyed_s": round(keyed_s, 3), "store_read_whole_s": round(whole_s, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="1000,3000", help="Store sizes to measure, comma-separated.")
    parser.add_argument("--repeats", type=int, default=3, help="Timings per command (the median is kept).")
    parser.add_argument("--out", type=Path, help="Write the figures as JSON here.")
    parser.add_argument("--workdir", type=Path, help="Keep the store here (default: a temporary folder).")
    parser.add_argument("--profile", type=Path, help="Write cProfile's top functions of `bench run` here.")
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    sizes = sorted(int(n) for n in args.runs.split(","))
    results = []
    with tempfile.TemporaryDirectory(prefix="store-scale-") as tmp:
        workdir = args.workdir or Path(tmp) / "runs"
        workdir.mkdir(parents=True)
        have, fill_s = 0, 0.0
        # the three runs `bench run` will reuse are the first ones recorded
        for n in sizes:
            fill_s += fill_range(workdir, have, n)
            have = n
            run_cmd = ("run", "--suite", "demo", "--methods", "linear", "--seeds", "0,1,2", "--epochs", "1")
            row = {
                "runs": n,
                "bench_run_startup_s": sorted(timed(workdir, *run_cmd) for _ in range(args.repeats))[args.repeats // 2],
                "bench_runs_s": sorted(
                    timed(workdir, "runs", "--suite", "demo", "--json") for _ in range(args.repeats)
                )[args.repeats // 2],
                "fill_s": round(fill_s, 1),
                **store_read(workdir),
            }
            print(json.dumps(row), flush=True)
            results.append(row)
        if args.profile:
            prof = Path(tmp) / "run.prof"
            timed(workdir, *run_cmd, profile=prof)
            import pstats

            with open(args.profile, "w") as f:
                pstats.Stats(str(prof), stream=f).sort_stats("cumulative").print_stats(40)
    if args.out:
        args.out.write_text(json.dumps({"command": " ".join(sys.argv), "results": results}, indent=2) + "\n")


def fill_range(workdir: Path, start: int, stop: int) -> float:
    """Record runs ``start..stop-1`` (finished, demo suite) in ``workdir``'s store; return the seconds."""
    from bench.engine import Recorder
    from bench.sweep import SweepRequest, plan_sweep, run_record
    from bench.tracking import Tracker, default_tracking_uri

    recorder = Recorder(Tracker(default_tracking_uri(workdir), artifact_root=workdir / "artifacts"))
    started = time.perf_counter()
    for index in range(start, stop, SEEDS_PER_METHOD):
        m, first = divmod(index, SEEDS_PER_METHOD)
        last = min(stop - m * SEEDS_PER_METHOD, SEEDS_PER_METHOD)
        request = SweepRequest(
            suite="demo", methods=[METHODS[m]], seeds=list(range(first, last)), epochs=1, device="cpu"
        )
        plan = plan_sweep(request, workdir)
        parent = recorder.open_parent(plan.experiment, f"store-scale-{m}-{first}", {}, {})
        for run in plan.runs:
            record = run_record(run, plan.stage, plan.experiment, parent, [])
            recorder.end(recorder.start(record), "FINISHED", metrics={"test/acc": 0.5})
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
