"""fernvault: secrets encrypted with Fernet in a SQL database.

Values are encrypted under a data key that lives wrapped in the database, so
``rotate_key`` re-encrypts every secret and replaces the key in one
transaction. See ``SecretManager`` for the operations.
"""

from __future__ import annotations

import logging

from .config import decrypt_configuration, encrypt_configuration, manage_secrets
from .errors import (
    DecryptionError,
    FernvaultError,
    IntegrityError,
    InvalidInputError,
    InvalidTypeError,
    KeyFileError,
    MasterKeyError,
    RotationConflictError,
    SchemaError,
    SecretExistsError,
    SecretNotFoundError,
    StorageError,
    WrongMasterKeyError,
)
from .manager import RotationResult, SecretManager, VerifyReport

__version__ = "0.1.0"

__all__ = [
    "DecryptionError",
    "FernvaultError",
    "IntegrityError",
    "InvalidInputError",
    "InvalidTypeError",
    "KeyFileError",
    "MasterKeyError",
    "RotationConflictError",
    "RotationResult",
    "SchemaError",
    "SecretExistsError",
    "SecretManager",
    "SecretNotFoundError",
    "StorageError",
    "VerifyReport",
    "WrongMasterKeyError",
    "decrypt_configuration",
    "encrypt_configuration",
    "manage_secrets",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
