"""Click plumbing shared by every ``keyswap`` subcommand (origin and gateway alike)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

from keyswap.durations import parse_duration
from keyswap.errors import InvalidInput

__all__ = [
    "OneLineErrorsCommand",
    "OneLineErrorsGroup",
    "OneLineUsageError",
    "Seconds",
    "show_envvars",
]


class OneLineUsageError(click.ClickException):
    """A usage error printed as one ``Error: ...`` line (exit status 2, like click's own)."""

    exit_code = 2


@contextmanager
def show_envvars(params: list[click.Parameter]) -> Iterator[None]:
    """While help is formatted, name the environment variable of every option that has one.

    An option whose help text does not mention its variable(s) gets click's ``show_envvar`` for the
    duration, which adds ``env var: NAME`` to the ``[...]`` of its help line (beside ``default:``).
    Only for help: with ``show_envvar`` set, click would also change the option's error messages.
    """
    shown: list[click.Option] = []
    for param in params:
        if not isinstance(param, click.Option) or not param.envvar or param.show_envvar:
            continue
        names = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar)
        if not all(name in (param.help or "") for name in names):
            param.show_envvar = True
            shown.append(param)
    try:
        yield
    finally:
        for param in shown:
            param.show_envvar = False


class OneLineErrorsCommand(click.Command):
    """A command whose bad flags or variables print one ``Error:`` line instead of usage + hint.

    When the bad value came from an environment variable, the message names the variable. ``--help``
    names the environment variable of every option (:func:`show_envvars`).
    """

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The options section of ``--help``, naming each option's environment variable."""
        with show_envvars(self.get_params(ctx)):
            super().format_options(ctx, formatter)

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            message = exc.format_message()
            param = getattr(exc, "param", None)
            if (
                isinstance(param, click.Option)
                and isinstance(param.envvar, str)
                and param.name is not None
                and ctx.get_parameter_source(param.name) is click.core.ParameterSource.ENVIRONMENT
            ):
                message = f"{message} (from {param.envvar})"
            raise OneLineUsageError(message) from None


class OneLineErrorsGroup(click.Group):
    """A group whose subcommands are :class:`OneLineErrorsCommand` by default."""

    command_class = OneLineErrorsCommand

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The options section of ``--help``, naming each option's environment variable."""
        with show_envvars(self.get_params(ctx)):
            super().format_options(ctx, formatter)


class Seconds(click.ParamType):  # type: ignore[type-arg]  # generic only in click >= 8.2
    """Seconds within ``[minimum, maximum]``: a number (``300``, ``1.5``) or a duration (``5m``, ``1d12h``).

    With ``whole=True`` the value must be a whole number of seconds and converts to ``int``.
    """

    name = "seconds"

    def __init__(self, minimum: float, maximum: float = math.inf, *, whole: bool = False) -> None:
        self.minimum = minimum
        self.maximum = maximum
        self.whole = whole

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, int | float) and not isinstance(value, bool):
            seconds = float(value)
        else:
            try:
                seconds = float(str(value).strip())
            except ValueError:
                try:
                    seconds = parse_duration(str(value))
                except InvalidInput as exc:
                    self.fail(f"{value!r} is not a number of seconds ({exc.reason})", param, ctx)
        in_range = math.isfinite(seconds) and self.minimum <= seconds <= self.maximum
        if not in_range or (self.whole and not seconds.is_integer()):
            kind = "whole seconds" if self.whole else "a number of seconds"
            bounds = f">= {self.minimum:g}"
            if math.isfinite(self.maximum):
                bounds = f"between {self.minimum:g} and {self.maximum:g}"
            self.fail(f"must be {kind} {bounds} (got {value!r})", param, ctx)
        return int(seconds) if self.whole else seconds
