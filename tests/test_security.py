"""Security properties: key file hygiene and what each attacker can and cannot do.

SECURITY.md cites these tests for its claims.
"""

from __future__ import annotations

import base64
import os
import stat
import warnings
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet, InvalidToken

from fernvault import IntegrityError, KeyFileError, SecretManager, WrongMasterKeyError
from fernvault.keys import KeyFilePermissionWarning

from . import dbutil


def _write_key_file(path: Path, content: bytes, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    path.chmod(mode)
    return path


def test_key_file_created_private_without_chmod(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With umask 0 and every chmod call failing, a key file that ends up
    # private was created private: nothing tightened it afterwards.
    created: list[tuple[str, int, int]] = []
    real_open = os.open

    def recording_open(path: Any, flags: int, mode: int = 0o777, *args: Any, **kwargs: Any) -> int:
        if flags & os.O_CREAT:
            created.append((os.fspath(path), flags, mode))
        return real_open(path, flags, mode, *args, **kwargs)

    def no_chmod(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("the key file or its folder was tightened after creation")

    monkeypatch.setattr(os, "open", recording_open)
    monkeypatch.setattr(os, "chmod", no_chmod)
    monkeypatch.setattr(os, "fchmod", no_chmod)
    monkeypatch.setattr(Path, "chmod", no_chmod)
    old_umask = os.umask(0)
    try:
        key_file = tmp_path / "fresh" / "nested" / "vault.key"
        with SecretManager(key_file):
            pass
    finally:
        os.umask(old_umask)

    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(key_file.parent.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(key_file.with_suffix(".db").stat().st_mode) == 0o600
    key_creations = [entry for entry in created if Path(entry[0]).parent == key_file.parent]
    assert key_creations
    for path, flags, mode in key_creations:
        assert flags & os.O_EXCL, path
        assert mode == 0o600, path
    assert sorted(p.name for p in key_file.parent.iterdir() if p.name.endswith(".tmp")) == []


def test_key_folder_parents_private_with_url(tmp_path: Path, db_url: str) -> None:
    old_umask = os.umask(0)
    try:
        key_file = tmp_path / "a" / "b" / "vault.key"
        with SecretManager(key_file, db_url):
            pass
    finally:
        os.umask(old_umask)
    for folder in (tmp_path / "a", tmp_path / "a" / "b"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_key_file_appears_whole(tmp_path: Path) -> None:
    key_file = tmp_path / "vault.key"
    with SecretManager(key_file):
        pass
    content = key_file.read_bytes()
    assert content.endswith(b"\n")
    assert len(content.split()) == 1
    assert len(content.strip()) == 44


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660])
def test_loose_key_file_warns_with_path(tmp_path: Path, mode: int) -> None:
    key_file = _write_key_file(tmp_path / "vault.key", Fernet.generate_key(), mode)
    with pytest.warns(KeyFilePermissionWarning) as caught, SecretManager(key_file):
        pass
    assert str(key_file) in str(caught[0].message)
    assert f"{mode:o}" in str(caught[0].message)
    assert stat.S_IMODE(key_file.stat().st_mode) == mode


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_private_key_file_does_not_warn(tmp_path: Path, mode: int) -> None:
    key_file = _write_key_file(tmp_path / "vault.key", Fernet.generate_key(), mode)
    with warnings.catch_warnings():
        warnings.simplefilter("error", KeyFilePermissionWarning)
        with SecretManager(key_file):
            pass


@pytest.mark.parametrize(
    "spelling",
    ["{k}", "{k}\n", "{k}\r\n", "  {k}  ", "\t{k}\t\r\n", "\n\n{k}\n\n", " {k}\n \n"],
    ids=["bare", "newline", "crlf", "spaces", "tabs-crlf", "blank-lines", "blank-spaces"],
)
def test_key_spellings_open_same_vault(tmp_path: Path, db_url: str, spelling: str) -> None:
    key = Fernet.generate_key().decode()
    original = _write_key_file(tmp_path / "original.key", f"{key}\n".encode())
    with SecretManager(original, db_url) as vault:
        secret_id = vault.store_secret("s", "value")
        key_id = vault._keys.ring.primary.key_id
    variant = _write_key_file(tmp_path / "variant.key", spelling.format(k=key).encode())
    with SecretManager(variant, db_url) as vault:
        assert vault._keys.ring.primary.key_id == key_id
        assert vault.get_secret(secret_id) == "value"
    assert variant.read_bytes() == spelling.format(k=key).encode()


_GOOD = Fernet.generate_key()
_BAD_KEY_FILES = {
    "one-character-changed": (_GOOD[:10] + b"!" + _GOOD[11:], 1),
    "missing-padding": (_GOOD[:-1], 1),
    "one-character-extra": (_GOOD + b"A", 1),
    "two-keys-on-one-line": (_GOOD + b" " + Fernet.generate_key(), 1),
    "garbage-on-line-3": (_GOOD + b"\n\nnot a key at all\n", 3),
    "quoted": (b'"' + _GOOD + b'"', 1),
    "env-assignment": (b"FERNVAULT_MASTER_KEY=" + _GOOD, 1),
    "non-ascii-on-line-2": (_GOOD + b"\n\xc3\xa9" + _GOOD[1:], 2),
    "utf8-bom": (b"\xef\xbb\xbf" + _GOOD, 1),
    "nul-byte": (_GOOD[:20] + b"\x00" + _GOOD[21:], 1),
}


@pytest.mark.parametrize("case", sorted(_BAD_KEY_FILES))
def test_invalid_key_names_file_and_line(tmp_path: Path, case: str) -> None:
    content, line = _BAD_KEY_FILES[case]
    key_file = _write_key_file(tmp_path / "vault.key", content)
    with pytest.raises(KeyFileError) as caught:
        SecretManager(key_file)
    message = str(caught.value)
    assert str(key_file) in message
    assert f"line {line}" in message
    assert _GOOD.decode()[5:35] not in message
    assert key_file.read_bytes() == content
    assert not [path for path in tmp_path.iterdir() if path.name.endswith(".tmp")]


@pytest.mark.parametrize(
    "content", [b"", b"\n", b"   \r\n", _GOOD[:30], b"\x00" * 44], ids=range(5)
)
def test_unusable_key_file_never_replaced(tmp_path: Path, content: bytes) -> None:
    key_file = _write_key_file(tmp_path / "vault.key", content)
    before = key_file.stat()
    for _ in range(2):
        with pytest.raises(KeyFileError, match=str(key_file)):
            SecretManager(key_file)
    after = key_file.stat()
    assert key_file.read_bytes() == content
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_invalid_master_key_env_hides_value(monkeypatch: pytest.MonkeyPatch, db_url: str) -> None:
    bad = _GOOD.decode()[:-2] + "!="
    monkeypatch.setenv("FERNVAULT_MASTER_KEY", f"{Fernet.generate_key().decode()},{bad}")
    with pytest.raises(KeyFileError, match="FERNVAULT_MASTER_KEY, line 2") as caught:
        SecretManager(url=db_url)
    assert bad not in str(caught.value)
    assert bad[5:35] not in str(caught.value)


# -- what each attacker can and cannot do ---------------------------------

CANARY = "CANARY" + "7d1e" * 8


def _database_bytes(db_url: str) -> bytes:
    """Return every stored byte of the vault: the SQLite files, or a dump of both tables."""
    if db_url.startswith("sqlite:///"):
        path = Path(db_url.removeprefix("sqlite:///"))
        files = [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
        return b"".join(file.read_bytes() for file in files if file.exists())
    return repr(dbutil.snapshot(db_url)).encode()


def _key_texts(vault: SecretManager) -> list[str]:
    texts = [key.raw.decode() for key in vault._keys.ring.keys]
    for fernet in vault._keys.cache._fernets.values():
        raw = fernet._signing_key + fernet._encryption_key
        texts.append(base64.urlsafe_b64encode(raw).decode())
    return texts


def test_database_holds_no_plaintext_or_key(vault: SecretManager, db_url: str) -> None:
    vault.store_secret("plain-check", CANARY, {"note": "metadata is stored in clear"})
    vault.update_secret_by_name("plain-check", CANARY + "-updated")
    vault.rotate_key()
    stored = _database_bytes(db_url)
    assert CANARY.encode() not in stored
    assert CANARY.encode("utf-16-le") not in stored
    assert base64.urlsafe_b64encode(CANARY.encode()) not in stored
    for key in _key_texts(vault):
        assert key.encode() not in stored
    assert b"plain-check" in stored
    assert b"metadata is stored in clear" in stored


def test_key_file_holds_no_value(vault: SecretManager, key_file: Path) -> None:
    vault.store_secret("s", CANARY)
    content = key_file.read_bytes()
    assert CANARY.encode() not in content
    assert len(content.split()) == 1


def test_backup_unreadable_without_master_key(
    vault: SecretManager, db_url: str, tmp_path: Path
) -> None:
    secret_id = vault.store_secret("s", CANARY)
    stranger_key = _write_key_file(tmp_path / "stranger.key", Fernet.generate_key())
    with pytest.raises(WrongMasterKeyError):
        SecretManager(stranger_key, db_url)
    with pytest.raises(KeyFileError, match="does not exist"):
        SecretManager(tmp_path / "absent.key", db_url)
    assert vault.get_secret(secret_id) == CANARY


def test_old_key_file_useless_after_master_rotation(
    vault: SecretManager, key_file: Path, db_url: str, tmp_path: Path
) -> None:
    secret_id = vault.store_secret("s", CANARY)
    stolen = _write_key_file(tmp_path / "stolen.key", key_file.read_bytes())
    vault.rotate_master_key()
    with pytest.raises(WrongMasterKeyError):
        SecretManager(stolen, db_url)
    assert vault.get_secret(secret_id) == CANARY


def test_old_data_key_useless_after_rotation(
    vault: SecretManager, key_file: Path, db_url: str
) -> None:
    secret_id = vault.store_secret("s", CANARY)
    backup = dbutil.snapshot(db_url)
    old_key_id, old_wrapped, old_master_key_id = backup["data_keys"][0][:3]
    old_data_key = vault._keys.ring.unwrap(
        old_wrapped, old_master_key_id, data_key_id=old_key_id, where="backup"
    )
    vault.rotate_key()
    token = dbutil.fetch(db_url, "SELECT token FROM fernvault_secrets")[0][0]
    with pytest.raises(InvalidToken):
        Fernet(old_data_key).decrypt(token.encode())
    assert vault.get_secret(secret_id) == CANARY


def test_replayed_token_accepted_within_key(vault: SecretManager, db_url: str) -> None:
    # A known limit: with write access, an older token of the same row, under
    # the same data key, reads back as the older value.
    secret_id = vault.store_secret("s", "old value")
    old_token = dbutil.fetch(db_url, "SELECT token FROM fernvault_secrets")[0][0]
    vault.update_secret(secret_id, "new value")
    dbutil.execute(db_url, "UPDATE fernvault_secrets SET token = :t", {"t": old_token})
    assert vault.get_secret(secret_id) == "old value"


def test_replayed_token_rejected_after_rotation(vault: SecretManager, db_url: str) -> None:
    secret_id = vault.store_secret("s", "old value")
    old_row = dbutil.fetch(db_url, "SELECT token, key_id FROM fernvault_secrets")[0]
    vault.update_secret(secret_id, "new value")
    vault.rotate_key()
    dbutil.execute(db_url, "UPDATE fernvault_secrets SET token = :t", {"t": old_row[0]})
    with pytest.raises(IntegrityError, match=secret_id):
        vault.get_secret(secret_id)


def test_metadata_not_authenticated(vault: SecretManager, db_url: str) -> None:
    # A known limit: metadata is stored in clear and not bound to the token.
    secret_id = vault.store_secret("s", "value", {"owner": "payments"})
    dbutil.execute(db_url, "UPDATE fernvault_secrets SET metadata = :m", {"m": '{"owner": "x"}'})
    assert vault.list_secrets()[0]["metadata"] == {"owner": "x"}
    assert vault.get_secret(secret_id) == "value"


def test_deleted_row_reads_as_missing(vault: SecretManager, db_url: str) -> None:
    # A known limit: a writer can delete rows; fernvault cannot tell deletion from absence.
    secret_id = vault.store_secret("s", "value")
    dbutil.execute(db_url, "DELETE FROM fernvault_secrets")
    assert vault.get_secret(secret_id) is None
    assert vault.verify().ok
