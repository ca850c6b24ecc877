"""Engine set-up, transactions and translation of database errors.

Each public vault operation runs in one transaction opened here. Write
transactions on SQLite begin with ``BEGIN IMMEDIATE``, so a writer waits for
the write lock (up to the busy timeout) before it reads anything, and never
fails later when it tries to upgrade a read snapshot. On PostgreSQL a write
transaction is retried when the server reports a deadlock or a serialization
failure, so neither reaches the caller.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.pool import StaticPool

from .errors import InvalidInputError, StorageError

logger = logging.getLogger(__name__)

URL_ENV = "FERNVAULT_URL"
DEFAULT_BUSY_TIMEOUT = 30.0  # seconds a SQLite writer waits for the write lock

T = TypeVar("T")

# SQLSTATE codes after which PostgreSQL rolled the transaction back and a
# fresh attempt can succeed: serialization_failure, deadlock_detected.
_RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})
_MAX_ATTEMPTS = 5
_BEGIN_OPTION = "fernvault_sqlite_begin"


def sqlite_url_for(key_file: Path) -> str:
    """Return the default vault URL: a SQLite file beside the key file, same stem."""
    return URL.create("sqlite", database=str(key_file.with_suffix(".db"))).render_as_string()


def parse_url(url: str | URL) -> URL:
    """Parse a database URL, raising InvalidInputError with the password hidden."""
    try:
        return make_url(url)
    except ArgumentError:
        shown = url.render_as_string(hide_password=True) if isinstance(url, URL) else "<unparsable>"
        raise InvalidInputError(f"invalid database URL {shown}") from None


class Database:
    """One vault database: the engine, its display URL and transaction helpers."""

    def __init__(self, url: str | URL, *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> None:
        parsed = parse_url(url)
        self.url = parsed
        self.display_url = parsed.render_as_string(hide_password=True)
        self.busy_timeout = busy_timeout
        self.dialect = parsed.get_backend_name()
        if self.dialect not in ("sqlite", "postgresql"):
            raise InvalidInputError(
                f"unsupported database {self.display_url}: use sqlite:/// or postgresql+psycopg://"
            )
        self.engine = self._create_engine(parsed)
        _dispose_after_fork(self.engine)

    def _create_engine(self, url: URL) -> Engine:
        options: dict[str, Any] = {"hide_parameters": True}
        if self.dialect == "sqlite":
            connect_args: dict[str, Any] = {"timeout": self.busy_timeout}
            if url.database in (None, "", ":memory:"):
                # One shared connection, or each checkout would see an empty database.
                connect_args["check_same_thread"] = False
                options["poolclass"] = StaticPool
            options["connect_args"] = connect_args
            engine = create_engine(url, **options)
            _install_sqlite_hooks(engine, self.busy_timeout)
            return engine
        if url.get_driver_name() in ("psycopg2", "pg8000", "asyncpg"):
            raise InvalidInputError(
                f"unsupported PostgreSQL driver in {self.display_url}: use postgresql+psycopg://"
            )
        if url.get_driver_name() != "psycopg":
            url = url.set(drivername="postgresql+psycopg")
        options["pool_pre_ping"] = True
        options["connect_args"] = {"connect_timeout": 10}
        return create_engine(url, **options)

    def dispose(self) -> None:
        self.engine.dispose()

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Connection]:
        with self.engine.connect() as connection:
            if self.dialect == "sqlite":
                connection = connection.execution_options(
                    **{_BEGIN_OPTION: "BEGIN IMMEDIATE" if write else "BEGIN"}
                )
            with connection.begin():
                yield connection

    def run(self, operation: str, work: Callable[[Connection], T], *, write: bool = True) -> T:
        """Run ``work`` in one transaction and commit; roll back if it raises.

        Retries the whole transaction on a PostgreSQL deadlock or serialization
        failure. Database errors become StorageError naming ``operation`` and the
        database; fernvault's own errors pass through unchanged.
        """
        for attempt in range(1, _MAX_ATTEMPTS + 1):
            try:
                with self._transaction(write=write) as connection:
                    return work(connection)
            except DBAPIError as exc:
                if _sqlstate(exc) in _RETRYABLE_SQLSTATES and attempt < _MAX_ATTEMPTS:
                    delay = 0.02 * 2**attempt
                    logger.info(
                        "%s on %s hit %s; retrying in %.2f s (attempt %d of %d)",
                        operation,
                        self.display_url,
                        _sqlstate(exc),
                        delay,
                        attempt,
                        _MAX_ATTEMPTS,
                    )
                    time.sleep(delay)
                    continue
                raise self.storage_error(operation, exc) from exc
            except SQLAlchemyError as exc:
                raise self.storage_error(operation, exc) from exc
        raise AssertionError("unreachable: the last attempt returns or raises")

    def storage_error(self, operation: str, exc: SQLAlchemyError) -> StorageError:
        """Build a StorageError that names the operation, the database and the cause.

        Only the driver's primary message is kept: PostgreSQL's DETAIL line and
        SQLAlchemy's statement parameters can quote row contents.
        """
        reason = _describe(exc, self.busy_timeout)
        message = f"{operation} failed on {self.display_url}: {reason}"
        logger.error("%s", message)
        return StorageError(message)


def _sqlstate(exc: DBAPIError) -> str | None:
    return getattr(exc.orig, "sqlstate", None)


def _describe(exc: SQLAlchemyError, busy_timeout: float) -> str:
    if not isinstance(exc, DBAPIError) or exc.orig is None:
        return type(exc).__name__
    orig = exc.orig
    diag = getattr(orig, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    text = primary or (str(orig).splitlines()[0] if str(orig) else type(orig).__name__)
    if "database is locked" in text:
        return f"database is locked (waited {busy_timeout:g} s for the write lock)"
    return text


def _install_sqlite_hooks(engine: Engine, busy_timeout: float) -> None:
    """Configure every SQLite connection and take over BEGIN from the sqlite3 module.

    The sqlite3 module's legacy transaction control would start transactions
    only before DML, so SQLAlchemy's documented recipe is used: the driver is
    put in autocommit mode and the ``begin`` event emits the BEGIN itself.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
            cursor.execute("PRAGMA foreign_keys = ON")
            _enable_wal(cursor, busy_timeout)
            # FULL makes each commit durable across a power cut, also in WAL mode.
            cursor.execute("PRAGMA synchronous = FULL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        statement = connection.get_execution_options().get(_BEGIN_OPTION, "BEGIN")
        connection.exec_driver_sql(statement)


def _enable_wal(cursor: Any, busy_timeout: float) -> None:
    # Switching a new file to WAL needs an exclusive lock; SQLite can report
    # "database is locked" at once when several processes open one new file.
    import sqlite3

    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def _dispose_after_fork(engine: Engine) -> None:
    # A forked child must not reuse the parent's pooled connections, which
    # share sockets and file locks with the parent.
    reference = weakref.ref(engine)

    def _reset_pool() -> None:
        target = reference()
        if target is not None:
            target.dispose(close=False)

    os.register_at_fork(after_in_child=_reset_pool)
