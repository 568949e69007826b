"""Signing keys: one HMAC key per purpose derived from the signing secret, and the Ed25519 key of bundles.

Every signed message starts with its purpose label and a timestamp and is signed with that purpose's own key,
so an evidence bundle's manifest.sig cannot be replayed as a webhook signature, nor the other way round. The
Ed25519 key is made once (`deepscreen bundles keygen`) and shared by every API replica: no server makes one.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from functools import lru_cache
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

BUNDLE_PURPOSE = "deepscreen-evidence-bundle/1"
WEBHOOK_PURPOSE = "deepscreen-webhook/1"
HKDF_SALT = b"deepscreen/1"


class SigningKeyError(Exception):
    """The configured Ed25519 key file is missing, unreadable or not an Ed25519 private key."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def derive_key(secret: str, purpose: str) -> bytes:
    """HKDF-SHA256 (RFC 5869) of the secret for one purpose: one 32-byte block, so one expand step."""
    pseudo_random = hmac.new(HKDF_SALT, secret.encode(), hashlib.sha256).digest()
    return hmac.new(pseudo_random, purpose.encode() + b"\x01", hashlib.sha256).digest()


def signed_message(purpose: str, timestamp: int, body: bytes) -> bytes:
    return f"{purpose}\n{timestamp}\n".encode() + body


def hmac_sign(secret: str, purpose: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of the purpose-labelled, timestamped message under the purpose's own key."""
    return hmac.new(
        derive_key(secret, purpose), signed_message(purpose, timestamp, body), hashlib.sha256
    ).hexdigest()


def hmac_matches(secret: str, purpose: str, timestamp: int, body: bytes, stated: str) -> bool:
    return hmac.compare_digest(stated.encode(), hmac_sign(secret, purpose, timestamp, body).encode())


# -- Ed25519 ---------------------------------------------------------------------------------------------
def generate_key_file(path: Path) -> bool:
    """Write a new Ed25519 private key (PKCS#8 PEM, mode 0600) unless the file exists; True when written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        # O_EXCL: two keygens racing, or one run twice, never replace a key bundles were signed with
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    return True


@lru_cache(maxsize=4)
def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SigningKeyError("key_unreadable", f"{path}: {type(exc).__name__}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningKeyError("key_invalid", f"{path}: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError("key_not_ed25519", str(path))
    return key


def public_key_pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def load_public_key(pem: bytes) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError as exc:
        raise SigningKeyError("key_invalid", str(exc)) from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError("key_not_ed25519")
    return key


def key_id(key: Ed25519PublicKey) -> str:
    """A short fingerprint (sha256 of the raw public key) that names the key a bundle was signed with."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def ed25519_sign(key: Ed25519PrivateKey, purpose: str, timestamp: int, body: bytes) -> str:
    return base64.b64encode(key.sign(signed_message(purpose, timestamp, body))).decode()


def ed25519_matches(key: Ed25519PublicKey, purpose: str, timestamp: int, body: bytes, stated: str) -> bool:
    try:
        key.verify(base64.b64decode(stated, validate=True), signed_message(purpose, timestamp, body))
    except (InvalidSignature, ValueError):
        return False
    return True
