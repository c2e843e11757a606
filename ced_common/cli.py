"""What the three command-line tools share: error reporting, ``--set``, ``--quiet``/``--verbose``."""

from __future__ import annotations

import click

from ced_common import logs


class FriendlyGroup(click.Group):
    """Turns the expected failures into one ``Error: ...`` line and exit status 1.

    Bad configs, missing weights, unreadable checkpoints, audio or stores and
    invalid values raise OSError or ValueError subclasses; a user should read
    what is wrong, not a traceback. Anything else is a bug and keeps its
    traceback. A closed standard output (``... | head``) is left to click,
    which ends the process quietly. Every command added to the group also
    takes ``-q``/``-v``, so they work after the command's name as well,
    except a command that passes its arguments on to another program.
    """

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        names = {opt for param in cmd.params for opt in param.opts}
        passes_on = cmd.context_settings.get("ignore_unknown_options", False)
        if not passes_on and not names & {"-q", "-v", "--quiet", "--verbose"}:
            cmd.params.extend(_verbosity_params())
        super().add_command(cmd, name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except BrokenPipeError:
            raise  # click's main silences the closed pipe
        except (OSError, ValueError) as exc:
            raise click.ClickException(str(exc)) from exc


def _remember_quiet(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    if value:
        ctx.meta["ced_quiet"] = True
    return value


def _configure_logging(ctx: click.Context, _param: click.Parameter, value: int) -> int:
    """Counts ``-v`` before and after the command's name; ``-q`` anywhere wins."""
    ctx.meta["ced_verbosity"] = ctx.meta.get("ced_verbosity", 0) + value
    logs.configure(-1 if ctx.meta.get("ced_quiet") else ctx.meta["ced_verbosity"])
    return value


# -q is eager, so it is known when -v's callback configures logging.
_VERBOSITY = (
    (
        ("-q", "--quiet"),
        {
            "is_flag": True,
            "is_eager": True,
            "callback": _remember_quiet,
            "expose_value": False,
            "help": "Show only warnings and errors.",
        },
    ),
    (
        ("-v", "--verbose"),
        {
            "count": True,
            "callback": _configure_logging,
            "expose_value": False,
            "help": "Also show debugging details.",
        },
    ),
)


def _verbosity_params() -> list[click.Option]:
    return [click.Option(list(decls), **attrs) for decls, attrs in _VERBOSITY]


def verbosity_options(group):
    """``-q/--quiet`` and ``-v/--verbose`` on a group; they configure logging before any command."""
    for decls, attrs in reversed(_VERBOSITY):
        group = click.option(*decls, **attrs)(group)
    return group


SET_HELP = "Override a config value, e.g. --set optim.lr=3e-4 (value read as YAML)."


def set_option(help_text: str = SET_HELP):
    """``--set KEY=VALUE`` (repeatable), passed to the command as ``overrides``."""
    return click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=help_text)
