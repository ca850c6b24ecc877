"""The keys of one open vault in this process: master keys and data keys.

``VaultKeys`` contains the master key ring, the cache of unwrapped data keys
and the data key that new writes use. It reloads the data keys when another
process has rotated them, re-reads the key file when another process has
rotated the master key, and retries a write whose data key a rotation
retired meanwhile.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TypeVar

from cryptography.fernet import Fernet
from sqlalchemy import Connection

from . import keys as keyfile
from . import repository as repo
from .crypto import DataKeyCache, new_data_key
from .database import ConstraintViolation, Database, sqlite_url_for
from .errors import (
    IntegrityError,
    InvalidInputError,
    KeyFileError,
    RotationConflictError,
    StorageError,
    WrongMasterKeyError,
)
from .keys import MasterKeyRing
from .schema import lock_schema

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

_LOCK_RETRIES = 20


def private_sqlite_url(key_file: Path) -> str:
    """Return the default vault URL, a SQLite file beside the key file with the same stem.

    Creates the folder 0700 and the database file 0600 if they are missing,
    before SQLite would create the file with its default mode.
    """
    database_file = key_file.with_suffix(".db")
    if database_file == key_file:
        raise InvalidInputError(
            f"key file {key_file} ends in .db, the name of its default database; "
            "rename the key file or pass a database URL"
        )
    try:
        keyfile.make_private_folder(key_file.parent)
        fd = os.open(database_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.close(fd)
    except FileExistsError:
        pass
    except OSError as exc:
        raise StorageError(
            f"cannot create database file {database_file}: {exc.strerror or type(exc).__name__}"
        ) from exc
    return sqlite_url_for(key_file)


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


def _with_key(
    work: Callable[[Connection, str, Fernet], _T], key_id: str, fernet: Fernet
) -> Callable[[Connection], _T]:
    return lambda connection: work(connection, key_id, fernet)


def open_key_file(key_file: Path, database: Database) -> MasterKeyRing:
    """Read the key file, or create it when the database contains no data key yet.

    Raises KeyFileError when the file is missing but the database contains data
    keys: fernvault never creates a new key over existing data.
    """
    if key_file.exists():
        return keyfile.read_key_file(key_file)
    existing = database.run("key check", repo.all_data_keys, write=False)
    if existing and key_file.exists():
        # Another process opening the same new vault created the key file,
        # then its data key, between the check above and the query.
        return keyfile.read_key_file(key_file)
    if existing:
        message = (
            f"key file {key_file} does not exist, but {database.display_url} holds data keys "
            f"wrapped by master key {existing[0].master_key_id}; restore that key file "
            "(fernvault never creates a new key over existing data)"
        )
        logger.error("%s", message)
        raise KeyFileError(message)
    return keyfile.create_key_file(key_file)


class VaultKeys:
    """The master key ring, the unwrapped data keys and the active data key of a vault."""

    def __init__(self, database: Database, ring: MasterKeyRing) -> None:
        self._db = database
        self.ring = ring
        self.cache = DataKeyCache()
        # The data key new writes use, as last seen. A write under a key that
        # another process has since retired fails its foreign key check, and
        # the write is retried after reloading the keys.
        self.active: tuple[str, Fernet | None] = ("", None)

    @property
    def url(self) -> str:
        return self._db.display_url

    def ensure_data_key(self) -> None:
        if self._db.run("data key check", repo.active_data_key, write=False) is not None:
            return

        def create(connection: Connection) -> None:
            lock_schema(connection)
            if repo.active_data_key(connection) is not None:
                return
            key_id, key = new_data_key()
            wrapped, master_key_id = self.ring.wrap(key, data_key_id=key_id)
            repo.insert_data_key(connection, key_id, wrapped, master_key_id, utc_now())
            logger.info("created data key %s in %s", key_id, self.url)

        self._db.run("data key creation", create)

    def reload(self, connection: Connection | None = None) -> None:
        """Unwrap every data key of the database into the cache, forgetting deleted ones.

        A data key row that was altered is marked damaged, so only the secrets
        under it fail to read. Raises WrongMasterKeyError when the master keys
        unwrap none of the data keys.
        """
        if connection is None:
            rows = self._db.run("data key load", repo.all_data_keys, write=False)
        else:
            rows = repo.all_data_keys(connection)
        known = {master_key.key_id for master_key in self.ring.keys}
        if any(row.master_key_id not in known and self.cache.get(row.id) is None for row in rows):
            self.refresh_master_keys()
        unwrapped = 0
        wrong_master_key: WrongMasterKeyError | None = None
        for row in rows:
            if self.cache.get(row.id) is not None:
                unwrapped += 1
                continue
            try:
                key = self.ring.unwrap(
                    row.wrapped_key, row.master_key_id, data_key_id=row.id, where=self.url
                )
            except WrongMasterKeyError as exc:
                wrong_master_key = wrong_master_key or exc
                self.cache.mark_damaged(row.id, str(exc))
                continue
            except IntegrityError as exc:
                self.cache.mark_damaged(row.id, str(exc))
                continue
            self.cache.put(row.id, key)
            unwrapped += 1
        self.cache.retain({row.id for row in rows})
        if wrong_master_key is not None and unwrapped == 0:
            raise wrong_master_key
        if rows:
            # all_data_keys returns the newest key first: the one new writes use.
            self.active = (rows[0].id, self.cache.get(rows[0].id))
        logger.debug("loaded %d data keys from %s", len(rows), self.url)

    def refresh_master_keys(self) -> None:
        """Re-read the key file, which a master key rotation in another process may have changed.

        Keys from FERNVAULT_MASTER_KEY cannot change while the process runs.
        """
        if self.ring.path is not None:
            self.ring = keyfile.read_key_file(self.ring.path)
            logger.debug("re-read master keys from %s", self.ring.source)

    def fernet_for(self, key_id: str, connection: Connection | None = None) -> Fernet | None:
        fernet = self.cache.get(key_id)
        if fernet is None and self.cache.damage(key_id) is None:
            self.reload(connection)
            fernet = self.cache.get(key_id)
        return fernet

    def write_with_active_key(
        self, operation: str, work: Callable[[Connection, str, Fernet], _T]
    ) -> _T:
        """Run ``work`` in a write transaction with the active data key id and key."""
        return self.with_active_key(
            lambda key_id, fernet: self._db.run(operation, _with_key(work, key_id, fernet))
        )

    def with_active_key(self, attempt: Callable[[str, Fernet], _T]) -> _T:
        """Call ``attempt`` with the active data key id and key until no rotation interferes.

        No lock is taken on the data key row: the foreign key check on the
        secret row does it (PostgreSQL locks the referenced key row FOR KEY
        SHARE, which waits for a rotation's FOR UPDATE). If a rotation has
        retired the key, the check fails; the keys are reloaded and
        ``attempt`` runs again under the new active key.
        """
        for _ in range(_LOCK_RETRIES):
            key_id, fernet = self.active
            if fernet is None:
                self.reload()
                key_id, fernet = self.active
                if fernet is None:
                    message = self.cache.damage(key_id) or f"no usable data key in {self.url}"
                    logger.error("%s", message)
                    raise IntegrityError(message)
            try:
                return attempt(key_id, fernet)
            except ConstraintViolation as exc:
                if exc.kind != "foreign key":
                    raise
                logger.info("data key %s was retired by a rotation; reloading keys", key_id)
                self.reload()
        message = f"the active data key of {self.url} kept changing; try again"
        logger.error("%s", message)
        raise RotationConflictError(message)

    def locked_active_key(self, connection: Connection, lock: repo.RowLock) -> tuple[str, Fernet]:
        """Lock the active data key row in ``connection`` and return it, unwrapped.

        On PostgreSQL a rotation that commits while this statement waits deletes
        the row it waited for, and the statement returns nothing; it is repeated
        with a fresh snapshot, which includes the new key.
        """
        for _ in range(_LOCK_RETRIES):
            row = repo.active_data_key(connection, lock)
            if row is not None:
                fernet = self.fernet_for(row.id, connection)
                if fernet is None:
                    message = (
                        self.cache.damage(row.id)
                        or f"data key {row.id} in {self.url} could not be loaded"
                    )
                    logger.error("%s", message)
                    raise IntegrityError(message)
                return row.id, fernet
        message = f"the active data key of {self.url} kept changing; try again"
        logger.error("%s", message)
        raise RotationConflictError(message)

    def raise_if_damaged(self, secret_id: str, key_id: str) -> None:
        """Raise IntegrityError naming the secret when its data key row was altered."""
        damage = self.cache.damage(key_id)
        if damage is not None:
            message = f"secret {secret_id} cannot be decrypted: {damage}"
            logger.error("%s", message)
            raise IntegrityError(message, secret_id=secret_id)

    def rotate_master_key(self, *, generate: bool = True, prune: bool = True) -> str:
        """Re-wrap every data key under a new master key; return the new master key id.

        With a key file and ``generate``, a new key is first written as the
        file's first line with the old keys kept below it (atomic replace),
        then the data keys are re-wrapped in one transaction, and only after
        the commit, with ``prune``, the keys no data key needs are removed.
        A crash at any point leaves a key file that opens the vault. Without
        ``generate`` (and always with FERNVAULT_MASTER_KEY) the current first
        key is the new one.
        """
        if self.ring.path is None:
            return self._rotate_master_key(generate=generate, prune=prune)
        # Another rotation or `fernvault key` command on this key file waits.
        with keyfile.key_file_lock(self.ring.path):
            return self._rotate_master_key(generate=generate, prune=prune)

    def _rotate_master_key(self, *, generate: bool, prune: bool) -> str:
        self.refresh_master_keys()
        ring = self.ring
        if generate:
            if ring.path is None:
                raise KeyFileError(
                    f"cannot add a key to {ring.source}: put the new key first in "
                    f"{keyfile.MASTER_KEY_ENV} and call rotate_master_key(generate=False)"
                )
            ring = keyfile.replace_key_file(ring.path, [keyfile.MasterKey.generate(), *ring.keys])
            self.ring = ring
            logger.info("added master key %s to %s", ring.primary.key_id, ring.source)

        def work(connection: Connection) -> int:
            self.locked_active_key(connection, "update")
            rows = repo.all_data_keys(connection)
            rewrapped = []
            for row in rows:
                key = ring.unwrap(
                    row.wrapped_key, row.master_key_id, data_key_id=row.id, where=self.url
                )
                wrapped, master_key_id = ring.wrap(key, data_key_id=row.id)
                rewrapped.append(repo.DataKeyRow(row.id, wrapped, master_key_id))
            repo.rewrap_data_keys(connection, rewrapped)
            return len(rewrapped)

        count = self._db.run("master key rotation", work)
        logger.info(
            "re-wrapped %d data keys of %s under master key %s",
            count,
            self.url,
            ring.primary.key_id,
        )
        if prune and ring.path is not None and len(ring.keys) > 1:
            self.ring = keyfile.replace_key_file(ring.path, [ring.primary])
            logger.info("removed %d old master keys from %s", len(ring.keys) - 1, ring.source)
        return ring.primary.key_id

    def __repr__(self) -> str:
        return f"VaultKeys(master_keys={self.ring.source!r}, cache={self.cache!r})"
