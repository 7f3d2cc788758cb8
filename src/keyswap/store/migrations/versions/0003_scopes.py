"""Scopes: ``consumers.scopes`` and ``api_keys.scopes``.

Revision ID: 0003
Revises: 0002
Create Date: 2025-01-03

Both hold space-separated scope tokens. A consumer's ``NULL`` (or empty) means no scopes; a key's
``NULL`` means its consumer's scopes, anything else its own scopes (the gateway grants those that the
consumer still has). Written by ``keyswap consumers create|set-scopes`` and ``keyswap keys create``.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("consumers", sa.Column("scopes", sa.Text, nullable=True))
    op.add_column("api_keys", sa.Column("scopes", sa.Text, nullable=True))


def downgrade() -> None:
    # Plain ALTER TABLE ... DROP COLUMN (SQLite 3.35+), not a batch "copy and move": on SQLite, dropping
    # and recreating ``consumers`` would cascade to every API key.
    op.drop_column("api_keys", "scopes")
    op.drop_column("consumers", "scopes")
