"""KARST's configuration: published defaults of arXiv 2502.06779 and Lucenova/KARST."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: Where the update is computed during training (see ``layer.KarstLinear``).
Mode = Literal["structured", "fold", "materialize"]
Rescale = Literal["channel", "scalar", "none"]


@dataclass
class KarstConfig:
    kernels: int = 2  # N: the paper's and the module's default (the ViT-VTAB script uses 8)
    factor: int = 8  # f: the "stacking dimension"; C_i is f x f
    rank: int = 8  # r: A_i is (out/f) x r, B_i is r x (in/f)
    alpha: float = 1.0  # scale s = alpha / rank = 1/8, the official code's effective scale
    rescale: Rescale = "channel"  # the paper's channel-wise re-scaling; "scalar" = the official code
    mode: Mode = "fold"  # how training computes the update (layer.KarstLinear); the same function in each
