"""Alembic migrations: round trips, agreement with the models, schema checks."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from fernvault import SchemaError, SecretManager, schema
from fernvault.database import Database
from fernvault.models import Base
from fernvault.schema import (
    VERSION_TABLE,
    current_revision,
    downgrade,
    ensure_schema,
    head_revision,
    upgrade,
)

from .dbutil import execute, fetch

ROOT = Path(__file__).resolve().parents[1]


def _tables(database: Database) -> set[str]:
    with database.engine.connect() as connection:
        return set(inspect(connection).get_table_names())


def test_upgrade_downgrade_upgrade(db_url: str) -> None:
    database = Database(db_url)
    try:
        assert upgrade(database) == (None, head_revision())
        assert {"fernvault_secrets", "fernvault_data_keys", VERSION_TABLE} <= _tables(database)
        downgrade(database, "base")
        assert not {"fernvault_secrets", "fernvault_data_keys"} & _tables(database)
        assert upgrade(database) == (None, head_revision())
    finally:
        database.dispose()


def test_models_match_migrations(db_url: str) -> None:
    database = Database(db_url)
    try:
        upgrade(database)
        with database.engine.connect() as connection:
            context = MigrationContext.configure(
                connection,
                opts={
                    "compare_type": True,
                    "version_table": VERSION_TABLE,
                    "include_name": lambda name, type_, _p: (
                        type_ != "table" or name.startswith("fernvault_")
                    ),
                },
            )
            assert compare_metadata(context, Base.metadata) == []
    finally:
        database.dispose()


def test_fresh_database_created_at_head(key_file: Path, db_url: str) -> None:
    with SecretManager(key_file, db_url):
        pass
    assert fetch(db_url, f"SELECT version_num FROM {VERSION_TABLE}") == [(head_revision(),)]


def test_unknown_revision_raises(key_file: Path, db_url: str) -> None:
    with SecretManager(key_file, db_url):
        pass
    execute(db_url, f"UPDATE {VERSION_TABLE} SET version_num = 'ffff'")
    with pytest.raises(SchemaError, match="does not know"):
        SecretManager(key_file, db_url)


NEXT_REVISION = """
revision = "9999"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
"""


def test_older_revision_needs_upgrade(
    key_file: Path, db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with SecretManager(key_file, db_url) as manager:
        secret_id = manager.store_secret("a", "1")
    newer = tmp_path / "migrations"
    shutil.copytree(ROOT / "migrations", newer)
    (newer / "versions" / "9999_next.py").write_text(NEXT_REVISION.format(head=head_revision()))
    monkeypatch.setattr(schema, "migrations_path", lambda: newer)

    with pytest.raises(SchemaError, match="run: fernvault db upgrade"):
        SecretManager(key_file, db_url)
    with SecretManager(key_file, db_url, auto_upgrade=True) as manager:
        assert manager.get_secret(secret_id) == "1"
    assert fetch(db_url, f"SELECT version_num FROM {VERSION_TABLE}") == [("9999",)]


def test_tables_without_version_row(key_file: Path, db_url: str) -> None:
    with SecretManager(key_file, db_url):
        pass
    execute(db_url, f"DELETE FROM {VERSION_TABLE}")
    with pytest.raises(SchemaError, match="no fernvault_alembic_version row"):
        SecretManager(key_file, db_url)


def test_ensure_schema_is_idempotent(db_url: str) -> None:
    database = Database(db_url)
    try:
        ensure_schema(database)
        ensure_schema(database)
        assert database.run("check", current_revision, write=False) == head_revision()
    finally:
        database.dispose()


def test_shares_database_with_application(db_url: str) -> None:
    execute(db_url, "CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
    execute(db_url, "INSERT INTO alembic_version VALUES ('app0001')")
    execute(db_url, "CREATE TABLE app_users (id INTEGER PRIMARY KEY)")
    database = Database(db_url)
    try:
        upgrade(database)
    finally:
        database.dispose()
    assert fetch(db_url, "SELECT version_num FROM alembic_version") == [("app0001",)]
    assert "app_users" in _tables(Database(db_url))


def test_alembic_command_line(db_url: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "-x", f"url={db_url}", "upgrade", "head"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert fetch(db_url, f"SELECT version_num FROM {VERSION_TABLE}") == [(head_revision(),)]


def test_secrets_table_storage_for_rotation(db_url: str) -> None:
    database = Database(db_url)
    try:
        upgrade(database)
        with database.engine.connect() as connection:
            indexes = inspect(connection).get_indexes("fernvault_secrets")
    finally:
        database.dispose()
    assert all("key_id" not in index["column_names"] for index in indexes)
    if db_url.startswith("postgresql"):
        options = fetch(
            db_url, "SELECT reloptions FROM pg_class WHERE relname = 'fernvault_secrets'"
        )
        assert options == [(["fillfactor=50"],)]
