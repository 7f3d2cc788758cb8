"""Leaked keys: a consumer's leak policy and the ``key_leaks`` log.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07

``consumers.leak_policy`` overrides the deployment's policy for keys found in public (``revoke``,
``roll`` or ``notify``; NULL: the deployment's). ``key_leaks`` holds one row per (key, place found)
report: what was done, by whom, where; its unique fingerprint makes a replayed report a no-op.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_TIME: sa.Double[float] = sa.Double()


def upgrade() -> None:
    op.add_column("consumers", sa.Column("leak_policy", sa.String(16), nullable=True))
    op.create_table(
        "key_leaks",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("consumer_id", sa.Integer, nullable=False),
        sa.Column("reported_at", _TIME, nullable=False),
        sa.Column("source", sa.String(64), nullable=False),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("new_key_id", sa.String(32), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_key_leaks"),
        sa.UniqueConstraint("fingerprint", name="uq_key_leaks_fingerprint"),
    )
    op.create_index("ix_key_leaks_key_id", "key_leaks", ["key_id"])


def downgrade() -> None:
    op.drop_index("ix_key_leaks_key_id", table_name="key_leaks")
    op.drop_table("key_leaks")
    op.drop_column("consumers", "leak_policy")
