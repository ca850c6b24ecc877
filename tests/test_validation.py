"""Input validation: every rejected input raises before the database is touched.

Each case runs on SQLite and PostgreSQL with the same expected exception, so
both databases accept and reject exactly the same inputs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fernvault import InvalidInputError, InvalidTypeError, SecretManager, manage_secrets
from fernvault.errors import FernvaultError
from fernvault.validation import MAX_METADATA_BYTES, MAX_NAME_LENGTH, MAX_VALUE_BYTES

from . import dbutil

BAD_NAMES: list[tuple[object, type[Exception]]] = [
    (None, InvalidTypeError),
    (42, InvalidTypeError),
    (b"bytes", InvalidTypeError),
    ("", InvalidInputError),
    ("   ", InvalidInputError),
    ("\t\n", InvalidInputError),
    ("a" * (MAX_NAME_LENGTH + 1), InvalidInputError),
    ("nul\x00inside", InvalidInputError),
    ("new\nline", InvalidInputError),
    ("carriage\rreturn", InvalidInputError),
    ("escape\x1b[31m", InvalidInputError),
    ("delete\x7f", InvalidInputError),
    ("c1\x85control", InvalidInputError),
    ("line\u2028separator", InvalidInputError),
    ("paragraph\u2029separator", InvalidInputError),
    ("bidi\u202eoverride", InvalidInputError),
    ("bidi\u2066isolate", InvalidInputError),
    ("lone\ud800surrogate", InvalidInputError),
]

BAD_VALUES: list[tuple[object, type[Exception]]] = [
    (None, InvalidTypeError),
    (b"bytes", InvalidTypeError),
    (42, InvalidTypeError),
    (["list"], InvalidTypeError),
    ("lone\udfffsurrogate", InvalidInputError),
    ("x" * (MAX_VALUE_BYTES + 1), InvalidInputError),
    ("é" * (MAX_VALUE_BYTES // 2 + 1), InvalidInputError),
]

BAD_METADATA: list[tuple[object, type[Exception]]] = [
    ("a string", InvalidTypeError),
    (["a", "list"], InvalidTypeError),
    (42, InvalidTypeError),
    ({1: "int key"}, InvalidTypeError),
    ({("tuple",): "key"}, InvalidTypeError),
    ({"set": {1, 2}}, InvalidTypeError),
    ({"bytes": b"x"}, InvalidTypeError),
    ({"object": object()}, InvalidTypeError),
    ({"nan": float("nan")}, InvalidInputError),
    ({"inf": float("inf")}, InvalidInputError),
    ({"big_float": 1.5e300}, InvalidInputError),
    ({"big_float": -1e16}, InvalidInputError),
    ({"nul": "a\x00b"}, InvalidInputError),
    ({"nul\x00key": 1}, InvalidInputError),
    ({"surrogate": "\ud800"}, InvalidInputError),
    ({"big": "x" * MAX_METADATA_BYTES}, InvalidInputError),
    ({"huge_int": 10**5000}, InvalidInputError),
]


def _deep(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {}
    for _ in range(depth):
        node = {"k": node}
    return node


BAD_METADATA.append((_deep(40), InvalidInputError))


def _forbid_database(vault: SecretManager, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any database access fail the test, to prove validation runs first."""

    def touched(*_args: object, **_kwargs: object) -> Any:
        raise AssertionError("the database was touched before the input was validated")

    for attribute in ("run", "read_one"):
        if hasattr(vault._db, attribute):
            monkeypatch.setattr(vault._db, attribute, touched)


def _check(call: Callable[[], object], expected: type[Exception], case: object) -> None:
    try:
        shown = repr(case)[:80]
    except ValueError:  # an int beyond Python's digit limit for str()
        shown = f"<{type(case).__name__}>"
    try:
        call()
    except expected as exc:
        error: Exception = exc
    else:
        pytest.fail(f"no {expected.__name__} for {shown}")
    assert isinstance(error, FernvaultError), shown
    base = TypeError if expected is InvalidTypeError else ValueError
    assert isinstance(error, base), shown


