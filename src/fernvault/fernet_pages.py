"""Fernet tokens encrypted and decrypted a page at a time, for rotation.

``cryptography.fernet.Fernet`` builds a new AES-CBC context for every
token, which costs more than the AES work itself on short secrets: about
3 of the 8 microseconds a 64-byte value takes to open or seal. A rotation
handles thousands of tokens under the same two keys, so this module shares
one AES context per page instead:

* Opening: the HMAC of every token is checked first, with a copy of one
  keyed HMAC state; only the tokens that pass are decrypted. CBC decryption
  is ``P[i] = D(C[i]) XOR C[i-1]`` with ``C[0]`` the IV, so one ECB
  decryption of all ciphertext blocks of the page, XORed with the same
  blocks shifted by one (each token's IV in front), yields every plaintext.
* Sealing: every token gets its own random IV, from one ``os.urandom`` call
  per page. One CBC context runs over the whole page, so it chains each
  token from the last ciphertext block of the token before. The first block
  of each token is therefore XORed with that block and with the token's own
  IV before it goes in: the AES input is ``P[1] XOR IV``, as in a fresh
  context.

The tokens are byte for byte those ``Fernet`` makes from the same time and
IVs, and ``Fernet`` opens them (tests/test_fernet_pages.py checks both, and
every kind of bad token). Only AES from pyca/cryptography and HMAC-SHA256,
``hmac.compare_digest`` and ``os.urandom`` from the standard library are
used; no token is decrypted before its HMAC is verified.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import os
import time
from collections.abc import Sequence

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

_VERSION = 0x80
_BLOCK = 16
_MAC = 32
_PREFIX = 1 + 8 + _BLOCK  # version, timestamp, IV
_SHORTEST = _PREFIX + _BLOCK + _MAC  # one ciphertext block
# Tokens are decrypted in chunks of about this many bytes, so that the copies
# a chunk needs stay small next to the page itself, even with 4 MiB values.
_CHUNK_BYTES = 64 * 1024
_INVALID_KEY = "invalid Fernet key: expected 32 bytes in url-safe base64"


class PageCipher:
    """One Fernet key, prepared for opening and sealing pages of tokens."""

    __slots__ = ("_aes", "_mac")

    def __init__(self, key: bytes | str) -> None:
        try:
            raw = base64.urlsafe_b64decode(key)
        except (binascii.Error, ValueError):
            raise ValueError(_INVALID_KEY) from None
        if len(raw) != 32:
            raise ValueError(_INVALID_KEY)
        self._mac = hmac.new(raw[:16], digestmod="sha256")
        self._aes = algorithms.AES(raw[16:])

    def __repr__(self) -> str:
        return "PageCipher(<key hidden>)"

    def decrypt(self, tokens: Sequence[object]) -> list[bytes | None]:
        """Return the plaintext of each token, or None where a token does not open.

        A token does not open when it is not a base64 string of a Fernet
        token, when its HMAC does not verify under this key, or when its
        padding is wrong. There is no time-to-live.
        """
        opened: list[bytes | None] = [None] * len(tokens)
        chunk: list[tuple[int, bytes]] = []
        size = 0
        for index, token in enumerate(tokens):
            data = self._verified(token)
            if data is None:
                continue
            chunk.append((index, data))
            size += len(data)
            if size >= _CHUNK_BYTES:
                self._decrypt_verified(chunk, opened)
                chunk, size = [], 0
        if chunk:
            self._decrypt_verified(chunk, opened)
        return opened

    def _decrypt_verified(
        self, chunk: Sequence[tuple[int, bytes]], opened: list[bytes | None]
    ) -> None:
        """Decrypt tokens whose HMAC verified, storing each plaintext at its index."""
        ciphertext = b"".join([data[_PREFIX:-_MAC] for _, data in chunk])
        chained = b"".join([data[1 + 8 : -_MAC - _BLOCK] for _, data in chunk])
        decryptor = Cipher(self._aes, modes.ECB()).decryptor()  # noqa: S305 - CBC by hand, see above
        blocks = decryptor.update(ciphertext) + decryptor.finalize()
        padded = _xor(blocks, chained)
        start = 0
        for index, data in chunk:
            end = start + len(data) - _PREFIX - _MAC
            opened[index] = _unpad(padded[start:end])
            start = end

    def encrypt(self, plaintexts: Sequence[bytes]) -> list[str]:
        """Seal each plaintext into a Fernet token stamped with the current time."""
        return self._encrypt_from_parts(
            plaintexts, int(time.time()), os.urandom(_BLOCK * len(plaintexts))
        )

    def _encrypt_from_parts(
        self, plaintexts: Sequence[bytes], current_time: int, ivs: bytes
    ) -> list[str]:
        if len(ivs) != _BLOCK * len(plaintexts):
            raise ValueError(f"expected {len(plaintexts)} IVs of 16 bytes, got {len(ivs)} bytes")
        if not plaintexts:
            return []
        header = bytes([_VERSION]) + current_time.to_bytes(8, "big")
        encryptor = Cipher(self._aes, modes.CBC(ivs[:_BLOCK])).encryptor()
        chain = ivs[:_BLOCK]
        tokens = []
        for position, plaintext in enumerate(plaintexts):
            iv = ivs[position * _BLOCK : (position + 1) * _BLOCK]
            pad = _BLOCK - len(plaintext) % _BLOCK
            padded = plaintext + bytes([pad]) * pad
            first = (
                int.from_bytes(padded[:_BLOCK], "big")
                ^ int.from_bytes(iv, "big")
                ^ int.from_bytes(chain, "big")
            ).to_bytes(_BLOCK, "big")
            ciphertext = encryptor.update(first + padded[_BLOCK:])
            chain = ciphertext[-_BLOCK:]
            body = header + iv + ciphertext
            mac = self._mac.copy()
            mac.update(body)
            tokens.append(base64.urlsafe_b64encode(body + mac.digest()).decode("ascii"))
        encryptor.finalize()
        return tokens

    def _verified(self, token: object) -> bytes | None:
        """Return the decoded token if its shape and HMAC are valid, else None."""
        if not isinstance(token, (str, bytes)):
            return None
        try:
            data = base64.urlsafe_b64decode(token)
        except (binascii.Error, ValueError):
            return None
        if len(data) < _SHORTEST or data[0] != _VERSION or (len(data) - _PREFIX - _MAC) % _BLOCK:
            return None
        mac = self._mac.copy()
        mac.update(data[:-_MAC])
        if not hmac.compare_digest(mac.digest(), data[-_MAC:]):
            return None
        return data


def _xor(left: bytes, right: bytes) -> bytes:
    """XOR two byte strings of the same length."""
    return (int.from_bytes(left, "big") ^ int.from_bytes(right, "big")).to_bytes(len(left), "big")


def _unpad(padded: bytes) -> bytes | None:
    """Return ``padded`` without its PKCS#7 padding, or None if the padding is invalid."""
    pad = padded[-1]
    if not 1 <= pad <= _BLOCK or padded[-pad:] != bytes([pad]) * pad:
        return None
    return padded[:-pad]
