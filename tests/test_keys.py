"""Master keys: key file creation, parsing, wrong keys and missing files."""

from __future__ import annotations

import multiprocessing
import os
import stat
import time
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from fernvault import KeyFileError, MasterKeyError, SecretManager, WrongMasterKeyError
from fernvault.keys import KeyFilePermissionWarning, MasterKey, parse_keys


def test_key_file_created_private(tmp_path: Path) -> None:
    key_file = tmp_path / "new" / "dir" / "vault.key"
    with SecretManager(key_file):
        pass
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(key_file.with_suffix(".db").stat().st_mode) == 0o600
    assert not [p for p in key_file.parent.iterdir() if p.name.endswith(".tmp")]


def test_default_paths(tmp_path: Path) -> None:
    with SecretManager() as manager:
        assert manager.key_file == tmp_path / "home" / ".codomyrmex" / "secrets.key"
        assert manager.url == f"sqlite:///{tmp_path / 'home' / '.codomyrmex' / 'secrets.db'}"


def test_legacy_key_file_without_newline(tmp_path: Path) -> None:
    key_file = tmp_path / "secrets.key"
    key_file.write_bytes(Fernet.generate_key())
    key_file.chmod(0o600)
    with SecretManager(key_file) as manager:
        secret_id = manager.store_secret("a", "1")
    with SecretManager(key_file) as manager:
        assert manager.get_secret(secret_id) == "1"


@pytest.mark.parametrize("spelling", ["{k}\n", "{k}\r\n", "  {k}  \n", "\n{k}\n\n"])
def test_key_spellings_share_key_id(spelling: str) -> None:
    key = Fernet.generate_key().decode()
    assert parse_keys(spelling.format(k=key), "test")[0].key_id == MasterKey.from_text(key).key_id


@pytest.mark.parametrize(
    "content",
    [b"", b"\n\n", b"tooshort=\n", b"garbage!" * 6, b"\xff\xfe", None],
    ids=["empty", "blank", "truncated", "garbage", "binary", "truncated-key"],
)
def test_bad_key_file_rejected_and_kept(tmp_path: Path, db_url: str, content: bytes | None) -> None:
    key_file = tmp_path / "vault.key"
    if content is None:
        content = Fernet.generate_key()[:30]
    key_file.write_bytes(content)
    key_file.chmod(0o600)
    with pytest.raises(KeyFileError, match=str(key_file)) as caught:
        SecretManager(key_file, db_url)
    assert key_file.read_bytes() == content
    if content.strip():
        assert content.decode(errors="replace").strip() not in str(caught.value)


def test_bad_key_line_names_line(tmp_path: Path) -> None:
    key_file = tmp_path / "vault.key"
    key_file.write_text(Fernet.generate_key().decode() + "\nnot-a-key\n")
    key_file.chmod(0o600)
    with pytest.raises(KeyFileError, match="line 2"):
        SecretManager(key_file)


def test_wrong_master_key(tmp_path: Path, key_file: Path, db_url: str) -> None:
    with SecretManager(key_file, db_url) as manager:
        manager.store_secret("a", "1")
    other = tmp_path / "other.key"
    other.write_bytes(Fernet.generate_key())
    other.chmod(0o600)
    before = other.read_bytes()
    with pytest.raises(WrongMasterKeyError, match="unwraps") as caught:
        SecretManager(other, db_url)
    assert str(other) in str(caught.value)
    assert other.read_bytes() == before


def test_missing_key_file_beside_data(key_file: Path, db_url: str) -> None:
    with SecretManager(key_file, db_url) as manager:
        manager.store_secret("a", "1")
    key_file.rename(key_file.with_suffix(".moved"))
    with pytest.raises(KeyFileError, match="does not exist"):
        SecretManager(key_file, db_url)
    assert not key_file.exists()


def test_loose_permissions_warn(tmp_path: Path) -> None:
    key_file = tmp_path / "vault.key"
    key_file.write_bytes(Fernet.generate_key())
    key_file.chmod(0o644)
    with pytest.warns(KeyFilePermissionWarning, match="chmod 600"), SecretManager(key_file):
        pass
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o644


def test_master_key_from_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, db_url: str
) -> None:
    first, second = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    monkeypatch.setenv("FERNVAULT_MASTER_KEY", first)
    with SecretManager(url=db_url) as manager:
        secret_id = manager.store_secret("a", "1")
    assert not (tmp_path / "home" / ".codomyrmex" / "secrets.key").exists()
    monkeypatch.setenv("FERNVAULT_MASTER_KEY", f"{second},{first}")
    with SecretManager(url=db_url) as manager:
        assert manager.get_secret(secret_id) == "1"
        manager.rotate_master_key(generate=False)
    monkeypatch.setenv("FERNVAULT_MASTER_KEY", second)
    with SecretManager(url=db_url) as manager:
        assert manager.get_secret(secret_id) == "1"
    monkeypatch.setenv("FERNVAULT_MASTER_KEY", first)
    with pytest.raises(MasterKeyError):
        SecretManager(url=db_url)


def test_rotate_master_key_with_file(key_file: Path, db_url: str) -> None:
    with SecretManager(key_file, db_url) as manager:
        secret_id = manager.store_secret("a", "1")
        old = key_file.read_text()
        new_id = manager.rotate_master_key()
    new = key_file.read_text()
    assert new != old
    assert len(new.split()) == 1
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert MasterKey.from_text(new.strip()).key_id == new_id
    with SecretManager(key_file, db_url) as manager:
        assert manager.get_secret(secret_id) == "1"


def _open_and_store(
    key_file: str, url: str, start: float, index: int, queue: multiprocessing.Queue
) -> None:  # type: ignore[type-arg]
    while time.time() < start:
        time.sleep(0.001)
    with SecretManager(key_file, url) as manager:
        queue.put((index, manager.store_secret(f"proc-{index}", f"value-{index}")))


def test_concurrent_key_file_creation(key_file: Path, db_url: str) -> None:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    start = time.time() + 2.0
    children = [
        context.Process(target=_open_and_store, args=(str(key_file), db_url, start, i, queue))
        for i in range(8)
    ]
    for child in children:
        child.start()
    results = dict(queue.get(timeout=120) for _ in children)
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
    assert len(key_file.read_text().split()) == 1
    with SecretManager(key_file, db_url) as manager:
        for index, secret_id in results.items():
            assert manager.get_secret(secret_id) == f"value-{index}"
    assert os.listdir(key_file.parent) == [key_file.name] or all(
        not name.endswith(".tmp") for name in os.listdir(key_file.parent)
    )
