"""The two ways a HEAR run can fail: all of it, or one task."""


class RunError(RuntimeError):
    """The whole run cannot go on (bad module, foreign output folder, ...)."""


class TaskError(RuntimeError):
    """One task cannot be evaluated; the others still run."""
