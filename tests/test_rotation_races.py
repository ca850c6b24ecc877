"""Races between a data key rotation and a master key rotation on one vault."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fernvault import SecretManager


def test_master_rotation_just_before_data_rotation(
    key_file: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rotating = SecretManager(key_file, db_url)
    other = SecretManager(key_file, db_url)
    try:
        secret_id = rotating.store_secret("kept", "value")
        run = rotating._db.run

        def master_rotation_first(operation: str, work: Any, **options: Any) -> Any:
            # Another process rotates the master key and prunes the old one after
            # this rotation started, before its transaction takes the lock.
            if operation == "rotation":
                other.rotate_master_key()
            return run(operation, work, **options)

        monkeypatch.setattr(rotating._db, "run", master_rotation_first)
        rotating.rotate_key()
    finally:
        rotating.close()
        other.close()

    with SecretManager(key_file, db_url) as fresh:
        assert fresh.get_secret(secret_id) == "value"
        assert fresh.verify().ok
