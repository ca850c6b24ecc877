"""Exceptions raised by fernvault.

Every error fernvault raises on purpose derives from ``FernvaultError``, and
its subclasses are shaped by what the caller can do next::

    FernvaultError
    ├── InvalidInputError (also ValueError): a name, value or metadata was rejected
    │   └── InvalidTypeError (also TypeError): an argument has the wrong type
    ├── SecretNotFoundError: no secret has that id or name
    ├── SecretExistsError: a secret with that name already exists
    ├── DecryptionError: a stored secret cannot be decrypted
    │   └── IntegrityError: a token, its row or its data key was altered
    ├── MasterKeyError: the master key is missing, invalid or wrong
    │   ├── KeyFileError: the key file cannot be read, created or parsed
    │   └── WrongMasterKeyError: no master key unwraps the vault's data key
    ├── SchemaError: the database schema is not at the revision this code needs
    ├── StorageError: the database failed (connection, lock, disk, permissions)
    └── RotationConflictError: another rotation changed the data key first

Messages name the secret (by id or name), the key file or the database URL
with its password hidden. They never contain a value, a key or a token. A
StorageError keeps only the driver's primary message and chains the driver's
error as ``__cause__``. SQLAlchemy hides its bound parameters, but on
PostgreSQL its text can include the server's DETAIL line, which may quote a
secret name, a key id or a token of the failing row. Values and keys never
reach the database in plaintext, so no DETAIL line can contain one.
"""

from __future__ import annotations


class FernvaultError(Exception):
    """Base class of every error that fernvault raises on purpose."""


class InvalidInputError(FernvaultError, ValueError):
    """A name, value, metadata mapping or option was rejected before any I/O."""


class InvalidTypeError(InvalidInputError, TypeError):
    """An argument has the wrong type (for example a value that is not ``str``)."""


class SecretNotFoundError(FernvaultError, LookupError):
    """No secret has the requested id or name."""


class SecretExistsError(FernvaultError):
    """A secret with the requested name already exists."""


class DecryptionError(FernvaultError):
    """A stored secret cannot be decrypted with the vault's data keys."""

    def __init__(self, message: str, *, secret_id: str | None = None) -> None:
        super().__init__(message)
        self.secret_id = secret_id


class IntegrityError(DecryptionError):
    """A token, its row binding or its data key was altered or swapped."""


class MasterKeyError(FernvaultError):
    """The master key is missing, invalid or does not match the vault."""


class KeyFileError(MasterKeyError):
    """The key file cannot be read, created or parsed."""


class WrongMasterKeyError(MasterKeyError):
    """No configured master key unwraps the vault's data keys."""


class SchemaError(FernvaultError):
    """The database schema is older or newer than this version of fernvault."""


class StorageError(FernvaultError):
    """The database failed: lost connection, lock timeout, full disk, read-only file."""


class RotationConflictError(FernvaultError):
    """The active data key changed under a rotation that could not wait for it."""
