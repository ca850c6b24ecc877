"""Master key rotation: SIGKILL between its steps, and keys from FERNVAULT_MASTER_KEY.

``rotate_master_key`` writes the key file with the new key first (temporary
file, fsync, rename), re-wraps the data keys in one transaction, and after
the commit rewrites the key file without the old key. A child process
kills itself with SIGKILL at each step boundary, and at random moments,
and a new manager must then open the vault with the key file left behind.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fernvault import KeyFileError, SecretManager, WrongMasterKeyError
from fernvault import keys as keyfile

from .children import SPAWN, run_children
from .conftest import create_pg_database, drop_pg_database
from .dbutil import fetch
from .vaultcopy import clone_vault, drop_clone, seed_values, seed_vault

# Step boundaries, in the order rotate_master_key crosses them.
STEPS = [
    "before_first_rename",  # the new key file is written and fsynced, not yet renamed
    "after_first_rename",  # the key file contains the new key first and the old key below
    "before_commit",  # the data keys are re-wrapped inside the open transaction
    "after_commit",  # the re-wrap is committed and the old key is still in the file
    "before_second_rename",  # the pruned key file is written, not yet renamed
    "after_second_rename",  # the key file contains only the new key
]
RANDOM_TRIALS = 6
TIMEOUT = 60.0


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _wrap(
    original: Callable[..., Any], before: Callable[[int], None], after: Callable[[int], None]
) -> Callable[..., Any]:
    """Wrap ``original`` so ``before`` and ``after`` run around each call, given its number."""
    calls = 0

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        before(calls)
        result = original(*args, **kwargs)
        after(calls)
        return result

    return wrapper


def _rotate_master_until(key_file: str, url: str, step: str) -> None:
    """Rotate the master key, killing this process with SIGKILL at ``step``."""
    from fernvault import repository

    def at(name: str, call: int = 1) -> Callable[[int], None]:
        return lambda count: _die() if step == name and count == call else None

    def never(_: int) -> None:
        return None

    keyfile.os.replace = _wrap(
        os.replace,
        before=lambda n: at("before_first_rename", 1)(n) or at("before_second_rename", 2)(n),
        after=lambda n: at("after_first_rename", 1)(n) or at("after_second_rename", 2)(n),
    )
    repository.rewrap_data_keys = _wrap(repository.rewrap_data_keys, never, at("before_commit"))
    keyfile.replace_key_file = _wrap(keyfile.replace_key_file, at("after_commit", 2), never)

    with SecretManager(key_file, url) as vault:
        vault.rotate_master_key()
    time.sleep(TIMEOUT)  # a step that was never reached fails the parent's exit code check


def _rotate_master_and_wait(key_file: str, url: str, pipe: Any) -> None:
    with SecretManager(key_file, url) as vault:
        pipe.send("ready")
        vault.rotate_master_key()
        pipe.send("done")
        time.sleep(TIMEOUT)


@pytest.fixture
def small_vault(
    backend: str, tmp_path: Path, key_file: Path
) -> Iterator[tuple[str, dict[str, str]]]:
    url = f"sqlite:///{tmp_path / 'small.db'}" if backend == "sqlite" else create_pg_database()
    try:
        yield url, seed_vault(key_file, url, seed_values(50))
    finally:
        if backend != "sqlite":
            drop_pg_database(url)


def _copy_vault(template_url: str, key_file: Path, folder: Path, label: str) -> tuple[Path, str]:
    trial_key = folder / label / "vault.key"
    trial_key.parent.mkdir(mode=0o700)
    shutil.copy2(key_file, trial_key)
    return trial_key, clone_vault(template_url, folder, label)


def _assert_opens(key_file: Path, url: str, expected: dict[str, str], trial: str) -> None:
    """Open with the key file left behind, read every secret, and rotate the master key again."""
    ring = keyfile.read_key_file(key_file)
    wrapped_by = {row[0] for row in fetch(url, "SELECT master_key_id FROM fernvault_data_keys")}
    assert wrapped_by <= {key.key_id for key in ring.keys}, trial

    with SecretManager(key_file, url) as vault:
        assert {i: vault.get_secret(i) for i in expected} == expected, trial
        new_master = vault.rotate_master_key()
        assert vault.verify().failures == [], trial
    assert [key.key_id for key in keyfile.read_key_file(key_file).keys] == [new_master], trial

    # A temporary key file that a kill left behind contains master keys: the
    # next rewrite of the key file deletes it.
    assert list(key_file.parent.glob(".*.tmp")) == [], trial


@pytest.mark.slow
def test_sigkill_at_each_master_rotation_step(
    small_vault: tuple[str, dict[str, str]], key_file: Path, tmp_path: Path
) -> None:
    template_url, expected = small_vault
    old_master = keyfile.read_key_file(key_file).primary.key_id
    for step in STEPS:
        trial_key, url = _copy_vault(template_url, key_file, tmp_path, step)
        try:
            child = SPAWN.Process(target=_rotate_master_until, args=(str(trial_key), url, step))
            child.start()
            child.join(timeout=TIMEOUT)
            assert child.exitcode == -signal.SIGKILL, f"{step}: exit code {child.exitcode}"

            leftovers = list(trial_key.parent.glob(".*.tmp"))
            if step.startswith("before_") and step.endswith("_rename"):
                assert len(leftovers) == 1, step
                assert stat.S_IMODE(leftovers[0].stat().st_mode) == 0o600, step
            wrapped_by = fetch(url, "SELECT master_key_id FROM fernvault_data_keys")
            committed = step in ("after_commit", "before_second_rename", "after_second_rename")
            assert (wrapped_by[0][0] != old_master) == committed, step
            _assert_opens(trial_key, url, expected, step)
        finally:
            if child.is_alive():
                child.kill()
            drop_clone(url)


@pytest.mark.slow
def test_sigkill_at_random_master_rotation_moments(
    small_vault: tuple[str, dict[str, str]], key_file: Path, tmp_path: Path
) -> None:
    template_url, expected = small_vault
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    for trial in range(RANDOM_TRIALS):
        trial_key, url = _copy_vault(template_url, key_file, tmp_path, f"random{trial}")
        parent_end, child_end = SPAWN.Pipe(duplex=False)
        child = SPAWN.Process(target=_rotate_master_and_wait, args=(str(trial_key), url, child_end))
        try:
            child.start()
            child_end.close()
            assert parent_end.poll(TIMEOUT)
            assert parent_end.recv() == "ready"
            time.sleep(rng.uniform(0.0, 0.03))
            child.kill()
            child.join(timeout=TIMEOUT)
            _assert_opens(trial_key, url, expected, f"trial {trial}, seed {seed}")
        finally:
            if child.is_alive():
                child.kill()
            parent_end.close()
            drop_clone(url)


def test_master_key_from_environment(
    vault: SecretManager, key_file: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_id = vault.store_secret("api", "token-value")
    vault.close()
    old_text = key_file.read_text().strip()
    new = keyfile.MasterKey.generate()

    monkeypatch.setenv(keyfile.MASTER_KEY_ENV, f"{new.raw.decode()},{old_text}")
    with SecretManager(url=db_url) as both:
        assert both.rotate_master_key(generate=False) == new.key_id
        assert both.get_secret(secret_id) == "token-value"
    wrapped_by = fetch(db_url, "SELECT master_key_id FROM fernvault_data_keys")
    assert wrapped_by == [(new.key_id,)]

    monkeypatch.setenv(keyfile.MASTER_KEY_ENV, new.raw.decode())
    with SecretManager(url=db_url) as only_new:
        assert only_new.get_secret(secret_id) == "token-value"

    monkeypatch.setenv(keyfile.MASTER_KEY_ENV, old_text)
    with pytest.raises(WrongMasterKeyError, match=keyfile.MASTER_KEY_ENV):
        SecretManager(url=db_url)


def test_master_rotation_needs_key_file_to_generate(
    vault: SecretManager, key_file: Path, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    vault.close()
    monkeypatch.setenv(keyfile.MASTER_KEY_ENV, key_file.read_text().strip())
    with SecretManager(url=db_url) as env_vault, pytest.raises(KeyFileError, match="generate"):
        env_vault.rotate_master_key()


def _rotate_master_then_data_key(key_file: str, url: str) -> str:
    with SecretManager(key_file, url) as vault:
        vault.rotate_master_key()
        vault.rotate_key()
    return keyfile.read_key_file(Path(key_file)).primary.key_id


def test_long_running_process_survives_master_rotation(
    vault: SecretManager, key_file: Path, db_url: str
) -> None:
    secret_id = vault.store_secret("api", "token-value")
    assert vault.get_secret(secret_id) == "token-value"  # caches the data key

    ((status, new_master),) = run_children(
        [(_rotate_master_then_data_key, (str(key_file), db_url))], TIMEOUT
    )
    assert status == "ok", new_master

    # The data key is new and wrapped by a master key this process never read.
    assert vault.get_secret(secret_id) == "token-value"
    vault.rotate_key()
    assert fetch(db_url, "SELECT master_key_id FROM fernvault_data_keys") == [(new_master,)]
