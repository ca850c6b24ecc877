"""SQL for the vault's two tables.

Every function receives an open Connection inside the caller's transaction
and never commits. The repository stores and returns tokens, wrapped keys
and key ids: it never sees a plaintext value or an unwrapped key.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import (
    ColumnClause,
    Connection,
    Integer,
    bindparam,
    delete,
    func,
    insert,
    literal_column,
    select,
    update,
)

from .models import data_keys, secrets_table

RowLock = Literal["share", "update"] | None


@dataclass(frozen=True)
class DataKeyRow:
    id: str
    wrapped_key: str
    master_key_id: str

    def __repr__(self) -> str:
        return f"DataKeyRow(id={self.id!r}, master_key_id={self.master_key_id!r})"


@dataclass(frozen=True)
class SecretRow:
    id: str
    name: str
    token: str
    key_id: str

    def __repr__(self) -> str:
        return f"SecretRow(id={self.id!r}, name={self.name!r}, key_id={self.key_id!r})"


_SECRET_COLUMNS = (
    secrets_table.c.id,
    secrets_table.c.name,
    secrets_table.c.token,
    secrets_table.c.key_id,
)


def active_data_key(connection: Connection, lock: RowLock = None) -> DataKeyRow | None:
    """Return the active data key, the newest one, optionally locking its row.

    On PostgreSQL, writers lock it FOR SHARE and a rotation FOR UPDATE, so a
    write never commits under a key that a concurrent rotation is retiring.
    SQLite ignores the lock clause; its writers are serialized by BEGIN IMMEDIATE.
    """
    statement = select(data_keys.c.id, data_keys.c.wrapped_key, data_keys.c.master_key_id)
    statement = statement.order_by(data_keys.c.created_at.desc(), data_keys.c.id.desc()).limit(1)
    if lock == "share" and connection.dialect.name == "postgresql":
        statement = statement.with_for_update(read=True)
    elif lock == "update" and connection.dialect.name == "postgresql":
        statement = statement.with_for_update()
    row = connection.execute(statement).first()
    return DataKeyRow(*row) if row is not None else None


def all_data_keys(connection: Connection) -> list[DataKeyRow]:
    """Return every data key, the active (newest) one first."""
    statement = select(data_keys.c.id, data_keys.c.wrapped_key, data_keys.c.master_key_id)
    statement = statement.order_by(data_keys.c.created_at.desc(), data_keys.c.id.desc())
    return [DataKeyRow(*row) for row in connection.execute(statement)]


def insert_data_key(
    connection: Connection, key_id: str, wrapped_key: str, master_key_id: str, now: datetime
) -> None:
    connection.execute(
        insert(data_keys).values(
            id=key_id, wrapped_key=wrapped_key, master_key_id=master_key_id, created_at=now
        )
    )


def rewrap_data_keys(connection: Connection, rows: Sequence[DataKeyRow]) -> None:
    statement = (
        update(data_keys)
        .where(data_keys.c.id == bindparam("b_id"))
        .values(wrapped_key=bindparam("b_wrapped"), master_key_id=bindparam("b_master"))
    )
    connection.execute(
        statement,
        [{"b_id": r.id, "b_wrapped": r.wrapped_key, "b_master": r.master_key_id} for r in rows],
    )


def delete_data_keys_except(connection: Connection, key_id: str) -> int:
    result = connection.execute(delete(data_keys).where(data_keys.c.id != key_id))
    return result.rowcount


# Lookups that the manager runs outside a transaction with Database.read_one.
SECRET_BY_ID = select(*_SECRET_COLUMNS).where(secrets_table.c.id == bindparam("secret_id"))
SECRET_BY_NAME = select(*_SECRET_COLUMNS).where(secrets_table.c.name == bindparam("name"))

# Single-statement writes that the manager runs with Database.write_one.
INSERT_SECRET = insert(secrets_table).values(
    {column.name: bindparam(column.name) for column in secrets_table.columns}
)
DELETE_SECRET = delete(secrets_table).where(secrets_table.c.id == bindparam("secret_id"))

# The rotation's page queries and row update, run on the driver cursor. Each
# page query returns a position column first, the key of the next page.
# PostgreSQL pages by id and locks the rows FOR UPDATE, so a concurrent update
# of a row waits for the rotation instead of being overwritten; SQLite pages by
# rowid, in table order, and needs no row locks (writers are serialized).
SECRET_PAGE_BY_ID = (
    select(secrets_table.c.id.label("position"), *_SECRET_COLUMNS)
    .where(secrets_table.c.id > bindparam("after"))
    .order_by(secrets_table.c.id)
    .limit(bindparam("batch_size"))
    .with_for_update()
)
_rowid: ColumnClause[int] = literal_column("rowid", Integer)
SECRET_PAGE_BY_ROWID = (
    select(_rowid.label("position"), *_SECRET_COLUMNS)
    .where(_rowid > bindparam("after"))
    .order_by(_rowid)
    .limit(bindparam("batch_size"))
)
# The token lengths of the next rows on PostgreSQL, read before a page so that
# the page can stop at a byte budget: psycopg fetches a whole result at once.
# octet_length reads a long value's size without fetching the value.
TOKEN_LENGTHS_BY_ID = (
    select(secrets_table.c.id, func.octet_length(secrets_table.c.token))
    .where(secrets_table.c.id > bindparam("after"))
    .order_by(secrets_table.c.id)
    .limit(bindparam("batch_size"))
)
UPDATE_TOKEN_BY_ROWID = (
    update(secrets_table)
    .where(_rowid == bindparam("position"))
    .values(token=bindparam("token"), key_id=bindparam("key_id"))
)


def secret_by_id(connection: Connection, secret_id: str) -> SecretRow | None:
    row = connection.execute(SECRET_BY_ID, {"secret_id": secret_id}).first()
    return SecretRow(*row) if row is not None else None


def secret_id_for_name(connection: Connection, name: str) -> str | None:
    statement = select(secrets_table.c.id).where(secrets_table.c.name == name)
    return connection.execute(statement).scalar_one_or_none()


def existing_names(connection: Connection, names: Sequence[str]) -> set[str]:
    found: set[str] = set()
    for start in range(0, len(names), 500):
        chunk = names[start : start + 500]
        statement = select(secrets_table.c.name).where(secrets_table.c.name.in_(chunk))
        found.update(connection.execute(statement).scalars())
    return found


def secrets_not_under_key(connection: Connection, key_id: str, limit: int) -> list[tuple[Any, Any]]:
    """Return the id and name of up to ``limit`` secrets whose data key is not ``key_id``."""
    statement = (
        select(secrets_table.c.id, secrets_table.c.name)
        .where(secrets_table.c.key_id != key_id)
        .limit(limit)
    )
    return [(row.id, row.name) for row in connection.execute(statement)]


def list_secrets(connection: Connection) -> list[dict[str, Any]]:
    """Return id, name, metadata and timestamps of every secret, ordered by name."""
    statement = select(
        secrets_table.c.id,
        secrets_table.c.name,
        secrets_table.c.created_at,
        secrets_table.c.updated_at,
        secrets_table.c.metadata,
        secrets_table.c.key_id,
    ).order_by(secrets_table.c.name)
    return [dict(row._mapping) for row in connection.execute(statement)]


def update_secret(
    connection: Connection,
    secret_id: str,
    *,
    token: str,
    key_id: str,
    updated_at: datetime,
    metadata: dict[str, Any] | None,
) -> bool:
    values: dict[str, Any] = {"token": token, "key_id": key_id, "updated_at": updated_at}
    if metadata is not None:
        values["metadata"] = metadata
    statement = update(secrets_table).where(secrets_table.c.id == secret_id).values(**values)
    return connection.execute(statement).rowcount == 1


def count_secrets(connection: Connection) -> int:
    return connection.execute(select(func.count()).select_from(secrets_table)).scalar_one()


def secret_pages(connection: Connection, batch_size: int) -> Iterator[list[SecretRow]]:
    """Yield every secret in pages of ``batch_size``, in id order (keyset pagination).

    Each page is one query, so memory stays bounded by the page size however
    many secrets the vault holds, and no cursor stays open across the updates
    the caller makes between pages.
    """
    statement = select(*_SECRET_COLUMNS).order_by(secrets_table.c.id).limit(batch_size)
    after: str | None = None
    while True:
        page_statement = statement if after is None else statement.where(secrets_table.c.id > after)
        page = [SecretRow(*row) for row in connection.execute(page_statement)]
        if not page:
            return
        yield page
        after = page[-1].id
