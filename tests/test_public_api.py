"""The names importable from fernvault are part of its contract."""

from __future__ import annotations

import fernvault
from fernvault import errors


def test_all_is_pinned() -> None:
    assert sorted(fernvault.__all__) == [
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
    for name in fernvault.__all__:
        assert getattr(fernvault, name) is not None


def test_every_error_derives_from_root() -> None:
    classes = [
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, Exception)
    ]
    assert len(classes) > 5
    for cls in classes:
        assert issubclass(cls, fernvault.FernvaultError)


def test_input_errors_are_standard_errors() -> None:
    assert issubclass(fernvault.InvalidInputError, ValueError)
    assert issubclass(fernvault.InvalidTypeError, TypeError)
