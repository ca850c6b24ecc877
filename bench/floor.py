"""The floor: the four phases hand-written with sqlite3 or psycopg and Fernet.

The floor uses fernvault's table shape and, on SQLite, the pragmas of
fernvault's engine (WAL journal, ``synchronous = FULL``, foreign keys on).
It encrypts the bare value, without fernvault's header that binds a token
to its row. Each operation is the least a careful programmer would write:

- store: one INSERT and one commit per secret;
- bulk: one executemany INSERT and one commit;
- get: one indexed SELECT by name, then decrypt;
- rotate: insert the new data key, read every row, decrypt and encrypt,
  one executemany UPDATE, delete the old data key, one commit.

On PostgreSQL the connection is in autocommit mode, so a single INSERT or
SELECT is its own transaction in one round trip; bulk and rotate open an
explicit transaction.

``DatabaseAlone`` runs the same SQL with a cipher that returns prepared
results, and ``CryptoAlone`` runs the Fernet calls without a database, so
the floor's time splits into its two parts.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any, Protocol

from cryptography.fernet import Fernet

from .common import SQLITE_BUSY_TIMEOUT_MS, Target, Workload, read_key, write_key

_SQLITE_SCHEMA = (
    """CREATE TABLE fernvault_data_keys (
        id VARCHAR(32) NOT NULL, wrapped_key TEXT NOT NULL,
        master_key_id VARCHAR(64) NOT NULL, created_at DATETIME NOT NULL,
        CONSTRAINT pk_fernvault_data_keys PRIMARY KEY (id))""",
    """CREATE TABLE fernvault_secrets (
        id VARCHAR(32) NOT NULL, name VARCHAR(255) NOT NULL, token TEXT NOT NULL,
        key_id VARCHAR(32) NOT NULL, metadata JSON NOT NULL,
        created_at DATETIME NOT NULL, updated_at DATETIME NOT NULL,
        CONSTRAINT pk_fernvault_secrets PRIMARY KEY (id),
        CONSTRAINT uq_fernvault_secrets_name UNIQUE (name),
        CONSTRAINT fk_fernvault_secrets_key_id_fernvault_data_keys
            FOREIGN KEY (key_id) REFERENCES fernvault_data_keys (id))""",
)

# The same shape as fernvault's schema at migration 0002: no index on key_id,
# and on PostgreSQL a fill factor of 50 on fernvault_secrets.
_POSTGRESQL_SCHEMA = (
    *(
        statement.replace("DATETIME", "TIMESTAMP WITH TIME ZONE").replace("JSON", "JSONB")
        for statement in _SQLITE_SCHEMA
    ),
    "ALTER TABLE fernvault_secrets SET (fillfactor = 50)",
)

_INSERT_SECRET = (
    "INSERT INTO fernvault_secrets (id, name, token, key_id, metadata, created_at, updated_at) "
    "VALUES ({0}, {0}, {0}, {0}, {0}, {0}, {0})"
)
_SELECT_BY_NAME = "SELECT id, name, token, key_id FROM fernvault_secrets WHERE name = {0}"
_SELECT_ALL = "SELECT id, token FROM fernvault_secrets"
_UPDATE_TOKEN = "UPDATE fernvault_secrets SET token = {0}, key_id = {0} WHERE id = {0}"
_INSERT_DATA_KEY = (
    "INSERT INTO fernvault_data_keys (id, wrapped_key, master_key_id, created_at) "
    "VALUES ({0}, {0}, {0}, {0})"
)
_SELECT_ACTIVE_KEY = (
    "SELECT id, wrapped_key FROM fernvault_data_keys ORDER BY created_at DESC, id DESC LIMIT 1"
)
_DELETE_OTHER_KEYS = "DELETE FROM fernvault_data_keys WHERE id <> {0}"


class Cipher(Protocol):
    def encrypt(self, data: bytes) -> bytes: ...

    def decrypt(self, token: bytes) -> bytes: ...


class PreparedCipher:
    """A cipher that encrypts and decrypts once, then returns the same results.

    It replaces Fernet when only the database's share of the floor's
    time is wanted; tokens keep their real length.
    """

    def __init__(self, fernet: Fernet) -> None:
        self._fernet = fernet
        self._plaintext: bytes | None = None
        self._token: bytes | None = None

    def encrypt(self, data: bytes) -> bytes:
        if self._token is None:
            self._token = self._fernet.encrypt(data)
        return self._token

    def decrypt(self, token: bytes) -> bytes:
        if self._plaintext is None:
            self._plaintext = self._fernet.decrypt(token)
        return self._plaintext


def _now_for(dialect: str) -> Any:
    now = datetime.now(timezone.utc)
    # SQLAlchemy stores SQLite timestamps as naive UTC text; fernvault does the same.
    return now.replace(tzinfo=None).isoformat(sep=" ") if dialect == "sqlite" else now


class Floor:
    """The hand-written floor on one database; see the module docstring."""

    def __init__(self, target: Target, *, create: bool, prepared: bool = False) -> None:
        self.dialect = target.dialect
        self._master_file = target.folder / "floor-master.key"
        self._placeholder = "?" if self.dialect == "sqlite" else "%s"
        self._connection: Any = self._connect(target)
        self._prepared = prepared
        if create:
            self._create_schema()
        self._key_id, self._cipher = self._load_active_key()

    def _connect(self, target: Target) -> Any:
        if self.dialect == "sqlite":
            connection = sqlite3.connect(target.sqlite_path, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
            connection.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
            connection.execute("PRAGMA foreign_keys = ON")
            connection.execute("PRAGMA journal_mode = WAL")
            connection.execute("PRAGMA synchronous = FULL")
            return connection
        import psycopg

        return psycopg.connect(target.libpq_url, autocommit=True)

    def _sql(self, template: str) -> str:
        return template.format(self._placeholder)

    def _create_schema(self) -> None:
        schema = _SQLITE_SCHEMA if self.dialect == "sqlite" else _POSTGRESQL_SCHEMA
        master_key = Fernet.generate_key()
        write_key(self._master_file, master_key)
        with self._transaction() as cursor:
            for statement in schema:
                cursor.execute(statement)
            self._insert_data_key(cursor, Fernet.generate_key())

    def _insert_data_key(self, cursor: Any, data_key: bytes) -> str:
        key_id = secrets.token_hex(16)
        wrapped = Fernet(read_key(self._master_file)).encrypt(data_key).decode("ascii")
        row = (key_id, wrapped, "bench-master", _now_for(self.dialect))
        cursor.execute(self._sql(_INSERT_DATA_KEY), row)
        return key_id

    def _load_active_key(self) -> tuple[str, Cipher]:
        key_id, wrapped = self._connection.execute(_SELECT_ACTIVE_KEY).fetchone()
        data_key = Fernet(read_key(self._master_file)).decrypt(wrapped.encode("ascii"))
        return key_id, self._cipher_for(data_key)

    def _cipher_for(self, data_key: bytes) -> Cipher:
        fernet = Fernet(data_key)
        return PreparedCipher(fernet) if self._prepared else fernet

    def _transaction(self) -> Any:
        """Return a context manager that commits on success and yields a cursor."""
        return _Transaction(self._connection, self.dialect)

    def _row(self, name: str, value: bytes, now: Any) -> tuple[Any, ...]:
        token = self._cipher.encrypt(value).decode("ascii")
        return (secrets.token_hex(16), name, token, self._key_id, "{}", now, now)

    def bulk(self, names: Sequence[str], value: str) -> int:
        plaintext = value.encode("utf-8")
        now = _now_for(self.dialect)
        rows = [self._row(name, plaintext, now) for name in names]
        with self._transaction() as cursor:
            cursor.executemany(self._sql(_INSERT_SECRET), rows)
        return len(rows)

    def store(self, names: Sequence[str], value: str) -> int:
        plaintext = value.encode("utf-8")
        statement = self._sql(_INSERT_SECRET)
        connection = self._connection
        for name in names:
            connection.execute(statement, self._row(name, plaintext, _now_for(self.dialect)))
            if self.dialect == "sqlite":
                connection.commit()
        return len(names)

    def get(self, names: Sequence[str]) -> int:
        statement = self._sql(_SELECT_BY_NAME)
        connection = self._connection
        cipher = self._cipher
        for name in names:
            row = connection.execute(statement, (name,)).fetchone()
            cipher.decrypt(row[2].encode("ascii")).decode("utf-8")
        return len(names)

    def rotate(self) -> int:
        new_data_key = Fernet.generate_key()
        new_cipher = self._cipher_for(new_data_key)
        old_cipher = self._cipher
        with self._transaction() as cursor:
            new_key_id = self._insert_data_key(cursor, new_data_key)
            cursor.execute(_SELECT_ALL)
            rows = cursor.fetchall()
            updates = [
                (
                    new_cipher.encrypt(old_cipher.decrypt(token.encode("ascii"))).decode("ascii"),
                    new_key_id,
                    secret_id,
                )
                for secret_id, token in rows
            ]
            cursor.executemany(self._sql(_UPDATE_TOKEN), updates)
            cursor.execute(self._sql(_DELETE_OTHER_KEYS), (new_key_id,))
        self._key_id, self._cipher = new_key_id, new_cipher
        return len(rows)

    def close(self) -> None:
        self._connection.close()


class _Transaction:
    """One explicit transaction on a sqlite3 or psycopg connection."""

    def __init__(self, connection: Any, dialect: str) -> None:
        self._connection = connection
        self._dialect = dialect
        self._context: Any = None

    def __enter__(self) -> Any:
        if self._dialect == "sqlite":
            # sqlite3's legacy mode would begin lazily, before the first DML
            # statement; BEGIN IMMEDIATE takes the write lock up front.
            self._connection.execute("BEGIN IMMEDIATE")
            return self._connection.cursor()
        self._context = self._connection.transaction()
        self._context.__enter__()
        return self._connection.cursor()

    def __exit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        if self._dialect == "sqlite":
            if exc_type is None:
                self._connection.commit()
            else:
                self._connection.rollback()
            return
        self._context.__exit__(exc_type, exc, traceback)


class CryptoAlone:
    """The floor's Fernet calls for each phase, with no database."""

    def __init__(self, workload: Workload) -> None:
        self._fernet = Fernet(Fernet.generate_key())
        plaintext = workload.value().encode("utf-8")
        self._get_tokens = [self._fernet.encrypt(plaintext) for _ in range(workload.get_count)]
        self._rotate_tokens = [
            self._fernet.encrypt(plaintext) for _ in range(workload.rotated_rows())
        ]

    def bulk(self, names: Sequence[str], value: str) -> int:
        plaintext = value.encode("utf-8")
        tokens = [self._fernet.encrypt(plaintext).decode("ascii") for _ in names]
        return len(tokens)

    def store(self, names: Sequence[str], value: str) -> int:
        plaintext = value.encode("utf-8")
        for _ in names:
            self._fernet.encrypt(plaintext).decode("ascii")
        return len(names)

    def get(self, names: Sequence[str]) -> int:
        tokens = self._get_tokens
        for index in range(len(names)):
            self._fernet.decrypt(tokens[index % len(tokens)]).decode("utf-8")
        return len(names)

    def rotate(self) -> int:
        new_fernet = Fernet(Fernet.generate_key())
        tokens = [new_fernet.encrypt(self._fernet.decrypt(t)) for t in self._rotate_tokens]
        return len(tokens)

    def close(self) -> None:
        pass
