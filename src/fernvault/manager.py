"""SecretManager: the vault's public operations, one transaction each."""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet
from sqlalchemy import Connection, Select

from . import keys as keyfile
from . import repository as repo
from .crypto import new_data_key, reseal_page, seal, seal_page, unseal
from .database import URL_ENV, ConstraintViolation, Database
from .errors import (
    DecryptionError,
    IntegrityError,
    InvalidInputError,
    InvalidTypeError,
    SecretExistsError,
    SecretNotFoundError,
)
from .fernet_pages import PageCipher
from .rotation import reencrypt_all
from .schema import ensure_schema
from .validation import check_metadata, check_name, check_secret_id, check_value
from .vaultkeys import VaultKeys, open_key_file, private_sqlite_url, utc_now

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int], None]
"""Called as ``progress(done, total)`` after each batch of a rotation or verification."""

DEFAULT_BATCH_SIZE = 1000
MAX_BATCH_SIZE = 1_000_000  # a page is one query's LIMIT: keep it far below 64 bits


@dataclass(frozen=True)
class RotationResult:
    """Summary of a data key rotation."""

    key_id: str
    secrets: int
    seconds: float


@dataclass
class VerifyReport:
    """Outcome of decrypting every secret: counts per data key and each failure."""

    total: int = 0
    per_key: dict[str, int] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


