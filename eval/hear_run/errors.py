"""The two ways a HEAR run can fail: all of it, or one task."""


class RunError(ValueError):
    """The whole run cannot go on (bad module, foreign output folder, ...).

    A ValueError: it is the user's input at fault, so the CLI shows it as one line.
    """


class TaskError(RuntimeError):
    """One task cannot be evaluated; the others still run."""
