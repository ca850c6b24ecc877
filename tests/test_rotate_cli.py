"""``fernvault rotate`` and ``fernvault key``, run as real subprocesses.

The master key procedure for several hosts is played with two key files
(host A and host B) that share one database.
"""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fernvault import SecretManager
from fernvault import keys as keyfile

from .dbutil import fetch
from .test_cli import run

TIMEOUT = 120.0


def run_with_terminal_stderr(args: list[str], key_file: Path, url: str) -> tuple[int, str, str]:
    """Run the CLI with stderr on a pseudo-terminal; return exit status, stdout and stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERNVAULT_")}
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "fernvault", "--key-file", str(key_file), "--url", url, *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=terminal,
        env=env,
    )
    os.close(terminal)
    chunks = []
    deadline = time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.1)
            if ready:
                try:
                    data = os.read(controller, 4096)
                except OSError:  # the terminal closed when the process exited
                    break
                if not data:
                    break
                chunks.append(data)
            elif process.poll() is not None:
                break
        assert process.stdout is not None
        stdout = process.stdout.read().decode()
        status = process.wait(timeout=TIMEOUT)
    finally:
        os.close(controller)
        if process.poll() is None:
            process.kill()
    return status, stdout, b"".join(chunks).decode()


@pytest.fixture
def filled(key_file: Path, db_url: str) -> int:
    count = 2500
    with SecretManager(key_file, db_url) as vault:
        vault.store_secrets({f"name-{i}": f"value-{i}" for i in range(count)})
    return count


def test_rotate_shows_progress_on_terminal(key_file: Path, db_url: str, filled: int) -> None:
    status, stdout, stderr = run_with_terminal_stderr(["rotate"], key_file, db_url)

    assert status == 0, stderr
    assert f"rotating: {filled} of {filled} secrets (" in stderr
    assert "/s)" in stderr
    assert f"rotated: {filled} secrets re-encrypted under data key " in stdout
    (key_id,) = fetch(db_url, "SELECT id FROM fernvault_data_keys")[0]
    assert key_id in stdout


def test_rotate_without_terminal_prints_no_progress(
    key_file: Path, db_url: str, filled: int
) -> None:
    result = run(["rotate"], key_file, db_url)

    assert result.returncode == 0, result.stderr
    assert "rotating:" not in result.stderr
    assert f"rotated: {filled} secrets" in result.stdout


def test_rotate_json_summary(key_file: Path, db_url: str, filled: int) -> None:
    status, stdout, stderr = run_with_terminal_stderr(["rotate", "--json"], key_file, db_url)

    assert status == 0, stderr
    summary = json.loads(stdout)
    assert set(summary) == {"key_id", "secrets", "seconds"}
    assert summary["secrets"] == filled
    assert summary["seconds"] >= 0
    assert fetch(db_url, "SELECT id FROM fernvault_data_keys") == [(summary["key_id"],)]
    assert "rotating:" not in stderr


def test_rotate_master_json(key_file: Path, db_url: str) -> None:
    assert run(["put", "api"], key_file, db_url, stdin="token-value").returncode == 0
    old_master = keyfile.read_key_file(key_file).primary.key_id

    result = run(["rotate", "--master", "--json"], key_file, db_url)

    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["master_key_id"] != old_master
    assert [k.key_id for k in keyfile.read_key_file(key_file).keys] == [summary["master_key_id"]]
    assert run(["get", "-n", "api"], key_file, db_url).stdout == "token-value"


def _key_ids(key_file: Path) -> list[str]:
    return [key.key_id for key in keyfile.read_key_file(key_file).keys]


def _wrapped_by(url: str) -> set[str]:
    return {row[0] for row in fetch(url, "SELECT master_key_id FROM fernvault_data_keys")}


def test_master_key_procedure_for_two_hosts(key_file: Path, db_url: str, tmp_path: Path) -> None:
    host_a = key_file
    assert run(["put", "db_password"], host_a, db_url, stdin="pw-1").returncode == 0
    host_b = tmp_path / "host-b" / "vault.key"
    host_b.parent.mkdir(mode=0o700)
    shutil.copy2(host_a, host_b)
    (old_master,) = _key_ids(host_a)

    # 1. Add the new key as a standby line on every host.
    added = run(["key", "add", "--generate"], host_a, db_url)
    assert added.returncode == 0, added.stderr
    new_master = _key_ids(host_a)[1]
    assert f"master key {new_master} is standby" in added.stdout
    new_line = host_a.read_text().splitlines()[1]  # as a secret store would hand it over
    copied = run(["key", "add"], host_b, db_url, stdin=new_line + "\n")
    assert copied.returncode == 0, copied.stderr
    assert _key_ids(host_b) == [old_master, new_master]
    assert new_line not in added.stdout + added.stderr + copied.stdout + copied.stderr

    # 2. Make it primary on every host. A rotation run in between wraps under
    #    whichever key that host has first, and every host can unwrap both.
    assert run(["key", "promote", new_master], host_a, db_url).returncode == 0
    assert run(["rotate"], host_a, db_url).returncode == 0
    assert _wrapped_by(db_url) == {new_master}
    assert run(["get", "-n", "db_password"], host_b, db_url).stdout == "pw-1"
    assert run(["rotate"], host_b, db_url).returncode == 0
    assert _wrapped_by(db_url) == {old_master}
    pruned_early = run(["key", "prune"], host_a, db_url)
    assert pruned_early.returncode == 0, pruned_early.stderr
    assert _key_ids(host_a) == [new_master, old_master]  # still needed: kept
    assert run(["key", "promote", new_master], host_b, db_url).returncode == 0

    # 3. Re-wrap the data keys under the new primary key, on one host.
    rewrap = run(["rotate", "--master", "--use-primary", "--keep-old"], host_b, db_url)
    assert rewrap.returncode == 0, rewrap.stderr
    assert _wrapped_by(db_url) == {new_master}
    listing = json.loads(run(["key", "ls", "--json"], host_a, db_url).stdout)
    assert [(k["master_key_id"], len(k["data_keys"])) for k in listing["keys"]] == [
        (new_master, 1),
        (old_master, 0),
    ]
    assert listing["missing"] == []

    # 4. Remove the old key on every host.
    for host in (host_a, host_b):
        pruned = run(["key", "prune"], host, db_url)
        assert pruned.returncode == 0, pruned.stderr
        assert "removed 1 master keys" in pruned.stdout
        assert _key_ids(host) == [new_master]
        assert run(["get", "-n", "db_password"], host, db_url).stdout == "pw-1"
        assert run(["verify"], host, db_url).returncode == 0


def test_key_prune_rejects_missing_master_key(key_file: Path, db_url: str, tmp_path: Path) -> None:
    assert run(["init"], key_file, db_url).returncode == 0
    stranger = tmp_path / "other" / "vault.key"
    stranger.parent.mkdir(mode=0o700)
    keyfile.create_key_file(stranger)
    before = stranger.read_bytes()

    result = run(["key", "prune"], stranger, db_url)

    assert result.returncode == 1
    assert "not in" in result.stderr
    assert "nothing was removed" in result.stderr
    assert stranger.read_bytes() == before
    listing = json.loads(run(["key", "ls", "--json"], stranger, db_url).stdout)
    assert listing["missing"] == [keyfile.read_key_file(key_file).primary.key_id]


def test_key_add_rejects_invalid_key(key_file: Path, db_url: str) -> None:
    assert run(["init"], key_file, db_url).returncode == 0
    before = key_file.read_bytes()

    result = run(["key", "add"], key_file, db_url, stdin="not-a-key-at-all\n")

    assert result.returncode == 1
    assert "invalid master key in standard input, line 1" in result.stderr
    assert "not-a-key-at-all" not in result.stderr
    assert key_file.read_bytes() == before


def test_key_add_primary_and_existing(key_file: Path, db_url: str) -> None:
    assert run(["init"], key_file, db_url).returncode == 0
    (old_master,) = _key_ids(key_file)
    new = keyfile.MasterKey.generate()

    assert run(["key", "add", "--primary"], key_file, db_url, new.raw.decode()).returncode == 0
    assert _key_ids(key_file) == [new.key_id, old_master]
    again = run(["key", "add"], key_file, db_url, stdin=new.raw.decode())
    assert again.returncode == 0
    assert _key_ids(key_file) == [new.key_id, old_master]
    assert stat_mode(key_file) == 0o600


def test_key_promote_unknown_id(key_file: Path, db_url: str) -> None:
    assert run(["init"], key_file, db_url).returncode == 0

    result = run(["key", "promote", "0123456789abcdef"], key_file, db_url)

    assert result.returncode == 1
    assert "master key 0123456789abcdef is not in" in result.stderr


def test_key_commands_reject_environment_keys(key_file: Path, db_url: str) -> None:
    assert run(["init"], key_file, db_url).returncode == 0
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERNVAULT_")}
    env[keyfile.MASTER_KEY_ENV] = key_file.read_text().strip()

    result = subprocess.run(
        [sys.executable, "-m", "fernvault", "--url", db_url, "key", "add", "--generate"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
    )

    assert result.returncode == 1
    assert "FERNVAULT_MASTER_KEY" in result.stderr
    assert env[keyfile.MASTER_KEY_ENV] not in result.stderr


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_rotate_one_secret_singular(key_file: Path, db_url: str) -> None:
    with SecretManager(key_file, db_url) as vault:
        vault.store_secret("only", "value")

    result = run(["rotate"], key_file, db_url)

    assert result.returncode == 0, result.stderr
    assert "rotated: 1 secret re-encrypted under data key " in result.stdout
