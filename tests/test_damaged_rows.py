"""Rows altered to hold values of the wrong type or shape, on SQLite."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from fernvault import IntegrityError, SecretManager


@pytest.fixture
def damaged(tmp_path: Path) -> tuple[SecretManager, Path, dict[str, str]]:
    database = tmp_path / "vault.db"
    vault = SecretManager(tmp_path / "vault.key", f"sqlite:///{database}")
    ids = {name: vault.store_secret(name, f"value-{name}") for name in ("a", "b", "c")}
    return vault, database, ids


def _alter(database: Path, statement: str, *params: object) -> None:
    with sqlite3.connect(database) as connection:
        connection.execute(statement, params)


@pytest.mark.parametrize("column", ["token", "name"])
def test_blob_in_text_column_is_integrity_error(
    damaged: tuple[SecretManager, Path, dict[str, str]], column: str
) -> None:
    vault, database, ids = damaged
    _alter(
        database,
        f"UPDATE fernvault_secrets SET {column} = CAST({column} AS BLOB) WHERE id = ?",
        ids["b"],
    )

    with pytest.raises(IntegrityError, match=ids["b"]):
        vault.get_secret(ids["b"])
    assert vault.get_secret(ids["a"]) == "value-a"
    report = vault.verify()
    assert [failure["id"] for failure in report.failures] == [ids["b"]]
    assert report.total == 3
    with pytest.raises(IntegrityError, match=ids["b"]):
        vault.rotate_key()
    vault.close()


@pytest.mark.parametrize(
    ("column", "garbage"), [("metadata", "{not json"), ("created_at", "garbage")]
)
def test_unparsable_column_fails_listing_clearly(
    damaged: tuple[SecretManager, Path, dict[str, str]], column: str, garbage: str
) -> None:
    vault, database, ids = damaged
    _alter(database, f"UPDATE fernvault_secrets SET {column} = ? WHERE id = ?", garbage, ids["c"])

    with pytest.raises(IntegrityError, match="altered in the database"):
        vault.list_secrets()
    assert vault.get_secret(ids["c"]) == "value-c"
    vault.close()
