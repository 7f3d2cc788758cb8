"""Quotas and credits: four ``consumers`` columns and the ``quota_usage`` table.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07

``consumers.quota`` is ``NULL`` (none), ``"<n>/day"`` or ``"<n>/month"`` (written by ``keyswap
consumers set-quota``); ``credits``/``credits_refill``/``credits_set_at`` are a credit balance, what it
is refilled to each period and when it was set (``keyswap consumers set-credits``). ``quota_usage``
holds the requests counted against them, per consumer and counter, added to by every gateway.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_TIME: sa.Double[float] = sa.Double()


def upgrade() -> None:
    op.add_column("consumers", sa.Column("quota", sa.String(32), nullable=True))
    op.add_column("consumers", sa.Column("credits", sa.BigInteger, nullable=True))
    op.add_column("consumers", sa.Column("credits_refill", sa.String(32), nullable=True))
    op.add_column("consumers", sa.Column("credits_set_at", _TIME, nullable=True))
    op.create_table(
        "quota_usage",
        sa.Column("consumer_id", sa.Integer, nullable=False),
        sa.Column("counter", sa.String(64), nullable=False),
        sa.Column("used", sa.BigInteger, nullable=False),
        sa.Column("updated_at", _TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["consumer_id"],
            ["consumers.id"],
            name="fk_quota_usage_consumer_id_consumers",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("consumer_id", "counter", name="pk_quota_usage"),
    )


def downgrade() -> None:
    op.drop_table("quota_usage")
    # Plain ALTER TABLE ... DROP COLUMN (SQLite 3.35+), never a batch copy: that would cascade.
    op.drop_column("consumers", "credits_set_at")
    op.drop_column("consumers", "credits_refill")
    op.drop_column("consumers", "credits")
    op.drop_column("consumers", "quota")
