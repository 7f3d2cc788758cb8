"""The click plumbing shared by `keyswap origin` and the gateway commands."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from keyswap.cli_support import OneLineErrorsCommand, Seconds


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
