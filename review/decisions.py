"""A decision and what follows it: the evidence bundle of an escalation, and the webhooks it triggers.

The API and the console both call `decide`. Webhook messages go into the outbox, which the relay delivers
(review/relay.py): a request never waits on a receiver. The returned follow-ups (the re-scan hook) run after
the response is sent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from db.known_fakes import BankStore
from db.review_store import Actor, DecisionResult
from review import relay, webhooks
from review.bundles import create_bundle
from review.context import ReviewContext

log = logging.getLogger(__name__)


@dataclass
class Decided:
    result: DecisionResult
    bundle: dict[str, Any] | None = None
    followups: list[Callable[[], Any]] = field(default_factory=list)


def decide(ctx: ReviewContext, actor: Actor, item_id: int, decision: str, note: str | None) -> Decided:
    result = ctx.reviews.decide(actor, item_id, decision, note)
    log.info("decision review_item_id=%s decision=%s new_state=%s actor=%s", item_id, decision, result.new_state,
             actor.name)
    decided = Decided(result)
    if result.gold:
        return decided  # a gold check changes nothing and tells nobody
    if decision == "confirm_fake" and result.bank_entry_id is not None:
        entry_id, distance = result.bank_entry_id, ctx.settings.known_fake_distance
        # the re-scan hook: stored images near the newly confirmed fake go to the queue (after the response)
        decided.followups.append(lambda: BankStore(ctx.store.engine).rescan_entry(entry_id, distance))
    config = webhooks.config_from(ctx.settings)
    if decision == "escalate":
        try:
            decided.bundle = create_bundle(ctx, item_id, actor.name)
        except Exception:  # noqa: BLE001 - the decision stands; the bundle can be rebuilt (POST .../bundles)
            log.exception("bundle failed item_id=%s", item_id)
        if config is not None and decided.bundle is not None and config.wants("escalation"):
            relay.enqueue_escalation(ctx, decided.bundle)
    topic = f"decision.{decision}"
    if config is not None and config.wants(topic):
        relay.enqueue(ctx, topic, {"review_item_id": item_id, "decision": decision, "actor": actor.name,
                                   "new_state": result.new_state, "at": datetime.now(UTC)})
    return decided


def reverse(ctx: ReviewContext, actor: Actor, item_id: int, note: str | None) -> DecisionResult:
    """Undo a decision: back to the queue; the bank entries it made (and their matches) are gone."""
    return ctx.reviews.reverse(actor, item_id, note)


def rebuild_bundle(ctx: ReviewContext, actor: Actor, item_id: int) -> dict[str, Any]:
    bundle = create_bundle(ctx, item_id, actor.name)
    ctx.reviews.record(actor, "bundle_created", item_id, details={"bundle_id": bundle["id"]})
    return bundle
