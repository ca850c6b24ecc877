"""The re-encryption loop of a data key rotation.

Rows are read in keyset pages of ``batch_size`` rows, so memory stays flat
however many secrets the vault holds.

On PostgreSQL a second thread writes page N while the calling thread
re-encrypts page N+1: Fernet holds the GIL, but psycopg releases it while
it waits for the server. Both threads use the one connection of the
rotation's transaction, and a lock lets only one of them use it at a time.
SQLite writes a page in far less time than Fernet needs for it, and the
GIL handovers between the two threads (os.urandom releases the GIL for
every token) cost more than the overlap saves, so SQLite writes inline.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection

from . import repository as repo
from .database import Database, DriverStatement

Progress = Callable[[int, int], None]


class _PageWriter(threading.Thread):
    """Runs the UPDATE of each page handed to it, in order, on the shared connection."""

    def __init__(
        self, dbapi_connection: Any, lock: threading.Lock, update: DriverStatement
    ) -> None:
        super().__init__(name="fernvault-rotation-writer", daemon=True)
        self._connection = dbapi_connection
        self._lock = lock
        self._update = update
        self._pages: queue.Queue[Sequence[dict[str, str]] | None] = queue.Queue(maxsize=1)
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
                    cursor = self._connection.cursor()
                    try:
                        self._update.executemany(cursor, page)
                    finally:
                        cursor.close()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the rotating thread
                self.error = exc

    def submit(self, page: Sequence[dict[str, str]]) -> None:
        self._raise_error()
        self._pages.put(page)

    def write_now(self, page: Sequence[dict[str, str]]) -> None:
        """Write ``page`` in the calling thread, for a writer that was never started."""
        cursor = self._connection.cursor()
        try:
            self._update.executemany(cursor, page)
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


def reencrypt_all(
    connection: Connection,
    database: Database,
    *,
    key_id: str,
    batch_size: int,
    reseal: Callable[[repo.SecretRow], str],
    total: int,
    progress: Progress | None = None,
) -> int:
    """Re-encrypt every secret row with ``reseal`` and point it at ``key_id``.

    Runs inside the caller's transaction and never commits. ``reseal`` must
    not use the connection: it runs while the writer thread may hold it.
    Returns the number of rows rewritten.
    """
    dbapi_connection = connection.connection
    lock = threading.Lock()
    page_query = database.driver_statement(repo.SECRET_PAGE)
    writer = _PageWriter(dbapi_connection, lock, database.driver_statement(repo.UPDATE_TOKEN))
    overlap = connection.dialect.name == "postgresql"
    if overlap:
        writer.start()
    done = 0
    after = ""  # every id is 32 hex digits, so each sorts after ""
    try:
        while True:
            with lock:
                cursor = dbapi_connection.cursor()
                try:
                    rows = page_query.execute(
                        cursor, {"after": after, "batch_size": batch_size}
                    ).fetchall()
                finally:
                    cursor.close()
            if not rows:
                break
            page = [repo.SecretRow(*row) for row in rows]
            updates = [{"b_id": row.id, "b_token": reseal(row), "b_key_id": key_id} for row in page]
            if overlap:
                writer.submit(updates)
            else:
                writer.write_now(updates)
            after = page[-1].id
            done += len(page)
            if progress is not None:
                progress(done, total)
        writer.finish()
    finally:
        writer.stop()
    return done
