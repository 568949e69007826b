"""The webhook relay: every webhook message is delivered from here, never from an API request thread.

A request only adds a row to the outbox (`enqueue`); the relay makes one attempt per due row (one POST, no
sleeping) and records it, so a receiver that does not answer costs one timeout per pass. It also turns new
`fake` verdicts into `verdict.fake` messages, keyed by verdict id, so two relays following them send each once.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from typing import Any

import httpx

from review import webhooks
from review.bundles import BundleInvalid, canonical_json, verify_bundle
from review.context import ReviewContext

log = logging.getLogger(__name__)

TOPIC = "verdict.fake"
LEASE_MARGIN_S = 60.0  # a claimed attempt is due again this long after its timeout if its relay died


class MessageDropped(Exception):
    """A message that can never be delivered as it was made (its bundle was erased or is not ours)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# -- adding messages (cheap: one insert; safe in a request) ----------------------------------------------
def enqueue(
    ctx: ReviewContext,
    topic: str,
    payload: dict[str, Any],
    bundle_id: int | None = None,
    delivery_id: str | None = None,
) -> str:
    delivery_id = delivery_id or uuid.uuid4().hex
    ctx.escalations.enqueue(delivery_id, topic, canonical_json(payload).decode(), bundle_id)
    return delivery_id


def enqueue_escalation(ctx: ReviewContext, bundle: dict[str, Any]) -> str:
    """The bundle is named, not copied: the relay reads and verifies the stored zip when it sends."""
    reference = {
        "bundle_id": bundle["id"],
        "review_item_id": bundle["review_item_id"],
        "manifest_sha256": bundle["manifest_sha256"],
    }
    return enqueue(ctx, "escalation", reference, bundle_id=bundle["id"])


def follow_verdicts(ctx: ReviewContext, limit: int = 100, from_start: bool = False) -> int:
    """Queue the fake verdicts since the cursor; returns how many were queued. A message names its verdict,
    and the body is read when it is sent, so an image erased in between is never sent."""
    position = ctx.escalations.start_cursor(TOPIC, 0 if from_start else ctx.images.latest_verdict_id())
    queued = 0
    for doc in ctx.images.verdicts_after(position, "fake", limit):
        verdict_id = doc["verdict_id"]
        enqueue(ctx, TOPIC, {"verdict_id": verdict_id}, delivery_id=f"verdict-{verdict_id}")
        if not ctx.escalations.advance_cursor(TOPIC, position, verdict_id):
            log.warning("another relay moved the %s cursor; stopping this pass", TOPIC)
            break
        position = verdict_id
        queued += 1
    return queued


def _verdict_payload(ctx: ReviewContext, verdict_id: int) -> dict[str, Any]:
    found = ctx.images.verdicts_after(verdict_id - 1, "fake", 1)
    if not found or found[0]["verdict_id"] != verdict_id:
        raise MessageDropped("verdict_gone")
    doc = found[0]
    return {
        **{
            k: doc[k]
            for k in (
                "verdict_id",
                "image_id",
                "sha256",
                "source",
                "model_version",
                "verdict",
                "fake_probability",
                "created_at",
                "review_item_id",
            )
        },
        "faces": [{k: f[k] for k in ("index", "box", "fake_probability", "verdict")} for f in doc["faces"]],
    }


# -- delivering -------------------------------------------------------------------------------------------
def deliver_due(
    ctx: ReviewContext, config: webhooks.WebhookConfig, limit: int = 100, http: httpx.Client | None = None
) -> int:
    """One attempt for each due message; returns how many attempts were made."""
    client = http or webhooks.client_for(config)
    made = 0
    try:
        for message in ctx.escalations.due(limit):
            attempt_no = ctx.escalations.claim(message, config.timeout_s + LEASE_MARGIN_S)
            if attempt_no is None:
                continue  # another relay has it
            made += 1
            result = _attempt(ctx, config, client, message, attempt_no)
            if result is not None and result.status is None:
                break  # the receiver does not answer: the rest waits for the next pass, not a timeout each
    finally:
        if http is None:
            client.close()
    return made


def _attempt(
    ctx: ReviewContext,
    config: webhooks.WebhookConfig,
    client: httpx.Client,
    message: dict[str, Any],
    attempt_no: int,
) -> webhooks.Attempt | None:
    topic, delivery_id, bundle_id = message["topic"], message["delivery_id"], message["bundle_id"]
    try:
        body = _body(ctx, config, message)
    except MessageDropped as exc:
        ctx.escalations.settle(message["id"], attempt_no, "dropped", error=exc.reason)
        log.warning("webhook dropped topic=%s delivery_id=%s reason=%s", topic, delivery_id, exc.reason)
        return None
    except Exception as exc:  # noqa: BLE001 - the blob store may be down; the attempt is retried later
        result = webhooks.Attempt(None, f"body:{type(exc).__name__}", 0.0)
    else:
        result = webhooks.attempt(config, client, topic, delivery_id, body)
    target = webhooks.redact(config.url)
    ctx.escalations.record_attempt(
        delivery_id,
        topic,
        target,
        attempt_no,
        result.status,
        result.error,
        result.ok,
        result.seconds,
        bundle_id,
    )
    _settle(ctx, config, message, attempt_no, result)
    return result


