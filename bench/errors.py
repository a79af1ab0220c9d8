"""The one exception type for errors a user can cause.

Its message names the bad file, line or value and says how to fix it; the CLI prints it on one
line, without a traceback, and exits non-zero. ``methods`` and ``suites`` subclass it for their
own errors; this module imports nothing so any package may depend on it.
"""


class BenchError(Exception):
    """A problem with the user's input (paths, list files, names, budgets), not a bug."""
