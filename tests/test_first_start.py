"""Six processes open one fresh vault at the same moment.

Six long-lived workers meet at a barrier before each repetition, then each
opens the same new vault (new key file, new database), stores one secret
and closes it. They race on the key file, the schema migration and the
first data key.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

from fernvault import SecretManager
from fernvault.schema import head_revision

from .children import SPAWN
from .conftest import create_pg_database, drop_pg_database
from .dbutil import fetch

PROCESSES = 6
REPETITIONS = 20
TIMEOUT = 60.0


class _UpgradeCounter(logging.Handler):
    """Count the schema upgrades this process ran, from fernvault.schema's INFO log."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("upgrading "):
            self.count += 1


def _open_at_barrier(worker: int, barrier: Any, pipe: Connection) -> None:
    """For each job received, wait at the barrier, open the vault and store one secret."""
    counter = _UpgradeCounter()
    schema_logger = logging.getLogger("fernvault.schema")
    schema_logger.setLevel(logging.INFO)
    schema_logger.addHandler(counter)
    for _ in range(REPETITIONS + 1):
        if not pipe.poll(TIMEOUT):
            return
        job = pipe.recv()
        if job is None:
            return
        key_file, url = job
        counter.count = 0
        try:
            barrier.wait(timeout=TIMEOUT)
            with SecretManager(key_file, url) as vault:
                secret_id = vault.store_secret(f"worker-{worker}", f"value of worker {worker}")
            pipe.send(("ok", secret_id, counter.count))
        except Exception as exc:  # reported to the parent, which fails the test
            pipe.send(("error", f"{type(exc).__module__}.{type(exc).__name__}: {exc}", 0))


@pytest.fixture
def workers() -> Iterator[list[Connection]]:
    """PROCESSES worker processes sharing one barrier; yields a pipe to each."""
    barrier = SPAWN.Barrier(PROCESSES)
    pipes = []
    processes = []
    for worker in range(PROCESSES):
        parent_end, child_end = SPAWN.Pipe()
        process = SPAWN.Process(target=_open_at_barrier, args=(worker, barrier, child_end))
        process.start()
        child_end.close()
        pipes.append(parent_end)
        processes.append(process)
    try:
        yield pipes
    finally:
        for pipe in pipes:
            pipe.send(None)
        for process in processes:
            process.join(timeout=TIMEOUT)
            if process.is_alive():
                process.kill()
                process.join(timeout=10)


@pytest.mark.slow
def test_racing_first_start(backend: str, tmp_path: Path, workers: list[Connection]) -> None:
    head = head_revision()
    for repetition in range(REPETITIONS):
        key_file = tmp_path / f"rep{repetition}" / "vault.key"
        # url None: the default SQLite file beside the key file, created by the racers.
        url = None if backend == "sqlite" else create_pg_database()
        try:
            for pipe in workers:
                pipe.send((str(key_file), url))
            replies = []
            for pipe in workers:
                assert pipe.poll(TIMEOUT), f"repetition {repetition}: a worker did not reply"
                replies.append(pipe.recv())

            errors = [reply[1] for reply in replies if reply[0] != "ok"]
            assert errors == [], f"repetition {repetition}"
            upgrades = sum(reply[2] for reply in replies)
            assert upgrades == 1, f"repetition {repetition}: schema created {upgrades} times"
            db_url = url or f"sqlite:///{key_file.with_suffix('.db')}"
            version_rows = fetch(db_url, "SELECT version_num FROM fernvault_alembic_version")
            assert version_rows == [(head,)], f"repetition {repetition}"
            data_keys = fetch(db_url, "SELECT id FROM fernvault_data_keys")
            assert len(data_keys) == 1, f"repetition {repetition}"
            with SecretManager(key_file, url) as vault:
                for worker, reply in enumerate(replies):
                    assert vault.get_secret(reply[1]) == f"value of worker {worker}"
        finally:
            if url is not None:
                drop_pg_database(url)


def test_key_file_created_during_open(
    vault: SecretManager, key_file: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_id = vault.store_secret("first", "first-value")
    real_exists = Path.exists
    calls: list[Path] = []

    def exists_after_first_check(path: Path, **kwargs: bool) -> bool:
        # The first check sees no key file, as when another process creates
        # the key file and the data key just after this process looked.
        if path == key_file:
            calls.append(path)
            if len(calls) == 1:
                return False
        return real_exists(path, **kwargs)

    monkeypatch.setattr(Path, "exists", exists_after_first_check)
    with SecretManager(key_file, db_url) as late:
        assert late.get_secret(secret_id) == "first-value"
    assert len(calls) == 2
