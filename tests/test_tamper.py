"""Tamper detection: rows and data keys altered in the database behind the vault's back.

Each case damages one thing with raw SQL, then checks that reading the
affected secret raises IntegrityError naming it, that the other secrets still
read, and that ``verify`` (API and command line) lists every damaged secret.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.fernet import Fernet

from fernvault import IntegrityError, SecretManager
from fernvault.cli import cli
from fernvault.crypto import seal

from . import dbutil

VALUES = {"alpha": "value-alpha", "beta": "value-beta", "gamma": "value-gamma"}


@dataclass
class Vault:
    manager: SecretManager
    url: str
    key_file: Path
    ids: dict[str, str]


@pytest.fixture
def filled(key_file: Path, db_url: str) -> Iterator[Vault]:
    manager = SecretManager(key_file, db_url)
    try:
        ids = {name: manager.store_secret(name, value) for name, value in VALUES.items()}
        yield Vault(manager, db_url, key_file, ids)
    finally:
        manager.close()


def _token(url: str, secret_id: str) -> str:
    return str(
        dbutil.fetch(url, "SELECT token FROM fernvault_secrets WHERE id = :i", {"i": secret_id})[0][
            0
        ]
    )


def _set_token(url: str, secret_id: str, token: str) -> None:
    dbutil.execute(
        url, "UPDATE fernvault_secrets SET token = :t WHERE id = :i", {"t": token, "i": secret_id}
    )


def _flip(text: str, position: int) -> str:
    replacement = "A" if text[position] != "A" else "B"
    return text[:position] + replacement + text[position + 1 :]


def _add_second_data_key(vault: Vault, name: str) -> str:
    """Insert an older data key and move secret ``name`` under it; return the key id."""
    key_id = "d" * 32
    key = Fernet.generate_key()
    wrapped, master_key_id = vault.manager._keys.ring.wrap(key, data_key_id=key_id)
    created = datetime.now(timezone.utc) - timedelta(days=1)
    dbutil.execute(
        vault.url,
        "INSERT INTO fernvault_data_keys (id, wrapped_key, master_key_id, created_at) "
        "VALUES (:i, :w, :m, :c)",
        {"i": key_id, "w": wrapped, "m": master_key_id, "c": created.replace(tzinfo=None)},
    )
    secret_id = vault.ids[name]
    token = seal(Fernet(key), secret_id, name, VALUES[name])
    dbutil.execute(
        vault.url,
        "UPDATE fernvault_secrets SET token = :t, key_id = :k WHERE id = :i",
        {"t": token, "k": key_id, "i": secret_id},
    )
    return key_id


def _wrapped_key(url: str, key_id: str) -> str:
    rows = dbutil.fetch(
        url, "SELECT wrapped_key FROM fernvault_data_keys WHERE id = :i", {"i": key_id}
    )
    return str(rows[0][0])


def _set_wrapped_key(url: str, key_id: str, wrapped: str) -> None:
    dbutil.execute(
        url,
        "UPDATE fernvault_data_keys SET wrapped_key = :w WHERE id = :i",
        {"w": wrapped, "i": key_id},
    )


def _active_key_id(url: str) -> str:
    rows = dbutil.fetch(url, "SELECT id FROM fernvault_data_keys")
    assert len(rows) == 1
    return str(rows[0][0])


def _assert_only_damaged(vault: Vault, damaged: set[str]) -> None:
    """Reopen the vault and check reads and verify for the damaged and intact names."""
    with SecretManager(vault.key_file, vault.url) as manager:
        for name, secret_id in vault.ids.items():
            if name in damaged:
                with pytest.raises(IntegrityError, match=secret_id) as caught:
                    manager.get_secret(secret_id)
                assert caught.value.secret_id == secret_id
                with pytest.raises(IntegrityError, match=secret_id):
                    manager.get_secret_by_name(name)
            else:
                assert manager.get_secret(secret_id) == VALUES[name]
        report = manager.verify()
    assert report.total == len(VALUES)
    assert {failure["id"] for failure in report.failures} == {vault.ids[n] for n in damaged}
    for failure in report.failures:
        assert failure["id"] in failure["error"]


def _cli_verify(vault: Vault) -> tuple[int, str]:
    result = CliRunner().invoke(
        cli, ["--key-file", str(vault.key_file), "--url", vault.url, "verify"]
    )
    return result.exit_code, result.stdout


def test_flipped_token_byte_detected(filled: Vault) -> None:
    secret_id = filled.ids["beta"]
    token = _token(filled.url, secret_id)
    _set_token(filled.url, secret_id, _flip(token, len(token) // 2))
    _assert_only_damaged(filled, {"beta"})


def test_truncated_token_detected(filled: Vault) -> None:
    secret_id = filled.ids["beta"]
    _set_token(filled.url, secret_id, _token(filled.url, secret_id)[:-10])
    _assert_only_damaged(filled, {"beta"})


def test_non_ascii_token_detected(filled: Vault) -> None:
    _set_token(filled.url, filled.ids["beta"], "gAAAAé")
    _assert_only_damaged(filled, {"beta"})


def test_token_copied_from_other_row(filled: Vault) -> None:
    _set_token(filled.url, filled.ids["beta"], _token(filled.url, filled.ids["alpha"]))
    _assert_only_damaged(filled, {"beta"})
    with pytest.raises(IntegrityError, match="another row"):
        filled.manager.get_secret(filled.ids["beta"])


def test_tokens_swapped_between_rows(filled: Vault) -> None:
    alpha, beta = filled.ids["alpha"], filled.ids["beta"]
    alpha_token, beta_token = _token(filled.url, alpha), _token(filled.url, beta)
    _set_token(filled.url, alpha, beta_token)
    _set_token(filled.url, beta, alpha_token)
    _assert_only_damaged(filled, {"alpha", "beta"})


def test_renamed_row_detected(filled: Vault) -> None:
    dbutil.execute(
        filled.url,
        "UPDATE fernvault_secrets SET name = 'renamed' WHERE id = :i",
        {"i": filled.ids["gamma"]},
    )
    with pytest.raises(IntegrityError, match=filled.ids["gamma"]):
        filled.manager.get_secret(filled.ids["gamma"])
    assert filled.manager.get_secret(filled.ids["alpha"]) == VALUES["alpha"]


def test_row_pointing_to_other_data_key(filled: Vault) -> None:
    active = _active_key_id(filled.url)
    _add_second_data_key(filled, "gamma")
    dbutil.execute(
        filled.url,
        "UPDATE fernvault_secrets SET key_id = :k WHERE id = :i",
        {"k": active, "i": filled.ids["gamma"]},
    )
    _assert_only_damaged(filled, {"gamma"})


def test_altered_data_key_is_integrity_error(filled: Vault) -> None:
    key_id = _add_second_data_key(filled, "gamma")
    wrapped = _wrapped_key(filled.url, key_id)
    _set_wrapped_key(filled.url, key_id, _flip(wrapped, len(wrapped) // 2))
    _assert_only_damaged(filled, {"gamma"})
    with (
        SecretManager(filled.key_file, filled.url) as manager,
        pytest.raises(IntegrityError, match=f"data key {key_id} .* was altered"),
    ):
        manager.get_secret(filled.ids["gamma"])


def test_altered_active_data_key_blocks_writes(filled: Vault) -> None:
    active = _active_key_id(filled.url)
    wrapped = _wrapped_key(filled.url, active)
    _set_wrapped_key(filled.url, active, _flip(wrapped, len(wrapped) // 2))
    _assert_only_damaged(filled, set(VALUES))
    with SecretManager(filled.key_file, filled.url) as manager:
        with pytest.raises(IntegrityError, match=f"data key {active}"):
            manager.store_secret("delta", "value-delta")
        assert [entry["name"] for entry in manager.list_secrets()] == sorted(VALUES)


def test_data_keys_swapped_between_rows(filled: Vault) -> None:
    active = _active_key_id(filled.url)
    older = _add_second_data_key(filled, "gamma")
    active_wrapped, older_wrapped = (
        _wrapped_key(filled.url, active),
        _wrapped_key(filled.url, older),
    )
    _set_wrapped_key(filled.url, active, older_wrapped)
    _set_wrapped_key(filled.url, older, active_wrapped)
    _assert_only_damaged(filled, set(VALUES))
    with (
        SecretManager(filled.key_file, filled.url) as manager,
        pytest.raises(IntegrityError, match="made for another data key row"),
    ):
        manager.get_secret(filled.ids["alpha"])


def test_data_key_copied_onto_other_row(filled: Vault) -> None:
    active = _active_key_id(filled.url)
    older = _add_second_data_key(filled, "gamma")
    _set_wrapped_key(filled.url, older, _wrapped_key(filled.url, active))
    _assert_only_damaged(filled, {"gamma"})


def test_altered_master_key_id_still_reads(filled: Vault) -> None:
    # The master key id of a data key row is only a hint for which key to try first.
    dbutil.execute(filled.url, "UPDATE fernvault_data_keys SET master_key_id = 'ffff'")
    _assert_only_damaged(filled, set())


def test_rotation_refuses_damaged_vault(filled: Vault) -> None:
    secret_id = filled.ids["beta"]
    token = _token(filled.url, secret_id)
    _set_token(filled.url, secret_id, _flip(token, len(token) // 2))
    before = dbutil.snapshot(filled.url)
    with pytest.raises(IntegrityError, match=secret_id):
        filled.manager.rotate_key()
    assert dbutil.snapshot(filled.url) == before


def test_cli_verify_lists_damaged(filled: Vault) -> None:
    assert _cli_verify(filled)[0] == 0
    for name in ("alpha", "gamma"):
        secret_id = filled.ids[name]
        token = _token(filled.url, secret_id)
        _set_token(filled.url, secret_id, _flip(token, len(token) // 2))
    exit_code, output = _cli_verify(filled)
    assert exit_code == 1
    assert f"FAILED {filled.ids['alpha']} (alpha)" in output
    assert f"FAILED {filled.ids['gamma']} (gamma)" in output
    assert filled.ids["beta"] not in output
    assert "3 secrets checked, 2 failed" in output
    for value in VALUES.values():
        assert value not in output


def test_cli_verify_json_lists_damaged(filled: Vault) -> None:
    active = _active_key_id(filled.url)
    wrapped = _wrapped_key(filled.url, active)
    _set_wrapped_key(filled.url, active, _flip(wrapped, len(wrapped) // 2))
    result = CliRunner().invoke(
        cli, ["--key-file", str(filled.key_file), "--url", filled.url, "verify", "--json"]
    )
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert sorted(failure["id"] for failure in report["failures"]) == sorted(filled.ids.values())


def test_rotation_names_altered_data_key(filled: Vault) -> None:
    key_id = _add_second_data_key(filled, "gamma")
    wrapped = _wrapped_key(filled.url, key_id)
    _set_wrapped_key(filled.url, key_id, _flip(wrapped, len(wrapped) // 2))
    before = dbutil.snapshot(filled.url)
    with SecretManager(filled.key_file, filled.url) as manager:
        with pytest.raises(IntegrityError, match=f"data key {key_id} .* was altered") as caught:
            manager.rotate_key()
        assert caught.value.secret_id == filled.ids["gamma"]
    assert dbutil.snapshot(filled.url) == before
