"""Tables of the vault: wrapped data keys and encrypted secrets.

The tables carry the ``fernvault_`` prefix so the vault can live in an
application's own database. Nothing here ever holds a plaintext value or an
unwrapped key: ``token`` and ``wrapped_key`` are Fernet ciphertext.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, cast

from sqlalchemy import JSON, DateTime, ForeignKey, MetaData, String, Table, Text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# Stable constraint names, so migrations can refer to them on every database.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

ID_LENGTH = 32  # secrets.token_hex(16)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always returned timezone-aware.

    SQLite has no timezone type and returns naive values, so they are read as UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("timestamps must be timezone-aware")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=timezone.utc)
        return value.astimezone(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class DataKey(Base):
    """A data key, wrapped by the master key whose fingerprint it records."""

    __tablename__ = "fernvault_data_keys"

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    wrapped_key: Mapped[str] = mapped_column(Text)
    master_key_id: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    def __repr__(self) -> str:
        return f"DataKey(id={self.id!r}, master_key_id={self.master_key_id!r})"


class Secret(Base):
    """A named secret; ``token`` is its value encrypted under data key ``key_id``."""

    __tablename__ = "fernvault_secrets"
    # Half-empty pages on PostgreSQL leave room for a rotation's new row
    # versions beside the old ones: with no index on token or key_id, those
    # updates are heap-only (HOT) and touch no index.
    __table_args__ = {"postgresql_with": {"fillfactor": 50}}

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    token: Mapped[str] = mapped_column(Text)
    # Not indexed, because a rotation rewrites key_id in every row and an index
    # would cost an insert per row. Deleting the old data key scans the table once.
    key_id: Mapped[str] = mapped_column(String(ID_LENGTH), ForeignKey("fernvault_data_keys.id"))
    # "metadata" is reserved on declarative classes, so the attribute is "meta".
    meta: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSON().with_variant(JSONB(), "postgresql")
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())

    def __repr__(self) -> str:
        return f"Secret(id={self.id!r}, name={self.name!r})"


data_keys = cast(Table, DataKey.__table__)
secrets_table = cast(Table, Secret.__table__)
