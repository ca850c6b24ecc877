"""Bring a vault database to the schema revision this code needs.

Alembic owns the schema. A fresh database (no fernvault tables, no version
row) is migrated to head on first use. A database at an older revision is
only upgraded when the caller opted in; otherwise opening it raises
SchemaError asking the operator to run ``fernvault db upgrade``.
"""

from __future__ import annotations

import logging
from importlib import resources
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, inspect, text

from .database import Database
from .errors import SchemaError

logger = logging.getLogger(__name__)

VERSION_TABLE = "fernvault_alembic_version"

# Key of the PostgreSQL advisory lock that serializes schema changes, so
# several processes opening one fresh database create the schema once.
# The value is an arbitrary constant that fernvault alone uses.
_SCHEMA_LOCK_KEY = 0x5F6E1D7A2C3B4E01


def migrations_path() -> Path:
    """Return the folder of the Alembic scripts.

    An installed wheel carries them as ``fernvault/migrations``; a source
    checkout keeps them at the repository root.
    """
    packaged = Path(str(resources.files("fernvault"))) / "migrations"
    if (packaged / "env.py").is_file():
        return packaged
    checkout = Path(__file__).resolve().parents[2] / "migrations"
    if (checkout / "env.py").is_file():
        return checkout
    raise SchemaError(
        f"fernvault's migrations are missing: neither {packaged} nor {checkout} exists"
    )


def alembic_config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(migrations_path()))
    return config


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise SchemaError("fernvault's migrations have no head revision")
    return head


def current_revision(connection: Connection) -> str | None:
    context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
    return context.get_current_revision()


def _has_vault_tables(connection: Connection) -> bool:
    names = inspect(connection).get_table_names()
    return any(name.startswith("fernvault_") and name != VERSION_TABLE for name in names)


def _upgrade(connection: Connection, revision: str = "head") -> None:
    config = alembic_config()
    config.attributes["connection"] = connection
    command.upgrade(config, revision)


def lock_schema(connection: Connection) -> None:
    """Serialize schema and first data key creation across processes."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
    # SQLite: the write transaction began with BEGIN IMMEDIATE and holds the
    # database's only write lock already.


def ensure_schema(database: Database, *, auto_upgrade: bool = False) -> None:
    """Check the schema revision, creating or upgrading the schema when allowed.

    Raises SchemaError for a database at an unknown revision, for fernvault
    tables without a version row, and for an older revision unless
    ``auto_upgrade`` is true.
    """
    head = head_revision()
    current = database.run("schema check", current_revision, write=False)
    if current == head:
        return

    def migrate(connection: Connection) -> None:
        lock_schema(connection)
        found = current_revision(connection)
        if found == head:
            return  # another process finished the migration while this one waited
        _check_upgradable(database, connection, found, head, auto_upgrade)
        logger.info("upgrading %s from %s to %s", database.display_url, found or "empty", head)
        _upgrade(connection)

    database.run("schema upgrade", migrate)


def _check_upgradable(
    database: Database, connection: Connection, found: str | None, head: str, auto_upgrade: bool
) -> None:
    if found is None:
        if _has_vault_tables(connection):
            raise _schema_error(
                f"{database.display_url} has fernvault tables but no {VERSION_TABLE} row; "
                "restore the version table or migrate the data into a fresh database"
            )
        return
    known = {
        script.revision for script in ScriptDirectory.from_config(alembic_config()).walk_revisions()
    }
    if found not in known:
        raise _schema_error(
            f"{database.display_url} is at schema revision {found}, which this version of "
            "fernvault does not know; upgrade fernvault"
        )
    if not auto_upgrade:
        raise _schema_error(
            f"{database.display_url} is at schema revision {found} but this version of "
            f"fernvault needs {head}; run: fernvault db upgrade"
        )


def _schema_error(message: str) -> SchemaError:
    logger.error("%s", message)
    return SchemaError(message)


def upgrade(database: Database, revision: str = "head") -> tuple[str | None, str | None]:
    """Upgrade the schema to ``revision``; return the revisions before and after."""

    def migrate(connection: Connection) -> tuple[str | None, str | None]:
        lock_schema(connection)
        before = current_revision(connection)
        try:
            _upgrade(connection, revision)
        except CommandError as exc:  # for example an unknown target revision
            raise _schema_error(
                f"cannot upgrade {database.display_url} to {revision}: {exc}"
            ) from None
        return before, current_revision(connection)

    return database.run("schema upgrade", migrate)


def downgrade(database: Database, revision: str) -> None:
    """Downgrade the schema to ``revision`` (``base`` drops every fernvault table)."""

    def migrate(connection: Connection) -> None:
        lock_schema(connection)
        config = alembic_config()
        config.attributes["connection"] = connection
        command.downgrade(config, revision)

    database.run("schema downgrade", migrate)
