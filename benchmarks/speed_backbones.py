"""``bench speed`` on one backbone, one method at a time, the merged report written after each.

The same measurement as ``bench speed --backbone B --methods M1,M2,...`` (``bench.speed.run_speed``,
one process, our path and the reference-style loop per method), but a method that fails or a
command stopped at its time limit keeps the methods already measured. Random weights: nothing is
downloaded. Run on a GPU:

    python benchmarks/speed_backbones.py --backbone swin_base_patch4_window7_224 \\
        --methods lora,karst,kadaptation,full,linear --steps 20 --eval-images 2048 --out swin.json
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path

from bench.speed import SpeedConfig, run_speed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backbone", required=True)
    parser.add_argument("--methods", default="lora,karst,kadaptation,full,linear")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--eval-images", type=int, default=2048)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--append",
        action="store_true",
        help="Keep the methods already in --out; a method measured again replaces its row.",
    )
    args = parser.parse_args()
    names = [m for m in args.methods.split(",") if m]
    merged: dict = json.loads(args.out.read_text()) if args.append and args.out.exists() else {}
    if merged:
        merged["methods"] = [row for row in merged.get("methods", []) if row["method"] not in names]
        merged["failed"] = [row for row in merged.get("failed", []) if row["method"] not in names]
        names_before = [row["method"] for row in merged["methods"]]
    else:
        names_before = []
    for name in names:
        t0 = time.perf_counter()
        try:
            report = run_speed(
                SpeedConfig(methods=[name], backbone=args.backbone, steps=args.steps, eval_images=args.eval_images),
                progress=lambda text: print(text, flush=True),
            )
        except Exception as exc:  # one method's failure must not lose the others
            traceback.print_exc()
            merged.setdefault("failed", []).append({"method": name, "error": f"{type(exc).__name__}: {exc}"})
        else:
            rows = report.pop("methods")
            if not merged.get("methods"):
                merged.update(report)
                merged["methods"] = []
            merged["methods"].extend(rows)
            merged["dates"] = {**merged.get("dates", {}), name: datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")}
        print(f"{name}: {time.perf_counter() - t0:.0f} s in all", flush=True)
        if not merged.get("failed"):
            merged.pop("failed", None)
        if merged.get("methods"):
            every = names_before + names
            merged["command"] = (
                f"bench speed --methods {','.join(every)} --backbone {args.backbone} --steps {args.steps} "
                f"--eval-images {args.eval_images} (one method per call of run_speed: "
                f"python benchmarks/speed_backbones.py --backbone {args.backbone} --methods {','.join(every)} "
                f"--steps {args.steps} --eval-images {args.eval_images})"
            )
        merged["date"] = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        args.out.write_text(json.dumps(merged, indent=2) + "\n")


if __name__ == "__main__":
    main()
