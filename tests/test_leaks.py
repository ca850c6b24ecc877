"""No leaks: a canary value, a canary password and the keys never show up where they must not.

One test per database drives every public operation and command, the
failing ones too (duplicate name, read-only database, locked database,
missing secret, wrong key, damaged row, rejected input), with logging at
DEBUG. It then searches every log record, every exception (str, repr,
traceback with chained causes), the repr of every public object and every
line the command line printed, except the standard output of ``get``.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import sqlite3
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from cryptography.fernet import Fernet

from fernvault import (
    FernvaultError,
    SecretManager,
    StorageError,
    decrypt_configuration,
    encrypt_configuration,
    manage_secrets,
)
from fernvault.cli import cli

from . import dbutil
from .conftest import PG_ADMIN_URL, create_pg_database, drop_pg_database

CANARY_VALUE = "CANARYVALUE" + secrets.token_hex(8)
CANARY_PASSWORD = "CANARYPASSWORD" + secrets.token_hex(8)


@dataclass
class Evidence:
    """Everything the vault produced that a reader other than the caller could see."""

    texts: list[tuple[str, str]] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    keys: set[str] = field(default_factory=set)

    def add(self, where: str, text: str) -> None:
        self.texts.append((where, text))

    def expect_error(self, where: str, call: Callable[[], object]) -> BaseException:
        try:
            call()
        except (FernvaultError, TypeError, ValueError) as exc:
            self.errors.append(exc)
            self.add(f"{where}: repr", repr(exc))
            return exc
        raise AssertionError(f"{where} raised nothing")

    def call(self, where: str, call: Callable[[], Any], *, returns_value: bool = False) -> Any:
        """Run ``call`` and record the repr of its result, unless the result is a value."""
        result = call()
        if not returns_value:
            self.add(f"{where}: repr", repr(result))
        return result


def _exception_texts(exc: BaseException) -> Iterator[str]:
    """Yield str, repr and the formatted traceback of ``exc`` and every chained cause."""
    yield "".join(traceback.format_exception(exc))
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield str(current)
        yield repr(current)
        if current.__cause__ is not None:
            current = current.__cause__
        elif not current.__suppress_context__:
            current = current.__context__
        else:
            current = None


def _key_texts(key_file: Path, vault: SecretManager | None) -> set[str]:
    texts = {line.strip() for line in key_file.read_text().splitlines() if line.strip()}
    if vault is not None:
        for fernet in vault._keys.cache._fernets.values():
            raw = fernet._signing_key + fernet._encryption_key
            texts.add(base64.urlsafe_b64encode(raw).decode())
    return texts


@dataclass
class Target:
    url: str
    admin_url: str | None
    read_only_url: str | None


@pytest.fixture
def target(backend: str, tmp_path: Path) -> Iterator[Target]:
    """A database whose URL carries the canary password (PostgreSQL) or a file (SQLite)."""
    if backend == "sqlite":
        path = tmp_path / "vault.db"
        yield Target(f"sqlite:///{path}", None, f"sqlite:///file:{path}?mode=ro&uri=true")
        return
    admin_url = create_pg_database()
    database = admin_url.rpartition("/")[2]
    role = f"fernvault_canary_{secrets.token_hex(4)}"
    conninfo = PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(conninfo, autocommit=True) as connection:
        connection.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{CANARY_PASSWORD}'")
        connection.execute(f'ALTER DATABASE "{database}" OWNER TO {role}')
    host = PG_ADMIN_URL.split("@", 1)[1].rpartition("/")[0]
    try:
        yield Target(
            f"postgresql+psycopg://{role}:{CANARY_PASSWORD}@{host}/{database}", admin_url, None
        )
    finally:
        drop_pg_database(admin_url)
        with psycopg.connect(conninfo, autocommit=True) as connection:
            connection.execute(f"DROP ROLE IF EXISTS {role}")


def _run_cli(
    evidence: Evidence, args: list[str], *, stdin: str | None = None, expect: int = 0
) -> str:
    result = CliRunner().invoke(cli, args, input=stdin)
    where = f"fernvault {' '.join(args[4:])}"
    # Every key that was ever in the key file, including keys a later command removes.
    evidence.keys |= _key_texts(Path(args[1]), None)
    assert result.exit_code == expect, (where, result.stderr)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        evidence.errors.append(result.exception)
    evidence.add(f"{where}: stderr", result.stderr)
    if args[4] != "get":
        evidence.add(f"{where}: stdout", result.stdout)
    return result.stdout


def _drive_api(evidence: Evidence, target: Target, key_file: Path, tmp_path: Path) -> set[str]:
    """Run every public operation, failing ones included; return the key texts seen."""
    vault = evidence.call("open", lambda: SecretManager(key_file, target.url))
    assert vault._db.engine.hide_parameters is True
    assert CANARY_PASSWORD not in vault.url
    keys = _key_texts(key_file, vault)
    try:
        secret_id = evidence.call(
            "store", lambda: vault.store_secret("db", CANARY_VALUE, {"env": "x"})
        )
        evidence.call("store many", lambda: vault.store_secrets({"a": CANARY_VALUE, "b": "2"}))
        assert vault.get_secret(secret_id) == CANARY_VALUE
        assert vault.get_secret_by_name("db") == CANARY_VALUE
        evidence.call("update", lambda: vault.update_secret(secret_id, CANARY_VALUE + "2"))
        evidence.call("update by name", lambda: vault.update_secret_by_name("db", CANARY_VALUE))
        evidence.call("list", vault.list_secrets)
        evidence.call("rotate", vault.rotate_key)
        evidence.call("rotate data key", vault.rotate_data_key)
        keys |= _key_texts(key_file, vault)
        evidence.call("rotate master key", lambda: vault.rotate_master_key(prune=False))
        keys |= _key_texts(key_file, vault)
        evidence.call("rotate master key and prune", vault.rotate_master_key)
        keys |= _key_texts(key_file, vault)
        evidence.call("verify", vault.verify)
        config = {"db": {"password": CANARY_VALUE}, "hosts": [{"token": CANARY_VALUE}]}
        encrypted = evidence.call(
            "encrypt_configuration",
            lambda: encrypt_configuration(config, ["db.password", "hosts.0.token"], manager=vault),
        )
        assert decrypt_configuration(encrypted, manager=vault) == config
        evidence.add("encrypted configuration", json.dumps(encrypted))
        evidence.call("delete", lambda: vault.delete_secret_by_name("b"))
        evidence.add("ring repr", repr(vault._keys.ring))
        evidence.add("key cache repr", repr(vault._keys.cache))
        evidence.add("vault keys repr", repr(vault._keys))
        for master_key in vault._keys.ring.keys:
            evidence.add("master key repr", repr(master_key))

        evidence.expect_error("duplicate name", lambda: vault.store_secret("db", CANARY_VALUE))
        evidence.expect_error("missing secret", lambda: vault.update_secret("0" * 32, CANARY_VALUE))
        evidence.expect_error(
            "missing by name", lambda: vault.update_secret_by_name("nope", CANARY_VALUE)
        )
        evidence.expect_error(
            "missing reference",
            lambda: decrypt_configuration({"x": "encrypted:" + "0" * 32}, manager=vault),
        )
        evidence.expect_error("bad name", lambda: vault.store_secret("bad\n", CANARY_VALUE))
        evidence.expect_error(
            "value too large", lambda: vault.store_secret("big", CANARY_VALUE * 400_000)
        )
        evidence.expect_error(
            "value in metadata",
            lambda: vault.store_secret("meta", "v", {"k": CANARY_VALUE + "\x00"}),
        )
        evidence.expect_error(
            "value as name", lambda: vault.store_secret(CANARY_VALUE + "\x07", "v")
        )
        evidence.expect_error(
            "unknown operation",
            lambda: manage_secrets("explode", key_file=key_file, url=target.url),
        )
        _drive_storage_failures(evidence, vault, target, key_file)

        token = dbutil.fetch(
            _admin(target), "SELECT token FROM fernvault_secrets WHERE id = :i", {"i": secret_id}
        )
        dbutil.execute(
            _admin(target),
            "UPDATE fernvault_secrets SET token = :t WHERE id = :i",
            {"t": str(token[0][0])[:-8] + "AAAAAAAA", "i": secret_id},
        )
        evidence.expect_error("damaged token", lambda: vault.get_secret(secret_id))
        evidence.call("verify damaged", vault.verify)
        dbutil.execute(
            _admin(target), "DELETE FROM fernvault_secrets WHERE id = :i", {"i": secret_id}
        )
    finally:
        vault.close()

    other_key = tmp_path / "other.key"
    other_key.write_bytes(Fernet.generate_key())
    other_key.chmod(0o600)
    keys |= _key_texts(other_key, None)
    evidence.expect_error("wrong key", lambda: SecretManager(other_key, target.url))
    evidence.expect_error(
        "unreachable database",
        lambda: SecretManager(
            key_file, f"postgresql+psycopg://nobody:{CANARY_PASSWORD}@127.0.0.1:5432/fernvault_none"
        ),
    )
    for operation, kwargs in [
        ("store", {"name": "m", "value": CANARY_VALUE}),
        ("get_by_name", {"name": "m"}),
        ("list", {}),
        ("rotate", {}),
    ]:
        evidence.call(
            f"manage_secrets {operation}",
            lambda o=operation, k=kwargs: manage_secrets(o, key_file=key_file, url=target.url, **k),
            returns_value=operation == "get_by_name",
        )
    return keys


def _admin(target: Target) -> str:
    return target.admin_url or target.url


def _drive_storage_failures(
    evidence: Evidence, vault: SecretManager, target: Target, key_file: Path
) -> None:
    """Make a write fail on a read-only and on a locked database."""
    if target.read_only_url is not None:
        with SecretManager(key_file, target.read_only_url) as read_only:
            error = evidence.expect_error(
                "read-only", lambda: read_only.store_secret("ro", CANARY_VALUE)
            )
            assert isinstance(error, StorageError), error
        path = target.url.removeprefix("sqlite:///")
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with SecretManager(key_file, target.url, busy_timeout=0.1) as locked:
                error = evidence.expect_error(
                    "locked", lambda: locked.store_secret("lk", CANARY_VALUE)
                )
                assert isinstance(error, StorageError), error
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        return
    database = target.url.rpartition("/")[2]
    dbutil.execute(
        PG_ADMIN_URL, f'ALTER DATABASE "{database}" SET default_transaction_read_only = on'
    )
    try:
        with SecretManager(key_file, target.url) as read_only:
            error = evidence.expect_error(
                "read-only", lambda: read_only.store_secret("ro", CANARY_VALUE)
            )
            assert isinstance(error, StorageError), error
    finally:
        dbutil.execute(
            PG_ADMIN_URL, f'ALTER DATABASE "{database}" RESET default_transaction_read_only'
        )
    dbutil.execute(PG_ADMIN_URL, f"ALTER DATABASE \"{database}\" SET lock_timeout = '200ms'")
    conninfo = _admin(target).replace("postgresql+psycopg://", "postgresql://", 1)
    try:
        with psycopg.connect(conninfo) as blocker:
            blocker.execute("LOCK TABLE fernvault_secrets IN ACCESS EXCLUSIVE MODE")
            with SecretManager(key_file, target.url) as locked:
                error = evidence.expect_error(
                    "locked", lambda: locked.store_secret("lk", CANARY_VALUE)
                )
                assert isinstance(error, StorageError), error
            blocker.rollback()
    finally:
        dbutil.execute(PG_ADMIN_URL, f'ALTER DATABASE "{database}" RESET lock_timeout')
    assert vault.get_secret_by_name("db") == CANARY_VALUE


def _drive_cli(evidence: Evidence, target: Target, key_file: Path, tmp_path: Path) -> None:
    base = ["--key-file", str(key_file), "--url", target.url]
    _run_cli(evidence, [*base, "init"])
    _run_cli(evidence, [*base, "init", "--json"])
    _run_cli(evidence, [*base, "put", "cli_secret", "--meta", "env=prod"], stdin=CANARY_VALUE)
    _run_cli(evidence, [*base, "put", "cli_secret", "--update"], stdin=CANARY_VALUE + "\n")
    stdout = _run_cli(evidence, [*base, "get", "cli_secret"])
    assert stdout == CANARY_VALUE + "\n"
    _run_cli(evidence, [*base, "ls"])
    _run_cli(evidence, [*base, "ls", "--json"])
    _run_cli(evidence, [*base, "verify"])
    _run_cli(evidence, [*base, "verify", "--json"])
    _run_cli(evidence, [*base, "rotate"])
    _run_cli(evidence, [*base, "rotate", "--json"])
    _run_cli(evidence, [*base, "rotate", "--master", "--keep-old"])
    _run_cli(evidence, [*base, "rotate", "--master", "--json"])
    dotenv = tmp_path / "import.env"
    dotenv.write_text(f"IMPORTED={CANARY_VALUE}\n")
    _run_cli(evidence, [*base, "import", str(dotenv)])
    _run_cli(evidence, [*base, "import", "--skip-existing", str(dotenv)])
    _run_cli(evidence, [*base, "db", "current"])
    _run_cli(evidence, [*base, "db", "upgrade"])
    _drive_key_commands(evidence, base)

    _run_cli(evidence, [*base, "put", "cli_secret"], stdin=CANARY_VALUE, expect=1)
    _run_cli(evidence, [*base, "get", "missing"], expect=1)
    _run_cli(evidence, [*base, "rm", "missing"], expect=1)
    _run_cli(evidence, [*base, "put", "bad\tname"], stdin=CANARY_VALUE, expect=1)
    _run_cli(evidence, [*base, "import", str(dotenv)], expect=1)
    _run_cli(evidence, [*base, "rm", "IMPORTED"])
    other_key = tmp_path / "cli-other.key"
    other_key.write_bytes(Fernet.generate_key())
    other_key.chmod(0o600)
    wrong = ["--key-file", str(other_key), "--url", target.url]
    _run_cli(evidence, [*wrong, "get", "cli_secret"], expect=1)
    _run_cli(evidence, [*wrong, "put", "x"], stdin=CANARY_VALUE, expect=1)
    if target.read_only_url is not None:
        read_only = ["--key-file", str(key_file), "--url", target.read_only_url]
        _run_cli(evidence, [*read_only, "put", "ro"], stdin=CANARY_VALUE, expect=1)
        _run_cli(evidence, [*read_only, "rotate"], expect=1)


def _drive_key_commands(evidence: Evidence, base: list[str]) -> None:
    """Add, list, promote and prune master keys, then re-wrap the data keys under the new one."""
    _run_cli(evidence, [*base, "key", "add", "--generate"])
    added = Fernet.generate_key().decode()
    evidence.keys.add(added)
    _run_cli(evidence, [*base, "key", "add"], stdin=added + "\n")
    _run_cli(evidence, [*base, "key", "ls"])
    listing = json.loads(_run_cli(evidence, [*base, "key", "ls", "--json"]))
    newest = listing["keys"][-1]["master_key_id"]
    _run_cli(evidence, [*base, "key", "promote", newest])
    _run_cli(evidence, [*base, "rotate", "--master", "--use-primary", "--keep-old"])
    _run_cli(evidence, [*base, "key", "prune"])

    almost_key = added[:-2] + "!="
    evidence.keys.add(almost_key)
    _run_cli(evidence, [*base, "key", "add"], stdin=almost_key, expect=1)
    _run_cli(evidence, [*base, "key", "promote", "0" * 16], expect=1)


def test_no_canary_or_key_leaks(
    target: Target, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    evidence = Evidence()
    key_file = tmp_path / "keys" / "vault.key"

    keys = _drive_api(evidence, target, key_file, tmp_path)
    _drive_cli(evidence, target, key_file, tmp_path)
    keys |= _key_texts(key_file, None)

    formatter = logging.Formatter("%(name)s %(levelname)s %(message)s")
    for record in caplog.records:
        evidence.add(f"log {record.name}", formatter.format(record))
    for exc in evidence.errors:
        for text in _exception_texts(exc):
            evidence.add(f"exception {type(exc).__name__}", text)

    secrets_to_find = {"canary value": CANARY_VALUE, "canary password": CANARY_PASSWORD}
    keys |= evidence.keys
    secrets_to_find |= {f"key {index}": key for index, key in enumerate(sorted(keys))}
    leaks = [
        f"{label} in {where}"
        for where, text in evidence.texts
        for label, secret in secrets_to_find.items()
        if secret in text
    ]
    assert leaks == [], "\n".join(leaks)
    assert len(caplog.records) > 20
    assert len(evidence.errors) >= 12
