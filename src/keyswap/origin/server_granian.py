"""Serving the origin app with granian (``keyswap origin --server granian``).

granian imports its app from a target string in its worker process, so the app cannot be handed over
as an object. The command validates its options, writes them to the ``KEYSWAP_*`` environment variables
it reads anyway (:func:`export_env`), and starts granian in factory mode on :func:`app_from_env`, which
rebuilds the same verifier and app from those variables in the worker. The verifier is started and
closed by the app's ASGI lifespan, which granian runs (``interface="asgi"``).

:func:`app_from_env` also works on its own::

    KEYSWAP_JWKS_URL=... KEYSWAP_ISSUER=... granian --interface asgi --factory \\
        keyswap.origin.server_granian:app_from_env
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping, MutableMapping

from keyswap.errors import ConfigError
from keyswap.origin.app import create_app
from keyswap.verifier.asgi import ASGIApp
from keyswap.verifier.envconfig import issuer_config_from_env
from keyswap.verifier.verify import IssuerConfig, Verifier

__all__ = ["FACTORY_TARGET", "app_from_env", "config_from_env", "export_env", "serve_granian"]

#: The granian target (``module:callable``) of :func:`app_from_env`.
FACTORY_TARGET = "keyswap.origin.server_granian:app_from_env"

_SECONDS = (
    ("leeway", "KEYSWAP_LEEWAY", 30.0),
    ("jwks_cache_ttl", "KEYSWAP_JWKS_CACHE_TTL", 300.0),
    ("jwks_cooldown", "KEYSWAP_JWKS_COOLDOWN", 10.0),
)


def export_env(config: IssuerConfig, realm: str, environ: MutableMapping[str, str]) -> None:
    """Write ``config`` and ``realm`` to the ``KEYSWAP_*`` variables :func:`config_from_env` reads.

    A variable whose setting is absent (``KEYSWAP_AUDIENCE`` without an audience) is removed, so a stale
    value can never leak into the worker.
    """
    optional = {
        "KEYSWAP_JWKS_URL": config.jwks_url,
        "KEYSWAP_AUDIENCE": config.audience,
        "KEYSWAP_PROFILE": config.profile,
    }
    for name, value in optional.items():
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value
    environ["KEYSWAP_ISSUER"] = config.issuer
    environ["KEYSWAP_DISCOVER"] = "true" if config.discover else "false"
    environ["KEYSWAP_ALGORITHMS"] = ",".join(config.algorithms)
    # (exp is always required: "exp" stands for "nothing more", as an empty variable reads as unset)
    environ["KEYSWAP_REQUIRED_CLAIMS"] = ",".join(config.required_claims) or "exp"
    for attribute, name, _ in _SECONDS:
        environ[name] = repr(float(getattr(config, attribute)))
    environ["KEYSWAP_REALM"] = realm


def config_from_env(environ: Mapping[str, str]) -> tuple[IssuerConfig, str]:
    """The issuer configuration and realm described by the ``KEYSWAP_*`` variables in ``environ``.

    The issuer's variables are read by :func:`keyswap.verifier.envconfig.issuer_config_from_env`
    (the defaults of ``keyswap origin``), plus ``KEYSWAP_REALM``.

    Raises:
        ConfigError: a required variable is missing, or a value is malformed or out of range.
    """
    return issuer_config_from_env(environ), environ.get("KEYSWAP_REALM") or "keyswap"


def app_from_env() -> ASGIApp:
    """granian's factory: the origin app configured by the ``KEYSWAP_*`` environment variables.

    The verifier is started at ASGI lifespan start-up and closed at shutdown (``create_app`` with
    ``manage_verifier=True``).

    Raises:
        ConfigError: see :func:`config_from_env`; also a bad ``KEYSWAP_REALM``.
    """
    config, realm = config_from_env(os.environ)
    verifier = Verifier(config)
    try:
        return create_app(verifier, realm=realm)
    except ConfigError:
        verifier.close()
        raise


def serve_granian(*, host: str, port: int, log_level: str, access_log: bool) -> None:
    """Serve :func:`app_from_env` with granian until SIGINT/SIGTERM (blocks).

    One worker process, ASGI with lifespan, uvloop when installed, HTTP/1 only, websockets on. The
    caller must have called :func:`export_env` on ``os.environ`` first.

    Raises:
        ImportError: granian is not installed.
        SystemExit: granian failed (for example, the worker crashed); granian has logged why.
    """
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces, Loops
    from granian.log import LogLevels

    uvloop = importlib.util.find_spec("uvloop") is not None
    Granian(
        FACTORY_TARGET,
        address=host,
        port=port,
        interface=Interfaces.ASGI,
        workers=1,
        loop=Loops.uvloop if uvloop else Loops.auto,
        http=HTTPModes.http1,
        websockets=True,
        log_enabled=True,
        log_level=LogLevels(log_level.lower()),
        log_access=access_log,
        factory=True,
    ).serve()
