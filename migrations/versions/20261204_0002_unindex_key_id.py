"""Drop the key_id index and leave room in fernvault_secrets pages for rotations.

A rotation rewrites token and key_id in every row. The index on key_id cost
one index insert per row, and only the deletion of the old data key used it,
once per rotation. On PostgreSQL a fill factor of 50 leaves room on each page
for the new row versions, so with no index on the rewritten columns the
updates are heap-only (HOT). The new fill factor applies to pages written
from now on.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-04
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_fernvault_secrets_key_id", table_name="fernvault_secrets")
    if op.get_context().dialect.name == "postgresql":
        op.execute("ALTER TABLE fernvault_secrets SET (fillfactor = 50)")


def downgrade() -> None:
    if op.get_context().dialect.name == "postgresql":
        op.execute("ALTER TABLE fernvault_secrets RESET (fillfactor)")
    op.create_index("ix_fernvault_secrets_key_id", "fernvault_secrets", ["key_id"])
