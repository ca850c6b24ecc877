"""Arguments of the wrong type or shape get fernvault's input errors, with no value quoted."""

from __future__ import annotations

from pathlib import Path

import pytest

from fernvault import (
    InvalidInputError,
    InvalidTypeError,
    SecretManager,
    SecretNotFoundError,
    encrypt_configuration,
    manage_secrets,
)

CANARY = "VALUE-CANARY-5d1c"


def test_value_in_place_of_id_is_not_quoted(vault: SecretManager) -> None:
    secret_id = vault.store_secret("kept", "value")
    with pytest.raises(SecretNotFoundError) as caught:
        vault.update_secret(CANARY, secret_id)
    assert CANARY not in str(caught.value)


@pytest.mark.parametrize("items", [[("only-one",)], [("a", "b", "c")], "ab", [["a", "b"]]])
def test_store_secrets_rejects_bad_items(vault: SecretManager, items: object) -> None:
    with pytest.raises(InvalidTypeError):
        vault.store_secrets(items)  # type: ignore[arg-type]
    assert vault.list_secrets() == []


def test_manage_secrets_rejects_misspelt_keyword(key_file: Path, db_url: str) -> None:
    with pytest.raises(InvalidInputError, match="metdata"):
        manage_secrets("store", name="n", value="v", metdata={}, key_file=key_file, url=db_url)


def test_encrypt_configuration_rejects_non_str_path(vault: SecretManager) -> None:
    with pytest.raises(InvalidTypeError):
        encrypt_configuration({"a": "x"}, [5], manager=vault)  # type: ignore[list-item]


@pytest.mark.parametrize("path", ["a.²", "a.١", "a.00", "a.01"])
def test_only_canonical_ascii_indexes(vault: SecretManager, path: str) -> None:
    config = {"a": ["zero", "one"]}
    assert encrypt_configuration(config, [path], manager=vault) == config
    assert vault.list_secrets() == []


@pytest.mark.parametrize("batch_size", ["5", 0, -1, True, 2.0, 1_000_001, 2**63])
def test_batch_size_checked(key_file: Path, db_url: str, batch_size: object) -> None:
    with pytest.raises((InvalidTypeError, InvalidInputError)):
        SecretManager(key_file, db_url, batch_size=batch_size)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["\u200b", "\ufeff", " \u200b "])
def test_invisible_names_rejected(vault: SecretManager, name: str) -> None:
    with pytest.raises(InvalidInputError, match="visible"):
        vault.store_secret(name, "v")


def test_emoji_sequence_name_accepted(vault: SecretManager) -> None:
    name = "family \U0001f468\u200d\U0001f469\u200d\U0001f467"
    vault.store_secret(name, "v")
    assert vault.get_secret_by_name(name) == "v"


def test_key_file_named_like_its_database(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="ends in .db"):
        SecretManager(tmp_path / "vault.db")
    assert list(tmp_path.iterdir()) == []
