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
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import URL, Dialect, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, SQLAlchemyError
from sqlalchemy.pool import StaticPool
from sqlalchemy.sql.expression import Executable

from .errors import InvalidInputError, StorageError

logger = logging.getLogger(__name__)

URL_ENV = "FERNVAULT_URL"
DEFAULT_BUSY_TIMEOUT = 30.0  # seconds a SQLite writer waits for the write lock

T = TypeVar("T")

# SQLSTATE codes after which PostgreSQL rolled the transaction back and a
# fresh attempt can succeed: serialization_failure, deadlock_detected.
_RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})
_MAX_ATTEMPTS = 5
# SQLSTATE codes of a session the server terminated (admin_shutdown,
# crash_shutdown, cannot_connect_now): the statement sent on it did not run.
_SESSION_TERMINATED = frozenset({"57P01", "57P02", "57P03"})
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


@dataclass(frozen=True)
class DriverStatement:
    """A SQLAlchemy statement compiled once to the driver's SQL and parameter style."""

    sql: str
    positional: tuple[str, ...] | None
    defaults: Mapping[str, Any]
    # The column types' bind processors (JSON to text, timestamps to SQLite's
    # storage format), which SQLAlchemy would apply when it executes.
    processors: Mapping[str, Callable[[Any], Any]]

    @classmethod
    def compile(cls, statement: Executable, dialect: Dialect) -> DriverStatement:
        compiled = statement.compile(dialect=dialect)  # type: ignore[attr-defined]
        positional = tuple(compiled.positiontup) if compiled.positional else None
        # Parameters the compiler added itself, such as SQLite's "OFFSET 0".
        defaults = {name: value for name, value in compiled.params.items() if value is not None}
        processors = {}
        for name, bind in compiled.binds.items():
            processor = bind.type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                processors[name] = processor
        return cls(str(compiled), positional, defaults, processors)

    def _processed(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Return ``values`` with the compiler's defaults added and bind processors applied."""
        if self.defaults:
            values = {**self.defaults, **values}
        return {
            name: self.processors[name](value) if name in self.processors else value
            for name, value in values.items()
        }

    def parameters(self, values: Mapping[str, Any]) -> Sequence[Any] | Mapping[str, Any]:
        processed = self._processed(values)
        if self.positional is None:
            return processed
        return [processed[name] for name in self.positional]

    def execute(self, cursor: Any, values: Mapping[str, Any]) -> Any:
        cursor.execute(self.sql, self.parameters(values))
        return cursor

    def executemany(
        self,
        cursor: Any,
        rows: Sequence[Mapping[str, Any]],
        shared: Mapping[str, Any] | None = None,
    ) -> None:
        """Run the statement once per row; ``shared`` values are the same in every row.

        Shared values go through their bind processor once, not once per row.
        """
        if not rows:
            return
        fixed = self._processed(shared or {})
        if self.positional is None:
            cursor.executemany(self.sql, [{**fixed, **self._processed(row)} for row in rows])
            return
        columns = [
            (name, name in fixed, fixed.get(name), self.processors.get(name, _unchanged))
            for name in self.positional
        ]
        parameters = [
            [
                value if is_fixed else process(row[name])
                for name, is_fixed, value, process in columns
            ]
            for row in rows
        ]
        cursor.executemany(self.sql, parameters)


def _unchanged(value: Any) -> Any:
    return value


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
        self._compiled: dict[int, DriverStatement] = {}
        # Single-statement reads and writes run on one autocommit connection
        # per thread, detached from the pool: they need no BEGIN and COMMIT
        # round trips, and the pool stays free for transactions. A thread's
        # connection is closed when the thread ends or the database is disposed.
        self._readers: weakref.WeakSet[_ThreadConnection] = weakref.WeakSet()
        self._local = threading.local()
        _reset_after_fork(self)
        self._in_memory = self.dialect == "sqlite" and parsed.database in (None, "", ":memory:")
        self._dbapi_error: type[Exception] = self.engine.dialect.loaded_dbapi.Error

    def _create_engine(self, url: URL, **extra: Any) -> Engine:
        options: dict[str, Any] = {"hide_parameters": True, **extra}
        if self.dialect == "sqlite":
            connect_args: dict[str, Any] = {"timeout": self.busy_timeout}
            if url.database in (None, "", ":memory:"):
                # One shared connection, or each checkout would see an empty database.
                connect_args["check_same_thread"] = False
                options["poolclass"] = StaticPool
            else:
                # A rotation hands one connection between two threads, one at a time.
                connect_args["check_same_thread"] = False
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
        options.setdefault("pool_pre_ping", True)
        options["connect_args"] = {"connect_timeout": 10}
        return create_engine(url, **options)

    def dispose(self) -> None:
        for reader in list(self._readers):
            reader.close()
        self._local = threading.local()
        self.engine.dispose()

    def forget_after_fork(self) -> None:
        """Drop the parent's connections in a forked child without closing them.

        Closing would end the parent's sessions, which share the sockets.
        """
        _INHERITED.extend(reader.abandon() for reader in list(self._readers))
        self._local = threading.local()
        self.engine.dispose(close=False)

    def driver_statement(self, statement: Executable) -> DriverStatement:
        """Return ``statement`` compiled for this database, compiling it once."""
        # Keyed by identity: the statements are module-level constants.
        compiled = self._compiled.get(id(statement))
        if compiled is None:
            compiled = DriverStatement.compile(statement, self.engine.dialect)
            self._compiled[id(statement)] = compiled
        return compiled

    def executemany(
        self,
        connection: Connection,
        statement: Executable,
        rows: Sequence[Mapping[str, Any]],
        shared: Mapping[str, Any] | None = None,
    ) -> None:
        """Run ``statement`` once per row on the driver cursor of ``connection``.

        Runs inside the caller's transaction; the driver batches the rows
        (psycopg pipelines them), without SQLAlchemy's per-row work.
        ``shared`` contains the values that are the same in every row.
        """
        cursor = connection.connection.cursor()
        try:
            self.driver_statement(statement).executemany(cursor, rows, shared)
        finally:
            cursor.close()

    def _reader(self) -> tuple[Any, Any]:
        """Return this thread's autocommit connection and cursor, opening them on first use."""
        reader: _ThreadConnection | None = getattr(self._local, "reader", None)
        if reader is not None:
            return reader.connection, reader.cursor
        connection = self.engine.raw_connection()
        # Detached, the connection no longer counts against the pool's size and
        # is never handed to a transaction in autocommit mode. SQLite's
        # connections are in autocommit mode already (see _install_sqlite_hooks).
        if self.dialect == "postgresql":
            connection.driver_connection.autocommit = True  # type: ignore[union-attr]
        connection.detach()
        reader = _ThreadConnection(connection)
        self._readers.add(reader)
        self._local.reader = reader
        return reader.connection, reader.cursor

    def _drop_reader(self) -> None:
        reader: _ThreadConnection | None = getattr(self._local, "reader", None)
        self._local.reader = None
        if reader is not None:
            reader.close()

    def write_one(self, operation: str, statement: Executable, values: Mapping[str, Any]) -> int:
        """Run one INSERT, UPDATE or DELETE as its own transaction; return the row count.

        A single statement in autocommit mode is atomic and, with SQLite's
        synchronous=FULL, durable when this returns; it needs no BEGIN and
        COMMIT round trips. After a lost connection the statement is retried
        only when the server reports that it had terminated the session.
        Raises ConstraintViolation for a unique or foreign key violation.
        """
        if self._in_memory:
            return self.run(operation, lambda c: c.execute(statement, dict(values)).rowcount)
        compiled = self.driver_statement(statement)
        for attempt in (1, 2):
            reader, cursor = self._reader()
            try:
                count: int = compiled.execute(cursor, values).rowcount
                return count
            except self._dbapi_error as exc:
                if not self.engine.dialect.is_disconnect(exc, reader, cursor):  # type: ignore[arg-type]
                    raise self._translate(operation, self._as_dbapi_error(exc)) from exc
                self._drop_reader()
                # Only a session the server had already terminated is safe to
                # retry: it ran nothing. Any other lost connection may have
                # committed the statement before the reply was lost.
                if attempt == 1 and getattr(exc, "sqlstate", None) in _SESSION_TERMINATED:
                    logger.info(
                        "%s found its connection to %s terminated; reconnecting",
                        operation,
                        self.display_url,
                    )
                    continue
                raise self._translate(operation, self._as_dbapi_error(exc)) from exc
        raise AssertionError("unreachable: the second attempt returns or raises")

    def read_one(
        self, operation: str, statement: Executable, values: Mapping[str, Any]
    ) -> tuple[Any, ...] | None:
        """Run one SELECT outside a transaction and return its first row.

        A single statement reads one consistent snapshot on both databases, so
        a lookup needs no transaction. A lost connection is replaced and the
        read tried once more.
        """
        if self._in_memory:
            return self.run(
                operation, lambda c: c.execute(statement, dict(values)).first(), write=False
            )
        compiled = self.driver_statement(statement)
        for attempt in (1, 2):
            reader, cursor = self._reader()
            try:
                # Both drivers return plain tuples.
                row: tuple[Any, ...] | None = compiled.execute(cursor, values).fetchone()
                return row
            except self._dbapi_error as exc:
                disconnected = self.engine.dialect.is_disconnect(exc, reader, cursor)  # type: ignore[arg-type]
                self._drop_reader()
                if disconnected and attempt == 1:
                    logger.info(
                        "%s lost its connection to %s; reconnecting", operation, self.display_url
                    )
                    continue
                wrapped = DBAPIError.instance(
                    compiled.sql, None, exc, self._dbapi_error, hide_parameters=True
                )
                raise self.storage_error(operation, wrapped) from exc
        raise AssertionError("unreachable: the second attempt returns or raises")

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
            except (DBAPIError, self._dbapi_error) as exc:
                error = self._as_dbapi_error(exc)
                if _sqlstate(error) in _RETRYABLE_SQLSTATES and attempt < _MAX_ATTEMPTS:
                    delay = 0.02 * 2**attempt
                    logger.info(
                        "%s on %s hit %s; retrying in %.2f s (attempt %d of %d)",
                        operation,
                        self.display_url,
                        _sqlstate(error),
                        delay,
                        attempt,
                        _MAX_ATTEMPTS,
                    )
                    time.sleep(delay)
                    continue
                raise self._translate(operation, error) from exc
            except SQLAlchemyError as exc:
                raise self.storage_error(operation, exc) from exc
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _translate(self, operation: str, error: DBAPIError) -> StorageError:
        kind = _constraint_kind(error)
        if kind is not None:
            return ConstraintViolation(kind, f"{operation} violated a {kind} constraint")
        return self.storage_error(operation, error)

    def _as_dbapi_error(self, exc: Exception) -> DBAPIError:
        """Wrap an error raised by a driver cursor like SQLAlchemy wraps its own."""
        if isinstance(exc, DBAPIError):
            return exc
        wrapped = DBAPIError.instance(None, None, exc, self._dbapi_error, hide_parameters=True)
        return cast(DBAPIError, wrapped)

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


def _constraint_kind(exc: DBAPIError) -> str | None:
    """Return "unique" or "foreign key" when ``exc`` is that constraint violation."""
    code = _sqlstate(exc)
    if code == "23505":
        return "unique"
    if code == "23503":
        return "foreign key"
    text = str(exc.orig)
    if text.startswith("UNIQUE constraint failed"):
        return "unique"
    if text.startswith("FOREIGN KEY constraint failed"):
        return "foreign key"
    return None


class ConstraintViolation(StorageError):
    """A write broke a unique or foreign key constraint; the manager decides what it means.

    Not logged here: a foreign key violation is the normal sign that another
    process rotated the data key, and the write is retried under the new key.
    """

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


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


class _ThreadConnection:
    """One thread's detached autocommit connection; closed when the thread ends."""

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self.cursor = connection.cursor()
        # Runs when the thread-local holding this object is cleared at thread exit.
        self._finalizer = weakref.finalize(self, _close_quietly, connection)

    def close(self) -> None:
        self._finalizer()

    def abandon(self) -> Any:
        """Stop tracking the connection without closing it; return it."""
        self._finalizer.detach()
        return self.connection


def _close_quietly(connection: Any) -> None:
    # close() of a detached connection closes the driver connection itself.
    try:
        connection.close()
    except Exception:  # noqa: BLE001 - the connection is being thrown away
        logger.debug("closing a per-thread connection failed", exc_info=True)


# Connections a forked child inherited: kept referenced, so that garbage
# collection in the child never closes the parent's sessions.
_INHERITED: list[Any] = []


def _reset_after_fork(database: Database) -> None:
    # A forked child must not reuse the parent's connections, which share
    # sockets and file locks with the parent.
    reference = weakref.ref(database)

    def forget() -> None:
        target = reference()
        if target is not None:
            target.forget_after_fork()

    os.register_at_fork(after_in_child=forget)
