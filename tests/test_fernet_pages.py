"""PageCipher against cryptography's Fernet, the reference it must match.

Expected tokens come from ``Fernet._encrypt_from_parts``, which takes the
time and IV as arguments: for the same inputs both must produce the same
bytes. Bad tokens are built with a valid HMAC where the case needs one, so
each check after the HMAC is reached on its own.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import time

import pytest
from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from hypothesis import given, settings
from hypothesis import strategies as st

from fernvault.fernet_pages import PageCipher

KEY = Fernet.generate_key()
OTHER_KEY = Fernet.generate_key()
TIME = 1_700_000_000


def _forge(key: bytes, *, version: int = 0x80, iv: bytes = bytes(16), ciphertext: bytes) -> str:
    """A token with these parts and a valid HMAC under ``key``."""
    raw = base64.urlsafe_b64decode(key)
    body = bytes([version]) + TIME.to_bytes(8, "big") + iv + ciphertext
    mac = hmac.digest(raw[:16], body, hashlib.sha256)
    return base64.urlsafe_b64encode(body + mac).decode("ascii")


def _cbc(key: bytes, iv: bytes, data: bytes) -> bytes:
    """AES-CBC of already padded ``data`` under the encryption half of ``key``."""
    encryptor = Cipher(
        algorithms.AES(base64.urlsafe_b64decode(key)[16:]), modes.CBC(iv)
    ).encryptor()
    return encryptor.update(data) + encryptor.finalize()


@pytest.mark.parametrize("length", [0, 1, 15, 16, 17, 31, 32, 33, 100, 4096])
def test_encrypt_matches_fernet_bytes(length: int) -> None:
    plaintext = os.urandom(length)
    iv = os.urandom(16)
    expected = Fernet(KEY)._encrypt_from_parts(plaintext, TIME, iv).decode("ascii")
    assert PageCipher(KEY)._encrypt_from_parts([plaintext], TIME, iv) == [expected]


def test_encrypt_mixed_lengths_matches_fernet() -> None:
    plaintexts = [os.urandom(length) for length in (5, 0, 48, 16, 130, 1, 33)]
    ivs = os.urandom(16 * len(plaintexts))
    fernet = Fernet(KEY)
    expected = [
        fernet._encrypt_from_parts(plaintext, TIME, ivs[16 * i : 16 * i + 16]).decode("ascii")
        for i, plaintext in enumerate(plaintexts)
    ]
    assert PageCipher(KEY)._encrypt_from_parts(plaintexts, TIME, ivs) == expected


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=20))
def test_page_round_trip_agrees_with_fernet(plaintexts: list[bytes]) -> None:
    cipher = PageCipher(KEY)
    fernet = Fernet(KEY)
    tokens = cipher.encrypt(plaintexts)
    assert [fernet.decrypt(token) for token in tokens] == plaintexts
    assert cipher.decrypt(tokens) == plaintexts
    assert cipher.decrypt([fernet.encrypt(plaintext) for plaintext in plaintexts]) == plaintexts


def test_decrypt_page_spanning_chunks() -> None:
    # About 250 KB of tokens: several of the chunks that decrypt works in.
    plaintexts = [os.urandom(length) for length in range(3000, 3080)]
    tokens: list[object] = list(PageCipher(KEY).encrypt(plaintexts))
    tokens[41] = Fernet(OTHER_KEY).encrypt(plaintexts[41]).decode("ascii")
    opened = PageCipher(KEY).decrypt(tokens)
    assert opened[41] is None
    assert opened[:41] == plaintexts[:41]
    assert opened[42:] == plaintexts[42:]


def test_encrypt_uses_one_iv_per_token() -> None:
    tokens = PageCipher(KEY).encrypt([b"same"] * 200)
    ivs = {base64.urlsafe_b64decode(token)[9:25] for token in tokens}
    assert len(ivs) == 200


def test_encrypt_stamps_current_time() -> None:
    before = int(time.time())
    [token] = PageCipher(KEY).encrypt([b"x"])
    assert before <= Fernet(KEY).extract_timestamp(token) <= int(time.time())


def _bad_tokens() -> dict[str, object]:
    good = Fernet(KEY).encrypt(b"sixteen byte val").decode("ascii")
    raw = bytearray(base64.urlsafe_b64decode(good))
    flipped_ciphertext = bytearray(raw)
    flipped_ciphertext[30] ^= 1
    flipped_mac = bytearray(raw)
    flipped_mac[-1] ^= 1
    padded_block = b"sixteen byte val" + bytes([16]) * 16
    return {
        "other key": Fernet(OTHER_KEY).encrypt(b"sixteen byte val").decode("ascii"),
        "altered ciphertext": base64.urlsafe_b64encode(flipped_ciphertext).decode("ascii"),
        "altered HMAC": base64.urlsafe_b64encode(flipped_mac).decode("ascii"),
        "truncated": good[:-4],
        "too short for one block": base64.urlsafe_b64encode(bytes(raw[:72])).decode("ascii"),
        "empty": "",
        "not base64": "%" * len(good),
        "not ASCII": good[:-1] + "é",
        "not a string": 12345,
        "None": None,
        "version byte": _forge(KEY, version=0x81, ciphertext=_cbc(KEY, bytes(16), padded_block)),
        "no ciphertext, valid HMAC": _forge(KEY, ciphertext=b""),
        "partial block, valid HMAC": _forge(
            KEY, ciphertext=_cbc(KEY, bytes(16), padded_block)[:31]
        ),
        "padding byte 0, valid HMAC": _forge(KEY, ciphertext=_cbc(KEY, bytes(16), bytes(16))),
        "padding byte 17, valid HMAC": _forge(
            KEY, ciphertext=_cbc(KEY, bytes(16), bytes([17]) * 16)
        ),
        "uneven padding, valid HMAC": _forge(
            KEY, ciphertext=_cbc(KEY, bytes(16), b"fourteen bytes" + b"\x01\x02")
        ),
        # With one block, the IV changes the padding bytes, so they become invalid.
        "wrong IV, valid HMAC": _forge(
            KEY, iv=bytes([7]) * 16, ciphertext=_cbc(KEY, bytes(16), b"short" + bytes([11]) * 11)
        ),
    }


BAD_TOKENS = _bad_tokens()


@pytest.mark.parametrize("case", sorted(BAD_TOKENS))
def test_decrypt_rejects_bad_token_only(case: str) -> None:
    bad = BAD_TOKENS[case]
    if isinstance(bad, str):
        with pytest.raises((InvalidToken, TypeError, ValueError)):
            Fernet(KEY).decrypt(bad)
    before, after = Fernet(KEY).encrypt(b"before"), Fernet(KEY).encrypt(b"a" * 40)
    assert PageCipher(KEY).decrypt([before, bad, after]) == [b"before", None, b"a" * 40]


def test_decrypt_rejects_every_bit_flip() -> None:
    token = PageCipher(KEY).encrypt([b"value"])[0]
    raw = base64.urlsafe_b64decode(token)
    flipped = []
    for position in range(len(raw)):
        for bit in range(8):
            altered = bytearray(raw)
            altered[position] ^= 1 << bit
            flipped.append(base64.urlsafe_b64encode(altered).decode("ascii"))
    assert PageCipher(KEY).decrypt(flipped) == [None] * len(flipped)


def test_empty_pages() -> None:
    cipher = PageCipher(KEY)
    assert cipher.encrypt([]) == []
    assert cipher.decrypt([]) == []
    assert cipher.decrypt([None, "x"]) == [None, None]


def test_encrypt_requires_one_iv_each() -> None:
    with pytest.raises(ValueError, match="expected 2 IVs of 16 bytes, got 16 bytes"):
        PageCipher(KEY)._encrypt_from_parts([b"a", b"b"], TIME, bytes(16))


@pytest.mark.parametrize(
    "key", [b"", b"short", base64.urlsafe_b64encode(bytes(31)), "%%%%", "é" * 44]
)
def test_invalid_key_error_hides_key(key: bytes | str) -> None:
    with pytest.raises(ValueError) as caught:
        PageCipher(key)
    assert str(caught.value) == "invalid Fernet key: expected 32 bytes in url-safe base64"


def test_repr_hides_the_key() -> None:
    text = repr(PageCipher(KEY))
    assert KEY.decode("ascii") not in text
    assert "hidden" in text
