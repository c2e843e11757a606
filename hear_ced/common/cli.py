"""What the three command-line tools share: error reporting, ``--set``, ``--quiet``/``--verbose``."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import click

from hear_ced.common import logs

_TORCH = ("torch", "safetensors", "huggingface_hub")
_CONFIG = ("yaml", "pydantic")

# The modules each optional extra of setup.cfg installs (with those of the
# extras it includes), by the names they are imported as.
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "torch": _TORCH,
    "onnx": (*_TORCH, "onnx"),
    "plot": ("matplotlib",),
    "train": (
        *_TORCH,
        *_CONFIG,
        *("h5py", "pandas", "scipy", "sklearn", "matplotlib", "bitsandbytes"),
    ),
    "eval": (*_TORCH, *_CONFIG, "scipy", "matplotlib", "threadpoolctl"),
    "heareval": (
        *("tensorflow", "pytorch_lightning", "dcase_util", "sed_eval", "intervaltree"),
        *("more_itertools", "slugify", "torchinfo", "librosa", "pynvml"),
        *("heareval", "hearvalidator", "hearbaseline"),
    ),
    "xares": ("loguru", "jiwer", "ignite", "webdataset", "transformers", "xares"),
    "maeb": ("mteb", "datasets"),
}


def missing_extra(exc: ImportError, extras: Sequence[str]) -> str | None:
    """What to install for a module that could not be imported: the first of ``extras``
    that installs it, as one line; None for a module of no extra (a bug, not a choice)."""
    module = (exc.name or "").partition(".")[0]
    for extra in extras:
        if module in EXTRA_MODULES[extra]:
            return f"{module} is not installed: pip install 'hear-ced[{extra}]'"
    return None


@contextmanager
def extra_imports(extras: Sequence[str]) -> Iterator[None]:
    """A tool's module-level imports that need one of its ``extras``: if one is missing,
    the tool ends with one ``Error:`` line naming the extra (``missing_extra``), status 1,
    since no command of it could run."""
    try:
        yield
    except ImportError as exc:
        message = missing_extra(exc, extras)
        if message is None:
            raise
        raise SystemExit(f"Error: {message}") from exc  # printed to stderr, status 1


class FriendlyGroup(click.Group):
    """Turns the expected failures into one ``Error: ...`` line and exit status 1.

    Bad configs, missing weights, unreadable checkpoints, audio or stores and
    invalid values raise OSError or ValueError subclasses; a user should read
    what is wrong, not a traceback. A module of an optional extra that is not
    installed names the extra to install: the first of ``extras`` (for a
    command in ``command_extras``, its own first) that installs it. Anything
    else is a bug and keeps its traceback. A closed standard output
    (``... | head``) is left to click, which ends the process quietly.

    The group takes ``-h``/``--help`` and ``-q``/``-v``, which configure logging
    before any command runs; every command added to it takes them too, so they
    work after the command's name as well, except a command that passes its
    arguments on to another program.
    """

    def __init__(
        self,
        *args,
        extras: Sequence[str] = (),
        command_extras: Mapping[str, Sequence[str]] | None = None,
        **kwargs,
    ) -> None:
        kwargs.setdefault("context_settings", {}).setdefault("help_option_names", ["-h", "--help"])
        super().__init__(*args, **kwargs)
        self.params[:0] = _verbosity_params()
        self.extras = tuple(extras)
        self.command_extras = dict(command_extras or {})

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
        except ImportError as exc:
            preferred = tuple(self.command_extras.get(ctx.invoked_subcommand or "", ()))
            message = missing_extra(exc, preferred + self.extras)
            if message is None:
                raise
            raise click.ClickException(message) from exc


def _configure_logging(ctx: click.Context, param: click.Parameter, value: int | bool) -> None:
    """Counts ``-v`` before and after the command's name; ``-q`` anywhere wins."""
    key = f"ced_{param.name}"
    ctx.meta[key] = ctx.meta.get(key, 0) + value
    logs.configure(-1 if ctx.meta.get("ced_quiet") else ctx.meta.get("ced_verbose", 0))


def _verbosity_params() -> list[click.Option]:
    """``-q`` and ``-v``; each configures logging with what has been given so far."""
    return [
        click.Option(
            ["-q", "--quiet"],
            is_flag=True,
            callback=_configure_logging,
            expose_value=False,
            help="Show only warnings and errors.",
        ),
        click.Option(
            ["-v", "--verbose"],
            count=True,
            callback=_configure_logging,
            expose_value=False,
            help="Also show debugging details.",
        ),
    ]


SET_HELP = "Override a config value, e.g. --set optim.lr=3e-4 (value read as YAML)."


def set_option(help_text: str = SET_HELP):
    """``--set KEY=VALUE`` (repeatable), passed to the command as ``overrides``."""
    return click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help=help_text)
