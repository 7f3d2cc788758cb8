"""Per-consumer rate limits: ``consumers.rate_limit``.

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02

``NULL`` means the gateway's default (``--rate-limit``); otherwise ``"<requests>/<seconds>s"`` or
``"unlimited"`` (written by ``keyswap consumers set-limit``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("consumers", sa.Column("rate_limit", sa.String(32), nullable=True))


def downgrade() -> None:
    # Plain ALTER TABLE ... DROP COLUMN (SQLite 3.35+), not a batch "copy and move": on SQLite, dropping
    # and recreating ``consumers`` cascaded to every API key (all keys were lost on a downgrade).
    op.drop_column("consumers", "rate_limit")
