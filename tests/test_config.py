"""encrypt_configuration, decrypt_configuration and manage_secrets."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from fernvault import (
    FernvaultError,
    SecretManager,
    SecretNotFoundError,
    decrypt_configuration,
    encrypt_configuration,
    manage_secrets,
)

CONFIG = {
    "database": {"host": "db", "password": "pg-pass", "port": 5432},
    "api_key": "sk_live_123",
    "servers": [{"token": "t0"}, {"token": "t1"}],
    "debug": True,
}


def test_round_trip(vault: SecretManager) -> None:
    original = copy.deepcopy(CONFIG)
    paths = ["database.password", "api_key", "servers.1.token", "database.port", "missing.path"]
    encrypted = encrypt_configuration(CONFIG, paths, manager=vault)

    assert original == CONFIG
    assert encrypted["database"]["password"].startswith("encrypted:")
    assert encrypted["api_key"].startswith("encrypted:")
    assert encrypted["servers"][1]["token"].startswith("encrypted:")
    assert encrypted["servers"][0]["token"] == "t0"
    assert encrypted["database"]["port"] == 5432
    assert "pg-pass" not in repr(encrypted)
    assert decrypt_configuration(encrypted, manager=vault) == CONFIG


def test_shared_key_names_do_not_collide(vault: SecretManager) -> None:
    first = encrypt_configuration({"password": "one"}, ["password"], manager=vault)
    second = encrypt_configuration({"password": "two"}, ["password"], manager=vault)
    assert first["password"] != second["password"]
    assert decrypt_configuration(first, manager=vault) == {"password": "one"}
    assert decrypt_configuration(second, manager=vault) == {"password": "two"}


def test_dotted_literal_key(vault: SecretManager) -> None:
    encrypted = encrypt_configuration({"a.b": "v"}, ["a.b"], manager=vault)
    assert encrypted["a.b"].startswith("encrypted:")


def test_missing_reference_raises(vault: SecretManager) -> None:
    with pytest.raises(SecretNotFoundError, match="0" * 32):
        decrypt_configuration({"x": "encrypted:" + "0" * 32}, manager=vault)


def test_key_file_and_url_arguments(key_file: Path, db_url: str) -> None:
    encrypted = encrypt_configuration(CONFIG, ["api_key"], key_file=key_file, url=db_url)
    assert decrypt_configuration(encrypted, key_file=key_file, url=db_url) == CONFIG


def test_manage_secrets_operations(key_file: Path, db_url: str) -> None:
    where = {"key_file": key_file, "url": db_url}
    secret_id = manage_secrets("store", name="n", value="v", metadata={"m": 1}, **where)
    assert manage_secrets("get", secret_id=secret_id, **where) == "v"
    assert manage_secrets("get_by_name", name="n", **where) == "v"
    assert [s["id"] for s in manage_secrets("list", **where)] == [secret_id]
    manage_secrets("update", secret_id=secret_id, value="w", **where)
    assert manage_secrets("get", secret_id=secret_id, **where) == "w"
    assert len(manage_secrets("rotate", **where)) == 32
    assert manage_secrets("get", secret_id=secret_id, **where) == "w"
    assert manage_secrets("delete", secret_id=secret_id, **where) is True
    assert manage_secrets("get", secret_id=secret_id, **where) is None


def test_manage_secrets_unknown_operation() -> None:
    with pytest.raises(FernvaultError, match="unknown secret operation 'explode'"):
        manage_secrets("explode")
