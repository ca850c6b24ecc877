"""Property tests: arbitrary values, names and JSON metadata round-trip on both databases.

Hypothesis generates Unicode text (every code point except surrogates, which
are not valid in UTF-8) and JSON objects within the documented limits. Each
example runs against one vault per database, so the examples share rows and
each name carries a counter to stay unique.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fernvault import SecretManager, decrypt_configuration, encrypt_configuration
from fernvault.errors import InvalidInputError
from fernvault.validation import MAX_METADATA_FLOAT, MAX_NAME_LENGTH, check_name

PROPERTY_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

json_text = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=20)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False).filter(
        lambda number: abs(number) < MAX_METADATA_FLOAT
    )
    | json_text
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(json_text, children, max_size=4)
    ),
    max_leaves=12,
)
json_objects = st.dictionaries(json_text, json_values, max_size=5)
values = st.text(max_size=300)


def _valid_name(name: str) -> bool:
    try:
        check_name(name)
    except InvalidInputError:
        return False
    return True


names = st.text(min_size=1, max_size=MAX_NAME_LENGTH - 8).filter(_valid_name)
_counter = itertools.count()


def _unique(name: str) -> str:
    return f"{next(_counter):06d}:{name}"


@PROPERTY_SETTINGS
@given(name=names, value=values, new_value=values, metadata=json_objects)
def test_secret_round_trips(
    vault: SecretManager, name: str, value: str, new_value: str, metadata: dict[str, Any]
) -> None:
    name = _unique(name)
    secret_id = vault.store_secret(name, value, metadata)
    assert vault.get_secret(secret_id) == value
    assert vault.get_secret_by_name(name) == value
    listed = {entry["id"]: entry for entry in vault.list_secrets()}[secret_id]
    assert listed["name"] == name
    assert listed["metadata"] == metadata

    vault.update_secret(secret_id, new_value, {"previous": metadata})
    assert vault.get_secret(secret_id) == new_value

    vault.rotate_key()
    assert vault.get_secret(secret_id) == new_value
    assert vault.get_secret_by_name(name) == new_value


# Keys without dots or leading digits, so each one is a single step of a path.
config_keys = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)
config_leaves = st.none() | st.booleans() | st.integers() | values
configs = st.dictionaries(
    config_keys,
    st.recursive(
        config_leaves,
        lambda children: (
            st.lists(children, max_size=3) | st.dictionaries(config_keys, children, max_size=3)
        ),
        max_leaves=10,
    ),
    max_size=4,
)


def _string_paths(node: Any, prefix: str = "") -> list[str]:
    """Return the dotted path of every string leaf of nested dicts and lists."""
    if isinstance(node, str):
        return [prefix]
    if isinstance(node, dict):
        items = list(node.items())
    elif isinstance(node, list):
        items = [(str(index), item) for index, item in enumerate(node)]
    else:
        return []
    paths: list[str] = []
    for key, item in items:
        paths.extend(_string_paths(item, f"{prefix}.{key}" if prefix else key))
    return paths


def _leaf(node: Any, path: str) -> Any:
    for step in path.split("."):
        node = node[int(step)] if isinstance(node, list) else node[step]
    return node


@PROPERTY_SETTINGS
@given(config=configs)
def test_configuration_round_trips(vault: SecretManager, config: dict[str, Any]) -> None:
    original = copy.deepcopy(config)
    paths = _string_paths(config)

    encrypted = encrypt_configuration(config, paths, manager=vault)
    assert config == original
    for path in paths:
        reference = _leaf(encrypted, path)
        assert reference.startswith("encrypted:"), path
        assert len(reference) == len("encrypted:") + 32, path

    assert decrypt_configuration(encrypted, manager=vault) == original
    vault.rotate_key()
    assert decrypt_configuration(encrypted, manager=vault) == original
