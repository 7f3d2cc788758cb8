"""The server secret: where it comes from, and the subkeys derived from it.

The secret is never used directly. HKDF-SHA-256 derives independent 32-byte subkeys from it: one for the
HMAC-SHA-256 of API keys, one for that of admin tokens, one for the AES-256-GCM encryption of private
signing keys, one for the AES-256-GCM encryption of consumers' webhook secrets, and a fingerprint the database records on first use, so starting with another secret fails with a clear message instead of
refusing every key.

Where it comes from, first match wins:

1. ``secret_file`` (``--secret-file``), created (mode 0600) if missing;
2. ``KEYSWAP_SECRET`` (at least 32 characters);
3. ``KEYSWAP_SECRET_FILE``, created (mode 0600) if missing;
4. for a SQLite file database, ``<database file>.secret`` beside it, generated (mode 0600) on first use;
5. otherwise (PostgreSQL, in-memory SQLite) start-up fails: such a database needs one of 1-3.

A secret file must not be readable or writable by others (``chmod 600`` or ``640``).
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from keyswap.errors import ConfigError
from keyswap.store.urls import display_url, normalize_database_url, sqlite_file

__all__ = [
    "MIN_SECRET_LENGTH",
    "SECRET_ENV",
    "SECRET_FILE_ENV",
    "ServerSecret",
    "check_secret",
    "default_secret_file",
    "load_secret",
]

SECRET_ENV = "KEYSWAP_SECRET"  # noqa: S105 - a variable name
SECRET_FILE_ENV = "KEYSWAP_SECRET_FILE"  # noqa: S105 - a variable name
#: Shortest secret accepted, in characters (a generated one is 43 base64url characters, 256 bits).
MIN_SECRET_LENGTH = 32
_MAX_FILE_SIZE = 4096
_SALT = b"keyswap server secret v1"


class ServerSecret:
    """Subkeys derived from the server secret. The secret itself is not kept; ``repr`` shows nothing.

    Raises:
        ConfigError: the secret is shorter than :data:`MIN_SECRET_LENGTH` characters.
    """

    __slots__ = (
        "admin_token_mac_key",
        "api_key_mac_key",
        "fingerprint",
        "signing_key_encryption_key",
        "webhook_secret_encryption_key",
    )

    def __init__(self, secret: str | bytes) -> None:
        material = secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)
        if len(material) < MIN_SECRET_LENGTH:
            raise ConfigError(
                f"the server secret must be at least {MIN_SECRET_LENGTH} characters; generate one with "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        self.api_key_mac_key = _derive(material, b"api-key-hmac")
        self.admin_token_mac_key = _derive(material, b"admin-token-hmac")
        self.signing_key_encryption_key = _derive(material, b"signing-key-encryption")
        self.webhook_secret_encryption_key = _derive(material, b"webhook-secret-encryption")
        self.fingerprint = _derive(material, b"fingerprint").hex()

    @classmethod
    def generate(cls) -> ServerSecret:
        """A fresh random secret (for tests and throw-away demos)."""
        return cls(secrets.token_urlsafe(32))

    def __repr__(self) -> str:
        return "ServerSecret(<hidden>)"


def _derive(material: bytes, purpose: bytes) -> bytes:
    return HKDF(
        algorithm=hashes.SHA256(), length=32, salt=_SALT, info=b"keyswap/" + purpose
    ).derive(material)


def default_secret_file(db_url: str) -> Path | None:
    """``<database file>.secret`` for a SQLite file database (URL or plain path), else ``None``."""
    path = sqlite_file(normalize_database_url(db_url))
    return None if path is None else path.with_name(path.name + ".secret")


def load_secret(
    db_url: str,
    *,
    secret_file: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> ServerSecret:
    """Load (or, for a file, create) the server secret for the database at ``db_url``.

    See the module docstring for the order of sources.

    Raises:
        ConfigError: no source applies, the secret is too short, or a secret file is unreadable,
            accessible by others, or cannot be created.
    """
    env = os.environ if env is None else env
    if secret_file is not None:
        return ServerSecret(_read_or_create(Path(secret_file).expanduser()))
    if env.get(SECRET_ENV):
        return ServerSecret(env[SECRET_ENV].strip())
    if env.get(SECRET_FILE_ENV):
        return ServerSecret(_read_or_create(Path(env[SECRET_FILE_ENV]).expanduser()))
    beside = default_secret_file(db_url)
    if beside is None:
        raise ConfigError(
            f"the database {display_url(db_url)} is not a SQLite file, so there is no secret file beside "
            f"it: set {SECRET_ENV} or pass --secret-file"
        )
    return ServerSecret(_read_or_create(beside))


def check_secret(store: _BindsSecret, secret: ServerSecret) -> None:
    """Bind ``secret`` to the database on first use; refuse a different one later.

    Raises:
        ConfigError: the database was set up with another server secret.
    """
    if not store.bind_secret(secret.fingerprint):
        raise ConfigError(
            "this database was set up with a different server secret: its API keys and signing keys "
            f"cannot be used with this one (check {SECRET_ENV}, --secret-file, or the .secret file "
            "beside the database)"
        )


class _BindsSecret(Protocol):
    def bind_secret(self, fingerprint: str) -> bool: ...


def _read_or_create(path: Path) -> str:
    try:
        return _read(path)
    except FileNotFoundError:
        _create(path)
        return _read(path)


def _read(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise ConfigError(f"cannot read the secret file {path}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"the secret file {path} is not a regular file")
        if os.name == "posix" and info.st_mode & (stat.S_IRWXO | stat.S_IWGRP):
            raise ConfigError(
                f"the secret file {path} is accessible by other users "
                f"(mode {stat.S_IMODE(info.st_mode):04o}); run: chmod 600 {path}"
            )
        data = os.read(fd, _MAX_FILE_SIZE + 1)
    finally:
        os.close(fd)
    if len(data) > _MAX_FILE_SIZE:
        raise ConfigError(f"the secret file {path} is larger than {_MAX_FILE_SIZE} bytes")
    try:
        return data.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"the secret file {path} is not UTF-8 text") from None


def _create(path: Path) -> None:
    """Write a new random secret atomically: a full temporary file, then a hard link (no overwrite)."""
    value = (secrets.token_urlsafe(32) + "\n").encode("ascii")
    try:
        path.parent.mkdir(parents=True, mode=0o700, exist_ok=True)
        temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, value)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass  # another process created it first: use theirs
        finally:
            temporary.unlink()
    except OSError as exc:
        raise ConfigError(f"cannot create the secret file {path}: {exc.strerror}") from None
