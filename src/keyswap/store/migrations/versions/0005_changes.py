"""The change log: what each store revision changed, so gateway nodes invalidate only that.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07

Every transaction that bumps ``meta.revision`` writes one or more rows ``(revision, kind, ref)``:
``key`` (ref: an API key id), ``consumer`` (ref: a consumer id), ``signing`` (the signing keys) or
``all``. A node reads the rows after the last revision it saw; a revision without rows (from before
this migration, or pruned) makes it clear every cache, as before.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "changes",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("ref", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_changes"),
    )
    op.create_index("ix_changes_revision", "changes", ["revision"])


def downgrade() -> None:
    op.drop_index("ix_changes_revision", table_name="changes")
    op.drop_table("changes")
