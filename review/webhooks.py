"""Webhook delivery: a JSON body signed with HMAC-SHA256, POSTed with retries and exponential backoff.
Every attempt is a row in webhook_deliveries. Only scheme://host/path of the URL is ever stored or logged
(a webhook URL often carries a credential in its query)."""

from __future__ import annotations

import base64
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpx

from db.escalation_store import EscalationStore
from review.bundles import canonical_json, sign

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


def deliver(config: WebhookConfig, escalations: EscalationStore, topic: str, payload: dict[str, Any],
            bundle_id: int | None = None, sleep: Callable[[float], None] = time.sleep,
            client: httpx.Client | None = None) -> bool:
    """POST the payload until a 2xx, a permanent 4xx, or max_attempts. True when delivered."""
    delivery_id = uuid.uuid4().hex
    body = canonical_json({"topic": topic, "delivery_id": delivery_id, **payload})
    headers = {
        "content-type": "application/json",
        "user-agent": "deepscreen-webhook/1",
        "x-deepscreen-topic": topic,
        "x-deepscreen-delivery": delivery_id,
        "x-deepscreen-signature": "sha256=" + sign(config.secret, body),
    }
    target = redact(config.url)
    own_client = client is None
    http = client or httpx.Client(timeout=config.timeout_s, follow_redirects=False)
    try:
        for attempt in range(1, config.max_attempts + 1):
            started = time.perf_counter()
            status: int | None = None
            error: str | None = None
            try:
                response = http.post(config.url, content=body, headers=headers)
                status = response.status_code
            except httpx.HTTPError as exc:
                error = type(exc).__name__
            ok = status is not None and 200 <= status < 300
            escalations.record_attempt(delivery_id, topic, target, attempt, status, error, ok,
                                       time.perf_counter() - started, bundle_id)
            if ok:
                log.info("webhook delivered topic=%s delivery_id=%s target=%s attempt=%d", topic, delivery_id,
                         target, attempt)
                return True
            if status in PERMANENT:
                break
            log.warning("webhook attempt failed topic=%s delivery_id=%s target=%s attempt=%d status=%s error=%s",
                        topic, delivery_id, target, attempt, status, error)
            if attempt < config.max_attempts:
                sleep(backoff(attempt, config.backoff_s, config.backoff_max_s))
        log.error("webhook gave up topic=%s delivery_id=%s target=%s", topic, delivery_id, target)
        return False
    finally:
        if own_client:
            http.close()


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

