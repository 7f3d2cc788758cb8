"""Consumer webhooks: events delivered to a consumer's HTTPS endpoint, signed per Standard Webhooks.

- :mod:`keyswap.manage.webhooks`: the service layer (set, show, clear, rotate the secret, list
  deliveries, redeliver) and :func:`~keyswap.manage.webhooks.enqueue`, which records an event;
- :mod:`keyswap.store.webhooks`: endpoints, the event outbox and the delivery attempts in the store;
- :mod:`keyswap.webhooks.secrets`: ``whsec_`` secrets and their encryption under the server secret;
- :mod:`keyswap.webhooks.dispatch`: the dispatcher (signing, retries with backoff, leases), which needs
  the ``webhooks`` extra (``standardwebhooks``).

See docs/webhooks.md.
"""

from __future__ import annotations
