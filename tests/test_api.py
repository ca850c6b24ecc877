"""The SecretManager contract, run on SQLite and PostgreSQL."""

from __future__ import annotations

import re
from datetime import datetime, timezone

import pytest

from fernvault import (
    FernvaultError,
    InvalidInputError,
    SecretExistsError,
    SecretManager,
    SecretNotFoundError,
)

VALUE = "postgres://app:hunter2@db.internal:5432/app"


def test_store_returns_hex_id(vault: SecretManager) -> None:
    secret_id = vault.store_secret("db_url", VALUE)
    assert re.fullmatch(r"[0-9a-f]{32}", secret_id)


def test_get_by_id_and_name(vault: SecretManager) -> None:
    secret_id = vault.store_secret("db_url", VALUE)
    assert vault.get_secret(secret_id) == VALUE
    assert vault.get_secret_by_name("db_url") == VALUE


def test_unknown_id_and_name_return_none(vault: SecretManager) -> None:
    assert vault.get_secret("0" * 32) is None
    assert vault.get_secret("not-an-id") is None
    assert vault.get_secret_by_name("missing") is None


def test_list_has_no_values(vault: SecretManager) -> None:
    secret_id = vault.store_secret("db_url", VALUE, {"env": "prod", "owner": ["ops"]})
    listing = vault.list_secrets()
    assert len(listing) == 1
    entry = listing[0]
    assert set(entry) == {"id", "name", "created_at", "updated_at", "metadata"}
    assert entry["id"] == secret_id
    assert entry["name"] == "db_url"
    assert entry["metadata"] == {"env": "prod", "owner": ["ops"]}
    assert VALUE not in repr(listing)
    created = datetime.fromisoformat(entry["created_at"])
    assert created.tzinfo is not None
    assert created.utcoffset() == timezone.utc.utcoffset(None)


def test_metadata_defaults_to_empty_dict(vault: SecretManager) -> None:
    vault.store_secret("a", "1")
    assert vault.list_secrets()[0]["metadata"] == {}


def test_update_keeps_id(vault: SecretManager) -> None:
    secret_id = vault.store_secret("api_token", "old", {"v": 1})
    vault.update_secret(secret_id, "new")
    assert vault.get_secret(secret_id) == "new"
    assert vault.list_secrets()[0]["metadata"] == {"v": 1}
    assert vault.update_secret_by_name("api_token", "newer", {"v": 2}) == secret_id
    assert vault.get_secret_by_name("api_token") == "newer"
    assert vault.list_secrets()[0]["metadata"] == {"v": 2}


def test_update_sets_updated_at(vault: SecretManager) -> None:
    secret_id = vault.store_secret("a", "1")
    before = vault.list_secrets()[0]
    vault.update_secret(secret_id, "2")
    after = vault.list_secrets()[0]
    assert after["created_at"] == before["created_at"]
    assert after["updated_at"] >= before["updated_at"]


def test_update_unknown_raises(vault: SecretManager) -> None:
    with pytest.raises(SecretNotFoundError, match="not found"):
        vault.update_secret("0" * 32, "x")
    with pytest.raises(SecretNotFoundError, match="missing"):
        vault.update_secret_by_name("missing", "x")


def test_duplicate_name_raises(vault: SecretManager) -> None:
    vault.store_secret("db_url", VALUE)
    with pytest.raises(SecretExistsError, match="db_url"):
        vault.store_secret("db_url", "other")
    assert vault.get_secret_by_name("db_url") == VALUE


def test_delete(vault: SecretManager) -> None:
    secret_id = vault.store_secret("db_url", VALUE)
    assert vault.delete_secret(secret_id) is True
    assert vault.get_secret(secret_id) is None
    assert vault.delete_secret(secret_id) is False
    assert vault.list_secrets() == []


def test_delete_by_name(vault: SecretManager) -> None:
    vault.store_secret("a", "1")
    assert vault.delete_secret_by_name("a") is True
    assert vault.delete_secret_by_name("a") is False


def test_store_secrets_batch(vault: SecretManager) -> None:
    vault.store_secret("taken", "x")
    with pytest.raises(SecretExistsError, match="taken"):
        vault.store_secrets({"new": "1", "taken": "2"})
    assert vault.get_secret_by_name("new") is None
    stored = vault.store_secrets({"new": "1", "taken": "2"}, skip_existing=True)
    assert list(stored) == ["new"]
    assert vault.get_secret_by_name("taken") == "x"


@pytest.mark.parametrize(
    "name",
    ["x' OR '1'='1", 'quote"d', "a/b\\c", "with space", "emoji 🔑", "ünïcödé", "a" * 255],
)
def test_names_round_trip(vault: SecretManager, name: str) -> None:
    vault.store_secret(name, "v")
    assert vault.get_secret_by_name(name) == "v"
    assert vault.list_secrets()[0]["name"] == name


@pytest.mark.parametrize(
    "value",
    ["", " ", "line1\nline2", "nul\x00inside", "é😀", "x" * 65536, "y" * (1024 * 1024)],
    ids=["empty", "space", "multiline", "nul", "unicode", "64KiB", "1MiB"],
)
def test_values_round_trip(vault: SecretManager, value: str) -> None:
    secret_id = vault.store_secret("v", value)
    assert vault.get_secret(secret_id) == value


@pytest.mark.parametrize("name", ["", "   ", "a" * 256, "tab\tname", "nul\x00", "new\nline"])
def test_bad_names_rejected(vault: SecretManager, name: str) -> None:
    with pytest.raises(InvalidInputError):
        vault.store_secret(name, "v")
    assert vault.list_secrets() == []


@pytest.mark.parametrize("value", [None, b"bytes", 42])
def test_non_str_value_rejected(vault: SecretManager, value: object) -> None:
    with pytest.raises(TypeError):
        vault.store_secret("n", value)  # type: ignore[arg-type]
    with pytest.raises(FernvaultError):
        vault.store_secret("n", value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "metadata",
    [["not", "a", "dict"], {1: "int key"}, {"f": float("nan")}, {"s": {1, 2}}, {"n": "nul\x00"}],
)
def test_bad_metadata_rejected(vault: SecretManager, metadata: object) -> None:
    with pytest.raises(InvalidInputError):
        vault.store_secret("n", "v", metadata)  # type: ignore[arg-type]


def test_reopen_keeps_secrets(vault: SecretManager, key_file, db_url: str) -> None:
    secret_id = vault.store_secret("db_url", VALUE)
    with SecretManager(key_file, db_url) as reopened:
        assert reopened.get_secret(secret_id) == VALUE


def test_store_secrets_in_pages_is_one_transaction(vault: SecretManager) -> None:
    vault.batch_size = 7
    vault.store_secret("taken-19", "first")
    batch = {f"taken-{i}": f"v{i}" for i in range(20)}
    with pytest.raises(SecretExistsError, match="taken-19"):
        vault.store_secrets(batch)
    assert [entry["name"] for entry in vault.list_secrets()] == ["taken-19"]
    stored = vault.store_secrets(batch, skip_existing=True)
    assert len(stored) == 19
    assert vault.get_secret(stored["taken-3"]) == "v3"
    assert vault.get_secret_by_name("taken-19") == "first"


def test_store_secrets_falls_back_to_fernet(vault: SecretManager) -> None:
    # A reload in another thread can drop the key from the cache mid-store.
    vault._keys.cache._page_ciphers.clear()
    stored = vault.store_secrets({f"name-{i}": f"value-{i}-é" for i in range(5)})
    for i in range(5):
        assert vault.get_secret(stored[f"name-{i}"]) == f"value-{i}-é"
