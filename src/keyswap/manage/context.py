"""What every management operation runs against: the store, the actor, a clock, the audit retention."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from keyswap.durations import parse_duration
from keyswap.errors import ConfigError, InvalidInput
from keyswap.manage.actor import Actor
from keyswap.store.sql import Store

__all__ = ["AUDIT_RETENTION_ENV", "DEFAULT_AUDIT_RETENTION", "Context", "audit_retention_from_env"]

#: How long audit events are kept by default (365 days).
DEFAULT_AUDIT_RETENTION = 365 * 86400.0
#: The variable that sets it (a duration such as ``90d``; ``0`` keeps events forever).
AUDIT_RETENTION_ENV = "KEYSWAP_AUDIT_RETENTION"


def audit_retention_from_env(env: dict[str, str] | None = None) -> float:
    """The audit retention from ``$KEYSWAP_AUDIT_RETENTION`` (default 365 days; ``0``: forever).

    Raises:
        ConfigError: the value is not a duration.
    """
    text = (os.environ if env is None else env).get(AUDIT_RETENTION_ENV, "").strip()
    if not text:
        return DEFAULT_AUDIT_RETENTION
    try:
        return parse_duration(text)
    except InvalidInput as exc:
        raise ConfigError(f"${AUDIT_RETENTION_ENV}: {exc.reason}") from None


@dataclass(frozen=True, slots=True)
class Context:
    """The store to change, who changes it, the clock, and how long audit events are kept.

    ``audit_retention``: seconds; each change also deletes events older than that (pruning on write);
    ``0`` keeps every event.
    """

    store: Store
    actor: Actor
    clock: Callable[[], float] = field(default=time.time)
    audit_retention: float = DEFAULT_AUDIT_RETENTION

    def now(self) -> float:
        """The current time, epoch seconds."""
        return self.clock()
