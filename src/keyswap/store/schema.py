"""The database schema: every table, index and constraint, in one place.

Portable types only: the same schema runs on SQLite and PostgreSQL. It is created and changed by the
Alembic revisions in ``keyswap/store/migrations/versions`` (:mod:`keyswap.store.migrate`); this module
describes the result, and a test checks that the migrated database matches it exactly. Changing the
schema means changing both: edit the tables here, add a revision, bump :data:`SCHEMA_VERSION`.

Times are epoch seconds as double precision. ``meta`` has a single row (``id = 1``): the ``revision``
every mutation bumps, the schema version, and the fingerprint of the server secret the database was
set up with.
"""

from __future__ import annotations

import sqlalchemy as sa

__all__ = [
    "SCHEMA_VERSION",
    "admin_tokens",
    "api_keys",
    "audit_events",
    "changes",
    "consumer_members",
    "consumers",
    "key_leaks",
    "meta",
    "metadata",
    "portal_links",
    "portal_sessions",
    "quota_usage",
    "signing_keys",
    "usage",
    "webhook_attempts",
    "webhook_endpoints",
    "webhook_events",
]

#: The number of the latest migration (``0011``): what ``meta.schema_version`` says after an upgrade.
SCHEMA_VERSION = 11

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_name)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
    }
)

_TIME: sa.Double[float] = sa.Double()

meta = sa.Table(
    "meta",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("revision", sa.BigInteger, nullable=False),
    sa.Column("schema_version", sa.Integer, nullable=False),
    sa.Column("secret_fingerprint", sa.String(64), nullable=True),
)

consumers = sa.Table(
    "consumers",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("metadata", sa.JSON, nullable=False),
    sa.Column("created_at", _TIME, nullable=False),
    # NULL: the gateway's default (--rate-limit); else "<requests>/<seconds>s" or "unlimited".
    sa.Column("rate_limit", sa.String(32), nullable=True),
    # Space-separated scopes its keys may carry; NULL (or empty): none.
    sa.Column("scopes", sa.Text, nullable=True),
    # NULL: the gateway's default (--max-connections-per-consumer); else requests in flight at once.
    sa.Column("max_connections", sa.Integer, nullable=True),
    # NULL: the deployment's leak policy (--leak-policy); else revoke | roll | notify.
    sa.Column("leak_policy", sa.String(16), nullable=True),
    # Request quota: NULL (none), "<requests>/day" or "<requests>/month" (calendar periods, UTC).
    sa.Column("quota", sa.String(32), nullable=True),
    # Credit balance granted at credits_set_at (NULL: no credits); refilled to credits_refill
    # ("<n>/day", "<n>/month"; NULL: never) at each period start. What is spent is in quota_usage.
    sa.Column("credits", sa.BigInteger, nullable=True),
    sa.Column("credits_refill", sa.String(32), nullable=True),
    sa.Column("credits_set_at", _TIME, nullable=True),
)

