"""The seeds a sweep may ask for, checked in one place for the command line and sweep files.

torch's CPU generator (a Mersenne Twister) keeps only the low 32 bits of a seed, so seed
2**32 trains exactly like seed 0: a second "seed" that is no second sample. Seeds are therefore
limited to 0..2**32-1, where each one gives its own stream. The number of seeds is capped too:
each is at least one training run, and a count such as 30000000 is a typo, not a benchmark.
"""

from __future__ import annotations

from .errors import BenchError

#: The largest seed torch's CPU generator tells apart from every smaller one.
MAX_SEED = 2**32 - 1
#: The most seeds one sweep may ask for (each is one run per task and method).
MAX_SEEDS = 1000


def check_seeds(seeds: list[int], source: str) -> list[int]:
    """``seeds`` if they are distinct and within 0..MAX_SEED, at most MAX_SEEDS of them; else one
    line naming ``source`` (``--seeds '0,1'`` or ``--config FILE: seeds``) and the fix."""
    if len(seeds) > MAX_SEEDS:
        raise BenchError(f"{source} asks for {len(seeds)} seeds; at most {MAX_SEEDS} are allowed, each is a run")
    if len(set(seeds)) != len(seeds):
        raise BenchError(f"{source} must list distinct seeds")
    bad = [s for s in seeds if not 0 <= s <= MAX_SEED]
    if bad:
        raise BenchError(
            f"{source}: seed {bad[0]} is outside 0..{MAX_SEED}; pick seeds in that range (torch keeps only a "
            "seed's low 32 bits, so seed 2**32 would repeat seed 0's run)"
        )
    return seeds


def seeds_from_count(count: int, source: str) -> list[int]:
    """``3`` -> [0, 1, 2], refusing a count outside 1..MAX_SEEDS before building any list."""
    if not 1 <= count <= MAX_SEEDS:
        raise BenchError(f"{source} asks for {count} seeds; a seed count must be 1..{MAX_SEEDS} (3 means seeds 0,1,2)")
    return list(range(count))


def parse_seeds(value: str, source: str = "--seeds") -> list[int]:
    """``"3"`` -> seeds 0, 1, 2; ``"0,5,7"`` -> exactly those (``"k,"`` is the single seed k)."""
    label = f"{source} {value!r}"
    try:
        if "," in value:
            seeds = [int(v) for v in value.split(",") if v.strip()]
            if not seeds:
                raise ValueError
        else:
            return seeds_from_count(int(value), label)
    except ValueError:
        raise BenchError(
            f"{label} is neither a positive count (3 means seeds 0,1,2) nor a list of seeds "
            "(0,5,7; a single seed k is written k,)"
        ) from None
    return check_seeds(seeds, label)
