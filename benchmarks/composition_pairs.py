"""Which ordered pairs of registered methods compose, on the tiny random ViT of ``methods.conformance``.

For every ordered pair ``A+B`` of registered methods (``full`` and ``linear``, the references,
left out) it runs what a sweep runs before any data is read, and the checks of
``bench methods check`` that a composition promises:

1. **build**: the composition applied to the tiny ViT (the structural collision rule);
2. **count**: the built model trains exactly the sum of the parts' ``count()``;
3. **act**: ``Composition.check_parts_act`` (every part's tensors get a gradient, and a mergeable
   composition merges to the same outputs);
4. **merge**: ``methods.conformance.check_merge`` where every part merges.

Not part of CI: minutes on a CPU. Run:

    python benchmarks/composition_pairs.py [--out pairs.json] [--only lora,ssf] [--involving kadaptation]

It prints one line per pair and, at the end, the pairs that pass and the refused pairs grouped by
reason, as Markdown.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import time
from collections import defaultdict

import torch

from bench.method_entries import resolve_entry
from methods.base import available_methods, backbone_spec_of, make_config, trainable_params_excluding_head
from methods.conformance import TINY, check_merge

REFERENCES = ("full", "linear")

# The refusal messages' distinguishing words -> a short reason, in the order they are tried.
REASONS = [
    ("W", "the first part wraps whole layers: write it last", r"write it last"),
    ("C", "cannot adapt a layer the other placed", r"cannot adapt the layers"),
    ("N", "peft nests one tuner layer in another", r"peft nests"),
    ("S", "both change one module", r"both change module"),
    ("F", "supports no common backbone", r"support|families"),
    ("T", "both train one tensor", r"both train"),
    ("R", "removes a tensor the other trains", r"removed"),
    ("G", "a part has no effect (no gradient)", r"has no effect"),
    ("M", "merge is wrong", r"merg"),
    ("K", "count is not the sum of the parts", r"count"),
]
OTHER = ("?", "other")


def reason_of(message: str) -> str:
    return next((reason for _, reason, pattern in REASONS if re.search(pattern, message)), OTHER[1])


def mark_of(row: dict[str, str]) -> str:
    if row["stage"] == "ok":
        return "✓" if row["detail"] == "merges" else "○"
    return next((mark for mark, _, pattern in REASONS if re.search(pattern, row["detail"])), OTHER[0])


def markdown(rows: list[dict[str, str]]) -> str:
    """The pairs as a matrix: first part by row, second part by column (numbered as the rows)."""
    names = list(dict.fromkeys(n for r in rows for n in r["pair"].split("+")))
    marks = {r["pair"]: mark_of(r) for r in rows}
    lines = ["| # | first part | " + " | ".join(str(i + 1) for i in range(len(names))) + " |"]
    lines.append("|---|---|" + "---|" * len(names))
    for i, a in enumerate(names):
        cells = ["·" if a == b else marks.get(f"{a}+{b}", " ") for b in names]
        lines.append(f"| {i + 1} | {a} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def try_pair(label: str) -> tuple[str, str]:
    """("ok", detail) or (stage, message) for the first stage that refuses."""
    try:
        method = resolve_entry(label)
        config = make_config(method)
    except Exception as exc:
        return "resolve", " ".join(str(exc).split())
    try:
        torch.manual_seed(0)
        model = method.apply(TINY["vit"](), config)
    except Exception as exc:
        return "build", " ".join(str(exc).split())
    spec_count = method.count(backbone_spec_of(TINY["vit"]()), config)
    built = trainable_params_excluding_head(model)
    if built != spec_count:
        return "count", f"count {spec_count:,} but the built model trains {built:,}"
    try:
        method.check_parts_act(config, "vit")
    except Exception as exc:
        return "act", " ".join(str(exc).split())
    if method.mergeable:
        result = check_merge(method, config)
        if not result.passed:
            return "merge", f"merge check: {result.detail}"
        return "ok", "merges"
    return "ok", "not mergeable"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=None, help="write every pair's outcome as JSON here")
    parser.add_argument("--only", default=None, help="comma-separated methods to pair (default: all)")
    parser.add_argument("--involving", default=None, help="only the pairs with a part among these (comma-separated)")
    parser.add_argument("--summarize", default=None, help="print the summary of a JSON written by --out, and stop")
    args = parser.parse_args()
    if args.summarize:
        with open(args.summarize) as f:
            saved = json.load(f)
        summarize(saved["pairs"], saved["seconds"])
        return
    names = [n for n in available_methods() if n not in REFERENCES]
    if args.only:
        names = [n for n in names if n in args.only.split(",")]
    rows = []
    start = time.perf_counter()
    pairs = itertools.permutations(names, 2)
    if args.involving:
        pairs = [(a, b) for a, b in pairs if {a, b} & set(args.involving.split(","))]
    for a, b in pairs:
        stage, detail = try_pair(f"{a}+{b}")
        rows.append({"pair": f"{a}+{b}", "stage": stage, "detail": detail})
        print(f"{a}+{b}: {stage}: {detail}", flush=True)
    elapsed = time.perf_counter() - start
    summarize(rows, elapsed)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"seconds": round(elapsed), "pairs": rows}, f, indent=1)


def summarize(rows: list[dict[str, str]], elapsed: float) -> None:
    ok = [r for r in rows if r["stage"] == "ok"]
    refused: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        if r["stage"] != "ok":
            refused[f"{r['stage']}: {reason_of(r['detail'])}"].append(r["pair"])
    print(f"\n{len(rows)} ordered pairs in {elapsed:.0f} s; {len(ok)} compose\n")
    print("Compose (merges): " + ", ".join(r["pair"] for r in ok if r["detail"] == "merges"))
    print("\nCompose (not mergeable): " + ", ".join(r["pair"] for r in ok if r["detail"] != "merges"))
    for reason, pairs in sorted(refused.items()):
        print(f"\nRefused, {reason} ({len(pairs)}): " + ", ".join(pairs))
    print("\n" + markdown(rows))


if __name__ == "__main__":
    main()
