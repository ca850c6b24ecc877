"""Create the data key and secret tables.

Revision ID: 0001
Revises:
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "fernvault_data_keys",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("wrapped_key", sa.Text(), nullable=False),
        sa.Column("master_key_id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_fernvault_data_keys"),
    )
    op.create_table(
        "fernvault_secrets",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("token", sa.Text(), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column(
            "metadata",
            sa.JSON().with_variant(postgresql.JSONB(), "postgresql"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_fernvault_secrets"),
        sa.UniqueConstraint("name", name="uq_fernvault_secrets_name"),
        sa.ForeignKeyConstraint(
            ["key_id"],
            ["fernvault_data_keys.id"],
            name="fk_fernvault_secrets_key_id_fernvault_data_keys",
        ),
    )
    op.create_index("ix_fernvault_secrets_key_id", "fernvault_secrets", ["key_id"])


def downgrade() -> None:
    op.drop_index("ix_fernvault_secrets_key_id", table_name="fernvault_secrets")
    op.drop_table("fernvault_secrets")
    op.drop_table("fernvault_data_keys")
