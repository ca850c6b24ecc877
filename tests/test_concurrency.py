"""Rotations racing with writers, with each other, and with long-running processes.

Every child is a separate process (multiprocessing "spawn"), so each has its
own connections, data key cache and, on SQLite, its own file locks.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

from fernvault import RotationConflictError, SecretManager

from .children import SPAWN, run_children
from .conftest import create_pg_database, drop_pg_database
from .dbutil import fetch
from .vaultcopy import clone_vault, drop_clone, seed_values, seed_vault

BIG_VAULT = 20_000
WORKERS = 4
SEEDED_PER_WORKER = 40  # seeded secrets each worker may update, in disjoint slices
MAX_OPERATIONS = 3000  # per worker
WORKER_DEADLINE = 90.0  # seconds, per worker
CHILD_TIMEOUT = 120.0


def _write_loop(
    worker: int,
    key_file: str,
    url: str,
    seeded: dict[str, str],
    stop: Any,
    pipe: Connection,
) -> None:
    """Store, update, read and delete in a loop, then send what succeeded and every error.

    The worker owns the names ``w{worker}-*`` and the ids in ``seeded``, so the
    last successful write to each of them is its expected final state.
    """
    rng = random.Random(worker)
    live: dict[str, str] = {}  # own name -> secret id, for secrets that exist
    expected: dict[str, str | None] = {}  # own name -> value, or None once deleted
    seeded_expected = dict(seeded)
    operations: list[tuple[str, float, float]] = []
    errors: list[str] = []
    mismatches: list[str] = []
    deadline = time.monotonic() + WORKER_DEADLINE
    counter = 0

    with SecretManager(key_file, url) as vault:
        while len(operations) < MAX_OPERATIONS and time.monotonic() < deadline:
            if stop.is_set():
                break
            kind = rng.choice(["store", "store", "update", "update_seeded", "read", "delete"])
            counter += 1
            value = f"w{worker}-{counter}-{rng.random()}-ß"
            started = time.time()
            try:
                if kind == "store" or not live:
                    kind = "store"
                    name = f"w{worker}-{counter}"
                    live[name] = vault.store_secret(name, value)
                    expected[name] = value
                elif kind == "update":
                    name = rng.choice(sorted(live))
                    vault.update_secret(live[name], value)
                    expected[name] = value
                elif kind == "update_seeded":
                    secret_id = rng.choice(sorted(seeded_expected))
                    vault.update_secret(secret_id, value)
                    seeded_expected[secret_id] = value
                elif kind == "read":
                    secret_id = rng.choice(sorted(seeded_expected))
                    got = vault.get_secret(secret_id)
                    if got != seeded_expected[secret_id]:
                        mismatches.append(f"read of {secret_id} returned a different value")
                else:
                    name = rng.choice(sorted(live))
                    if not vault.delete_secret(live.pop(name)):
                        mismatches.append(f"delete of {name} found no secret")
                    expected[name] = None
            except Exception as exc:  # every failure is reported and fails the test
                errors.append(f"{kind}: {type(exc).__module__}.{type(exc).__name__}: {exc}")
                continue
            operations.append((kind, started, time.time()))
            if len(operations) == 1:
                pipe.send("running")

    pipe.send(
        {
            "expected": expected,
            "seeded": seeded_expected,
            "operations": operations,
            "errors": errors,
            "mismatches": mismatches,
        }
    )


@pytest.fixture
def big_vault(backend: str, tmp_path: Path, key_file: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """A vault of BIG_VAULT secrets: its URL and ``{secret id: value}``."""
    url = f"sqlite:///{tmp_path / 'big.db'}" if backend == "sqlite" else create_pg_database()
    try:
        yield url, seed_vault(key_file, url, seed_values(BIG_VAULT))
    finally:
        if backend != "sqlite":
            drop_pg_database(url)


@pytest.mark.slow
def test_rotation_with_concurrent_writers(
    big_vault: tuple[str, dict[str, str]], key_file: Path
) -> None:
    url, original = big_vault
    ids = sorted(original)
    slices = [
        {i: original[i] for i in ids[w * SEEDED_PER_WORKER : (w + 1) * SEEDED_PER_WORKER]}
        for w in range(WORKERS)
    ]
    stop = SPAWN.Event()
    pipes = []
    children = []
    for worker in range(WORKERS):
        parent_end, child_end = SPAWN.Pipe(duplex=False)
        child = SPAWN.Process(
            target=_write_loop, args=(worker, str(key_file), url, slices[worker], stop, child_end)
        )
        child.start()
        child_end.close()
        pipes.append(parent_end)
        children.append(child)

    try:
        for pipe in pipes:
            assert pipe.poll(CHILD_TIMEOUT), "a writer did not start"
            assert pipe.recv() == "running"
        windows = []
        with SecretManager(key_file, url) as vault:
            for _ in range(2):
                started = time.time()
                key_id = vault.rotate_key()
                windows.append((started, time.time()))
        time.sleep(0.5)  # writes after the rotations must see the new key too
        stop.set()
        results = []
        for pipe in pipes:
            assert pipe.poll(CHILD_TIMEOUT), "a writer did not finish"
            results.append(pipe.recv())
    finally:
        stop.set()
        for child in children:
            child.join(timeout=CHILD_TIMEOUT)
            if child.is_alive():
                child.kill()

    for worker, result in enumerate(results):
        assert result["errors"] == [], f"worker {worker}"
        assert result["mismatches"] == [], f"worker {worker}"
    writes = [
        (start, end)
        for result in results
        for kind, start, end in result["operations"]
        if kind != "read"
    ]
    overlapping = [
        (start, end)
        for start, end in writes
        for window_start, window_end in windows
        if start < window_end and end > window_start
    ]
    assert overlapping, "no write overlapped a rotation; the test proved nothing"

    expected_seeded = dict(original)
    for result in results:
        expected_seeded.update(result["seeded"])
    with SecretManager(key_file, url) as fresh:
        for secret_id, value in expected_seeded.items():
            assert fresh.get_secret(secret_id) == value, f"lost update of {secret_id}"
        for result in results:
            for name, value in result["expected"].items():
                assert fresh.get_secret_by_name(name) == value, f"lost write of {name}"
        report = fresh.verify()
    assert report.failures == []
    assert list(report.per_key) == [key_id]
    assert fetch(url, "SELECT id FROM fernvault_data_keys") == [(key_id,)]


def _rotate_at_barrier(key_file: str, url: str, barrier: Any) -> str:
    with SecretManager(key_file, url) as vault:
        barrier.wait(timeout=CHILD_TIMEOUT)
        try:
            return vault.rotate_key()
        except RotationConflictError:
            return "conflict"


@pytest.fixture
def seeded_vault(
    backend: str, tmp_path: Path, key_file: Path
) -> Iterator[tuple[str, dict[str, str]]]:
    url = f"sqlite:///{tmp_path / 'seed.db'}" if backend == "sqlite" else create_pg_database()
    try:
        yield url, seed_vault(key_file, url, seed_values(5000))
    finally:
        if backend != "sqlite":
            drop_pg_database(url)


@pytest.mark.slow
def test_two_rotations_at_once(
    seeded_vault: tuple[str, dict[str, str]], key_file: Path, tmp_path: Path
) -> None:
    template_url, expected = seeded_vault
    for trial in range(3):
        url = clone_vault(template_url, tmp_path, f"pair{trial}")
        try:
            barrier = SPAWN.Barrier(2)
            call = (_rotate_at_barrier, (str(key_file), url, barrier))
            results = run_children([call, call], CHILD_TIMEOUT)
            assert [status for status, _ in results] == ["ok", "ok"], f"trial {trial}: {results}"
            outcomes = [outcome for _, outcome in results]
            new_keys = [outcome for outcome in outcomes if outcome != "conflict"]
            assert new_keys, f"trial {trial}: both rotations failed"
            (active,) = fetch(url, "SELECT id FROM fernvault_data_keys")[0]
            assert active in new_keys, f"trial {trial}"
            with SecretManager(key_file, url) as vault:
                report = vault.verify()
                assert report.failures == []
                assert report.per_key == {active: len(expected)}
                sample = random.sample(sorted(expected), 200)
                assert {i: vault.get_secret(i) for i in sample} == {i: expected[i] for i in sample}
        finally:
            drop_clone(url)


def _rotate_twice(key_file: str, url: str) -> list[str]:
    with SecretManager(key_file, url) as vault:
        return [vault.rotate_key(), vault.rotate_key()]


def test_long_running_process_survives_rotation(
    vault: SecretManager, key_file: Path, db_url: str
) -> None:
    ids = vault.store_secrets({f"before-{i}": f"value-{i}" for i in range(50)})
    kept = vault.store_secret("kept", "kept-value")
    assert vault.get_secret(kept) == "kept-value"  # the old data key is now cached

    with SPAWN.Pool(1) as pool:
        first, second = pool.apply_async(_rotate_twice, (str(key_file), db_url)).get(
            timeout=CHILD_TIMEOUT
        )
    assert first != second

    assert vault.get_secret(ids["before-7"]) == "value-7"
    stored = vault.store_secret("after", "after-value")
    vault.update_secret(kept, "kept-new")
    assert vault.delete_secret(ids["before-8"])
    assert vault.get_secret(stored) == "after-value"
    assert vault.get_secret(kept) == "kept-new"
    key_ids = fetch(
        db_url,
        "SELECT key_id FROM fernvault_secrets WHERE id IN (:a, :b)",
        {"a": stored, "b": kept},
    )
    assert key_ids == [(second,), (second,)]
    assert fetch(db_url, "SELECT id FROM fernvault_data_keys") == [(second,)]
