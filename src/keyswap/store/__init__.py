"""The gateway's state: consumers, API keys (as HMAC digests), signing keys (encrypted), a revision.

SQLAlchemy Core over one portable schema (:mod:`keyswap.store.schema`); SQLite by default, PostgreSQL
later. Needs the ``gateway`` extra (SQLAlchemy).
"""

from __future__ import annotations

from keyswap.store.models import ApiKeyRecord, Consumer, SigningKeyRecord
from keyswap.store.sql import Store
from keyswap.store.urls import default_database_url, normalize_database_url, sqlite_file
from keyswap.store.watch import ChangeWatcher

__all__ = [
    "ApiKeyRecord",
    "ChangeWatcher",
    "Consumer",
    "SigningKeyRecord",
    "Store",
    "default_database_url",
    "normalize_database_url",
    "sqlite_file",
]