def _settle(
    ctx: ReviewContext,
    config: webhooks.WebhookConfig,
    message: dict[str, Any],
    attempt_no: int,
    result: webhooks.Attempt,
) -> None:
    topic, delivery_id, target = message["topic"], message["delivery_id"], webhooks.redact(config.url)
    error = result.error or (f"status {result.status}" if result.status is not None else None)
    if result.ok:
        ctx.escalations.settle(message["id"], attempt_no, "delivered")
        log.info(
            "webhook delivered topic=%s delivery_id=%s target=%s attempt=%d",
            topic,
            delivery_id,
            target,
            attempt_no,
        )
    elif result.permanent or attempt_no >= config.max_attempts:
        ctx.escalations.settle(message["id"], attempt_no, "failed", error=error)
        log.error(
            "webhook gave up topic=%s delivery_id=%s target=%s attempts=%d error=%s",
            topic,
            delivery_id,
            target,
            attempt_no,
            error,
        )
    else:
        wait = webhooks.backoff(attempt_no, config.backoff_s, config.backoff_max_s)
        ctx.escalations.settle(message["id"], attempt_no, "pending", retry_in_s=wait, error=error)
        log.warning(
            "webhook attempt failed topic=%s delivery_id=%s target=%s attempt=%d error=%s retry_in_s=%.1f",
            topic,
            delivery_id,
            target,
            attempt_no,
            error,
            wait,
        )


def _body(ctx: ReviewContext, config: webhooks.WebhookConfig, message: dict[str, Any]) -> bytes:
    payload = json.loads(message["payload"])
    if message["topic"] == TOPIC:
        payload = _verdict_payload(ctx, int(payload["verdict_id"]))
    elif message["bundle_id"] is not None:
        payload = _escalation_payload(ctx, config, message["bundle_id"], payload)
    return webhooks.message_body(message["topic"], message["delivery_id"], payload)


def _escalation_payload(
    ctx: ReviewContext, config: webhooks.WebhookConfig, bundle_id: int, reference: dict[str, Any]
) -> dict[str, Any]:
    bundle = ctx.escalations.bundle(bundle_id)
    if bundle is None or bundle["manifest_sha256"] != reference.get("manifest_sha256"):
        raise MessageDropped("bundle_gone")
    archive = ctx.blobs.get(bundle["blob_key"])
    try:
        manifest = verify_bundle(archive, config.secret)  # never send a bundle that is not what we signed
    except BundleInvalid as exc:
        raise MessageDropped(f"bundle_invalid:{exc.reason}") from None
    return webhooks.escalation_payload({**bundle, "manifest": manifest, "zip": archive})


# -- running ----------------------------------------------------------------------------------------------
def relay_once(
    ctx: ReviewContext, config: webhooks.WebhookConfig, limit: int = 100, from_start: bool = False
) -> int:
    """Queue new fake verdicts (when subscribed), then one attempt per due message; returns how many
    verdicts were queued."""
    queued = follow_verdicts(ctx, limit, from_start) if config.wants(TOPIC) else 0
    deliver_due(ctx, config, limit)
    return queued


def relay_forever(
    ctx: ReviewContext,
    config: webhooks.WebhookConfig,
    interval_s: float,
    from_start: bool = False,
    stop: threading.Event | None = None,
) -> None:
    stop = stop or threading.Event()
    first = True
    while not stop.is_set():
        try:
            queued = follow_verdicts(ctx, from_start=from_start and first) if config.wants(TOPIC) else 0
            first = False
            made = deliver_due(ctx, config)
        except Exception:  # noqa: BLE001 - a database outage pauses the relay; it must not end it
            log.exception("webhook relay pass failed; trying again in %.0f s", interval_s)
            queued = made = 0
        if queued or made:
            log.info("relay queued=%d attempts=%d", queued, made)
        else:
            stop.wait(interval_s)


def start_in_background(
    ctx: ReviewContext, config: webhooks.WebhookConfig, interval_s: float
) -> tuple[threading.Thread, threading.Event]:
    """The relay of `deepscreen serve`: a thread of its own, outside the request thread pool."""
    stop = threading.Event()
    thread = threading.Thread(
        target=relay_forever,
        args=(ctx, config, interval_s),
        kwargs={"stop": stop},
        name="webhook-relay",
        daemon=True,
    )
    thread.start()
    return thread, stop


def redeliver_escalations(
    ctx: ReviewContext, config: webhooks.WebhookConfig, older_than_s: float = 600
) -> int:
    """Queue again every escalation bundle no delivery has reached (and the outbox no longer holds), then
    make one pass; returns how many were queued."""
    bundles = ctx.escalations.undelivered_bundles(older_than_s)
    for bundle in bundles:
        enqueue_escalation(ctx, bundle)
    deliver_due(ctx, config)
    return len(bundles)
