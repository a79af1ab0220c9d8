"""Per-method summaries over seeds: what `bench run` prints at the end of a sweep.

The paper tables (CIs across tasks, significance tests) are the report generator's job; this is
the quick look: mean, standard deviation and the 95 % Student-t half-width over seeds (no
bootstrap at n <= 10).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .stats import t_interval


def summarize(results: pd.DataFrame, value: str = "acc") -> pd.DataFrame:
    """One row per (task, method): n seeds, mean, sd, 95 % t half-width, min and max of ``value``.

    A NaN value (a run without a result) is not a seed: ``n`` counts the values used, and a
    (task, method) with none is left out."""
    if results.empty:
        return pd.DataFrame(columns=["task", "method", "n", "mean", "sd", "ci95", "min", "max"])
    rows = []
    for (task, method), group in results.groupby(["task", "method"], sort=False):
        v = group[value].to_numpy(dtype=float)
        v = v[~np.isnan(v)]
        if not v.size:
            continue
        rows.append(
            {
                "task": task,
                "method": method,
                "n": len(v),
                "mean": float(v.mean()),
                "sd": float(v.std(ddof=1)) if len(v) > 1 else float("nan"),
                "ci95": t_interval(v).half_width,
                "min": float(v.min()),
                "max": float(v.max()),
            }
        )
    return pd.DataFrame(rows)
