"""The Markdown table of a ``bench speed`` results file, as the docs print it.

    python benchmarks/speed_table.py benchmarks/results_speed_vit_base_h200.json

The docs hold the output between ``<!-- speed-table: FILE -->`` and ``<!-- /speed-table -->``;
a test regenerates each such block from its file, so a table in the docs is the measurement.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HEADER = (
    "| method | trainable | ours train img/s | reference train img/s | ratio | ours eval img/s (* merged) "
    "| reference eval img/s | ours peak MB | reference peak MB |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def speed_table(results: dict) -> str:
    """One row per measured method, in the order measured, then the methods that failed."""
    rows = [HEADER]
    for m in results["methods"]:
        ours, ref = m["ours"], m["reference"]
        merged = "*" if ours.get("merged_eval") else ""
        rows.append(
            f"| {m['method']} | {ours['trainable_params']:,} | {ours['train_images_per_s']:,.0f} "
            f"| {ref['train_images_per_s']:,.0f} | {m['ratio']['train']:.1f}× "
            f"| {ours['eval_images_per_s']:,.0f}{merged} | {ref['eval_images_per_s']:,.0f} "
            f"| {ours['peak_memory_mb']:,.0f} | {ref['peak_memory_mb']:,.0f} |"
        )
    for f in results.get("failed", []):
        rows.append(f"| {f['method']} | failed: {f['error'].splitlines()[0]} | | | | | | | |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(speed_table(json.loads(Path(sys.argv[1]).read_text())))
