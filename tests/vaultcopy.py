"""Seed a large vault once and clone it cheaply for each trial.

A SQLite vault is cloned by copying its file (and its WAL, if one is left);
a PostgreSQL vault by ``CREATE DATABASE ... TEMPLATE``. Both need every
connection to the seeded vault closed first.
"""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path

from fernvault import SecretManager

from .conftest import PG_ADMIN_URL, _admin_conninfo, drop_pg_database


def seed_values(count: int, prefix: str = "seed") -> dict[str, str]:
    """Return ``count`` distinct names and values, with non-ASCII text in each value."""
    return {f"{prefix}-{i:05d}": f"value-{i}-{secrets.token_hex(6)}-ü€" for i in range(count)}


def seed_vault(key_file: Path, url: str, values: dict[str, str]) -> dict[str, str]:
    """Store ``values`` in one transaction and return ``{secret id: value}``."""
    with SecretManager(key_file, url) as vault:
        ids = vault.store_secrets(values)
    return {ids[name]: value for name, value in values.items()}


def clone_vault(template_url: str, folder: Path, label: str) -> str:
    """Copy the vault at ``template_url`` to a new database and return its URL."""
    if template_url.startswith("sqlite"):
        source = Path(template_url.removeprefix("sqlite:///"))
        target = folder / f"{label}.db"
        shutil.copyfile(source, target)
        for suffix in ("-wal", "-shm"):
            extra = Path(f"{source}{suffix}")
            if extra.exists():
                shutil.copyfile(extra, Path(f"{target}{suffix}"))
        return f"sqlite:///{target}"

    import psycopg

    template = template_url.rpartition("/")[2]
    name = f"{template}_{label}"[:63]
    with psycopg.connect(_admin_conninfo(), autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


def drop_clone(url: str) -> None:
    """Drop a PostgreSQL clone; SQLite clones go away with the test's temporary folder."""
    if not url.startswith("sqlite"):
        drop_pg_database(url)
