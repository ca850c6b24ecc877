"""Token format and the cache of unwrapped data keys.

A token is a Fernet token whose plaintext binds the value to its row::

    version (1 byte, 0x01) | secret id (32 ASCII bytes) | name length (2 bytes,
    big-endian) | name (UTF-8) | value (UTF-8)

Fernet authenticates the whole payload, so a token copied onto another row,
or a row renamed in the database, fails to open with an IntegrityError
instead of returning another secret's value.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.fernet import Fernet, InvalidToken

from .errors import IntegrityError
from .fernet_pages import PageCipher

PAYLOAD_VERSION = b"\x01"
_HEADER_LENGTH = 1 + 32 + 2


def _header(secret_id: str, name: str) -> bytes:
    encoded_name = name.encode("utf-8")
    return (
        PAYLOAD_VERSION
        + secret_id.encode("ascii")
        + len(encoded_name).to_bytes(2, "big")
        + encoded_name
    )


def _checked_row(token: object, secret_id: object, name: object) -> tuple[str, str, str]:
    """Return the row's token, id and name, checked to be strings."""
    # SQLite stores any type in any column: a row altered to hold a BLOB or a
    # number there is damaged like any other altered row.
    if not isinstance(secret_id, str):
        raise IntegrityError(
            f"a secret row has an id of type {type(secret_id).__name__}, so it was altered",
            secret_id=None,
        )
    if not isinstance(token, str) or not isinstance(name, str):
        raise _altered(secret_id)
    if not secret_id.isascii():
        # Ids are hex, so the row was renamed in the database; the header
        # could not even encode this id.
        raise _copied(secret_id)
    return token, secret_id, name


def _altered(secret_id: str) -> IntegrityError:
    return IntegrityError(
        f"secret {secret_id} cannot be decrypted: its token was altered or does not "
        "belong to its data key",
        secret_id=secret_id,
    )


def _copied(secret_id: str) -> IntegrityError:
    return IntegrityError(
        f"secret {secret_id} contains a token made for another row: it was copied or "
        "the row was renamed in the database",
        secret_id=secret_id,
    )


def seal(fernet: Fernet, secret_id: str, name: str, value: str) -> str:
    """Encrypt ``value`` into a token bound to the row ``secret_id`` named ``name``."""
    return fernet.encrypt(_header(secret_id, name) + value.encode("utf-8")).decode("ascii")


def seal_page(cipher: PageCipher, rows: Sequence[tuple[str, str, str]]) -> list[str]:
    """Encrypt each ``(secret id, name, value)`` row into a token bound to it, like ``seal``."""
    return cipher.encrypt(
        [_header(secret_id, name) + value.encode("utf-8") for secret_id, name, value in rows]
    )


def unseal(fernet: Fernet, token: str, secret_id: str, name: str) -> str:
    """Decrypt a token and check that it belongs to this row.

    Raises IntegrityError naming the secret when the token does not
    authenticate under ``fernet`` or was made for another row.
    """
    token, secret_id, name = _checked_row(token, secret_id, name)
    try:
        payload = fernet.decrypt(token.encode("ascii"))
    except (InvalidToken, UnicodeEncodeError):
        raise _altered(secret_id) from None
    header = _header(secret_id, name)
    if not payload.startswith(header):
        del payload  # another row's value: the traceback must not keep it
        raise _copied(secret_id)
    try:
        return payload[len(header) :].decode("utf-8")
    except UnicodeDecodeError:
        raise IntegrityError(
            f"secret {secret_id} decrypted to invalid UTF-8", secret_id=secret_id
        ) from None


def reseal_page(
    old: PageCipher, new: PageCipher, rows: Sequence[tuple[object, object, object]]
) -> list[str]:
    """Re-encrypt a page of ``(token, secret id, name)`` rows from ``old`` to ``new``.

    Values are not decoded. Returns the new tokens in the order of ``rows``.
    Raises IntegrityError like ``unseal`` for the first row whose token does
    not open or belongs to another row; then no token is returned.
    """
    checked = [_checked_row(*row) for row in rows]
    payloads = old.decrypt([token for token, _, _ in checked])
    try:
        failure = _first_failure(payloads, checked)
        if failure is not None:
            raise failure
        return new.encrypt([payload for payload in payloads if payload is not None])
    except BaseException:
        # The traceback keeps this frame alive: drop the page's values first.
        payloads.clear()
        raise


def _first_failure(
    payloads: Sequence[bytes | None], rows: Sequence[tuple[str, str, str]]
) -> IntegrityError | None:
    """Return the error for the first payload that did not open or belongs to another row."""
    for payload, (_, secret_id, name) in zip(payloads, rows, strict=True):
        if payload is None:
            return _altered(secret_id)
        if not payload.startswith(_header(secret_id, name)):
            return _copied(secret_id)
    return None


def new_data_key() -> tuple[str, bytes]:
    """Generate a data key id and a Fernet data key."""
    return secrets.token_hex(16), Fernet.generate_key()


@dataclass
class DataKeyCache:
    """Unwrapped data keys of one vault, by key id.

    Shared by every thread of a SecretManager. An unknown key id means another
    process rotated; the caller reloads the keys from the database.
    """

    _fernets: dict[str, Fernet] = field(default_factory=dict, repr=False)
    _page_ciphers: dict[str, PageCipher] = field(default_factory=dict, repr=False)
    _damaged: dict[str, str] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def get(self, key_id: str) -> Fernet | None:
        return self._fernets.get(key_id)

    def page_cipher(self, key_id: str) -> PageCipher | None:
        """Return the key ``key_id`` prepared for whole pages (rotation), or None."""
        return self._page_ciphers.get(key_id)

    def put(self, key_id: str, key: bytes) -> Fernet:
        fernet = Fernet(key)
        page_cipher = PageCipher(key)
        with self._lock:
            # Callers check get() first, so the page cipher must be there by then.
            self._page_ciphers[key_id] = page_cipher
            self._fernets[key_id] = fernet
            self._damaged.pop(key_id, None)
        return fernet

    def mark_damaged(self, key_id: str, reason: str) -> None:
        """Record that the data key row ``key_id`` failed to unwrap because it was altered."""
        with self._lock:
            self._damaged[key_id] = reason

    def damage(self, key_id: str) -> str | None:
        """Return why data key ``key_id`` is unusable, or None if it is not known damaged."""
        return self._damaged.get(key_id)

    def retain(self, key_ids: set[str]) -> None:
        """Forget every key not in ``key_ids`` (keys deleted by a rotation)."""
        with self._lock:
            for key_id in set(self._fernets) - key_ids:
                del self._fernets[key_id]
                del self._page_ciphers[key_id]
            for key_id in set(self._damaged) - key_ids:
                del self._damaged[key_id]

    def __repr__(self) -> str:
        return (
            f"DataKeyCache(key_ids={sorted(self._fernets)!r}, "
            f"damaged_key_ids={sorted(self._damaged)!r})"
        )
