"""Master keys: parse, create and atomically rewrite the key file.

The key file holds one Fernet key per line. The first key wraps new data keys
and every key is tried for unwrapping, so a master key rotation can keep the
old key on a later line until the database no longer needs it. A file written
by the earlier in-memory SecretManager (one key, no newline) is valid.
"""

from __future__ import annotations

import base64
import fcntl
import glob
import hashlib
import logging
import os
import re
import secrets
import stat
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from .errors import IntegrityError, KeyFileError, WrongMasterKeyError

logger = logging.getLogger(__name__)

MASTER_KEY_ENV = "FERNVAULT_MASTER_KEY"
KEY_FILE_ENV = "FERNVAULT_KEY_FILE"

# A Fernet key is 32 bytes in URL-safe base64: 43 characters and one "=".
# base64.urlsafe_b64decode skips characters outside the alphabet, so the
# shape is checked first to reject garbage that would decode by accident.
_FERNET_KEY_SHAPE = re.compile(r"[A-Za-z0-9_-]{43}=")

# A wrapped data key is a Fernet token under the master key whose plaintext is
# version (1 byte, 0x01) | data key id (32 ASCII bytes) | data key (44 bytes of
# base64). The id inside the token binds it to its row: a wrapped key copied
# onto another data key row fails to unwrap with an IntegrityError.
_WRAP_VERSION = b"\x01"


class KeyFilePermissionWarning(UserWarning):
    """An existing key file can be read by its group or by other users."""


