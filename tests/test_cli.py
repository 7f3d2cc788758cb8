"""The `keyswap` command as a whole: one exit-status rule, env vars named in --help, shell completion."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from keyswap.cli import _COMMANDS, main

KEYSWAP = str(Path(sys.executable).with_name("keyswap"))
CLEAN_ENV = {k: v for k, v in os.environ.items() if not k.startswith(("KEYSWAP_", "_KEYSWAP"))}


def _all_commands() -> Iterator[tuple[list[str], click.Command]]:
    context = click.Context(main)
    for name in sorted(_COMMANDS):
        command = main.get_command(context, name)
        assert command is not None
        yield [name], command
        if isinstance(command, click.Group):
            for sub in sorted(command.commands):
                yield [name, sub], command.commands[sub]


ALL_COMMANDS = list(_all_commands())


def _envvars(command: click.Command) -> list[str]:
    names: list[str] = []
    for param in command.params:
        if isinstance(param, click.Option) and param.envvar:
            envvar = param.envvar
            names += [envvar] if isinstance(envvar, str) else list(envvar)
    return names


@pytest.mark.parametrize(
    ("path", "command"), ALL_COMMANDS, ids=[" ".join(p) for p, _ in ALL_COMMANDS]
)
def test_help_names_the_environment_variable_of_every_option(
    path: list[str], command: click.Command
) -> None:
    result = CliRunner().invoke(main, [*path, "--help"], env={})
    assert result.exit_code == 0, result.output
    for name in _envvars(command):
        assert name in result.output, f"keyswap {' '.join(path)} --help does not name {name}"


def test_the_gateway_commands_have_environment_variables_to_show() -> None:
    named = {name for _, command in ALL_COMMANDS for name in _envvars(command)}
    assert {"KEYSWAP_HOST", "KEYSWAP_PORT", "KEYSWAP_KEY_PREFIX", "KEYSWAP_LOG_LEVEL"} <= named
    help_text = CliRunner().invoke(main, ["gateway", "--help"]).output
    assert "env var: KEYSWAP_MAX_CONNECTIONS" in " ".join(help_text.split())


# -- exit status: 2 for a bad command line, 1 for everything else ---------------------------------------

BASE_ORIGIN = ["--jwks-url", "http://127.0.0.1:9/jwks.json", "--issuer", "https://i.test"]
USAGE_ERRORS = [
    ["gateway", "--upstream", "http://h", "--rate-limit", "lots"],
    ["gateway", "--upstream", "http://h", "--token-ttl", "0"],
    ["gateway", "--upstream", "http://h", "--redis", "http://h"],
    ["gateway", "--upstream", "not a url"],
    ["demo", "--port", "8080", "--origin-port", "8080"],
    ["demo", "--port", "0"],
    ["origin", *BASE_ORIGIN, "--leeway", "-1"],
    ["consumers", "create", "bad name"],
    ["consumers", "create", "x", "--metadata", "{oops"],
    ["consumers", "set-limit", "acme", "--rate", "lots"],
    ["consumers", "set-limit", "acme", "--connections", "0"],
    ["consumers", "set-limit", "acme"],
    ["gateway", "--upstream", "http://h", "--head-timeout", "0"],
    ["gateway", "--upstream", "http://h", "--max-client-connections", "0"],
    ["keys", "create", "acme", "--expires-in", "soon"],
    ["keys", "roll", "key_x", "--grace", "forever"],
    ["signing-keys", "prune", "--token-ttl", "5x"],
    ["signing-keys", "rotate", "--alg", "HS256"],
    ["db", "upgrade", "--nope"],
]
RUNTIME_ERRORS = [
    ["consumers", "delete", "ghost", "--yes"],
    ["consumers", "delete", "acme"],  # no terminal, no --yes
    ["consumers", "create", "acme"],  # exists
    ["keys", "revoke", "key_nope"],
    ["keys", "list", "ghost"],
]


@pytest.mark.parametrize("args", USAGE_ERRORS, ids=" ".join)
def test_a_bad_command_line_exits_2(tmp_path: Path, args: list[str]) -> None:
    db = tmp_path / "k.db"
    assert CliRunner().invoke(main, ["consumers", "create", "acme", "--db", str(db)]).exit_code == 0
    extra = [] if args[0] in {"demo", "origin"} else ["--db", str(db)]
    result = CliRunner().invoke(main, [*args, *extra], env=dict.fromkeys(("KEYSWAP_DB",)))
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ")


@pytest.mark.parametrize("args", RUNTIME_ERRORS, ids=" ".join)
def test_a_failure_at_run_time_exits_1(tmp_path: Path, args: list[str]) -> None:
    db = str(tmp_path / "k.db")
    assert CliRunner().invoke(main, ["consumers", "create", "acme", "--db", db]).exit_code == 0
    result = CliRunner().invoke(main, [*args, "--db", db])
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("Error: ")


def test_a_missing_database_and_a_busy_port_exit_1(tmp_path: Path) -> None:
    import socket

    missing = CliRunner().invoke(main, ["db", "status", "--db", str(tmp_path / "none.db")])
    assert (missing.exit_code, missing.output) == (1, f"Error: no database at {tmp_path}/none.db\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        busy = CliRunner().invoke(
            main, ["demo", "--port", str(port), "--data-dir", str(tmp_path / "d")]
        )
    assert busy.exit_code == 1
    assert busy.output == f"Error: cannot listen on 127.0.0.1:{port}: address already in use\n"


# -- shell completion -----------------------------------------------------------------------------------


def _complete(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [KEYSWAP], capture_output=True, text=True, timeout=60, env={**CLEAN_ENV, **env}
    )


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_keyswap_prints_its_completion_script(shell: str) -> None:
    done = _complete({"_KEYSWAP_COMPLETE": f"{shell}_source"})
    assert done.returncode == 0, done.stderr
    assert "_keyswap_completion" in done.stdout
    assert "_KEYSWAP_COMPLETE" in done.stdout


@pytest.mark.parametrize(
    ("words", "cword", "expected"),
    [
        ("keyswap con", "1", ["consumers"]),
        ("keyswap ", "1", sorted(_COMMANDS)),
        ("keyswap signing-keys ", "2", ["list", "prune", "rotate"]),
        ("keyswap consumers delete acme --y", "4", ["--yes"]),
    ],
)
def test_completion_offers_the_lazy_subcommands(
    words: str, cword: str, expected: list[str]
) -> None:
    done = _complete(
        {"_KEYSWAP_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": cword}
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [f"plain,{name}" for name in expected]
