"""Statistics, tables and plots built from what tracking stored."""

from .summary import summarize

__all__ = ["summarize"]