def default_key_file() -> Path:
    """Return the key file path used when neither argument nor environment names one."""
    configured = os.environ.get(KEY_FILE_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".codomyrmex" / "secrets.key"


@dataclass(frozen=True)
class MasterKey:
    """One master key and its fingerprint, which is safe to store and to log."""

    key_id: str
    fernet: Fernet = field(repr=False, compare=False)
    raw: bytes = field(repr=False)

    @classmethod
    def from_text(cls, text: str) -> MasterKey:
        """Build a master key from its base64 text, which must already be stripped."""
        if not _FERNET_KEY_SHAPE.fullmatch(text):
            raise ValueError("not a Fernet key: expected 44 characters of URL-safe base64")
        raw = text.encode("ascii")
        # The fingerprint hashes the decoded key bytes, so every spelling of one
        # key gets the same id, and the id reveals nothing usable about the key.
        decoded = base64.urlsafe_b64decode(raw)
        key_id = hashlib.sha256(b"fernvault master key\0" + decoded).hexdigest()[:16]
        return cls(key_id=key_id, fernet=Fernet(raw), raw=raw)

    @classmethod
    def generate(cls) -> MasterKey:
        return cls.from_text(Fernet.generate_key().decode("ascii"))

    def __repr__(self) -> str:
        return f"MasterKey(key_id={self.key_id!r}, key=<redacted>)"


@dataclass(frozen=True)
class MasterKeyRing:
    """The configured master keys, primary first, and where they came from.

    ``source`` is the key file path or the environment variable name, for messages.
    """

    keys: tuple[MasterKey, ...]
    source: str
    path: Path | None = None

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("a master key ring needs at least one key")

    @property
    def primary(self) -> MasterKey:
        return self.keys[0]

    def wrap(self, data_key: bytes, *, data_key_id: str) -> tuple[str, str]:
        """Encrypt a data key bound to its id under the primary master key.

        Returns the wrapped key and the primary master key's id.
        """
        payload = _WRAP_VERSION + data_key_id.encode("ascii", errors="replace") + data_key
        return self.primary.fernet.encrypt(payload).decode("ascii"), self.primary.key_id

    def unwrap(self, wrapped: str, master_key_id: str, *, data_key_id: str, where: str) -> bytes:
        """Decrypt a wrapped data key, trying the key named by ``master_key_id`` first.

        Raises IntegrityError when the wrapped key belongs to another data key
        row, or was altered: the master key with the row's fingerprint does
        not open it. Raises WrongMasterKeyError naming ``where`` (the database)
        when no configured master key has the row's fingerprint or opens it.
        """
        ordered = sorted(self.keys, key=lambda key: key.key_id != master_key_id)
        try:
            token = wrapped.encode("ascii")
        except UnicodeEncodeError:
            token = b""
        for key in ordered:
            try:
                payload = key.fernet.decrypt(token)
            except InvalidToken:
                continue
            return self._check_binding(payload, data_key_id, where)
        if any(key.key_id == master_key_id for key in self.keys):
            message = (
                f"data key {data_key_id} in {where} was altered: master key {master_key_id} "
                f"from {self.source} wrapped it but does not open it; restore the database "
                "from a backup"
            )
            logger.error("%s", message)
            raise IntegrityError(message)
        message = (
            f"no master key from {self.source} unwraps data key {data_key_id} in {where} "
            f"(it was wrapped by master key {master_key_id}); use the key file that created "
            "this vault, or set FERNVAULT_MASTER_KEY to its key"
        )
        logger.error("%s", message)
        raise WrongMasterKeyError(message)

    @staticmethod
    def _check_binding(payload: bytes, data_key_id: str, where: str) -> bytes:
        header = _WRAP_VERSION + data_key_id.encode("ascii", errors="replace")
        data_key = payload[len(header) :]
        if payload.startswith(header) and _FERNET_KEY_SHAPE.fullmatch(data_key.decode("latin-1")):
            return data_key
        message = (
            f"data key {data_key_id} in {where} holds a wrapped key made for another data "
            "key row: it was copied or swapped in the database; restore the database from "
            "a backup"
        )
        logger.error("%s", message)
        raise IntegrityError(message)

    def __repr__(self) -> str:
        ids = ", ".join(key.key_id for key in self.keys)
        return f"MasterKeyRing(source={self.source!r}, key_ids=[{ids}])"


def parse_keys(text: str, source: str) -> list[MasterKey]:
    """Parse key text, one key per line, rejecting anything that is not a Fernet key.

    Blank lines and whitespace around a key are ignored. Errors name the source
    and the line number, never the text of the line.
    """
    keys: list[MasterKey] = []
    seen: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        candidate = line.strip()
        if not candidate:
            continue
        try:
            key = MasterKey.from_text(candidate)
        except ValueError:
            message = (
                f"invalid master key in {source}, line {number}: expected a Fernet key "
                "(44 characters of URL-safe base64 ending in '=')"
            )
            logger.error("%s", message)
            raise KeyFileError(message) from None
        if key.key_id not in seen:
            seen.add(key.key_id)
            keys.append(key)
    if not keys:
        message = f"no master key in {source}: it is empty"
        logger.error("%s", message)
        raise KeyFileError(message)
    return keys


def ring_from_env(value: str) -> MasterKeyRing:
    """Build a ring from FERNVAULT_MASTER_KEY: keys separated by commas, primary first."""
    return MasterKeyRing(
        tuple(parse_keys(value.replace(",", "\n"), MASTER_KEY_ENV)), MASTER_KEY_ENV
    )


def read_key_file(path: Path) -> MasterKeyRing:
    """Read and parse an existing key file.

    Raises KeyFileError when the file is missing, unreadable, empty or invalid.
    The file is never modified. A file readable by group or others gets a
    KeyFilePermissionWarning, not a refusal, because container secret mounts
    are often 0644.
    """
    try:
        data = path.read_bytes()
        mode = path.stat().st_mode
    except FileNotFoundError:
        message = f"key file {path} does not exist"
        logger.error("%s", message)
        raise KeyFileError(message) from None
    except OSError as exc:
        message = f"cannot read key file {path}: {exc.strerror or type(exc).__name__}"
        logger.error("%s", message)
        raise KeyFileError(message) from exc

    if stat.S_ISREG(mode) and mode & 0o077:
        text = (
            f"key file {path} is readable by group or others (mode {stat.S_IMODE(mode):o}); "
            f"restrict it with: chmod 600 {path}"
        )
        logger.warning("%s", text)
        warnings.warn(text, KeyFilePermissionWarning, stacklevel=3)

    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        message = (
            f"invalid master key in {path}, line {line}: it contains bytes that are not "
            "ASCII; expected a Fernet key (44 characters of URL-safe base64 ending in '=')"
        )
        logger.error("%s", message)
        raise KeyFileError(message) from None
    return MasterKeyRing(tuple(parse_keys(text, str(path))), str(path), path)


def _serialize(keys: Iterable[MasterKey]) -> bytes:
    return b"".join(key.raw + b"\n" for key in keys)


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_private_temp(folder: Path, name: str, content: bytes) -> Path:
    """Write ``content`` to a new 0600 file in ``folder`` and fsync it; return its path."""
    temp = folder / f".{name}.{secrets.token_hex(8)}.tmp"
    # O_EXCL with mode 0600 creates the file private in one step: it is never
    # visible to others with looser permissions, whatever the umask.
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return temp


def make_private_folder(folder: Path) -> None:
    """Create ``folder`` and each missing parent with mode 0700; leave existing ones alone.

    ``Path.mkdir(parents=True)`` would create the parents with the umask's
    default mode, world-writable under umask 0, so they are made one by one.
    """
    missing: list[Path] = []
    current = folder
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    for component in reversed(missing):
        component.mkdir(mode=0o700, exist_ok=True)  # another process may create it first


def create_key_file(path: Path) -> MasterKeyRing:
    """Create a key file holding one new master key, unless it already exists.

    The folder is created 0700 if missing and the file appears 0600 with its
    whole content in one atomic step (a hard link from a private temporary
    file), so concurrent creators end with the one key that won the race.
    An existing file is never overwritten: it is read and returned instead.
    """
    try:
        make_private_folder(path.parent)
        temp = _write_private_temp(path.parent, path.name, _serialize([MasterKey.generate()]))
        try:
            os.link(temp, path)
        except FileExistsError:
            logger.debug("key file %s was created by another process; reading it", path)
        else:
            _fsync_folder(path.parent)
            logger.info("created key file %s", path)
        finally:
            temp.unlink(missing_ok=True)
    except OSError as exc:
        message = f"cannot create key file {path}: {exc.strerror or type(exc).__name__}"
        logger.error("%s", message)
        raise KeyFileError(message) from exc
    return read_key_file(path)


def replace_key_file(path: Path, keys: Sequence[MasterKey]) -> MasterKeyRing:
    """Atomically replace the key file with ``keys``, primary first.

    Writes a private temporary file, fsyncs it, renames it over the old file
    and fsyncs the folder, so a crash leaves either the old or the new file.
    Only master key rotation calls this, and only with a list that keeps
    every key the database may still need.

    Temporary files that an earlier, killed rewrite of the same key file left
    behind are deleted first, because they contain master keys. So two
    rewrites of one key file must not run at the same time: callers hold
    ``key_file_lock`` from reading the keys to the last rewrite.
    """
    try:
        for leftover in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
            leftover.unlink(missing_ok=True)
            logger.info("deleted %s, left behind by an interrupted key file rewrite", leftover)
        temp = _write_private_temp(path.parent, path.name, _serialize(keys))
        try:
            os.replace(temp, path)
        except BaseException:
            temp.unlink(missing_ok=True)
            raise
        _fsync_folder(path.parent)
    except OSError as exc:
        message = f"cannot rewrite key file {path}: {exc.strerror or type(exc).__name__}"
        logger.error("%s", message)
        raise KeyFileError(message) from exc
    return MasterKeyRing(tuple(keys), str(path), path)


@contextmanager
def key_file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the key file for a read-modify-write of its lines.

    The lock is flock(2) on an empty file ``.NAME.lock`` beside the key file,
    so concurrent master key rotations and ``fernvault key`` commands on one
    host cannot drop each other's key lines. It does not span hosts: each
    host has its own key file.
    """
    lock_path = path.parent / f".{path.name}.lock"
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        message = f"cannot lock key file {path}: {exc.strerror or type(exc).__name__}"
        logger.error("%s", message)
        raise KeyFileError(message) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
