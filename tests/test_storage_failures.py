"""Storage failures: read-only files, a full disk and connections killed mid-transaction.

Each failure must raise a StorageError that names the operation and the
database, leave every row as it was, and let the next operation succeed
once the cause is gone.

The tests run as root on CI, where file modes do not stop writes. A
read-only file is therefore made by remounting a small tmpfs read-only
(root with CAP_SYS_ADMIN) or, for other users, by chmod. A full disk is a
1 MiB tmpfs filled with a filler file, or SQLite's max_page_count when no
tmpfs can be mounted.
"""

from __future__ import annotations

import gc
import os
import stat
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from sqlalchemy import event, text

from fernvault import SecretManager, StorageError

from . import dbutil
from .conftest import PG_ADMIN_URL, create_pg_database, drop_pg_database


def _mount_tmpfs(folder: Path, size: str) -> bool:
    """Mount a tmpfs of ``size`` on ``folder``; return False when this user cannot."""
    if os.geteuid() != 0:
        return False
    folder.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(folder)],
        capture_output=True,
    )
    return result.returncode == 0


def _umount(folder: Path) -> None:
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


@pytest.fixture
def small_mount(tmp_path: Path) -> Iterator[Path | None]:
    """A 1 MiB tmpfs, or None when it cannot be mounted."""
    folder = tmp_path / "mnt"
    if not _mount_tmpfs(folder, "1m"):
        yield None
        return
    try:
        yield folder
    finally:
        _umount(folder)


def _remount_read_only(folder: Path) -> None:
    """Remount ``folder`` read-only, failing with the files this process still has open there."""
    for _ in range(10):
        gc.collect()  # close connections that only wait for garbage collection
        result = subprocess.run(["mount", "-o", "remount,ro", str(folder)], capture_output=True)
        if result.returncode == 0:
            return
        time.sleep(0.2)
    fd_folder = Path("/proc/self/fd")
    open_here = sorted(
        target
        for target in (os.readlink(fd_folder / fd) for fd in os.listdir(fd_folder))
        if target.startswith(str(folder))
    )
    raise AssertionError(f"cannot remount {folder} read-only; files open here: {open_here}")


@contextmanager
def _read_only(folder: Path, mounted: bool) -> Iterator[None]:
    """Make ``folder`` and the files in it read-only for this process, then writable again."""
    if mounted:
        _remount_read_only(folder)
        try:
            yield
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(folder)], check=True)
        return
    modes = {path: path.stat().st_mode for path in [folder, *folder.iterdir()]}
    for path in modes:
        path.chmod(stat.S_IMODE(modes[path]) & ~0o222)
    try:
        yield
    finally:
        for path, mode in modes.items():
            path.chmod(stat.S_IMODE(mode))


def _sqlite_vault(folder: Path) -> tuple[SecretManager, str]:
    url = f"sqlite:///{folder / 'vault.db'}"
    return SecretManager(folder / "vault.key", url), url


def _assert_storage_error(error: StorageError, operation: str, url: str) -> None:
    message = str(error)
    assert message.startswith(f"{operation} failed on "), message
    assert url.rpartition("/")[2] in message
    assert "DETAIL" not in message
    assert "[SQL" not in message


def test_read_only_database_file(small_mount: Path | None, tmp_path: Path) -> None:
    mounted = small_mount is not None
    if not mounted and os.geteuid() == 0:
        pytest.skip("running as root without permission to mount a tmpfs")
    folder = small_mount or tmp_path / "vault"
    folder.mkdir(exist_ok=True)
    vault, url = _sqlite_vault(folder)
    secret_id = vault.store_secret("kept", "value-kept")
    before = dbutil.snapshot(url)
    # A tmpfs cannot be remounted read-only while files on it are open for writing.
    vault.close()

    with (
        _read_only(folder, mounted),
        pytest.raises(StorageError) as caught,
        SecretManager(folder / "vault.key", url) as read_only,
    ):
        read_only.store_secret("new", "value-new")
    message = str(caught.value)
    assert " failed on " in message
    assert "vault.db" in message

    assert dbutil.snapshot(url) == before
    with SecretManager(folder / "vault.key", url) as vault:
        assert vault.get_secret(secret_id) == "value-kept"
        vault.store_secret("new", "value-new")
        assert vault.get_secret_by_name("new") == "value-new"


