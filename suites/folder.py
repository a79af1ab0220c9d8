"""``folder``: any directory of NOAH-format task folders (users' own data).

Tasks are the sub-folders that hold list files; classes come from ``classes.txt`` where present,
otherwise from the largest label in the lists. The preset is VTAB-1K's.
"""

from __future__ import annotations

from .base import Suite, register_suite
from .vtab1k import VTAB1K_PRESET

FOLDER = register_suite(
    Suite(
        name="folder",
        description="any directory of NOAH-format task folders (your own data); classes read from the labels",
        preset=VTAB1K_PRESET,
        default_backbone="vit_base_patch16_224.orig_in21k",
        tasks=(),
    )
)
