"""Raw access to a vault's tables, for tests that inspect or damage rows."""

from __future__ import annotations

from typing import Any

from sqlalchemy import create_engine, text


def execute(url: str, statement: str, params: dict[str, Any] | None = None) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(text(statement), params or {})
    finally:
        engine.dispose()


def fetch(url: str, statement: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return [tuple(row) for row in connection.execute(text(statement), params or {})]
    finally:
        engine.dispose()


def snapshot(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of both vault tables, in a stable order."""
    return {
        "data_keys": fetch(url, "SELECT * FROM fernvault_data_keys ORDER BY id"),
        "secrets": fetch(url, "SELECT * FROM fernvault_secrets ORDER BY id"),
    }


def copy_token(url: str, source: str, target: str) -> None:
    """Write the token of secret ``source`` onto the row of secret ``target``."""
    execute(
        url,
        "UPDATE fernvault_secrets SET token = (SELECT token FROM fernvault_secrets WHERE id = :s) "
        "WHERE id = :t",
        {"s": source, "t": target},
    )
