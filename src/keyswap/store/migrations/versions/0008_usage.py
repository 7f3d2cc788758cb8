"""Metered usage: ``usage``.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07

One row per consumer, bucket (``start``, ``span``: 60, 3600 or 86400 seconds), API key and gateway node,
with the counts of :mod:`keyswap.gateway.meter`: requests by status class, refusals, body bytes and
upstream latency. Written by the gateway's meter (absolute values per node and minute, so a retried
write never counts twice) and merged into hour and day rows by the rollup (:mod:`keyswap.store.usage`).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

_COUNTS = (
    "requests",
    "status_2xx",
    "status_3xx",
    "status_4xx",
    "status_5xx",
    "unauthorized",
    "rate_limited",
    "bytes_in",
    "bytes_out",
)
_BUCKETS = ("latency_10ms", "latency_50ms", "latency_250ms", "latency_1s", "latency_slow")


def upgrade() -> None:
    op.create_table(
        "usage",
        sa.Column("consumer", sa.String(64), nullable=False),
        sa.Column("start", sa.BigInteger, nullable=False),
        sa.Column("span", sa.Integer, nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("node", sa.String(64), nullable=False),
        *(sa.Column(name, sa.BigInteger, nullable=False) for name in _COUNTS),
        sa.Column("latency_sum", sa.Double(), nullable=False),
        *(sa.Column(name, sa.BigInteger, nullable=False) for name in _BUCKETS),
        sa.PrimaryKeyConstraint("consumer", "start", "span", "key_id", "node", name="pk_usage"),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_usage_span_start", "usage", ["span", "start"])


def downgrade() -> None:
    op.drop_index("ix_usage_span_start", table_name="usage")
    op.drop_table("usage")
