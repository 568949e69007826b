"""Webhook deliveries never run in the API's request threads: a receiver that hangs costs the API nothing,
and the relay retries the delivery later and records every attempt."""
# ruff: noqa: F811 - the shared fixtures are imported from test_review_support and named as parameters

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import anyio.to_thread
import httpx
import pytest
import uvicorn

from devservices import free_port
from tests.test_review_escalation import Receiver, receiver_factory  # noqa: F401
from tests.test_review_support import (  # noqa: F401
    SECRET,
    make_item,
    review_ctx,
    review_db_url,
    review_settings,
    tokens,
)

pytestmark = pytest.mark.services


class HungReceiver:
    """A TCP server on 127.0.0.1 that accepts every connection and never answers."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}/hooks/hung"
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return  # closed
            self.held.append(connection)

    def close(self) -> None:
        self.listener.close()
        for connection in self.held:
            connection.close()


@pytest.fixture
def hung() -> Iterator[HungReceiver]:
    receiver = HungReceiver()
    yield receiver
    receiver.close()


@contextmanager
def serving(app: Any, threads: int) -> Iterator[str]:
    """The app under a real uvicorn server with a request thread pool of `threads` (anyio's default is 40;
    a small pool shows with two requests what forty hung deliveries would do to the default one)."""

    async def limited(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            anyio.to_thread.current_default_thread_limiter().total_tokens = threads
        await app(scope, receive, send)

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(limited, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _timed(call: Any) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = call()
    return response, time.monotonic() - started


def test_a_hung_receiver_never_holds_an_api_thread_and_the_relay_delivers_later(  # noqa: ANN001
    review_ctx, tokens, hung, receiver_factory
) -> None:  # noqa: ANN001
    from review import relay, webhooks
    from review.api import create_app

    settings = review_settings(
        review_ctx.settings.database_url,
        review_ctx.settings.s3_endpoint_url,
        webhook_url=hung.url,
        webhook_timeout_s=4.0,
        webhook_max_attempts=3,
        webhook_backoff_s=0.05,
        webhook_topics="escalation",
    )
    app = create_app(dataclasses.replace(review_ctx, settings=settings))
    items = [make_item(review_ctx, source="hung").review_item_id for _ in range(3)]
    moderator = tokens.header("moderator")
    bundles: list[int] = []
    with serving(app, threads=2) as base, httpx.Client(base_url=base, timeout=60) as http:
        for item in items[:2]:
            assert http.post(f"/v1/review/items/{item}/claim", headers=moderator).status_code == 200
            decided, seconds = _timed(
                lambda item=item: http.post(
                    f"/v1/review/items/{item}/decision", headers=moderator, json={"decision": "escalate"}
                )
            )
            assert decided.status_code == 200 and seconds < 2.0, (decided.text, seconds)
            bundles.append(decided.json()["bundle_id"])
        time.sleep(0.5)  # where deliveries ran after the response, they now hold both request threads
        for _ in range(3):
            answer, seconds = _timed(lambda: http.get(f"/v1/review/items/{items[2]}", headers=moderator))
            assert answer.status_code == 200 and seconds < 2.0, f"the API waited {seconds:.1f} s for a thread"
        queued = {m["bundle_id"]: m for m in review_ctx.escalations.outbox(state="pending")}
        assert set(bundles) <= set(queued) and all(queued[b]["attempts"] == 0 for b in bundles)
        assert hung.held == []  # nothing went out from the API's request threads

    # the relay, later: the hung receiver costs it one timeout, recorded, and the message stays queued
    config = dataclasses.replace(webhooks.config_from(settings), timeout_s=0.5)
    started = time.monotonic()
    assert relay.deliver_due(review_ctx, config) == 1  # one timeout, then the pass stops asking
    assert time.monotonic() - started < 3.0
    first = [r for r in review_ctx.escalations.deliveries() if r["bundle_id"] in bundles]
    assert [(r["attempt"], r["status_code"], r["error"], r["succeeded"]) for r in first] == [
        (1, None, "ReadTimeout", False)
    ]
    # the receiver recovers (a new address here): the next passes deliver both, the same message each time
    receiver = receiver_factory([])
    config = dataclasses.replace(config, url=receiver.url)
    deadline = time.monotonic() + 10
    while any(m["state"] == "pending" for m in review_ctx.escalations.outbox() if m["bundle_id"] in bundles):
        assert time.monotonic() < deadline, review_ctx.escalations.outbox()
        relay.deliver_due(review_ctx, config)
        time.sleep(0.05)
    bodies = {json.loads(r["body"])["bundle_id"]: r for r in receiver.requests}
    assert set(bundles) <= set(bodies)
    for bundle_id in bundles:
        request = bodies[bundle_id]
        webhooks.verify_webhook(SECRET, request["body"], request["headers"]["x-deepscreen-signature"])
        assert request["headers"]["x-deepscreen-delivery"] == queued[bundle_id]["delivery_id"]
        rows = sorted(
            (r for r in review_ctx.escalations.deliveries() if r["bundle_id"] == bundle_id),
            key=lambda r: r["attempt"],
        )
        assert rows[-1]["succeeded"] and rows[-1]["status_code"] == 200
        assert {r["delivery_id"] for r in rows} == {queued[bundle_id]["delivery_id"]}
    assert {m["state"] for m in review_ctx.escalations.outbox() if m["bundle_id"] in bundles} == {"delivered"}


def test_the_background_relay_of_serve_delivers_the_outbox(review_ctx, receiver_factory) -> None:  # noqa: ANN001
    from review import relay, webhooks

    receiver = receiver_factory([503])
    config = webhooks.WebhookConfig(
        url=receiver.url, secret=SECRET, topics=("decision.skip",), backoff_s=0.05
    )
    delivery_id = relay.enqueue(review_ctx, "decision.skip", {"review_item_id": 1, "decision": "skip"})
    thread, stop = relay.start_in_background(review_ctx, config, interval_s=0.05)
    try:
        deadline = time.monotonic() + 10
        while len([r for r in receiver.requests if r["headers"]["x-deepscreen-delivery"] == delivery_id]) < 2:
            assert time.monotonic() < deadline, receiver.requests
            time.sleep(0.05)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    rows = sorted((r for r in review_ctx.escalations.deliveries(delivery_id)), key=lambda r: r["attempt"])
    assert [(r["attempt"], r["status_code"], r["succeeded"]) for r in rows] == [
        (1, 503, False),
        (2, 200, True),
    ]


def test_a_message_whose_bundle_or_verdict_was_erased_is_dropped_not_sent(  # noqa: ANN001
    review_ctx, receiver_factory
) -> None:  # noqa: ANN001
    from review import relay, webhooks

    ctx = review_ctx
    receiver = receiver_factory([])
    gone_bundle = {"id": 10**12, "review_item_id": 1, "manifest_sha256": "0" * 64}
    messages = {
        relay.enqueue_escalation(ctx, gone_bundle): "bundle_gone",
        relay.enqueue(
            ctx, relay.TOPIC, {"verdict_id": 10**12}, delivery_id=f"verdict-{10**12}"
        ): "verdict_gone",
    }
    config = webhooks.WebhookConfig(url=receiver.url, secret=SECRET, topics=("escalation", relay.TOPIC))
    relay.deliver_due(ctx, config)
    outbox = {m["delivery_id"]: m for m in ctx.escalations.outbox()}
    assert {d: (outbox[d]["state"], outbox[d]["last_error"]) for d in messages} == {
        d: ("dropped", reason) for d, reason in messages.items()
    }
    assert not {r["headers"]["x-deepscreen-delivery"] for r in receiver.requests} & set(messages)
