"""The re-encryption loop of a data key rotation.

Rows are read in keyset pages of at most ``batch_size`` rows and at most
``PAGE_BYTES`` of tokens (at least one row), so memory stays flat however
many secrets the vault contains and however long their values are.

On PostgreSQL a second thread writes page N while the calling thread
re-encrypts page N+1: the re-encryption holds the GIL, but psycopg releases
it while it waits for the server. Both threads use the one connection of the
rotation's transaction, and a lock lets only one of them use it at a time.
SQLite writes a page in far less time than the re-encryption takes, and a
writer thread measured no faster there, so SQLite writes inline.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import Connection

from . import repository as repo
from .database import Database, DriverStatement
from .models import secrets_table

Progress = Callable[[int, int], None]

PAGE_BYTES = 2 * 1024 * 1024
"""Largest size of a page's tokens in bytes, unless one token alone is longer.
Memory contains each page several times (old tokens, values, new tokens, the
driver's copies), and on PostgreSQL two pages are in flight at once."""


PageWrite = Callable[[Any, Sequence[tuple[str, str]]], None]
"""Writes one page of (secret id, new token) pairs with a driver cursor."""


class _PageWriter(threading.Thread):
    """Writes each page handed to it, in order, on the shared connection."""

    def __init__(self, dbapi_connection: Any, lock: threading.Lock, write: PageWrite) -> None:
        super().__init__(name="fernvault-rotation-writer", daemon=True)
        self._connection = dbapi_connection
        self._lock = lock
        self._write = write
        self._pages: queue.Queue[Sequence[tuple[str, str]] | None] = queue.Queue(maxsize=1)
        self.error: BaseException | None = None

    def run(self) -> None:
        while True:
            page = self._pages.get()
            if page is None:
                return
            if self.error is not None:
                continue  # drain: the rotation is failing and will roll back
            try:
                with self._lock:
                    self.write_now(page)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the rotating thread
                self.error = exc

    def submit(self, page: Sequence[tuple[str, str]]) -> None:
        self._raise_error()
        self._pages.put(page)

    def write_now(self, page: Sequence[tuple[str, str]]) -> None:
        cursor = self._connection.cursor()
        try:
            self._write(cursor, page)
        finally:
            cursor.close()

    def finish(self) -> None:
        """Wait until every submitted page is written; re-raise a write error."""
        self.stop()
        self._raise_error()

    def stop(self) -> None:
        if self.is_alive():
            self._pages.put(None)
            self.join()

    def _raise_error(self) -> None:
        if self.error is not None:
            raise self.error


def _update_by_rowid(update: DriverStatement, key_id: str) -> PageWrite:
    """Return a SQLite page write: one executemany UPDATE addressed by rowid."""

    def write(cursor: Any, page: Sequence[tuple[Any, str]]) -> None:
        rows = [{"position": rowid, "token": token} for rowid, token in page]
        update.executemany(cursor, rows, {"key_id": key_id})

    return write


def _update_from_arrays(key_id: str) -> PageWrite:
    """Return a PostgreSQL page write: one UPDATE joined with the page as two arrays.

    One statement and one round trip per page, instead of one UPDATE per row.
    The arrays go in binary format (``%b``): as text, building and parsing
    the array literals cost more than the UPDATE itself. The page is a range
    of ids (pages follow the primary key), and the range in the WHERE clause
    lets the planner read only that range of the index: without it, it
    hashed the whole table for every page, which made a rotation quadratic
    in the number of secrets.
    """
    statement = (
        f"UPDATE {secrets_table.name} AS s SET token = p.token, key_id = %(key_id)s "  # noqa: S608
        "FROM unnest(%(ids)b::varchar[], %(tokens)b::text[]) AS p(id, token) "
        "WHERE s.id = p.id AND s.id >= %(first)s AND s.id <= %(last)s"
    )

    def write(cursor: Any, page: Sequence[tuple[Any, str]]) -> None:
        ids = [secret_id for secret_id, _ in page]
        tokens = [token for _, token in page]
        cursor.execute(
            statement,
            {"key_id": key_id, "ids": ids, "tokens": tokens, "first": ids[0], "last": ids[-1]},
        )

    return write


def _count_within_budget(lengths: Iterable[Any]) -> int:
    """Return how many of the next tokens, given by length, fit in one page."""
    count = 0
    size = 0
    for length in lengths:
        size += length or 0
        if count and size > PAGE_BYTES:
            break
        count += 1
    return count


def _token_length(token: Any) -> int:
    """Return a token's length; 0 for a damaged row's other type, which re-encryption rejects."""
    return len(token) if isinstance(token, (str, bytes)) else 0


def reencrypt_all(
    connection: Connection,
    database: Database,
    *,
    key_id: str,
    batch_size: int,
    reseal_page: Callable[[Sequence[repo.SecretRow]], list[str]],
    total: int,
    progress: Progress | None = None,
) -> int:
    """Re-encrypt every secret row with ``reseal_page`` and point it at ``key_id``.

    ``reseal_page`` returns the new tokens of a page of rows, in order.
    Runs inside the caller's transaction and never commits. ``reseal_page`` must
    not use the connection: it runs while the writer thread may hold it.
    Returns the number of rows rewritten.
    """
    dbapi_connection = connection.connection
    lock = threading.Lock()
    overlap = connection.dialect.name == "postgresql"
    # Pages follow the table's own order: the rowid on SQLite, where walking
    # the random hex ids would touch every page of the table for each batch.
    if overlap:
        lengths_query = database.driver_statement(repo.TOKEN_LENGTHS_BY_ID)
        page_query = database.driver_statement(repo.SECRET_PAGE_BY_ID)
        write = _update_from_arrays(key_id)
        start: Any = ""  # every id is 32 hex digits, so each sorts after ""
    else:
        # sqlite3 reads a row only when it is fetched, so the page itself stops
        # at the budget; length() would read every long token twice.
        lengths_query = None
        page_query = database.driver_statement(repo.SECRET_PAGE_BY_ROWID)
        write = _update_by_rowid(database.driver_statement(repo.UPDATE_TOKEN_BY_ROWID), key_id)
        start = -(2**63)
    writer = _PageWriter(dbapi_connection, lock, write)
    if overlap:
        writer.start()

    def fetch_page(after: Any) -> list[tuple[Any, repo.SecretRow]]:
        """Return the next page as (position, row) pairs; position is the rowid or the id."""
        with lock:
            cursor = dbapi_connection.cursor()
            try:
                parameters = {"after": after, "batch_size": batch_size}
                if lengths_query is not None:
                    lengths = lengths_query.execute(cursor, parameters).fetchall()
                    parameters["batch_size"] = _count_within_budget(length for _, length in lengths)
                    if not parameters["batch_size"]:
                        return []
                page: list[tuple[Any, repo.SecretRow]] = []
                size = 0
                for row in page_query.execute(cursor, parameters):
                    size += _token_length(row[3])
                    if page and size > PAGE_BYTES:
                        break
                    page.append((row[0], repo.SecretRow(*row[1:])))
                return page
            finally:
                cursor.close()

    done = 0
    try:
        page = fetch_page(start)
        while page:
            tokens = reseal_page([row for _, row in page])
            updates = [(position, token) for (position, _), token in zip(page, tokens, strict=True)]
            # Fetch the next page before handing this one over, so that the next
            # re-encryption overlaps the writer's use of the connection.
            next_page = fetch_page(page[-1][0])
            if overlap:
                writer.submit(updates)
            else:
                writer.write_now(updates)
            done += len(page)
            if progress is not None:
                progress(done, total)
            page = next_page
        writer.finish()
    finally:
        writer.stop()
    return done
