"""Fixtures: a temporary vault on SQLite and on a fresh PostgreSQL database.

PostgreSQL tests connect to FERNVAULT_TEST_PG (default: the local server at
127.0.0.1:5432 as user postgres). Each test gets its own database, dropped
afterwards. When the server is unreachable they are skipped, except under
CI=true, where they fail: a green CI run must have exercised PostgreSQL.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from fernvault import SecretManager

PG_ADMIN_URL = os.environ.get(
    "FERNVAULT_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
BACKENDS = ["sqlite", "postgres"]


def _admin_conninfo() -> str:
    return PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://", 1)


def _pg_unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"PostgreSQL is required under CI=true but unreachable: {reason}")
    pytest.skip(f"PostgreSQL unreachable: {reason}")


def create_pg_database() -> str:
    """Create an empty PostgreSQL database and return its SQLAlchemy URL."""
    import psycopg

    name = f"fernvault_test_{secrets.token_hex(6)}"
    try:
        with psycopg.connect(_admin_conninfo(), autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        _pg_unavailable(str(exc).splitlines()[0])
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


def drop_pg_database(url: str) -> None:
    import psycopg

    name = url.rpartition("/")[2]
    with psycopg.connect(_admin_conninfo(), autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    return tmp_path / "keys" / "vault.key"


@pytest.fixture
def db_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A database URL for ``backend``: a new SQLite file or a new PostgreSQL database."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'vault.db'}"
        return
    url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(url)


@pytest.fixture
def vault(key_file: Path, db_url: str) -> Iterator[SecretManager]:
    manager = SecretManager(key_file, db_url)
    try:
        yield manager
    finally:
        manager.close()


@pytest.fixture(autouse=True)
def _isolated_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Tests must never touch the user's real vault under ~/.codomyrmex.
    for name in ("FERNVAULT_URL", "FERNVAULT_KEY_FILE", "FERNVAULT_MASTER_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
