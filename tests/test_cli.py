"""The command line, run as a real subprocess."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

VALUE = "s3cr3t=with#hash and ünïcode"


def run(
    args: list[str], key_file: Path, url: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERNVAULT_")}
    return subprocess.run(
        [sys.executable, "-m", "fernvault", "--key-file", str(key_file), "--url", url, *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_put_get_ls_rm(key_file: Path, db_url: str) -> None:
    assert run(["init"], key_file, db_url).returncode == 0
    put = run(["put", "api_token", "--meta", "env=prod"], key_file, db_url, stdin=VALUE + "\n")
    assert put.returncode == 0, put.stderr
    assert VALUE not in put.stdout + put.stderr

    got = run(["get", "api_token"], key_file, db_url)
    assert got.returncode == 0
    assert got.stdout == VALUE + "\n"

    listing = run(["ls", "--json"], key_file, db_url)
    entries = json.loads(listing.stdout)
    assert [e["name"] for e in entries] == ["api_token"]
    assert entries[0]["metadata"] == {"env": "prod"}
    assert VALUE not in listing.stdout

    assert run(["rm", "api_token"], key_file, db_url).returncode == 0
    missing = run(["get", "api_token"], key_file, db_url)
    assert missing.returncode == 1
    assert missing.stderr.count("\n") == 1
    assert "not found" in missing.stderr


def test_put_existing_needs_update(key_file: Path, db_url: str) -> None:
    run(["put", "a"], key_file, db_url, stdin="1")
    again = run(["put", "a"], key_file, db_url, stdin="2")
    assert again.returncode == 1
    assert "already exists" in again.stderr
    assert run(["put", "--update", "a"], key_file, db_url, stdin="2").returncode == 0
    assert run(["get", "-n", "a"], key_file, db_url).stdout == "2"


def test_rotate_and_verify_json(key_file: Path, db_url: str) -> None:
    for index in range(3):
        run(["put", f"s{index}"], key_file, db_url, stdin=f"v{index}")
    rotated = run(["rotate", "--json"], key_file, db_url)
    assert rotated.returncode == 0, rotated.stderr
    summary = json.loads(rotated.stdout)
    assert summary["secrets"] == 3
    verified = run(["verify", "--json"], key_file, db_url)
    assert verified.returncode == 0
    assert json.loads(verified.stdout)["per_key"] == {summary["key_id"]: 3}


def test_verify_fails_on_damage(key_file: Path, db_url: str) -> None:
    from .dbutil import execute

    run(["put", "a"], key_file, db_url, stdin="1")
    run(["put", "b"], key_file, db_url, stdin="2")
    execute(db_url, "UPDATE fernvault_secrets SET token = 'gAAAA' || token WHERE name = 'b'")
    verified = run(["verify"], key_file, db_url)
    assert verified.returncode == 1
    assert "FAILED" in verified.stdout
    assert "1 failed" in verified.stdout


def test_import_dotenv(key_file: Path, db_url: str, tmp_path: Path) -> None:
    dotenv = tmp_path / "app.env"
    dotenv.write_text(
        "# comment\n\nexport DATABASE_URL=postgres://u:p%40ss@h/db\n"
        "SINGLE='a # not comment'\nDOUBLE=\"x=y\"\n"
        'PEM="-----BEGIN KEY-----\nabc\n-----END KEY-----"\n'
    )
    imported = run(["import", str(dotenv)], key_file, db_url)
    assert imported.returncode == 0, imported.stderr
    assert run(["get", "-n", "SINGLE"], key_file, db_url).stdout == "a # not comment"
    assert run(["get", "-n", "DOUBLE"], key_file, db_url).stdout == "x=y"
    assert run(["get", "-n", "PEM"], key_file, db_url).stdout == (
        "-----BEGIN KEY-----\nabc\n-----END KEY-----"
    )
    again = run(["import", str(dotenv)], key_file, db_url)
    assert again.returncode == 1
    assert "already exists" in again.stderr
    assert "or import with --skip-existing" in again.stderr
    skipped = run(["import", "--skip-existing", str(dotenv)], key_file, db_url)
    assert skipped.returncode == 0
    assert skipped.stderr.count("skipped") == 4


@pytest.mark.parametrize("args", [["put"], ["nosuchcommand"], ["rotate", "--keep-old"]])
def test_usage_errors_exit_2(key_file: Path, db_url: str, args: list[str]) -> None:
    assert run(args, key_file, db_url).returncode == 2


def test_db_commands(key_file: Path, db_url: str) -> None:
    current = run(["db", "current"], key_file, db_url)
    assert current.returncode == 0
    assert "empty" in current.stdout
    upgraded = run(["db", "upgrade"], key_file, db_url)
    assert upgraded.returncode == 0, upgraded.stderr
    assert "up to date" in run(["db", "current"], key_file, db_url).stdout


def test_wrong_key_is_one_line(key_file: Path, db_url: str, tmp_path: Path) -> None:
    from cryptography.fernet import Fernet

    run(["put", "a"], key_file, db_url, stdin="1")
    other = tmp_path / "other.key"
    other.write_bytes(Fernet.generate_key())
    other.chmod(0o600)
    result = run(["get", "a"], other, db_url)
    assert result.returncode == 1
    assert result.stderr.startswith("fernvault: error: ")
    assert result.stderr.count("\n") == 1
    assert "Traceback" not in result.stderr


def test_put_rejects_empty_stdin(key_file: Path, db_url: str) -> None:
    empty = run(["put", "a"], key_file, db_url, stdin="")
    assert empty.returncode == 1
    assert "--allow-empty" in empty.stderr
    assert run(["put", "--allow-empty", "a"], key_file, db_url, stdin="").returncode == 0
    assert run(["get", "-n", "a"], key_file, db_url).stdout == ""


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"GOOD=1\n!!!bad line\n", "line 2 cannot be parsed"),
        (b"A=1\nB\n", "line 2 has no '='"),
        (b"A=1\nA=2\n", "line 2 repeats the name on line 1"),
        (b"\xff\xfe\x00binary", "not a UTF-8 text file"),
    ],
    ids=["unparsable", "no-equals", "repeated", "binary"],
)
def test_import_rejects_bad_file(
    key_file: Path, db_url: str, tmp_path: Path, content: bytes, message: str
) -> None:
    dotenv = tmp_path / "bad.env"
    dotenv.write_bytes(content)
    result = run(["import", str(dotenv)], key_file, db_url)
    assert result.returncode == 1
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert json.loads(run(["ls", "--json"], key_file, db_url).stdout) == []


def test_get_returns_stored_bytes(key_file: Path, db_url: str) -> None:
    value = "pre\x1b[31mRED\x1b[0mpost ü"
    assert run(["put", "ansi"], key_file, db_url, stdin=value).returncode == 0
    got = subprocess.run(
        [sys.executable, "-m", "fernvault", "--key-file", str(key_file), "--url", db_url]
        + ["get", "-n", "ansi"],
        capture_output=True,
        timeout=120,
        env={**os.environ, "LC_ALL": "C", "PYTHONIOENCODING": "ascii"},
    )
    assert got.returncode == 0
    assert got.stdout == value.encode("utf-8")


def test_put_rejects_non_utf8_stdin(key_file: Path, db_url: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "fernvault", "--key-file", str(key_file), "--url", db_url]
        + ["put", "binary"],
        input=b"ab\xffcd",
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 1
    assert b"not UTF-8" in result.stderr
    assert b"ab" not in result.stderr


def test_db_upgrade_creates_private_default_file(tmp_path: Path) -> None:
    key_file = tmp_path / "new" / "folder" / "vault.key"
    env = {k: v for k, v in os.environ.items() if not k.startswith("FERNVAULT_")}
    result = subprocess.run(
        [sys.executable, "-m", "fernvault", "--key-file", str(key_file), "db", "upgrade"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(key_file.with_suffix(".db").stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700


def test_db_upgrade_unknown_revision_is_one_line(key_file: Path, db_url: str) -> None:
    result = run(["db", "upgrade", "--revision", "bogus"], key_file, db_url)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert "bogus" in result.stderr


def test_loose_key_file_warning_is_one_line(key_file: Path, db_url: str) -> None:
    assert run(["init"], key_file, db_url).returncode == 0
    key_file.chmod(0o644)
    result = run(["ls"], key_file, db_url)
    assert result.returncode == 0
    assert result.stderr.startswith("fernvault: warning: ")
    assert result.stderr.count("\n") == 1