def test_bad_names_rejected_first(vault: SecretManager, monkeypatch: pytest.MonkeyPatch) -> None:
    _forbid_database(vault, monkeypatch)
    for name, expected in BAD_NAMES:
        _check_name(vault, name, expected)


def _check_name(vault: SecretManager, name: object, expected: type[Exception]) -> None:
    _check(lambda: vault.store_secret(name, "v"), expected, name)  # type: ignore[arg-type]
    _check(lambda: vault.store_secrets([(name, "v")]), expected, name)  # type: ignore[list-item]
    _check(lambda: vault.get_secret_by_name(name), expected, name)  # type: ignore[arg-type]
    _check(lambda: vault.update_secret_by_name(name, "v"), expected, name)  # type: ignore[arg-type]
    _check(lambda: vault.delete_secret_by_name(name), expected, name)  # type: ignore[arg-type]


def test_bad_values_rejected_first(vault: SecretManager, monkeypatch: pytest.MonkeyPatch) -> None:
    secret_id = vault.store_secret("existing", "old")
    _forbid_database(vault, monkeypatch)
    for value, expected in BAD_VALUES:
        _check_value(vault, secret_id, value, expected)


def _check_value(
    vault: SecretManager, secret_id: str, value: object, expected: type[Exception]
) -> None:
    _check(lambda: vault.store_secret("n", value), expected, value)  # type: ignore[arg-type]
    _check(lambda: vault.store_secrets({"n": value}), expected, value)  # type: ignore[dict-item]
    _check(lambda: vault.update_secret(secret_id, value), expected, value)  # type: ignore[arg-type]
    _check(lambda: vault.update_secret_by_name("existing", value), expected, value)  # type: ignore[arg-type]


def test_bad_metadata_rejected_first(vault: SecretManager, monkeypatch: pytest.MonkeyPatch) -> None:
    secret_id = vault.store_secret("existing", "old")
    _forbid_database(vault, monkeypatch)
    for metadata, expected in BAD_METADATA:
        _check_metadata(vault, secret_id, metadata, expected)


def _check_metadata(
    vault: SecretManager, secret_id: str, metadata: object, expected: type[Exception]
) -> None:
    _check(lambda: vault.store_secret("n", "v", metadata), expected, metadata)  # type: ignore[arg-type]
    _check(lambda: vault.store_secrets({"n": "v"}, metadata), expected, metadata)  # type: ignore[arg-type]
    _check(lambda: vault.update_secret(secret_id, "v", metadata), expected, metadata)  # type: ignore[arg-type]


@pytest.mark.parametrize("secret_id", [None, 42, b"0" * 32])
def test_non_str_secret_id_rejected(vault: SecretManager, secret_id: object) -> None:
    for call in (vault.get_secret, vault.delete_secret):
        with pytest.raises(InvalidTypeError):
            call(secret_id)  # type: ignore[arg-type]
    with pytest.raises(InvalidTypeError):
        vault.update_secret(secret_id, "v")  # type: ignore[arg-type]


def test_rejected_inputs_store_nothing(vault: SecretManager, db_url: str) -> None:
    for name, _ in BAD_NAMES:
        with pytest.raises(FernvaultError):
            vault.store_secret(name, "v")  # type: ignore[arg-type]
    with pytest.raises(FernvaultError):
        vault.store_secrets({"good": "v", "bad\x00": "v"})
    assert dbutil.fetch(db_url, "SELECT count(*) FROM fernvault_secrets") == [(0,)]


def test_name_error_hides_value(vault: SecretManager) -> None:
    with pytest.raises(InvalidInputError) as caught:
        vault.store_secret("bad\nname", "canary-value-in-bad-call")
    assert "canary-value-in-bad-call" not in str(caught.value)
    assert "U+000A" in str(caught.value)


