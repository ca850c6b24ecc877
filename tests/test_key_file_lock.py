"""Concurrent edits of one key file keep every key line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fernvault import SecretManager
from fernvault.keys import read_key_file

from .children import SPAWN, run_children

ROTATIONS_PER_PROCESS = 5


def _rotate_master_keys(key_file: str, url: str, barrier: Any) -> list[str]:
    with SecretManager(key_file, url) as vault:
        barrier.wait(timeout=60)
        return [vault.rotate_master_key(prune=False) for _ in range(ROTATIONS_PER_PROCESS)]


def test_concurrent_master_rotations_keep_every_key(key_file: Path, db_url: str) -> None:
    with SecretManager(key_file, db_url) as vault:
        secret_id = vault.store_secret("kept", "value")
    barrier = SPAWN.Barrier(4)
    results = run_children(
        [(_rotate_master_keys, (str(key_file), db_url, barrier)) for _ in range(4)], timeout=180
    )

    assert [status for status, _ in results] == ["ok"] * 4, results
    added = {key_id for _, key_ids in results for key_id in key_ids}
    assert len(added) == 4 * ROTATIONS_PER_PROCESS
    in_file = {key.key_id for key in read_key_file(key_file).keys}
    assert added <= in_file
    assert len(in_file) == 1 + 4 * ROTATIONS_PER_PROCESS
    with SecretManager(key_file, db_url) as vault:
        assert vault.get_secret(secret_id) == "value"
