"""The click plumbing shared by `keyswap origin` and the gateway commands."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from keyswap.cli_support import OneLineErrorsCommand, OneLineErrorsGroup, Seconds


@click.command(cls=OneLineErrorsCommand)
@click.option("--ttl", type=Seconds(1, 86400), default=300.0)
@click.option("--count", type=Seconds(0, 10, whole=True), default=0)
def show(ttl: float, count: int) -> None:
    click.echo(f"{ttl!r} {count!r}")


@pytest.mark.parametrize(
    ("args", "out"),
    [
        ([], "300.0 0"),
        (["--ttl", "1.5"], "1.5 0"),
        (["--ttl", "5m"], "300.0 0"),
        (["--ttl", "1h30m"], "5400.0 0"),
        (["--count", "7"], "300.0 7"),
    ],
)
def test_seconds_take_numbers_and_durations(args: list[str], out: str) -> None:
    result = CliRunner().invoke(show, args)
    assert result.exit_code == 0, result.output
    assert result.output.strip() == out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ttl", "0.5"], "must be a number of seconds between 1 and 86400 (got '0.5')"),
        (["--ttl", "2d"], "must be a number of seconds between 1 and 86400 (got '2d')"),
        (["--ttl", "inf"], "must be a number of seconds between 1 and 86400"),
        (["--ttl", "nan"], "must be a number of seconds between 1 and 86400"),
        (["--ttl", "soon"], "'soon' is not a number of seconds (invalid duration"),
        (["--count", "1.5"], "must be whole seconds between 0 and 10"),
    ],
)
def test_bad_seconds_are_one_error_line(args: list[str], message: str) -> None:
    result = CliRunner().invoke(show, args)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, lines
    assert message in lines[0]


@click.group(cls=OneLineErrorsGroup)
def _tool() -> None:
    """A group with a subcommand, for show_envvars."""


@_tool.command("serve")
@click.option("--port", envvar="KEYSWAP_TEST_PORT", default=7878, show_default=True)
@click.option("--name", envvar="KEYSWAP_TEST_NAME", help="A name.")
@click.option("--named", envvar="KEYSWAP_TEST_NAMED", help="Also $KEYSWAP_TEST_NAMED.")
@click.option("--plain", help="No variable.")
@click.option("--ttl", envvar="KEYSWAP_TEST_TTL", type=Seconds(1))
def _serve(
    port: int, name: str | None, named: str | None, plain: str | None, ttl: float | None
) -> None:
    """Serve."""


def test_help_names_the_variable_of_every_option_that_has_one() -> None:
    result = CliRunner().invoke(_tool, ["serve", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "[env var: KEYSWAP_TEST_PORT; default: 7878]" in text
    assert "A name. [env var: KEYSWAP_TEST_NAME]" in text
    assert text.count("KEYSWAP_TEST_NAMED") == 1  # already named in its help: not twice
    assert "env var: KEYSWAP_TEST_TTL" in text
    assert text.count("env var:") == 3


def test_showing_help_leaves_options_and_error_messages_alone() -> None:
    assert CliRunner().invoke(_tool, ["serve", "--help"]).exit_code == 0
    options = [p for p in _tool.commands["serve"].params if isinstance(p, click.Option)]
    assert not any(p.show_envvar for p in options)
    result = CliRunner().invoke(_tool, ["serve", "--ttl", "0"])
    assert result.exit_code == 2
    assert result.output.strip() == (
        "Error: Invalid value for '--ttl': must be a number of seconds >= 1 (got '0')"
    )
    result = CliRunner().invoke(_tool, ["serve"], env={"KEYSWAP_TEST_TTL": "0"})
    assert result.output.strip().endswith("(got '0') (from KEYSWAP_TEST_TTL)")
