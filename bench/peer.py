"""The peer: SQLAlchemy-Utils ``StringEncryptedType`` with ``FernetEngine`` on an ORM model.

Each phase is written the way users of that type must write it. Every store
and every read opens its own session, as one web request would. A rotation
loads every row with the old key (the type decrypts on load), switches the
key, marks each value modified, because assigning an equal value is no
change to the ORM, and commits, so the flush re-encrypts every row with the
new key. The SQLite engine gets fernvault's pragmas.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from cryptography.fernet import Fernet
from sqlalchemy import JSON, DateTime, Engine, String, Text, create_engine, event, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.orm.attributes import flag_modified
from sqlalchemy_utils import StringEncryptedType  # type: ignore[import-untyped]
from sqlalchemy_utils.types.encrypted.encrypted_type import (  # type: ignore[import-untyped]
    FernetEngine,
)

from .common import SQLITE_BUSY_TIMEOUT_MS, Target, read_key, write_key


class _KeyHolder:
    """The current key; ``StringEncryptedType`` calls it before every encryption and decryption."""

    key: str = ""

    def __call__(self) -> str:
        return self.key


_current_key = _KeyHolder()


class _Base(DeclarativeBase):
    pass


class PeerSecret(_Base):
    __tablename__ = "peer_secrets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    value: Mapped[str] = mapped_column(StringEncryptedType(Text, _current_key, FernetEngine))
    meta: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSON().with_variant(JSONB(), "postgresql")
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA synchronous = FULL")
    cursor.close()


class PeerPhases:
    """The peer on one database, with its key in the target's folder."""

    def __init__(self, target: Target, *, create: bool) -> None:
        self._key_file = target.folder / "peer.key"
        self.engine = self._create_engine(target)
        if create:
            write_key(self._key_file, Fernet.generate_key())
            _Base.metadata.create_all(self.engine)
        _current_key.key = read_key(self._key_file).decode("ascii")

    @staticmethod
    def _create_engine(target: Target) -> Engine:
        engine = create_engine(target.sqlalchemy_url, hide_parameters=True)
        if target.dialect == "sqlite":
            event.listen(engine, "connect", _sqlite_pragmas)
        return engine

    @staticmethod
    def _new(name: str, value: str) -> PeerSecret:
        now = datetime.now(timezone.utc)
        return PeerSecret(
            id=secrets.token_hex(16),
            name=name,
            value=value,
            meta={},
            created_at=now,
            updated_at=now,
        )

    def bulk(self, names: Sequence[str], value: str) -> int:
        with Session(self.engine) as session:
            session.add_all([self._new(name, value) for name in names])
            session.commit()
        return len(names)

    def store(self, names: Sequence[str], value: str) -> int:
        for name in names:
            with Session(self.engine) as session:
                session.add(self._new(name, value))
                session.commit()
        return len(names)

    def get(self, names: Sequence[str]) -> int:
        for name in names:
            with Session(self.engine) as session:
                secret = session.scalars(select(PeerSecret).where(PeerSecret.name == name)).one()
                if not secret.value:
                    raise LookupError(f"benchmark secret {name} has no value")
        return len(names)

    def rotate(self) -> int:
        new_key = Fernet.generate_key()
        with Session(self.engine) as session:
            rows = session.scalars(select(PeerSecret)).all()
            _current_key.key = new_key.decode("ascii")
            for row in rows:
                flag_modified(row, "value")
            session.commit()
        write_key(self._key_file, new_key)
        return len(rows)

    def close(self) -> None:
        self.engine.dispose()
