"""Webhook messages: a JSON body signed for the webhook purpose with a timestamp, POSTed by the relay
(review/relay.py), and `verify_webhook`, the receiver's check (docs/security.md). Only scheme://host/path of
a URL is ever stored or logged: a webhook URL often carries a credential in its query.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from review.bundles import canonical_json
from review.signing import WEBHOOK_PURPOSE, derive_key, hmac_sign

log = logging.getLogger(__name__)

MAX_INLINE_BUNDLE = 8 * 1024 * 1024
PERMANENT = {400, 401, 403, 404, 405, 410, 413, 422}  # retrying cannot help


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    secret: str
    topics: tuple[str, ...]
    max_attempts: int = 5
    backoff_s: float = 1.0
    backoff_max_s: float = 60.0
    timeout_s: float = 10.0

    def wants(self, topic: str) -> bool:
        return topic in self.topics or "*" in self.topics


def redact(url: str) -> str:
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return f"{parts.scheme}://{host}{parts.path}"


class _RedactUrls(logging.Filter):
    """httpx logs every request URL at INFO; a webhook URL's query may hold a credential."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(redact(str(a)) if isinstance(a, httpx.URL) else a for a in record.args)
        return True


logging.getLogger("httpx").addFilter(_RedactUrls())


def backoff(attempt: int, base: float, cap: float) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based): base, 2 base, 4 base, ... capped."""
    return min(cap, base * (2 ** (attempt - 1)))


class WebhookSignatureInvalid(Exception):
    """Why a received webhook request is refused: malformed, bad_signature or outside_window."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def sign_webhook(secret: str, body: bytes, timestamp: int) -> str:
    """The x-deepscreen-signature header of one attempt."""
    return f"t={timestamp},v1={hmac_sign(secret, WEBHOOK_PURPOSE, timestamp, body)}"


def verify_webhook(secret: str, body: bytes, signature_header: str, tolerance_s: float = 300.0,
                   now: float | None = None) -> int:
    """The receiver's check: the signature's timestamp when the header signs this body for the webhook
    purpose within `tolerance_s` of now; WebhookSignatureInvalid(reason) otherwise."""
    fields = dict(part.strip().partition("=")[::2] for part in signature_header.split(","))
    stamp, stated = fields.get("t", ""), fields.get("v1", "")
    if not stamp.isdigit() or len(stated) != 64:
        raise WebhookSignatureInvalid("malformed")
    timestamp = int(stamp)
    expected = hmac.new(derive_key(secret, WEBHOOK_PURPOSE),
                        f"{WEBHOOK_PURPOSE}\n{timestamp}\n".encode() + body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(stated.encode(), expected.encode()):
        raise WebhookSignatureInvalid("bad_signature")
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        raise WebhookSignatureInvalid("outside_window")
    return timestamp


def message_body(topic: str, delivery_id: str, payload: dict[str, Any]) -> bytes:
    return canonical_json({"topic": topic, "delivery_id": delivery_id, **payload})


@dataclass(frozen=True)
class Attempt:
    status: int | None
    error: str | None
    seconds: float

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def permanent(self) -> bool:
        return self.status in PERMANENT


def attempt(config: WebhookConfig, http: httpx.Client, topic: str, delivery_id: str, body: bytes) -> Attempt:
    """One POST of a message, signed at this moment (a retry an hour later is not stale). Never sleeps."""
    headers = {
        "content-type": "application/json",
        "user-agent": "deepscreen-webhook/1",
        "x-deepscreen-topic": topic,
        "x-deepscreen-delivery": delivery_id,
        "x-deepscreen-signature": sign_webhook(config.secret, body, int(time.time())),
    }
    started = time.perf_counter()
    try:
        response = http.post(config.url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        return Attempt(None, type(exc).__name__, time.perf_counter() - started)
    return Attempt(response.status_code, None, time.perf_counter() - started)


def client_for(config: WebhookConfig) -> httpx.Client:
    return httpx.Client(timeout=config.timeout_s, follow_redirects=False)


def escalation_payload(bundle: dict[str, Any]) -> dict[str, Any]:
    """The signed manifest, and the bundle zip inline (base64) unless it is large."""
    payload: dict[str, Any] = {
        "bundle_id": bundle["id"],
        "review_item_id": bundle["review_item_id"],
        "manifest": bundle["manifest"],
        "manifest_signature": bundle["signature"],
        "manifest_sha256": bundle["manifest_sha256"],
    }
    archive: bytes = bundle["zip"]
    if len(archive) <= MAX_INLINE_BUNDLE:
        payload["bundle_zip_base64"] = base64.b64encode(archive).decode()
    return payload


def config_from(settings: Any) -> WebhookConfig | None:
    if not settings.webhook_url:
        return None
    return WebhookConfig(url=settings.webhook_url, secret=settings.signing_secret.get_secret_value(),
                         topics=tuple(settings.webhook_topics), max_attempts=settings.webhook_max_attempts,
                         backoff_s=settings.webhook_backoff_s, backoff_max_s=settings.webhook_backoff_max_s,
                         timeout_s=settings.webhook_timeout_s)

