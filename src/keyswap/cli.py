"""The ``keyswap`` command line.

Subcommands live next to the code they drive and are imported lazily, so ``keyswap origin`` works on the
base install and the gateway commands say which extra to install when it is missing.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from keyswap import __version__

# name -> ("module:attribute", extra that provides its dependencies, one-line help)
_COMMANDS: dict[str, tuple[str, str, str]] = {
    "origin": (
        "keyswap.origin.cli:origin",
        "server",
        "Run a protected API that echoes verified claims.",
    ),
    "gateway": ("keyswap.gateway.cli:gateway", "gateway", "Run the API-key gateway."),
    "admin": ("keyswap.admin.cli:admin", "admin", "Run the admin HTTP API (management plane)."),
    "demo": ("keyswap.gateway.cli:demo", "gateway", "Run gateway + origin with a demo key."),
    "consumers": ("keyswap.gateway.cli_members:consumers", "gateway", "Manage API consumers."),
    "keys": ("keyswap.gateway.cli:keys", "gateway", "Manage consumers' API keys."),
    "portal": (
        "keyswap.portal.cli:portal",
        "portal",
        "Run the developer portal; make sign-in links.",
    ),
    "signing-keys": ("keyswap.gateway.cli:signing_keys", "gateway", "Manage JWT signing keys."),
    "db": ("keyswap.gateway.cli:db", "gateway", "Database schema commands."),
    "admin-tokens": (
        "keyswap.gateway.cli_admin:admin_tokens",
        "gateway",
        "Manage admin tokens (admin API credentials).",
    ),
    "audit": ("keyswap.gateway.cli_admin:audit", "gateway", "List the audit log of changes."),
    "webhooks": (
        "keyswap.webhooks.cli:webhooks",
        "gateway",
        "Consumers' webhook events: deliveries, redeliver, dispatch.",
    ),
    "usage": (
        "keyswap.gateway.cli_usage:usage",
        "gateway",
        "Show metered usage per consumer and key; top consumers.",
    ),
    "tokens": (
        "keyswap.gateway.cli_tokens:tokens",
        "gateway",
        "Mint tokens as the gateway would (test an origin).",
    ),
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = _COMMANDS.get(cmd_name)
        if target is None:
            return None
        path, extra, _ = target
        module_name, attr = path.split(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:  # pragma: no cover - depends on the installed extras
            missing = exc.name or str(exc)
            raise click.ClickException(
                f"'keyswap {cmd_name}' needs the '{extra}' extra ({missing} is not installed): "
                f"pip install 'keyswap[{extra}]'"
            ) from exc
        command: Any = getattr(module, attr, None)
        if not isinstance(command, click.Command):
            return None
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Listing must not import every subcommand (and fail on a missing extra).
        rows = [(name, help_text) for name, (_, _, help_text) in sorted(_COMMANDS.items())]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="keyswap")
def main() -> None:
    """keyswap: API keys at the edge, short-lived JWTs at the origin."""
