"""Webhook relays that run outside the API server: escalations whose delivery never succeeded, again; and
verdict events for webhook subscribers: follow new `fake` verdicts (written by the workers, which cannot
call up into review/) and deliver each as topic `verdict.fake`, signed, retried and recorded like every
webhook. A cursor row remembers how far the relay got, so a restarted relay neither repeats nor skips; a
first run starts at the newest verdict (no flood of history) unless told to start from the beginning.
Delivery is at least once: a receiver deduplicates on `verdict_id`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from review import webhooks
from review.bundles import verify_bundle
from review.context import ReviewContext

log = logging.getLogger(__name__)

TOPIC = "verdict.fake"


def relay_once(ctx: ReviewContext, config: webhooks.WebhookConfig, limit: int = 100,
               from_start: bool = False) -> int:
    """Deliver the fake verdicts since the cursor; returns how many were sent (delivered or given up on)."""
    position = ctx.escalations.start_cursor(TOPIC, 0 if from_start else ctx.images.latest_verdict_id())
    sent = 0
    for doc in ctx.images.verdicts_after(position, "fake", limit):
        payload: dict[str, Any] = {
            "verdict_id": doc["verdict_id"], "image_id": doc["image_id"], "sha256": doc["sha256"],
            "source": doc["source"], "model_version": doc["model_version"], "verdict": doc["verdict"],
            "fake_probability": doc["fake_probability"], "created_at": doc["created_at"],
            "review_item_id": doc["review_item_id"],
            "faces": [{k: f[k] for k in ("index", "box", "fake_probability", "verdict")} for f in doc["faces"]],
        }
        webhooks.deliver(config, ctx.escalations, TOPIC, payload)
        if not ctx.escalations.advance_cursor(TOPIC, position, doc["verdict_id"]):
            log.warning("another relay moved the %s cursor; stopping this pass", TOPIC)
            break
        position = doc["verdict_id"]
        sent += 1
    return sent


def relay_forever(ctx: ReviewContext, config: webhooks.WebhookConfig, interval_s: float,
                  from_start: bool = False, should_stop: Callable[[], bool] = lambda: False) -> None:
    first = True
    while not should_stop():
        sent = relay_once(ctx, config, from_start=from_start and first)
        first = False
        if sent:
            log.info("relay topic=%s sent=%d", TOPIC, sent)
        else:
            time.sleep(interval_s)


def redeliver_escalations(ctx: ReviewContext, config: webhooks.WebhookConfig, older_than_s: float = 600) -> int:
    """Send again every escalation bundle no delivery has reached; returns how many were delivered now."""
    delivered = 0
    for bundle in ctx.escalations.undelivered_bundles(older_than_s):
        archive = ctx.blobs.get(bundle["blob_key"])
        manifest = verify_bundle(archive, config.secret)  # never resend a bundle that is not what we signed
        payload = webhooks.escalation_payload({**bundle, "manifest": manifest, "zip": archive})
        if webhooks.deliver(config, ctx.escalations, "escalation", payload, bundle_id=bundle["id"]):
            delivered += 1
    return delivered