class SecretManager:
    """A vault of named secrets, encrypted with Fernet and stored in SQL.

    ``key_file`` defaults to FERNVAULT_KEY_FILE or ``~/.codomyrmex/secrets.key``;
    FERNVAULT_MASTER_KEY (comma-separated keys, primary first) replaces the key
    file when no ``key_file`` argument is given. ``url`` defaults to
    FERNVAULT_URL or a SQLite file beside the key file with the same stem.

    Opening creates the schema of an empty database and, when the database
    contains no data key yet, a key file if none exists. It never creates a key
    file for a database that already holds data keys. Raises MasterKeyError
    when the master key does not open the vault, SchemaError when the schema
    is out of date (unless ``auto_upgrade``), StorageError when the database
    cannot be reached.
    """

    def __init__(
        self,
        key_file: str | os.PathLike[str] | None = None,
        url: str | None = None,
        *,
        auto_upgrade: bool = False,
        busy_timeout: float = 30.0,
        batch_size: int = DEFAULT_BATCH_SIZE,
    ) -> None:
        if not isinstance(batch_size, int) or isinstance(batch_size, bool):
            raise InvalidTypeError(f"batch_size must be an int, not {type(batch_size).__name__}")
        if not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise InvalidInputError(
                f"batch_size must be between 1 and {MAX_BATCH_SIZE:,}, got {batch_size}"
            )
        env_key = os.environ.get(keyfile.MASTER_KEY_ENV) if key_file is None else None
        self.key_file = (
            Path(key_file).expanduser() if key_file is not None else keyfile.default_key_file()
        )
        self.batch_size = batch_size

        url = url or os.environ.get(URL_ENV) or private_sqlite_url(self.key_file)
        self._db = Database(url, busy_timeout=busy_timeout)
        try:
            ensure_schema(self._db, auto_upgrade=auto_upgrade)
            if env_key:
                ring = keyfile.ring_from_env(env_key)
            else:
                ring = open_key_file(self.key_file, self._db)
            self._keys = VaultKeys(self._db, ring)
            self._keys.ensure_data_key()
            self._keys.reload()
        except BaseException:
            self._db.dispose()
            raise
        logger.debug("opened vault %s with master keys from %s", self.url, self._keys.ring.source)

    # -- opening --------------------------------------------------------

    @property
    def url(self) -> str:
        """The database URL with its password hidden."""
        return self._db.display_url

    # -- secrets ----------------------------------------------------------

    def store_secret(self, name: str, value: str, metadata: Mapping[str, Any] | None = None) -> str:
        """Store a new secret and return its id (32 lowercase hex characters).

        Raises SecretExistsError when the name is taken (use ``update_secret``
        to change a value), InvalidInputError for a rejected name, value or metadata.
        """
        stored = self._store_many([(check_name(name), value)], check_metadata(metadata), False)
        return stored[name]

    def store_secrets(
        self,
        items: Mapping[str, str] | Iterable[tuple[str, str]],
        metadata: Mapping[str, Any] | None = None,
        *,
        skip_existing: bool = False,
    ) -> dict[str, str]:
        """Store many new secrets in one transaction; return ``{name: id}`` of those stored.

        Raises SecretExistsError listing the taken names and stores nothing,
        unless ``skip_existing``, which stores the others and leaves the taken
        names out of the result.
        """
        pairs = list(items.items()) if isinstance(items, Mapping) else list(items)
        for pair in pairs:
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise InvalidTypeError("items must be a dict or (name, value) pairs")
        checked = [(check_name(name), value) for name, value in pairs]
        names = [name for name, _ in checked]
        if len(set(names)) != len(names):
            raise SecretExistsError("the same secret name appears twice in one batch")
        return self._store_many(checked, check_metadata(metadata), skip_existing)

    def _store_many(
        self, pairs: list[tuple[str, str]], metadata: dict[str, Any], skip_existing: bool
    ) -> dict[str, str]:
        for _, value in pairs:
            check_value(value)
        ids = {name: secrets.token_hex(16) for name, _ in pairs}

        def rows_for(
            key_id: str, fernet: Fernet, chunk: list[tuple[str, str]], taken: set[str]
        ) -> list[dict[str, Any]]:
            new_rows = [(ids[name], name, value) for name, value in chunk if name not in taken]
            cipher = self._keys.cache.page_cipher(key_id)
            if cipher is not None:
                tokens = seal_page(cipher, new_rows)
            else:
                # Another thread's reload dropped the key from the cache: a rotation
                # retired it, so the insert fails its foreign key check and retries.
                tokens = [seal(fernet, *row) for row in new_rows]
            return [
                {"id": secret_id, "name": name, "token": token}
                for (secret_id, name, _), token in zip(new_rows, tokens, strict=True)
            ]

        def shared_for(key_id: str) -> dict[str, Any]:
            now = utc_now()
            return {"key_id": key_id, "metadata": metadata, "created_at": now, "updated_at": now}

        def insert_one(key_id: str, fernet: Fernet) -> dict[str, str]:
            # One INSERT is its own transaction; a taken name fails its unique constraint.
            (row,) = rows_for(key_id, fernet, pairs, set())
            self._db.write_one("store", repo.INSERT_SECRET, {**row, **shared_for(key_id)})
            return {row["name"]: row["id"]}

        def insert_batch(connection: Connection, key_id: str, fernet: Fernet) -> dict[str, str]:
            # Without skip_existing a taken name fails the unique constraint and
            # rolls the whole batch back, so only skipping needs to look first.
            taken = set()
            if skip_existing:
                taken = repo.existing_names(connection, [name for name, _ in pairs])
            stored: dict[str, str] = {}
            # Encrypt and insert a page at a time, so memory stays bounded by the page.
            for start in range(0, len(pairs), self.batch_size):
                rows = rows_for(key_id, fernet, pairs[start : start + self.batch_size], taken)
                self._db.executemany(connection, repo.INSERT_SECRET, rows, shared_for(key_id))
                stored.update((row["name"], row["id"]) for row in rows)
            return stored

        try:
            if len(pairs) == 1 and not skip_existing:
                stored = self._keys.with_active_key(insert_one)
            else:
                stored = self._keys.write_with_active_key("store", insert_batch)
        except ConstraintViolation as exc:
            if exc.kind != "unique":
                raise
            names = [name for name, _ in pairs]
            taken = self._db.run("lookup", lambda c: repo.existing_names(c, names), write=False)
            # An empty set means another writer took a name and deleted it since.
            raise self._exists_error(sorted(taken or names)) from None
        if len(stored) == 1:
            for name, secret_id in stored.items():
                logger.info("stored secret %s (%s)", secret_id, name)
        else:
            logger.info("stored %d secrets in one transaction", len(stored))
            for name, secret_id in stored.items():
                logger.debug("stored secret %s (%s)", secret_id, name)
        return stored

    def _exists_error(self, names: list[str]) -> SecretExistsError:
        shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
        message = f"secret already exists: {shown}; use update to change a value"
        logger.error("%s", message)
        return SecretExistsError(message)

    def update_secret(
        self, secret_id: str, value: str, metadata: Mapping[str, Any] | None = None
    ) -> None:
        """Replace the value of an existing secret, keeping its id and name.

        ``metadata``, when given, replaces the old metadata. Raises SecretNotFoundError.
        """
        check_value(value)
        new_metadata = check_metadata(metadata) if metadata is not None else None
        if not check_secret_id(secret_id):
            # Not quoted: a value passed by mistake in place of the id would be shown.
            raise self._not_found("secret with that id (ids are 32 lowercase hex characters)")

        def work(connection: Connection, key_id: str, fernet: Fernet) -> None:
            row = repo.secret_by_id(connection, secret_id)
            if row is None:
                raise self._not_found(f"secret {secret_id}")
            repo.update_secret(
                connection,
                secret_id,
                token=seal(fernet, row.id, row.name, value),
                key_id=key_id,
                updated_at=utc_now(),
                metadata=new_metadata,
            )

        self._keys.write_with_active_key("update", work)
        logger.info("updated secret %s", secret_id)

    def update_secret_by_name(
        self, name: str, value: str, metadata: Mapping[str, Any] | None = None
    ) -> str:
        """Replace the value of the secret named ``name``; return its unchanged id."""
        check_name(name)
        check_value(value)
        if metadata is not None:
            check_metadata(metadata)
        secret_id = self._db.run("lookup", lambda c: repo.secret_id_for_name(c, name), write=False)
        if secret_id is None:
            raise self._not_found(f"secret named {name!r}")
        self.update_secret(secret_id, value, metadata)
        return secret_id

    def _not_found(self, what: str) -> SecretNotFoundError:
        message = f"{what} not found in {self.url}"
        logger.error("%s", message)
        return SecretNotFoundError(message)

    def get_secret(self, secret_id: str) -> str | None:
        """Return the value of the secret with this id, or None if there is none.

        Raises IntegrityError when the row was tampered with.
        """
        if not check_secret_id(secret_id):
            return None
        return self._read(repo.SECRET_BY_ID, {"secret_id": secret_id})

    def get_secret_by_name(self, name: str) -> str | None:
        """Return the value of the secret named ``name``, or None if there is none."""
        check_name(name)
        return self._read(repo.SECRET_BY_NAME, {"name": name})

    def _read(self, statement: Select[Any], values: dict[str, str]) -> str | None:
        # A row under an unknown key id means another process rotated: reload
        # the keys, and read the row again in case it was rotated meanwhile.
        stale: tuple[str, str] | None = None
        for _ in range(3):
            row = self._db.read_one("read", statement, values)
            if row is None:
                return None
            secret_id, name, token, key_id = row
            fernet = self._keys.fernet_for(key_id)
            if fernet is None:
                self._keys.raise_if_damaged(secret_id, key_id)
                stale = (secret_id, key_id)
                continue
            try:
                return unseal(fernet, token, secret_id, name)
            except IntegrityError:
                logger.error("secret %s failed its integrity check", secret_id)
                raise
        assert stale is not None
        message = f"secret {stale[0]} refers to data key {stale[1]}, which is not in {self.url}"
        logger.error("%s", message)
        raise IntegrityError(message, secret_id=stale[0])

    def list_secrets(self) -> list[dict[str, Any]]:
        """Return id, name, created_at, updated_at (ISO 8601, UTC) and metadata of each secret.

        Values and tokens are never part of the result.
        """
        try:
            rows = self._db.run("list", repo.list_secrets, write=False)
            return [
                {
                    "id": row["id"],
                    "name": row["name"],
                    "created_at": row["created_at"].isoformat(),
                    "updated_at": row["updated_at"].isoformat(),
                    "metadata": row["metadata"],
                }
                for row in rows
            ]
        except (ValueError, TypeError, AttributeError) as exc:
            # SQLAlchemy parses metadata and timestamps while it fetches, so one
            # row altered in the database makes the whole listing fail.
            message = (
                f"cannot list the secrets of {self.url}: a row holds metadata or a timestamp "
                f"that does not parse ({type(exc).__name__}); it was altered in the database"
            )
            logger.error("%s", message)
            raise IntegrityError(message) from None

    def delete_secret(self, secret_id: str) -> bool:
        """Delete the secret with this id; return False when there was none."""
        if not check_secret_id(secret_id):
            return False

        # One statement, no data key lock: a rotation that reaches a deleted row skips it.
        deleted = self._db.write_one("delete", repo.DELETE_SECRET, {"secret_id": secret_id}) == 1
        if deleted:
            logger.info("deleted secret %s", secret_id)
        return deleted

    def delete_secret_by_name(self, name: str) -> bool:
        """Delete the secret named ``name``; return False when there was none."""
        check_name(name)
        secret_id = self._db.run("lookup", lambda c: repo.secret_id_for_name(c, name), write=False)
        return secret_id is not None and self.delete_secret(secret_id)

    # -- keys -------------------------------------------------------------

    def rotate_key(self, progress: ProgressCallback | None = None) -> str:
        """Re-encrypt every secret under a new data key in one transaction; return its id.

        The old data key is deleted in the same transaction. If any secret
        cannot be decrypted, or the database fails, the transaction rolls back
        and the vault is exactly as it was; the IntegrityError names the secret.
        """
        return self.rotate_data_key(progress).key_id

    def rotate_data_key(self, progress: ProgressCallback | None = None) -> RotationResult:
        """Rotate the data key like ``rotate_key`` and return a summary."""
        started = time.monotonic()
        key_id, key = new_data_key()
        new_fernet = Fernet(key)
        new_cipher = PageCipher(key)

        def work(connection: Connection) -> int:
            old_key_id, _ = self._keys.locked_active_key(connection, "update")
            # Wrap under the key file's primary key as it is now, under the lock. A
            # master key rotation writes its new key first in the file before it
            # re-wraps under this same lock. If it committed first, the re-read
            # finds its key, and if this rotation commits first, it re-wraps this
            # data key too. Reading before the lock could wrap under a key that the
            # other rotation has removed from the file by the time this commits.
            self._keys.refresh_master_keys()
            # Load every key now: the re-encryption loop must not use the connection.
            self._keys.reload(connection)
            total = repo.count_secrets(connection)
            wrapped, master_key_id = self._keys.ring.wrap(key, data_key_id=key_id)
            repo.insert_data_key(connection, key_id, wrapped, master_key_id, utc_now())
            done = reencrypt_all(
                connection,
                self._db,
                key_id=key_id,
                batch_size=self.batch_size,
                reseal_page=lambda rows: self._reseal_for_rotation(rows, new_cipher),
                total=total,
                progress=progress,
            )
            if done < total:
                # Fewer rows than counted: a concurrent delete, or rows the pages
                # never reached because their id or rowid was altered.
                _raise_if_not_rotated(connection, key_id)
            removed = repo.delete_data_keys_except(connection, key_id)
            logger.debug("rotation replaced data key %s and removed %d keys", old_key_id, removed)
            return done

        count = self._db.run("rotation", work)
        self._keys.cache.put(key_id, key)
        self._keys.cache.retain({key_id})
        self._keys.active = (key_id, new_fernet)
        seconds = time.monotonic() - started
        logger.info(
            "rotated data key of %s: %d secrets re-encrypted under %s in %.2f s",
            self.url,
            count,
            key_id,
            seconds,
        )
        return RotationResult(key_id=key_id, secrets=count, seconds=seconds)

    def _reseal_for_rotation(
        self, rows: Sequence[repo.SecretRow], new_cipher: PageCipher
    ) -> list[str]:
        """Re-encrypt a page of rows under ``new_cipher``, one batch per data key among them."""
        by_key: dict[str, list[int]] = {}
        for index, row in enumerate(rows):
            by_key.setdefault(row.key_id, []).append(index)
        tokens = [""] * len(rows)
        for old_key_id, indexes in by_key.items():
            try:
                cipher = self._keys.cache.page_cipher(old_key_id)
                if cipher is None:
                    first = rows[indexes[0]]
                    self._keys.raise_if_damaged(first.id, old_key_id)
                    raise IntegrityError(
                        f"secret {first.id} refers to data key {old_key_id}, which is missing",
                        secret_id=first.id,
                    )
                page = [(rows[i].token, rows[i].id, rows[i].name) for i in indexes]
                resealed = reseal_page(cipher, new_cipher, page)
            except DecryptionError as exc:
                failure = _rotation_failure(rows, exc)
            else:
                for index, token in zip(indexes, resealed, strict=True):
                    tokens[index] = token
                continue
            # Raised outside the except block, so that the error has no
            # __context__ whose traceback would keep the page's frames alive.
            logger.error("%s", failure)
            raise failure
        return tokens

    def rotate_master_key(self, *, generate: bool = True, prune: bool = True) -> str:
        """Re-wrap every data key under a new master key; return the new master key id.

        See ``VaultKeys.rotate_master_key`` for the steps and their crash safety.
        """
        return self._keys.rotate_master_key(generate=generate, prune=prune)

    def verify(self, progress: ProgressCallback | None = None) -> VerifyReport:
        """Decrypt every secret and report counts per data key and each failure."""
        self._keys.reload()
        report = VerifyReport()

        def work(connection: Connection) -> None:
            total = repo.count_secrets(connection)
            for page in repo.secret_pages(connection, self.batch_size):
                for row in page:
                    self._verify_row(connection, row, report)
                if progress is not None:
                    progress(report.total, total)

        self._db.run("verify", work, write=False)
        logger.info(
            "verified %d secrets of %s: %d failed", report.total, self.url, len(report.failures)
        )
        return report

    def _verify_row(
        self, connection: Connection, row: repo.SecretRow, report: VerifyReport
    ) -> None:
        report.total += 1
        fernet = self._keys.fernet_for(row.key_id, connection)
        try:
            if fernet is None:
                self._keys.raise_if_damaged(row.id, row.key_id)
                raise IntegrityError(
                    f"secret {row.id} refers to data key {row.key_id}, which is not in {self.url}",
                    secret_id=row.id,
                )
            unseal(fernet, row.token, row.id, row.name)
        except DecryptionError as exc:
            report.failures.append({"id": row.id, "name": row.name, "error": str(exc)})
            return
        report.per_key[row.key_id] = report.per_key.get(row.key_id, 0) + 1

    # -- lifetime ---------------------------------------------------------

    def close(self) -> None:
        """Release the database connections; a later call opens new ones."""
        self._db.dispose()

    def __enter__(self) -> SecretManager:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SecretManager(url={self.url!r}, master_keys={self._keys.ring.source!r})"


def _rotation_failure(rows: Sequence[repo.SecretRow], error: DecryptionError) -> IntegrityError:
    """Return the error that aborts a rotation at the row that ``error`` names."""
    failed = next((row for row in rows if row.id == error.secret_id), None)
    secret = "a secret" if failed is None else f"secret {failed.id} ({failed.name})"
    return IntegrityError(
        f"rotation aborted and rolled back: {secret} cannot be decrypted ({error}); "
        "no secret was changed",
        secret_id=error.secret_id,
    )


def _raise_if_not_rotated(connection: Connection, key_id: str) -> None:
    """Raise IntegrityError naming the secrets that the rotation to ``key_id`` did not reach."""
    missed = repo.secrets_not_under_key(connection, key_id, limit=5)
    if not missed:
        return
    listed = ", ".join(f"{secret_id!r} ({name})" for secret_id, name in missed)
    message = (
        f"rotation aborted and rolled back: secrets {listed} were not re-encrypted, because "
        "their id or row position was altered in the database; no secret was changed"
    )
    logger.error("%s", message)
    first_id = missed[0][0]
    raise IntegrityError(message, secret_id=first_id if isinstance(first_id, str) else None)
