"""Module-level helpers kept from the earlier in-memory API.

``manage_secrets`` dispatches one operation by name; ``encrypt_configuration``
moves chosen values of a configuration into the vault and leaves
``encrypted:{id}`` references in their place; ``decrypt_configuration``
resolves those references again.
"""

from __future__ import annotations

import copy
import logging
import os
import re
import secrets
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from .errors import FernvaultError, InvalidInputError, InvalidTypeError, SecretNotFoundError
from .manager import SecretManager
from .validation import (
    MAX_NAME_LENGTH,
    check_metadata,
    check_name,
    check_secret_id,
    check_value,
)

logger = logging.getLogger(__name__)

REFERENCE_PREFIX = "encrypted:"
_REFERENCE = re.compile(r"encrypted:([0-9a-f]{32})")

# The keyword arguments of each operation, besides key_file and url.
_ARGUMENTS: dict[str, frozenset[str]] = {
    "store": frozenset({"name", "value", "metadata"}),
    "get": frozenset({"secret_id"}),
    "get_by_name": frozenset({"name"}),
    "list": frozenset(),
    "update": frozenset({"secret_id", "value", "metadata"}),
    "delete": frozenset({"secret_id"}),
    "rotate": frozenset(),
}
_OPERATIONS = tuple(_ARGUMENTS)


@contextmanager
def _vault(
    manager: SecretManager | None, key_file: str | os.PathLike[str] | None, url: str | None
) -> Iterator[SecretManager]:
    if manager is not None:
        yield manager
        return
    with SecretManager(key_file, url) as opened:
        yield opened


def manage_secrets(operation: str, **kwargs: Any) -> Any:
    """Run one vault operation by name and return its result.

    Operations and their keyword arguments: ``store`` (name, value, metadata),
    ``get`` (secret_id), ``get_by_name`` (name), ``list``, ``update``
    (secret_id, value, metadata), ``delete`` (secret_id), ``rotate``. Every
    operation also accepts ``key_file`` and ``url``. Raises FernvaultError for
    an unknown operation.
    """
    if operation not in _OPERATIONS:
        message = (
            f"unknown secret operation {operation!r}; expected one of {', '.join(_OPERATIONS)}"
        )
        logger.error("%s", message)
        raise FernvaultError(message)
    key_file = kwargs.pop("key_file", None)
    url = kwargs.pop("url", None)
    unexpected = sorted(set(kwargs) - _ARGUMENTS[operation])
    if unexpected:
        # A misspelt keyword would otherwise be dropped, such as metadata stored without it.
        message = f"unexpected arguments for {operation!r}: {', '.join(unexpected)}"
        logger.error("%s", message)
        raise InvalidInputError(message)
    arg: Callable[[str], Any] = kwargs.get  # missing arguments reach the validation as None
    _check_arguments(operation, arg)
    with SecretManager(key_file, url) as manager:
        if operation == "store":
            return manager.store_secret(arg("name"), arg("value"), arg("metadata"))
        if operation == "get":
            return manager.get_secret(arg("secret_id"))
        if operation == "get_by_name":
            return manager.get_secret_by_name(arg("name"))
        if operation == "list":
            return manager.list_secrets()
        if operation == "update":
            return manager.update_secret(arg("secret_id"), arg("value"), arg("metadata"))
        if operation == "delete":
            return manager.delete_secret(arg("secret_id"))
        return manager.rotate_key()


def _check_arguments(operation: str, arg: Callable[[str], Any]) -> None:
    """Validate the arguments of ``operation`` before any key file or database is opened."""
    if operation in ("store", "get_by_name"):
        check_name(arg("name"))
    if operation in ("store", "update"):
        check_value(arg("value"))
        check_metadata(arg("metadata"))
    if operation in ("get", "update", "delete"):
        check_secret_id(arg("secret_id"))


