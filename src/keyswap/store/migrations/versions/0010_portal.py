"""The developer portal: ``consumer_members``, ``portal_links`` and ``portal_sessions``.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07

``consumer_members`` names the people (an e-mail address or an OIDC subject) who may manage a consumer
in the portal; ``portal_links`` holds single-use sign-in links (a SHA-256 digest of the token, never the
token); ``portal_sessions`` the signed-in sessions (a SHA-256 digest of the cookie's value). ``api_keys.label``:
a name a key's owner gave it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_TIME: sa.Double[float] = sa.Double()


def upgrade() -> None:
    op.add_column("api_keys", sa.Column("label", sa.String(64), nullable=True))
    op.create_table(
        "consumer_members",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("consumer_id", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("value", sa.String(255), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.ForeignKeyConstraint(
            ["consumer_id"],
            ["consumers.id"],
            name="fk_consumer_members_consumer_id_consumers",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_consumer_members"),
        sa.UniqueConstraint("consumer_id", "kind", "value", name="uq_consumer_members_consumer_id"),
    )
    op.create_index("ix_consumer_members_value", "consumer_members", ["value"])
    op.create_table(
        "portal_links",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("digest", sa.LargeBinary(32), nullable=False),
        sa.Column("consumer_id", sa.Integer, nullable=False),
        sa.Column("email", sa.String(255), nullable=False),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("expires_at", _TIME, nullable=False),
        sa.Column("used_at", _TIME, nullable=True),
        sa.ForeignKeyConstraint(
            ["consumer_id"],
            ["consumers.id"],
            name="fk_portal_links_consumer_id_consumers",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_portal_links"),
        sa.UniqueConstraint("digest", name="uq_portal_links_digest"),
    )
    op.create_table(
        "portal_sessions",
        sa.Column("digest", sa.LargeBinary(32), nullable=False),
        sa.Column("identity_kind", sa.String(16), nullable=False),
        sa.Column("identity", sa.String(255), nullable=False),
        sa.Column("email", sa.String(255), nullable=True),
        sa.Column("created_at", _TIME, nullable=False),
        sa.Column("last_seen_at", _TIME, nullable=False),
        sa.Column("expires_at", _TIME, nullable=False),
        sa.PrimaryKeyConstraint("digest", name="pk_portal_sessions"),
    )
    op.create_index("ix_portal_sessions_expires_at", "portal_sessions", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_portal_sessions_expires_at", "portal_sessions")
    op.drop_table("portal_sessions")
    op.drop_table("portal_links")
    op.drop_index("ix_consumer_members_value", "consumer_members")
    op.drop_table("consumer_members")
    op.drop_column("api_keys", "label")
