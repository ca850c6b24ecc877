"""Checks on names, values and metadata, run before the database is touched.

SQLite would store almost anything, PostgreSQL would reject some of it late
and with driver errors, so the limits are enforced here and both databases
accept exactly the same inputs.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Mapping
from typing import Any

from .errors import InvalidInputError, InvalidTypeError

MAX_NAME_LENGTH = 255  # characters; the column is VARCHAR(255)
MAX_VALUE_BYTES = 4 * 1024 * 1024  # UTF-8 bytes of one value
MAX_METADATA_BYTES = 64 * 1024  # bytes of the metadata serialized as JSON
MAX_METADATA_DEPTH = 32
# PostgreSQL's JSONB prints a number of 1e16 or more without a decimal point
# (Python writes such floats with an exponent), so it would come back as an
# int that differs from the float. Smaller floats round-trip on both databases.
MAX_METADATA_FLOAT = 1e16

_SECRET_ID = re.compile(r"[0-9a-f]{32}")

# Rejected in names besides control characters (Cc) and surrogates (Cs): the
# line and paragraph separators, which split log lines like a newline, and the
# bidirectional embedding, override and isolate characters, which make a name
# display as a different one. Other format characters (Cf), such as the zero
# width joiner inside emoji sequences, are allowed.
_NAME_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def check_name(name: object) -> str:
    """Return ``name`` after checking its type, length and characters.

    Raises InvalidTypeError for a non-str and InvalidInputError for a name
    that is empty, only whitespace or invisible format characters (such as
    U+200B), longer than MAX_NAME_LENGTH characters, or contains a control
    character, a line or paragraph separator or a bidirectional control
    character.
    """
    if not isinstance(name, str):
        raise InvalidTypeError(f"secret name must be a str, not {type(name).__name__}")
    if not name.strip():
        raise InvalidInputError("secret name must not be empty or only whitespace")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidInputError(
            f"secret name is {len(name)} characters long; the maximum is {MAX_NAME_LENGTH}"
        )
    if name.isprintable():
        return name  # fast path: no control character, surrogate or line break
    for position, character in enumerate(name):
        category = unicodedata.category(character)
        if category in _NAME_FORBIDDEN_CATEGORIES or character in _BIDI_CONTROLS:
            raise InvalidInputError(
                f"secret name contains U+{ord(character):04X} at position {position}; "
                "control characters, line separators and bidirectional controls are not allowed"
            )
    visible = "".join(ch for ch in name if unicodedata.category(ch) != "Cf")
    if not visible.strip():
        raise InvalidInputError("secret name must contain a visible character")
    return name


def check_value(value: object) -> bytes:
    """Return the value's UTF-8 bytes after checking its type and size."""
    if not isinstance(value, str):
        raise InvalidTypeError(f"secret value must be a str, not {type(value).__name__}")
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"secret value is not valid Unicode: lone surrogate at position {exc.start}"
        ) from None
    if len(encoded) > MAX_VALUE_BYTES:
        raise InvalidInputError(
            f"secret value is {len(encoded)} bytes in UTF-8; the maximum is {MAX_VALUE_BYTES}"
        )
    return encoded


def check_secret_id(secret_id: object) -> bool:
    """Return whether ``secret_id`` has the shape of an id; raise for a non-str."""
    if not isinstance(secret_id, str):
        raise InvalidTypeError(f"secret id must be a str, not {type(secret_id).__name__}")
    return _SECRET_ID.fullmatch(secret_id) is not None


def check_metadata(metadata: object) -> dict[str, Any]:
    """Return a copy of ``metadata`` after checking it is a bounded JSON object.

    Strings may not contain NUL or lone surrogates (PostgreSQL's JSONB rejects
    them), numbers must be finite, and object keys must be strings.
    """
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise InvalidTypeError(f"metadata must be a dict, not {type(metadata).__name__}")
    copy = _check_json(metadata, "metadata", 0)
    try:
        size = len(json.dumps(copy, ensure_ascii=False).encode("utf-8"))
    except ValueError:
        # Python refuses to convert integers of more than sys.get_int_max_str_digits() digits.
        raise InvalidInputError("metadata contains an integer too large for JSON") from None
    if size > MAX_METADATA_BYTES:
        raise InvalidInputError(
            f"metadata is {size} bytes as JSON; the maximum is {MAX_METADATA_BYTES}"
        )
    assert isinstance(copy, dict)
    return copy


def _check_json(value: object, path: str, depth: int) -> Any:
    if depth > MAX_METADATA_DEPTH:
        raise InvalidInputError(f"{path} is nested deeper than {MAX_METADATA_DEPTH} levels")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInputError(f"{path} is {value}, which JSON cannot represent")
        if abs(value) >= MAX_METADATA_FLOAT:
            raise InvalidInputError(
                f"{path} is the float {value!r}; floats must be below {MAX_METADATA_FLOAT:g} "
                "in magnitude, so store it as an int or a str"
            )
        return float(value)
    if isinstance(value, str):
        _check_json_string(value, path)
        return str(value)
    if isinstance(value, Mapping):
        result: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise InvalidTypeError(f"{path} has a key of type {type(key).__name__}; use str")
            _check_json_string(key, f"{path} key")
            result[key] = _check_json(item, f"{path}[{key!r}]", depth + 1)
        return result
    if isinstance(value, (list, tuple)):
        return [
            _check_json(item, f"{path}[{index}]", depth + 1) for index, item in enumerate(value)
        ]
    raise InvalidTypeError(f"{path} is a {type(value).__name__}, which is not a JSON value")


def _check_json_string(text: str, path: str) -> None:
    if "\x00" in text:
        raise InvalidInputError(f"{path} contains a NUL character")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidInputError(f"{path} contains a lone surrogate") from None
