"""The initial schema: meta, consumers, api_keys, signing_keys (keyswap 0.1).

Revision ID: 0001
Revises:
Create Date: 2025-01-01

Frozen: it creates exactly what ``keyswap.store.schema`` described at version 1, with the same constraint
names, so a database created before migrations existed (stamped ``0001``) and one created by this
revision are the same.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_LIVE = "state IN ('next', 'active')"


def upgrade() -> None:
    op.create_table(
        "meta",
        sa.Column("id", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("revision", sa.BigInteger, nullable=False),
        sa.Column("schema_version", sa.Integer, nullable=False),
        sa.Column("secret_fingerprint", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_meta"),
    )
    op.create_table(
        "consumers",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("metadata", sa.JSON, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_consumers"),
        sa.UniqueConstraint("name", name="uq_consumers_name"),
    )
    op.create_table(
        "signing_keys",
        sa.Column("kid", sa.String(64), nullable=False),
        sa.Column("alg", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("public_jwk", sa.JSON, nullable=False),
        sa.Column("private_blob", sa.LargeBinary, nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("activated_at", sa.Double, nullable=True),
        sa.Column("retired_at", sa.Double, nullable=True),
        sa.PrimaryKeyConstraint("kid", name="pk_signing_keys"),
        sa.CheckConstraint("state IN ('next', 'active', 'retired')", name="ck_signing_keys_state"),
    )
    op.create_index(
        "uq_signing_keys_live_state",
        "signing_keys",
        ["state"],
        unique=True,
        sqlite_where=sa.text(_LIVE),
        postgresql_where=sa.text(_LIVE),
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("consumer_id", sa.Integer, nullable=False),
        sa.Column("digest", sa.LargeBinary(32), nullable=False),
        sa.Column("hint", sa.String(40), nullable=False),
        sa.Column("created_at", sa.Double, nullable=False),
        sa.Column("expires_at", sa.Double, nullable=True),
        sa.Column("revoked_at", sa.Double, nullable=True),
        sa.Column("last_used_at", sa.Double, nullable=True),
        sa.Column("replaced_by", sa.String(32), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_api_keys"),
        sa.ForeignKeyConstraint(
            ["consumer_id"],
            ["consumers.id"],
            name="fk_api_keys_consumer_id_consumers",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("digest", name="uq_api_keys_digest"),
    )
    op.create_index("ix_api_keys_consumer_id", "api_keys", ["consumer_id"])


def downgrade() -> None:
    op.drop_index("ix_api_keys_consumer_id", table_name="api_keys")
    op.drop_table("api_keys")
    op.drop_index("uq_signing_keys_live_state", table_name="signing_keys")
    op.drop_table("signing_keys")
    op.drop_table("consumers")
    op.drop_table("meta")
