"""Click plumbing shared by every ``keyswap`` subcommand (origin and gateway alike)."""

from __future__ import annotations

import click

__all__ = ["OneLineErrorsCommand", "OneLineErrorsGroup", "OneLineUsageError"]


class OneLineUsageError(click.ClickException):
    """A usage error printed as one ``Error: ...`` line (exit status 2, like click's own)."""

    exit_code = 2


class OneLineErrorsCommand(click.Command):
    """A command whose bad flags or variables print one ``Error:`` line instead of usage + hint.

    When the bad value came from an environment variable, the message names the variable.
    """

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
