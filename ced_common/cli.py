"""What the three command-line tools share: error reporting, ``--set``, ``--quiet``/``--verbose``."""

from __future__ import annotations

import click

from ced_common import logs


class FriendlyGroup(click.Group):
    """Turns the expected failures into one ``Error: ...`` line and exit status 1.

    Bad configs, missing weights, unreadable checkpoints, audio or stores and
    invalid values raise OSError or ValueError subclasses; a user should read
    what is wrong, not a traceback. Anything else is a bug and keeps its
    traceback.
    """

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (OSError, ValueError) as exc:
            raise click.ClickException(str(exc)) from exc


def _remember_quiet(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    ctx.meta["ced_quiet"] = value
    return value


def _configure_logging(ctx: click.Context, _param: click.Parameter, value: int) -> int:
    logs.configure(-1 if ctx.meta.get("ced_quiet") else value)
    return value


def verbosity_options(group):
    """``-q/--quiet`` and ``-v/--verbose`` on a group; they configure logging before any command."""
    group = click.option(
        "-v",
        "--verbose",
        count=True,
        callback=_configure_logging,
        expose_value=False,
        help="Also show debugging details.",
    )(group)
    return click.option(
        "-q",
        "--quiet",
        is_flag=True,
        is_eager=True,
        callback=_remember_quiet,
        expose_value=False,
        help="Show only warnings and errors.",
    )(group)


SET_HELP = "Override a config value, e.g. --set optim.lr=3e-4 (value read as YAML)."


def set_option(help_text: str = SET_HELP):
    """``--set KEY=VALUE`` (repeatable), passed to the command as ``overrides``."""
    return click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=help_text)