def test_read_only_sqlite_uri(tmp_path: Path) -> None:
    vault, url = _sqlite_vault(tmp_path)
    secret_id = vault.store_secret("kept", "value-kept")
    vault.close()
    read_only_url = f"sqlite:///file:{tmp_path / 'vault.db'}?mode=ro&uri=true"
    with SecretManager(tmp_path / "vault.key", read_only_url) as read_only:
        assert read_only.get_secret(secret_id) == "value-kept"
        with pytest.raises(StorageError, match="readonly|read-only|read only"):
            read_only.store_secret("new", "v")
        with pytest.raises(StorageError):
            read_only.update_secret(secret_id, "changed")
    with SecretManager(tmp_path / "vault.key", url) as writable:
        assert writable.get_secret(secret_id) == "value-kept"


def _fill(folder: Path) -> Path:
    filler = folder / "filler"
    with filler.open("wb") as handle:
        try:
            while True:
                handle.write(b"\0" * 65536)
                handle.flush()
        except OSError:
            pass
    return filler


def test_full_disk_tmpfs(small_mount: Path | None) -> None:
    if small_mount is None:
        pytest.skip("cannot mount a tmpfs; test_full_disk_page_limit covers a full database")
    vault, url = _sqlite_vault(small_mount)
    try:
        secret_id = vault.store_secret("kept", "value-kept")
        before = dbutil.snapshot(url)
        filler = _fill(small_mount)
        with pytest.raises(StorageError) as caught:
            vault.store_secret("big", "x" * 300_000)
        _assert_storage_error(caught.value, "store", url)
        assert "full" in str(caught.value)
        assert vault.get_secret(secret_id) == "value-kept"
        filler.unlink()
        assert dbutil.snapshot(url) == before
        vault.store_secret("big", "x" * 300_000)
        assert vault.get_secret_by_name("big") == "x" * 300_000
    finally:
        vault.close()


