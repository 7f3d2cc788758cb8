"""The webhook dispatcher as a background thread of ``keyswap gateway`` and ``keyswap admin``.

Every such process delivers due events (leases keep two from delivering the same one); ``--no-webhooks``
turns it off (then run ``keyswap webhooks dispatch`` somewhere, or nothing is delivered). Without the
``webhooks`` extra (``standardwebhooks``) nothing is delivered and start-up logs one warning.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from keyswap.gateway.secret import ServerSecret
from keyswap.store.sql import Store

__all__ = ["WEBHOOKS_HELP", "background_dispatcher"]

log = logging.getLogger("keyswap.webhooks")

#: The help of ``--webhooks/--no-webhooks``.
WEBHOOKS_HELP = (
    "Deliver consumers' webhook events from this process (default; needs the 'webhooks' extra). "
    "--no-webhooks leaves it to other processes or `keyswap webhooks dispatch`."
)


@contextmanager
def background_dispatcher(
    store: Store | str, secret: ServerSecret, *, enabled: bool = True, interval: float = 2.0
) -> Iterator[object | None]:
    """Run a dispatcher thread for the block (``store``: a store, or a URL to open one of its own);
    yields the :class:`~keyswap.webhooks.dispatch.DispatcherThread`, or ``None`` when disabled or
    the extra is missing."""
    if not enabled:
        yield None
        return
    try:
        from keyswap.webhooks.dispatch import Dispatcher, DispatcherThread
    except ImportError:
        log.warning(
            "webhook events are not delivered: install the 'webhooks' extra "
            "(pip install 'keyswap[webhooks]') or pass --no-webhooks"
        )
        yield None
        return
    own = isinstance(store, str)
    opened = Store(store) if isinstance(store, str) else store
    thread = DispatcherThread(Dispatcher(opened, secret), interval=interval).start()
    try:
        yield thread
    finally:
        thread.stop()
        if own:
            opened.close()
