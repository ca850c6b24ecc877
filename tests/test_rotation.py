"""Data key rotation on SQLite and PostgreSQL."""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from fernvault import IntegrityError, SecretManager

from .dbutil import copy_token, execute, fetch, snapshot


def _fill(vault: SecretManager, count: int) -> dict[str, str]:
    values = {f"secret-{i:04d}": f"value-{i}-é" for i in range(count)}
    ids = vault.store_secrets(values)
    return {ids[name]: value for name, value in values.items()}


def test_rotate_reencrypts_every_row(vault: SecretManager, db_url: str) -> None:
    expected = _fill(vault, 250)
    old_key = fetch(db_url, "SELECT id FROM fernvault_data_keys")[0][0]
    old_tokens = dict(fetch(db_url, "SELECT id, token FROM fernvault_secrets"))

    vault.batch_size = 64  # several pages
    new_key = vault.rotate_key()

    assert new_key != old_key
    assert fetch(db_url, "SELECT id FROM fernvault_data_keys") == [(new_key,)]
    key_ids = {row[0] for row in fetch(db_url, "SELECT DISTINCT key_id FROM fernvault_secrets")}
    assert key_ids == {new_key}
    new_tokens = dict(fetch(db_url, "SELECT id, token FROM fernvault_secrets"))
    assert all(new_tokens[i] != old_tokens[i] for i in expected)
    for secret_id, value in expected.items():
        assert vault.get_secret(secret_id) == value


def test_rotate_empty_vault(vault: SecretManager, db_url: str) -> None:
    key_id = vault.rotate_key()
    assert fetch(db_url, "SELECT id FROM fernvault_data_keys") == [(key_id,)]


def test_rotate_reports_progress(vault: SecretManager) -> None:
    _fill(vault, 25)
    vault.batch_size = 10
    calls: list[tuple[int, int]] = []
    result = vault.rotate_data_key(lambda done, total: calls.append((done, total)))
    assert calls == [(10, 25), (20, 25), (25, 25)]
    assert result.secrets == 25


def test_rotate_long_values_smaller_pages(vault: SecretManager) -> None:
    # Tokens of about 700 KB: three fit in the 2 MiB a page aims at.
    values = {f"long-{i}": f"{i}" * 500_000 for i in range(1, 8)}
    ids = vault.store_secrets(values)
    calls: list[tuple[int, int]] = []

    vault.rotate_data_key(lambda done, total: calls.append((done, total)))

    assert calls == [(3, 7), (6, 7), (7, 7)]
    for name, value in values.items():
        assert vault.get_secret(ids[name]) == value


def test_rotate_long_values_after_short_ones(vault: SecretManager) -> None:
    # Each page stops at 2 MiB of tokens, wherever the long values are.
    short = vault.store_secrets({f"short-{i:03d}": "s" for i in range(300)})
    long = vault.store_secrets({f"long-{i}": "l" * 1_000_000 for i in range(4)})
    calls: list[tuple[int, int]] = []

    vault.rotate_data_key(lambda done, total: calls.append((done, total)))

    # Two long tokens (1.3 MB each) exceed 2 MiB, so each page contains at most one.
    assert len(calls) >= 4
    assert calls[-1] == (304, 304)
    assert vault.get_secret(short["short-007"]) == "s"
    assert vault.get_secret(long["long-3"]) == "l" * 1_000_000


def test_rotate_names_row_pages_never_reach(vault: SecretManager, db_url: str) -> None:
    # The first page starts after the lowest rowid (SQLite) or after '' (PostgreSQL).
    expected = _fill(vault, 10)
    victim = next(iter(expected))
    if db_url.startswith("sqlite"):
        execute(
            db_url, f"UPDATE fernvault_secrets SET rowid = {-(2**63)} WHERE id = :i", {"i": victim}
        )
    else:
        execute(db_url, "UPDATE fernvault_secrets SET id = '' WHERE id = :i", {"i": victim})
    before = snapshot(db_url)

    with pytest.raises(IntegrityError, match="secret-0000") as caught:
        vault.rotate_key()

    assert "were not re-encrypted" in str(caught.value)
    assert snapshot(db_url) == before


def test_second_manager_rotates_everything(
    vault: SecretManager, key_file: Path, db_url: str
) -> None:
    expected = _fill(vault, 30)
    with SecretManager(key_file, db_url) as other:
        new_key = other.rotate_key()
    key_ids = {row[0] for row in fetch(db_url, "SELECT DISTINCT key_id FROM fernvault_secrets")}
    assert key_ids == {new_key}
    # The first manager still has the retired key in its cache and must reload.
    for secret_id, value in expected.items():
        assert vault.get_secret(secret_id) == value
    new_id = vault.store_secret("after", "x")
    assert fetch(db_url, "SELECT key_id FROM fernvault_secrets WHERE id = :i", {"i": new_id}) == [
        (new_key,)
    ]


def test_corrupt_row_rolls_back(vault: SecretManager, db_url: str) -> None:
    expected = _fill(vault, 40)
    victim = sorted(expected)[17]
    token = fetch(db_url, "SELECT token FROM fernvault_secrets WHERE id = :i", {"i": victim})[0][0]
    flipped = token[:60] + ("A" if token[60] != "A" else "B") + token[61:]
    execute(
        db_url, "UPDATE fernvault_secrets SET token = :t WHERE id = :i", {"t": flipped, "i": victim}
    )
    before = snapshot(db_url)

    vault.batch_size = 8
    with pytest.raises(IntegrityError, match=victim) as caught:
        vault.rotate_key()

    assert caught.value.secret_id == victim
    assert snapshot(db_url) == before
    for secret_id, value in expected.items():
        if secret_id != victim:
            assert vault.get_secret(secret_id) == value


def test_copied_token_fails_integrity(vault: SecretManager, db_url: str) -> None:
    first = vault.store_secret("first", "one")
    second = vault.store_secret("second", "two")
    copy_token(db_url, first, second)
    with pytest.raises(IntegrityError, match=second):
        vault.get_secret(second)
    assert vault.get_secret(first) == "one"


def _rotate_in_child(key_file: str, url: str, queue: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    with SecretManager(key_file, url) as manager:
        queue.put(manager.rotate_key())


def test_other_process_rotation(vault: SecretManager, key_file: Path, db_url: str) -> None:
    expected = _fill(vault, 50)
    assert vault.get_secret(next(iter(expected))) is not None  # cache the current key

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_rotate_in_child, args=(str(key_file), db_url, queue))
    child.start()
    new_key = queue.get(timeout=120)
    child.join(timeout=60)
    assert child.exitcode == 0

    for secret_id, value in expected.items():
        assert vault.get_secret(secret_id) == value
    stored = vault.store_secret("written-after", "fresh")
    assert fetch(db_url, "SELECT key_id FROM fernvault_secrets WHERE id = :i", {"i": stored}) == [
        (new_key,)
    ]
    assert vault.get_secret(stored) == "fresh"