def test_full_disk_page_limit(tmp_path: Path) -> None:
    vault, url = _sqlite_vault(tmp_path)
    try:
        secret_id = vault.store_secret("kept", "value-kept")
        before = dbutil.snapshot(url)
        pages = int(dbutil.fetch(url, "PRAGMA page_count")[0][0])

        def limit_pages(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.execute(f"PRAGMA max_page_count = {pages + 2}")

        event.listen(vault._db.engine, "connect", limit_pages)
        vault._db.dispose()  # reconnect, so that every connection gets the limit
        with pytest.raises(StorageError, match="full") as caught:
            vault.store_secret("big", "x" * 300_000)
        _assert_storage_error(caught.value, "store", url)
        event.remove(vault._db.engine, "connect", limit_pages)
        vault._db.dispose()

        assert dbutil.snapshot(url) == before
        assert vault.get_secret(secret_id) == "value-kept"
        vault.store_secret("big", "x" * 300_000)
        assert vault.get_secret_by_name("big") == "x" * 300_000
    finally:
        vault.close()


@pytest.fixture
def pg_url() -> Iterator[str]:
    url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(url)


def _terminate(pid: int) -> None:
    conninfo = PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(conninfo, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


def _terminate_all(url: str) -> int:
    conninfo = PG_ADMIN_URL.replace("postgresql+psycopg://", "postgresql://", 1)
    database = url.rpartition("/")[2]
    with psycopg.connect(conninfo, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (database,),
        ).fetchall()
    return len(rows)


def test_pg_connection_killed_during_update(pg_url: str, tmp_path: Path) -> None:
    with SecretManager(tmp_path / "vault.key", pg_url) as vault:
        secret_id = vault.store_secret("kept", "value-kept")
        before = dbutil.snapshot(pg_url)
        killed: list[int] = []

        def kill_before_update(_conn: Any, cursor: Any, statement: str, *_args: Any) -> None:
            if statement.startswith("UPDATE fernvault_secrets") and not killed:
                killed.append(cursor.connection.info.backend_pid)
                _terminate(killed[0])

        event.listen(vault._db.engine, "before_cursor_execute", kill_before_update)
        try:
            with pytest.raises(StorageError) as caught:
                vault.update_secret(secret_id, "value-new")
        finally:
            event.remove(vault._db.engine, "before_cursor_execute", kill_before_update)
        assert killed
        _assert_storage_error(caught.value, "update", pg_url)
        assert dbutil.snapshot(pg_url) == before

        vault.update_secret(secret_id, "value-new")
        assert vault.get_secret(secret_id) == "value-new"


def test_pg_session_killed_while_store_waits(pg_url: str, tmp_path: Path) -> None:
    # A store is one INSERT in autocommit mode. A session the server terminates
    # ran nothing, so the store reconnects and runs once more: exactly one row.
    conninfo = PG_ADMIN_URL.rpartition("/")[0].replace("postgresql+psycopg", "postgresql")
    with SecretManager(tmp_path / "vault.key", pg_url) as vault:
        vault.store_secret("kept", "value-kept")
        with psycopg.connect(f"{conninfo}/{pg_url.rpartition('/')[2]}") as blocker:
            blocker.execute("LOCK TABLE fernvault_secrets IN ACCESS EXCLUSIVE MODE")

            def kill_waiting_insert() -> None:
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    with psycopg.connect(f"{conninfo}/postgres", autocommit=True) as admin:
                        pids = admin.execute(
                            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                            "AND query LIKE 'INSERT INTO fernvault_secrets%%'"
                        ).fetchall()
                        if pids:
                            admin.execute("SELECT pg_terminate_backend(%s)", (pids[0][0],))
                            time.sleep(0.2)
                            blocker.rollback()  # release the lock for the second attempt
                            return
                    time.sleep(0.05)

            killer = threading.Thread(target=kill_waiting_insert)
            killer.start()
            vault.store_secret("new", "value-new")
            killer.join(timeout=60)
        names = dbutil.fetch(pg_url, "SELECT name FROM fernvault_secrets ORDER BY name")
        assert names == [("kept",), ("new",)]
        assert vault.get_secret_by_name("new") == "value-new"


def test_pg_connection_killed_during_rotation(pg_url: str, tmp_path: Path) -> None:
    with SecretManager(tmp_path / "vault.key", pg_url, batch_size=2) as vault:
        ids = {vault.store_secret(f"s{index}", f"value-{index}"): index for index in range(6)}
        before = dbutil.snapshot(pg_url)
        killed: list[int] = []

        def kill_after_first_batch(done: int, _total: int) -> None:
            if not killed:
                killed.append(_terminate_all(pg_url))

        with pytest.raises(StorageError) as caught:
            vault.rotate_data_key(kill_after_first_batch)
        assert killed and killed[0] >= 1
        assert "rotation failed on " in str(caught.value)
        assert dbutil.snapshot(pg_url) == before

        for secret_id, index in ids.items():
            assert vault.get_secret(secret_id) == f"value-{index}"
        vault.rotate_key()
        assert vault.verify().ok


def test_pg_idle_connections_killed(pg_url: str, tmp_path: Path) -> None:
    with SecretManager(tmp_path / "vault.key", pg_url) as vault:
        secret_id = vault.store_secret("kept", "value-kept")
        assert vault.get_secret(secret_id) == "value-kept"
        assert _terminate_all(pg_url) >= 1
        assert vault.get_secret(secret_id) == "value-kept"
        assert _terminate_all(pg_url) >= 1
        vault.store_secret("after", "value-after")
        assert vault.get_secret_by_name("after") == "value-after"


def test_pg_read_only_database(pg_url: str, tmp_path: Path) -> None:
    database = pg_url.rpartition("/")[2]
    with SecretManager(tmp_path / "vault.key", pg_url) as vault:
        secret_id = vault.store_secret("kept", "value-kept")
        before = dbutil.snapshot(pg_url)
    dbutil.execute(
        PG_ADMIN_URL, f'ALTER DATABASE "{database}" SET default_transaction_read_only = on'
    )
    try:
        with SecretManager(tmp_path / "vault.key", pg_url) as vault:
            assert vault.get_secret(secret_id) == "value-kept"
            with pytest.raises(StorageError, match="read-only transaction") as caught:
                vault.store_secret("new", "value-new")
            _assert_storage_error(caught.value, "store", pg_url)
    finally:
        dbutil.execute(
            PG_ADMIN_URL, f'ALTER DATABASE "{database}" RESET default_transaction_read_only'
        )
    assert dbutil.snapshot(pg_url) == before
    with SecretManager(tmp_path / "vault.key", pg_url) as vault:
        vault.store_secret("new", "value-new")
        assert vault.get_secret_by_name("new") == "value-new"


def test_pg_constraint_error_hides_detail(pg_url: str, tmp_path: Path) -> None:
    with SecretManager(tmp_path / "vault.key", pg_url) as vault:
        vault.store_secret("taken-name-in-detail", "v")
        statement = (
            "INSERT INTO fernvault_secrets (id, name, token, key_id, metadata, created_at, "
            "updated_at) SELECT :id, name, token, key_id, metadata, created_at, updated_at "
            "FROM fernvault_secrets"
        )
        with pytest.raises(StorageError) as caught:
            vault._db.run("copy", lambda c: c.execute(text(statement), {"id": "f" * 32}))
    assert "taken-name-in-detail" not in str(caught.value)
    assert "DETAIL" not in str(caught.value)
