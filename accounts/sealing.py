"""Sealing small secrets that must rest in the database, such as people's TOTP keys.

AES-256-GCM under a key derived with HKDF from the site's SECRET_KEY (with its own label, so
the derived key serves nothing else). A fresh 96-bit random nonce per value: these are few,
small values, far below the number of encryptions where random nonces become a concern.
Values sealed under a SECRET_KEY that has since moved to SECRET_KEY_FALLBACKS still open, so
the site key can be rotated without locking anyone out of their authenticator.
"""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

PREFIX = "sealed.v1:"
NONCE_BYTES = 12


class UnsealError(Exception):
    """A sealed value does not open under any of the site's keys (altered, or a lost key)."""


def _derive(site_key: str, purpose: str) -> AESGCM:
    key = HKDF(
        algorithm=hashes.SHA256(), length=32, salt=None, info=f"portal {purpose} v1".encode()
    ).derive(site_key.encode())
    return AESGCM(key)


def seal(text: str, *, site_key: str, purpose: str) -> str:
    """Encrypt `text`; the purpose is bound in as associated data as well as in the key."""
    nonce = os.urandom(NONCE_BYTES)
    ciphertext = _derive(site_key, purpose).encrypt(nonce, text.encode(), purpose.encode())
    return PREFIX + base64.urlsafe_b64encode(nonce + ciphertext).decode("ascii")


def unseal(value: str, *, site_keys: list[str], purpose: str) -> str:
    """Open a value sealed under any of `site_keys` (the current key first)."""
    if not value.startswith(PREFIX):
        raise UnsealError("the value is not sealed")
    try:
        raw = base64.urlsafe_b64decode(value[len(PREFIX) :].encode("ascii"))
    except ValueError:
        raise UnsealError("the sealed value is malformed") from None
    nonce, ciphertext = raw[:NONCE_BYTES], raw[NONCE_BYTES:]
    for site_key in site_keys:
        try:
            return _derive(site_key, purpose).decrypt(nonce, ciphertext, purpose.encode()).decode()
        except InvalidTag:
            continue
    raise UnsealError("the sealed value does not open under the site's keys")
