"""Hyperparameter source names, and which sources a stored run serves (read from its tags).

A leaf like :mod:`bench.schema`: the run engine writes these names and ``reports/`` reads them,
so both import them from here. ``bench.hparams`` says what each source trains with.
"""

from __future__ import annotations

from . import schema

SOURCES = ("preset", "paper", "tuned")
#: Sources a report may select: the three, and ``override`` (runs trained with ``--set preset.…``).
REPORT_SOURCES = (*SOURCES, "override")
DEPRECATED = {"published": "preset"}  # the preset's former name; old stores and commands keep working
DEPRECATION_NOTE = "--hparams published is now called preset (the suite's shared preset); reading it as preset"


def normalize_source(text: str) -> str:
    """A stored or selected source name, the deprecated ``published`` read as ``preset``."""
    return DEPRECATED.get(text, text)


def run_sources(tags: dict[str, str]) -> list[str]:
    """Every source a stored run serves, in :data:`REPORT_SOURCES` order. A run from before sources
    were recorded was trained with the preset (``bench.hparams`` absent or ``published``)."""
    first = normalize_source(tags.get(schema.HPARAMS, "preset"))
    listed = tags.get(schema.HPARAMS_SOURCES, "")
    found = {first, *(normalize_source(s.strip()) for s in listed.split(",") if s.strip())}
    order = {name: i for i, name in enumerate(REPORT_SOURCES)}
    return sorted(found, key=lambda s: (order.get(s, len(order)), s))
