"""Alembic environment for fernvault's schema.

Runs from the ``alembic`` command (URL from ``-x url=...``, FERNVAULT_URL or
``sqlalchemy.url``) and from fernvault itself, which passes an open
connection in ``config.attributes["connection"]``. Logging is configured from
alembic.ini only for the command line: from application code it would replace
the host application's logging configuration.
"""

from __future__ import annotations

import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy import Connection

from fernvault.database import Database
from fernvault.models import Base
from fernvault.schema import VERSION_TABLE

config = context.config
target_metadata = Base.metadata


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=VERSION_TABLE,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
        # Only fernvault's own tables: the vault may share a database with an
        # application that has tables and an Alembic history of its own.
        include_name=lambda name, type_, _parent: type_ != "table" or name.startswith("fernvault_"),
    )
    with context.begin_transaction():
        context.run_migrations()


def _url_from_command_line() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or os.environ.get("FERNVAULT_URL")
    url = url or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit(
            "no database URL: pass -x url=... or set FERNVAULT_URL "
            "(for example sqlite:///secrets.db)"
        )
    return url


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        return

    if config.config_file_name is not None:
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    database = Database(_url_from_command_line())
    try:
        with database.engine.connect() as connection:
            _configure(connection)
            connection.commit()
    finally:
        database.dispose()


if context.is_offline_mode():
    raise SystemExit("fernvault's migrations run online only: drop --sql")
run_migrations_online()
