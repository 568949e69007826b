"""What a signing secret must not be (a placeholder, short, repeated, a run, few symbols), and what counts as
reachable from this host only. Settings refuses a weak secret in production; `serve` refuses one in any
environment once it is reachable beyond loopback or a webhook is configured."""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter

# Words of example and default secrets (compared without case or punctuation): a secret containing one was
# typed from a template, not generated
PLACEHOLDER_WORDS = (
    "changethis",
    "changeme",
    "replaceme",
    "placeholder",
    "minioadmin",
    "password",
    "passw0rd",
    "yoursecret",
    "mysecret",
    "secretkey",
    "examplekey",
    "insecure",
    "notsecret",
    "default",
)
MIN_SECRET_CHARS = 32
MIN_SECRET_BITS = (
    80.0  # by symbol frequency: a 32-character random hex secret estimates 93-125, one letter repeated 0
)
_KEYBOARD_ROWS = ("1234567890", "qwertyuiop", "asdfghjkl", "zxcvbnm")
SECRET_ADVICE = "e.g. python -c 'import secrets; print(secrets.token_hex(32))'"


def secret_weakness(secret: str) -> str | None:
    """Why `secret` is not fit to sign with (a placeholder, short, repeated, a run, few symbols), or None."""
    folded = re.sub(r"[^a-z0-9]", "", secret.lower())
    if any(word in folded for word in PLACEHOLDER_WORDS):
        return "it is (or contains) a placeholder"
    if len(secret) < MIN_SECRET_CHARS:
        return f"it is shorter than {MIN_SECRET_CHARS} characters"
    if _repeats(secret):
        return "it repeats a shorter block"
    if _run_share(secret.lower()) > 0.75:
        return "it is mostly an alphabet or keyboard run"
    if _estimated_bits(secret) < MIN_SECRET_BITS:
        return "it uses too few distinct symbols"
    return None


def _repeats(text: str) -> bool:
    return any(
        text == (text[:size] * (len(text) // size + 1))[: len(text)] for size in range(1, len(text) // 2 + 1)
    )


def _run_share(text: str) -> float:
    """Share of neighbouring characters that are next to each other in the alphabet or on a keyboard row."""

    def neighbours(a: str, b: str) -> bool:
        return abs(ord(a) - ord(b)) <= 1 or any(a + b in row or b + a in row for row in _KEYBOARD_ROWS)

    return sum(neighbours(a, b) for a, b in zip(text, text[1:], strict=False)) / max(1, len(text) - 1)


def _estimated_bits(text: str) -> float:
    counts = Counter(text).values()
    return -sum(n * math.log2(n / len(text)) for n in counts)


def is_loopback(host: str) -> bool:
    """True when a server bound to `host` is reachable from this host only ("" and 0.0.0.0 mean every address)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve to any interface