def _find(config: Any, path: str) -> tuple[Any, Any] | None:
    """Return (container, key) of a dotted ``path`` in nested dicts and lists, or None.

    A key that itself contains dots is found when it matches whole at its level.
    """
    if isinstance(config, Mapping) and path in config:
        return config, path
    head, dot, rest = path.partition(".")
    if not dot:
        if isinstance(config, list) and _is_index(head) and int(head) < len(config):
            return config, int(head)
        return None
    if isinstance(config, Mapping) and head in config:
        return _find(config[head], rest)
    if isinstance(config, list) and _is_index(head) and int(head) < len(config):
        return _find(config[int(head)], rest)
    return None


def _is_index(text: str) -> bool:
    # ASCII digits in canonical form only: str.isdigit accepts "²" and "١", and
    # "00" would name the same element as "0" and store it twice.
    return text.isascii() and text.isdigit() and text == str(int(text))


def _secret_name(prefix: str, path: str) -> str:
    # A random suffix keeps names unique when two configurations share a path.
    suffix = "#" + secrets.token_hex(8)
    return prefix + path[: MAX_NAME_LENGTH - len(prefix) - len(suffix)] + suffix


def encrypt_configuration(
    config: Mapping[str, Any],
    secret_keys: Sequence[str],
    *,
    manager: SecretManager | None = None,
    key_file: str | os.PathLike[str] | None = None,
    url: str | None = None,
    name_prefix: str = "config_",
) -> dict[str, Any]:
    """Return a copy of ``config`` whose chosen string values are stored in the vault.

    Each path in ``secret_keys`` names a key, with dots for nested dicts and
    list indexes (``database.password``, ``servers.0.token``). Its string value
    is stored as a new secret and replaced by ``encrypted:{id}``; paths that are
    missing or hold a non-string are left as they are, as before. All values
    are stored in one transaction. ``config`` itself is not modified.
    """
    if not isinstance(config, Mapping):
        raise InvalidTypeError(f"config must be a dict, not {type(config).__name__}")
    if isinstance(secret_keys, str):
        raise InvalidTypeError("secret_keys must be a list of paths, not a single str")
    result = copy.deepcopy(dict(config))
    targets: dict[str, tuple[Any, Any]] = {}
    for path in secret_keys:
        if not isinstance(path, str):
            raise InvalidTypeError(
                f"each path in secret_keys must be a str, not {type(path).__name__}"
            )
        found = _find(result, path)
        if found is not None and isinstance(found[0][found[1]], str):
            targets[path] = found
        else:
            logger.debug("configuration path %s is missing or not a string; left as is", path)
    if not targets:
        return result

    names = {path: _secret_name(name_prefix, path) for path in targets}
    with _vault(manager, key_file, url) as vault:
        ids = vault.store_secrets(
            [(names[path], container[key]) for path, (container, key) in targets.items()]
        )
    for path, (container, key) in targets.items():
        container[key] = REFERENCE_PREFIX + ids[names[path]]
    return result


def decrypt_configuration(
    config: Mapping[str, Any],
    *,
    manager: SecretManager | None = None,
    key_file: str | os.PathLike[str] | None = None,
    url: str | None = None,
) -> dict[str, Any]:
    """Return a copy of ``config`` with every ``encrypted:{id}`` reference resolved.

    Walks nested dicts and lists. Raises SecretNotFoundError for a reference
    to a secret that does not exist. ``config`` itself is not modified.
    """
    if not isinstance(config, Mapping):
        raise InvalidTypeError(f"config must be a dict, not {type(config).__name__}")
    with _vault(manager, key_file, url) as vault:
        return dict(_resolve(dict(config), vault))


def _resolve(node: Any, vault: SecretManager) -> Any:
    if isinstance(node, Mapping):
        return {key: _resolve(value, vault) for key, value in node.items()}
    if isinstance(node, list):
        return [_resolve(item, vault) for item in node]
    if isinstance(node, str):
        match = _REFERENCE.fullmatch(node)
        if match is not None:
            value = vault.get_secret(match.group(1))
            if value is None:
                message = f"configuration refers to secret {match.group(1)}, which does not exist"
                logger.error("%s", message)
                raise SecretNotFoundError(message)
            return value
    return copy.deepcopy(node)
