"""Per-thread connections: closed when their thread ends, usable again after a fork."""

from __future__ import annotations

import gc
import multiprocessing
import threading

import pytest

from fernvault import SecretManager

from .conftest import PG_ADMIN_URL
from .dbutil import fetch


def _sessions(db_url: str) -> int:
    database = db_url.rpartition("/")[2]
    rows = fetch(
        PG_ADMIN_URL,
        "SELECT count(*) FROM pg_stat_activity WHERE datname = :d",
        {"d": database},
    )
    return int(rows[0][0])


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_thread_connections_closed_at_thread_exit(vault: SecretManager, db_url: str) -> None:
    secret_id = vault.store_secret("shared", "value")
    baseline = _sessions(db_url)
    results: list[str | None] = []

    def read() -> None:
        results.append(vault.get_secret(secret_id))

    for _ in range(3):
        threads = [threading.Thread(target=read) for _ in range(10)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    gc.collect()

    assert results == ["value"] * 30
    assert _sessions(db_url) <= baseline


def _read_in_child(vault: SecretManager, secret_id: str, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    queue.put(vault.get_secret(secret_id))


@pytest.mark.parametrize("backend", ["postgres"], indirect=True)
def test_forked_child_and_parent_both_read(vault: SecretManager) -> None:
    secret_id = vault.store_secret("shared", "value")
    assert vault.get_secret(secret_id) == "value"  # opens this thread's connection
    connection, _ = vault._db._reader()
    backend_pid = connection.dbapi_connection.info.backend_pid

    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_read_in_child, args=(vault, secret_id, queue))
    child.start()
    assert queue.get(timeout=60) == "value"
    child.join(timeout=60)
    assert child.exitcode == 0

    # The parent's session still runs queries on the same backend after the child exits.
    gc.collect()
    cursor = connection.cursor()
    cursor.execute("SELECT pg_backend_pid()")
    assert cursor.fetchone()[0] == backend_pid
    assert vault.get_secret(secret_id) == "value"
    vault.update_secret(secret_id, "after fork")
    assert vault.get_secret(secret_id) == "after fork"