# Requests counted against quotas and credits, per consumer and counter ("q:day:2026-12-07",
# "c:<grant ms>" or "c:<grant ms>:month:2026-12"): each gateway adds what it accepted since its last
# flush (an additive upsert), so the row is the total of every node, behind by at most one flush.
quota_usage = sa.Table(
    "quota_usage",
    metadata,
    sa.Column(
        "consumer_id",
        sa.Integer,
        sa.ForeignKey("consumers.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("counter", sa.String(64), primary_key=True),
    sa.Column("used", sa.BigInteger, nullable=False),
    sa.Column("updated_at", _TIME, nullable=False),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column(
        "consumer_id",
        sa.Integer,
        sa.ForeignKey("consumers.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    # HMAC-SHA-256 of the key under a secret-derived subkey: the only form of the key we keep.
    sa.Column("digest", sa.LargeBinary(32), nullable=False, unique=True),
    sa.Column("hint", sa.String(40), nullable=False),
    sa.Column("created_at", _TIME, nullable=False),
    sa.Column("expires_at", _TIME, nullable=True),
    sa.Column("revoked_at", _TIME, nullable=True),
    sa.Column("last_used_at", _TIME, nullable=True),
    # Set when the key was rolled: the id of its replacement (a key is rolled at most once).
    sa.Column("replaced_by", sa.String(32), nullable=True),
    # Space-separated scopes of its own (within its consumer's); NULL: its consumer's scopes.
    sa.Column("scopes", sa.Text, nullable=True),
    # A name its owner gave it ("production", "CI"); NULL: none. A rolled key's replacement keeps it.
    sa.Column("label", sa.String(64), nullable=True),
)

# What each revision changed, written in the transaction that bumped ``meta.revision`` (at least one
# row per revision): ``kind`` is ``key`` (ref: key id), ``consumer`` (ref: consumer id), ``signing``
# (ref empty) or ``all`` (anything else: nodes clear every cache). Old rows are pruned; a node whose
# last seen revision is no longer covered clears everything.
changes = sa.Table(
    "changes",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("revision", sa.BigInteger, nullable=False, index=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("ref", sa.String(64), nullable=False),
)

signing_keys = sa.Table(
    "signing_keys",
    metadata,
    sa.Column("kid", sa.String(64), primary_key=True),
    sa.Column("alg", sa.String(16), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("public_jwk", sa.JSON, nullable=False),
    # AES-256-GCM(PKCS8 DER), key derived from the server secret, kid as associated data.
    sa.Column("private_blob", sa.LargeBinary, nullable=False),
    sa.Column("created_at", _TIME, nullable=False),
    sa.Column("activated_at", _TIME, nullable=True),
    sa.Column("retired_at", _TIME, nullable=True),
    sa.CheckConstraint("state IN ('next', 'active', 'retired')", name="state"),
)

# At most one "next" and one "active" key: two gateways starting at once cannot both create a pair.
_LIVE_STATE = signing_keys.c.state.in_(["next", "active"])
sa.Index(
    "uq_signing_keys_live_state",
    signing_keys.c.state,
    unique=True,
    sqlite_where=_LIVE_STATE,
    postgresql_where=_LIVE_STATE,
)

# The audit log: one row per change, written in the change's own transaction (keyswap.manage.audit).
audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column("at", _TIME, nullable=False, index=True),
    # token | oidc | cli | system, and who: the admin token's name, the OIDC subject, the OS user.
    sa.Column("actor_kind", sa.String(16), nullable=False),
    sa.Column("actor_name", sa.String(255), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("target", sa.String(255), nullable=False),
    sa.Column("request_id", sa.String(128), nullable=True),
    sa.Column("client", sa.String(64), nullable=True),
    # The changed fields (never a secret): {"field": value, ...}.
    sa.Column("changes", sa.JSON, nullable=False),
)

# Credentials of the management plane: like API keys, only an HMAC of the token is kept.
admin_tokens = sa.Table(
    "admin_tokens",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("name", sa.String(64), nullable=False),
    sa.Column("digest", sa.LargeBinary(32), nullable=False, unique=True),
    sa.Column("hint", sa.String(40), nullable=False),
    # Space-separated management scopes (consumers:write, admin, ...).
    sa.Column("scopes", sa.Text, nullable=False),
    sa.Column("created_at", _TIME, nullable=False),
    sa.Column("expires_at", _TIME, nullable=True),
    sa.Column("revoked_at", _TIME, nullable=True),
)

# Consumer webhooks (keyswap.manage.webhooks, keyswap.webhooks): at most one endpoint per consumer.
webhook_endpoints = sa.Table(
    "webhook_endpoints",
    metadata,
    sa.Column(
        "consumer_id",
        sa.Integer,
        sa.ForeignKey("consumers.id", ondelete="CASCADE"),
        primary_key=True,
        autoincrement=False,
    ),
    sa.Column("url", sa.String(2048), nullable=False),
    # AES-256-GCM of the whsec_ secret, key derived from the server secret, consumer id as associated data.
    sa.Column("secret_blob", sa.LargeBinary, nullable=False),
    # Set when http:// to a loopback address was explicitly allowed (tests, local development).
    sa.Column("allow_http_loopback", sa.Boolean, nullable=False),
    sa.Column("created_at", _TIME, nullable=False),
    sa.Column("updated_at", _TIME, nullable=False),
)

# The outbox: one row per event (its id is the ``webhook-id`` header), with its delivery state.
# ``state``: pending (to deliver at ``next_attempt_at``), delivered, failed (retries exhausted or no
# endpoint any more). A dispatcher claims a due row by setting ``lease_owner``/``lease_until``.
webhook_events = sa.Table(
    "webhook_events",
    metadata,
    sa.Column("id", sa.String(40), primary_key=True),
    sa.Column(
        "consumer_id",
        sa.Integer,
        sa.ForeignKey("consumers.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("payload", sa.JSON, nullable=False),
    sa.Column("created_at", _TIME, nullable=False),
    sa.Column("idempotency_key", sa.String(255), nullable=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("next_attempt_at", _TIME, nullable=True, index=True),
    sa.Column("lease_owner", sa.String(64), nullable=True),
    sa.Column("lease_until", _TIME, nullable=True),
    sa.Column("finished_at", _TIME, nullable=True),
    sa.UniqueConstraint("consumer_id", "idempotency_key"),
    sa.CheckConstraint("state IN ('pending', 'delivered', 'failed')", name="state"),
)

# Every delivery attempt: when, how it ended (an HTTP status or an error kind), how long it took, when
# the next one is due (NULL: none), and at most a short excerpt of the response body.
webhook_attempts = sa.Table(
    "webhook_attempts",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
    sa.Column(
        "event_id",
        sa.String(40),
        sa.ForeignKey("webhook_events.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("at", _TIME, nullable=False, index=True),
    sa.Column("url", sa.String(2048), nullable=False),
    sa.Column("status_code", sa.Integer, nullable=True),
    sa.Column("error", sa.String(32), nullable=True),
    sa.Column("duration", _TIME, nullable=False),
    sa.Column("next_retry_at", _TIME, nullable=True),
    sa.Column("response_excerpt", sa.String(256), nullable=True),
)

# Keys reported as found in public (GitHub secret scanning, ``keyswap keys scan --apply``): one row per
# (key, place) report, so a replayed report changes nothing. ``fingerprint``: SHA-256 hex of the key id
# and the URL; ``action``: what the policy did (revoke | roll | notify | none: already revoked).
key_leaks = sa.Table(
    "key_leaks",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("fingerprint", sa.String(64), nullable=False, unique=True),
    sa.Column("key_id", sa.String(32), nullable=False, index=True),
    sa.Column("consumer_id", sa.Integer, nullable=False),
    sa.Column("reported_at", _TIME, nullable=False),
    sa.Column("source", sa.String(64), nullable=False),
    sa.Column("url", sa.String(2048), nullable=False),
    sa.Column("action", sa.String(16), nullable=False),
    sa.Column("new_key_id", sa.String(32), nullable=True),
)

# The people who may manage a consumer in the portal: an e-mail address (lower case) or an OIDC subject.
consumer_members = sa.Table(
    "consumer_members",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "consumer_id",
        sa.Integer,
        sa.ForeignKey("consumers.id", ondelete="CASCADE"),
        nullable=False,
    ),
    # email | subject
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("value", sa.String(255), nullable=False, index=True),
    sa.Column("created_at", _TIME, nullable=False),
    sa.UniqueConstraint("consumer_id", "kind", "value"),
)

# Single-use sign-in links of the portal: only a SHA-256 digest of the link's token is kept.
portal_links = sa.Table(
    "portal_links",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("digest", sa.LargeBinary(32), nullable=False, unique=True),
    sa.Column(
        "consumer_id",
        sa.Integer,
        sa.ForeignKey("consumers.id", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("email", sa.String(255), nullable=False),
    sa.Column("created_at", _TIME, nullable=False),
    sa.Column("expires_at", _TIME, nullable=False),
    sa.Column("used_at", _TIME, nullable=True),
)

# Signed-in portal sessions: the key is a SHA-256 digest of the session cookie's value.
portal_sessions = sa.Table(
    "portal_sessions",
    metadata,
    sa.Column("digest", sa.LargeBinary(32), primary_key=True),
    # email | subject: how the person signed in, and who they are.
    sa.Column("identity_kind", sa.String(16), nullable=False),
    sa.Column("identity", sa.String(255), nullable=False),
    sa.Column("email", sa.String(255), nullable=True),
    sa.Column("created_at", _TIME, nullable=False),
    sa.Column("last_seen_at", _TIME, nullable=False),
    sa.Column("expires_at", _TIME, nullable=False, index=True),
)

# Metered usage (keyswap.gateway.meter, keyswap.store.usage): one row per consumer, bucket, key and node.
# ``span`` is the bucket's length (60, 3600 or 86400 s) and ``start`` its first second (a multiple of
# span, UTC). A gateway node writes its own minute rows with absolute values (a retried write never
# counts twice); the rollup merges rows older than a day into hour rows and older than a month into
# day rows, with ``node`` empty. ``consumer`` and ``key_id`` are plain values, not foreign keys: usage
# stays when a key is rolled or revoked. Requests refused before a key was known (401) have both empty.
usage = sa.Table(
    "usage",
    metadata,
    sa.Column("consumer", sa.String(64), nullable=False),
    sa.Column("start", sa.BigInteger, nullable=False),
    sa.Column("span", sa.Integer, nullable=False),
    sa.Column("key_id", sa.String(64), nullable=False),
    sa.Column("node", sa.String(64), nullable=False),
    sa.Column("requests", sa.BigInteger, nullable=False),
    sa.Column("status_2xx", sa.BigInteger, nullable=False),
    sa.Column("status_3xx", sa.BigInteger, nullable=False),
    sa.Column("status_4xx", sa.BigInteger, nullable=False),
    sa.Column("status_5xx", sa.BigInteger, nullable=False),
    # Refused by the gateway itself: no valid key (401), a rate limit or connection cap (429).
    sa.Column("unauthorized", sa.BigInteger, nullable=False),
    sa.Column("rate_limited", sa.BigInteger, nullable=False),
    # Body bytes relayed to the upstream and back.
    sa.Column("bytes_in", sa.BigInteger, nullable=False),
    sa.Column("bytes_out", sa.BigInteger, nullable=False),
    # Upstream latency (to the response head): the sum in seconds, and counts per bucket.
    sa.Column("latency_sum", _TIME, nullable=False),
    sa.Column("latency_10ms", sa.BigInteger, nullable=False),
    sa.Column("latency_50ms", sa.BigInteger, nullable=False),
    sa.Column("latency_250ms", sa.BigInteger, nullable=False),
    sa.Column("latency_1s", sa.BigInteger, nullable=False),
    sa.Column("latency_slow", sa.BigInteger, nullable=False),
    sa.PrimaryKeyConstraint("consumer", "start", "span", "key_id", "node"),
    # SQLite: the rows themselves ordered by the key, so one consumer's period is one range read.
    sqlite_with_rowid=False,
)
sa.Index("ix_usage_span_start", usage.c.span, usage.c.start)