def test_value_error_hides_value(vault: SecretManager) -> None:
    with pytest.raises(InvalidInputError, match=f"maximum is {MAX_VALUE_BYTES}") as caught:
        vault.store_secret("n", "canary" * (MAX_VALUE_BYTES // 6 + 1))
    assert "canary" not in str(caught.value)


HARD_NAMES = [
    "x' OR '1'='1",
    "'; DROP TABLE fernvault_secrets; --",
    'double "quoted"',
    "back\\slash",
    "forward/slash/path",
    "  leading and trailing spaces  ",
    "percent%and_underscore",
    "emoji 🔑🗝️",
    "family 👨\u200d👩\u200d👧",
    "é composed",
    "e\u0301 decomposed",
    "🔑" * MAX_NAME_LENGTH,
    "a" * MAX_NAME_LENGTH,
]


def test_hard_names_round_trip(vault: SecretManager) -> None:
    ids = {name: vault.store_secret(name, "value of " + name) for name in HARD_NAMES}
    assert sorted(entry["name"] for entry in vault.list_secrets()) == sorted(HARD_NAMES)
    for name, secret_id in ids.items():
        assert vault.get_secret_by_name(name) == "value of " + name, name
        assert vault.update_secret_by_name(name, "new " + name) == secret_id, name
        assert vault.get_secret(secret_id) == "new " + name, name
    for name in HARD_NAMES:
        assert vault.delete_secret_by_name(name) is True, name
    assert vault.list_secrets() == []


def test_names_match_exactly(vault: SecretManager) -> None:
    vault.store_secret("abc", "1")
    vault.store_secret("é composed", "2")
    for probe in ("ab%", "a_c", "ABC", "abc ", " abc", "e\u0301 composed"):
        assert vault.get_secret_by_name(probe) is None


@pytest.mark.parametrize(
    "value",
    [
        "x" * 64 * 1024,
        "y" * 1024 * 1024,
        "nul\x00\x00bytes\x00",
        "\x00",
        "é" * (MAX_VALUE_BYTES // 2),
    ],
    ids=["64KiB", "1MiB", "nul-bytes", "only-nul", "max-two-byte"],
)
def test_large_and_nul_values_round_trip(vault: SecretManager, value: str) -> None:
    secret_id = vault.store_secret("v", value)
    assert vault.get_secret(secret_id) == value
    vault.update_secret(secret_id, value[::-1])
    assert vault.get_secret(secret_id) == value[::-1]


def test_metadata_at_limits_round_trips(vault: SecretManager) -> None:
    metadata = {
        "deep": _deep(30),
        "int": 10**30,
        "float": 9.999999999999998e15,
        "tiny": 5e-324,
        "negative": -123.25,
        "unicode": "ünï 🔑",
        "list": [1, "two", None, True, {"x": []}],
    }
    vault.store_secret("m", "v", metadata)
    assert vault.list_secrets()[0]["metadata"] == metadata


@pytest.mark.parametrize(
    ("operation", "arguments", "expected"),
    [
        ("store", {"name": "", "value": "v"}, InvalidInputError),
        ("store", {"name": "n", "value": None}, InvalidTypeError),
        ("store", {"name": "n", "value": "v", "metadata": [1]}, InvalidTypeError),
        ("get_by_name", {"name": 7}, InvalidTypeError),
        ("update", {"secret_id": "0" * 32, "value": b"v"}, InvalidTypeError),
        ("get", {"secret_id": None}, InvalidTypeError),
        ("delete", {"secret_id": 1}, InvalidTypeError),
    ],
)
def test_manage_secrets_checks_before_opening(
    tmp_path: Path, operation: str, arguments: dict[str, Any], expected: type[Exception]
) -> None:
    key_file = tmp_path / "vault.key"
    with pytest.raises(expected):
        manage_secrets(operation, key_file=key_file, **arguments)
    assert list(tmp_path.iterdir()) == []
