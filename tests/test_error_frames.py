"""No value reachable from the frames of an IntegrityError, on SQLite and PostgreSQL.

Every frame on an error's traceback keeps its local variables alive, and so
does every error chained to it as ``__cause__`` or ``__context__``, even one
hidden with ``from None``. A debugger, a memory dump or a crash reporter
that walks them could read a value that was decrypted before the error.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

import fernvault
from fernvault import IntegrityError, SecretManager

from .dbutil import copy_token, execute

FERNVAULT_SOURCE = str(Path(fernvault.__file__).parent)


def _fernvault_locals_containing(error: BaseException, needle: str) -> list[str]:
    """Return the fernvault frame locals on the error's chain whose repr contains ``needle``."""
    found: list[str] = []
    seen: set[int] = set()
    pending: list[BaseException] = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        entry = current.__traceback__
        while entry is not None:
            frame = entry.tb_frame
            if frame.f_code.co_filename.startswith(FERNVAULT_SOURCE):
                for name, value in frame.f_locals.items():
                    if needle in repr(value):
                        found.append(f"{frame.f_code.co_name}: {name}")
            entry = entry.tb_next
        pending.extend(chained for chained in (current.__cause__, current.__context__) if chained)
    return found


def test_rotation_error_frames_hold_no_values(vault: SecretManager, db_url: str) -> None:
    canary = "CANARY" + secrets.token_hex(8)
    ids = vault.store_secrets({f"secret-{i:02d}": f"{canary}-{i}" for i in range(20)})
    victim = ids["secret-07"]
    execute(db_url, "UPDATE fernvault_secrets SET token = '' WHERE id = :i", {"i": victim})

    with pytest.raises(IntegrityError, match=victim) as caught:
        vault.rotate_key()

    assert _fernvault_locals_containing(caught.value, canary) == []


def test_copied_token_error_frames_hold_no_value(vault: SecretManager, db_url: str) -> None:
    canary = "CANARY" + secrets.token_hex(8)
    source = vault.store_secret("source", canary)
    target = vault.store_secret("target", "target value")
    copy_token(db_url, source, target)

    with pytest.raises(IntegrityError, match="made for another row") as caught:
        vault.get_secret(target)

    assert _fernvault_locals_containing(caught.value, canary) == []


def test_non_ascii_id_names_row_and_hides_values(vault: SecretManager, db_url: str) -> None:
    canary = "CANARY" + secrets.token_hex(8)
    ids = vault.store_secrets({f"secret-{i:02d}": f"{canary}-{i}" for i in range(20)})
    renamed = "é" + ids["secret-07"][1:]
    execute(
        db_url,
        "UPDATE fernvault_secrets SET id = :n WHERE id = :i",
        {"n": renamed, "i": ids["secret-07"]},
    )

    with pytest.raises(IntegrityError, match=renamed) as rotation:
        vault.rotate_key()
    with pytest.raises(IntegrityError, match=renamed) as read:
        vault.get_secret_by_name("secret-07")
    report = vault.verify()

    assert _fernvault_locals_containing(rotation.value, canary) == []
    assert _fernvault_locals_containing(read.value, canary) == []
    assert [failure["id"] for failure in report.failures] == [renamed]
    assert report.total == 20
