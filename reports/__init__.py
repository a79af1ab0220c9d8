"""Statistics, tables and plots built from what tracking stored."""

from .summary import summarize, t_halfwidth

__all__ = ["summarize", "t_halfwidth"]
