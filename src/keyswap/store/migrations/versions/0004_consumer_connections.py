"""Per-consumer connection caps: ``consumers.max_connections``.

Revision ID: 0004
Revises: 0003
Create Date: 2025-01-04

``NULL`` means the gateway's default (``--max-connections-per-consumer``); otherwise the most requests
the consumer may have in flight to the upstream at once on one gateway process (written by
``keyswap consumers set-limit --connections``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("consumers", sa.Column("max_connections", sa.Integer, nullable=True))


def downgrade() -> None:
    # Plain ALTER TABLE ... DROP COLUMN (SQLite 3.35+), not a batch "copy and move": on SQLite, dropping
    # and recreating ``consumers`` would cascade to every API key.
    op.drop_column("consumers", "max_connections")
