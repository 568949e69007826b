"""The review queue on real Postgres: filters, the claim race, lease expiry, decisions, the audit log, gold."""
# ruff: noqa: F811 - the shared fixtures are imported from test_review_support and named as parameters

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
from sqlalchemy import create_engine, text, update
from sqlalchemy.exc import DatabaseError

from db.review_store import DECISIONS, Actor, ClaimConflict, QueueFilter
from db.schema import ReviewItem
from db.states import ReviewState
from tests.test_review_support import client, make_item, review_ctx, review_db_url, tokens  # noqa: F401

pytestmark = pytest.mark.services


def _drain(ctx) -> None:  # noqa: ANN001
    """Decide everything still claimable so a test starts from an empty queue."""
    sweeper = Actor("sweeper", "admin")
    while (claim := ctx.reviews.claim_next(sweeper, 60)) is not None:
        ctx.reviews.decide(sweeper, claim.item_id, "mark_real")


def test_list_filters_and_paginates(review_ctx, client, tokens) -> None:  # noqa: ANN001
    _drain(review_ctx)
    low = make_item(review_ctx, source="filters-a", score=0.55, label="uncertain").review_item_id
    high = make_item(review_ctx, source="filters-a", score=0.97).review_item_id
    other = make_item(review_ctx, source="filters-b", score=0.91).review_item_id
    headers = tokens.header("moderator")

    def ids(**params: object) -> list[int]:
        response = client.get("/v1/review/items", params=params, headers=headers)
        assert response.status_code == 200, response.text
        return [i["id"] for i in response.json()["items"]]

    assert ids(source="filters-a") == [low, high]  # oldest first
    assert ids(source="filters-a", order="score") == [high, low]
    assert ids(verdict="uncertain", source="filters-a") == [low]
    assert ids(min_score=0.9) == [high, other]
    assert ids(min_score=0.5, max_score=0.6) == [low]
    assert ids(max_age_s=3600) == [low, high, other]
    assert ids(min_age_s=3600) == []
    page = client.get("/v1/review/items", params={"limit": 2, "offset": 2}, headers=headers).json()
    assert page["total"] == 3 and [i["id"] for i in page["items"]] == [other]
    assert client.get("/v1/review/items", params={"min_score": 2}, headers=headers).status_code == 422
    assert client.get("/v1/review/items", params={"state": "bogus"}, headers=headers).status_code == 422
    item = client.get(f"/v1/review/items/{high}", headers=headers).json()
    assert item["faces"][0]["fake_probability"] == pytest.approx(0.97)
    assert item["image"]["sha256"] == item["sha256"] and item["verdict"]["model_version"] == "test-model-1"
    assert client.get("/v1/review/items/987654", headers=headers).status_code == 404
    _drain(review_ctx)


def test_the_queue_filter_offers_every_review_state() -> None:
    from typing import get_args, get_type_hints

    from review.routes.review import list_items

    offered = get_args(get_type_hints(list_items)["state"])
    assert list(offered) == [*(s.value for s in ReviewState), "any"]


def test_withdrawn_items_can_be_listed(review_ctx, client, tokens) -> None:  # noqa: ANN001
    _drain(review_ctx)
    item_id = make_item(review_ctx, source="withdrawn-filter", score=0.95).review_item_id
    with review_ctx.reviews.sessions.begin() as session:
        session.execute(update(ReviewItem).where(ReviewItem.id == item_id).values(state=ReviewState.WITHDRAWN))
    headers = tokens.header("moderator")
    response = client.get("/v1/review/items", params={"state": "withdrawn", "source": "withdrawn-filter"},
                          headers=headers)
    assert response.status_code == 200, response.text
    assert [i["id"] for i in response.json()["items"]] == [item_id]
    assert review_ctx.reviews.list_items(QueueFilter(state="pending", source="withdrawn-filter"))[1] == 0


def test_concurrent_claimers_never_get_the_same_item(review_ctx) -> None:  # noqa: ANN001
    _drain(review_ctx)
    items = {make_item(review_ctx, source="race").review_item_id for _ in range(12)}
    claimed: list[tuple[str, int]] = []
    errors: list[BaseException] = []
    start = threading.Barrier(6)

    def moderator(name: str) -> None:
        actor = Actor(name, "moderator")
        try:
            start.wait()
            while (claim := review_ctx.reviews.claim_next(actor, 60)) is not None:
                claimed.append((name, claim.item_id))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=moderator, args=(f"racer-{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    counts = Counter(item for _, item in claimed)
    assert set(counts) == items and all(n == 1 for n in counts.values()), counts
    assert len({name for name, _ in claimed}) > 1  # they really raced

    # the same given item, claimed by six at once: exactly one wins
    target = make_item(review_ctx, source="race").review_item_id
    wins: list[str] = []
    refusals: list[str] = []
    start = threading.Barrier(6)

    def claim_one(name: str) -> None:
        start.wait()
        try:
            review_ctx.reviews.claim(Actor(name, "moderator"), target, 60)
            wins.append(name)
        except ClaimConflict as exc:
            refusals.append(exc.reason)

    threads = [threading.Thread(target=claim_one, args=(f"one-{i}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(wins) == 1 and refusals == ["claimed_by_other"] * 5
    for name, item in [*claimed, (wins[0], target)]:
        review_ctx.reviews.decide(Actor(name, "moderator"), item, "mark_real")


def test_an_expired_lease_lets_another_moderator_take_the_item(review_ctx) -> None:  # noqa: ANN001
    _drain(review_ctx)
    item = make_item(review_ctx, source="lease").review_item_id
    ann, bob = Actor("lease-ann", "moderator"), Actor("lease-bob", "moderator")
    claim = review_ctx.reviews.claim_next(ann, lease_seconds=1)
    assert claim is not None and claim.item_id == item
    assert review_ctx.reviews.claim_next(bob, 60) is None
    with pytest.raises(ClaimConflict, match="claimed_by_other"):
        review_ctx.reviews.claim(bob, item, 60)
    time.sleep(1.3)
    listed, _ = review_ctx.reviews.list_items(QueueFilter(state="pending", source="lease"))
    assert [i["id"] for i in listed] == [item] and listed[0]["claimed_by"] is None
    taken = review_ctx.reviews.claim_next(bob, 60)
    assert taken is not None and taken.item_id == item
    with pytest.raises(ClaimConflict, match="claimed_by_other"):
        review_ctx.reviews.decide(ann, item, "confirm_fake")  # ann's lease is gone
    assert review_ctx.reviews.decide(bob, item, "confirm_fake").new_state == "confirmed_fake"
    history = review_ctx.reviews.history(item)
    assert [(h["actor"], h["action"]) for h in history] == [
        ("lease-ann", "claim"), ("lease-bob", "claim"), ("lease-bob", "confirm_fake")]
    assert history[1]["details"]["expired_claim_of"] == "lease-ann"
    # a moderator whose own lease ran out, with nobody else on it, is told so
    item = make_item(review_ctx, source="lease").review_item_id
    review_ctx.reviews.claim(ann, item, lease_seconds=1)
    time.sleep(1.3)
    with pytest.raises(ClaimConflict, match="lease_expired"):
        review_ctx.reviews.decide(ann, item, "mark_real")
    review_ctx.reviews.claim(ann, item, 60)
    review_ctx.reviews.decide(ann, item, "mark_real")


def test_decisions_over_the_api_and_a_complete_append_only_audit_log(review_ctx, review_db_url, client, tokens) -> None:  # noqa: ANN001
    _drain(review_ctx)
    headers = tokens.header("moderator")
    made = {make_item(review_ctx, source="audit").review_item_id for _ in range(5)}
    seen: list[tuple[int, str]] = []
    for decision in ["skip", "confirm_fake", "mark_real", "escalate"]:
        claimed = client.post("/v1/review/claim", headers=headers)
        assert claimed.status_code == 200, claimed.text
        item = claimed.json()["item_id"]
        response = client.post(f"/v1/review/items/{item}/decision", headers=headers,
                               json={"decision": decision, "note": f"why {decision}"})
        assert response.status_code == 200, response.text
        assert response.json()["new_state"] == DECISIONS[decision]
        assert (response.json()["bundle_id"] is not None) == (decision == "escalate")
        seen.append((item, decision))
    skipped = seen[0][0]
    assert skipped not in {i for i, _ in seen[1:]}  # a skipped item is not handed back to the same moderator
    other = tokens.header("moderator2")
    assert client.post(f"/v1/review/items/{skipped}/claim", headers=other).status_code == 200
    assert client.post(f"/v1/review/items/{skipped}/claim", headers=headers).json()["error"] == "claimed_by_other"
    assert client.post(f"/v1/review/items/{skipped}/release", headers=headers).status_code == 409
    assert client.post(f"/v1/review/items/{skipped}/release", headers=other).status_code == 204
    decided = seen[1][0]
    conflict = client.post(f"/v1/review/items/{decided}/claim", headers=headers)
    assert conflict.status_code == 409 and conflict.json()["error"] == "already_decided"
    bad = client.post(f"/v1/review/items/{decided}/decision", headers=headers, json={"decision": "delete"})
    assert bad.status_code == 422
    # the audit log holds every transition, in order, and each row's previous state is the state before it
    engine = create_engine(review_db_url)
    with engine.connect() as conn:
        for item in made:
            rows = conn.execute(text("SELECT actor, action, previous_state, new_state, note FROM audit_log "
                                     "WHERE review_item_id = :i AND new_state IS NOT NULL ORDER BY id"),
                                {"i": item}).all()
            final = conn.execute(text("SELECT state FROM review_items WHERE id = :i"), {"i": item}).scalar()
            state = "pending"
            for row in rows:
                assert row.previous_state == state, (item, rows)
                state = row.new_state
            assert state == final, (item, rows, final)
        notes = conn.execute(text("SELECT note FROM audit_log WHERE action = 'escalate'")).scalars().all()
        assert "why escalate" in notes
    for statement in ("UPDATE audit_log SET note = 'rewritten'", "DELETE FROM audit_log"):
        with pytest.raises(DatabaseError, match="append-only"), engine.begin() as conn:
            conn.execute(text(statement))
    engine.dispose()
    log = client.get("/v1/admin/audit", params={"item_id": decided}, headers=tokens.header("admin")).json()
    assert [e["action"] for e in log] == ["claim", "confirm_fake"]
    assert log[1]["actor"] == "mod-ann" and log[1]["actor_role"] == "moderator" and log[1]["note"] == "why confirm_fake"


def test_gold_items_are_served_at_the_set_rate_and_scored_per_moderator(review_ctx) -> None:  # noqa: ANN001
    _drain(review_ctx)
    admin, ann = Actor("gold-admin", "admin"), Actor("gold-ann", "moderator")
    gold_items = []
    for label, decision in (("fake", "confirm_fake"), ("real", "mark_real")):
        item = make_item(review_ctx, source="gold").review_item_id
        review_ctx.reviews.claim(admin, item, 60)
        review_ctx.reviews.decide(admin, item, decision)
        review_ctx.reviews.set_gold(admin, item, label)
        gold_items.append(item)
    assert review_ctx.reviews.claim_next(ann, 60, gold_rate=0.0) is None  # gold is off: the queue is empty
    first = review_ctx.reviews.claim_next(ann, 60, gold_rate=1.0)
    assert first is not None and first.gold and first.item_id in gold_items
    assert first.lease_expires_at is not None  # a served gold item looks like any claim
    shown = review_ctx.reviews.item(first.item_id, viewer=ann)
    assert shown["state"] == "claimed" and shown["claimed_by"] == "gold-ann" and shown["lease_expires_at"]
    assert shown["history"] == [] and shown["gold_label"] is None and shown["decision"] is None
    assert review_ctx.reviews.item(first.item_id, viewer=admin)["gold_label"] in ("fake", "real")
    review_ctx.reviews.decide(ann, first.item_id, "confirm_fake")  # agrees on the fake one, not on the real one
    second = review_ctx.reviews.claim_next(ann, 60, gold_rate=1.0)
    assert second is not None and second.gold and second.item_id != first.item_id
    review_ctx.reviews.decide(ann, second.item_id, "confirm_fake")
    assert review_ctx.reviews.claim_next(ann, 60, gold_rate=1.0) is None  # each gold item once per moderator
    bob = Actor("gold-bob", "moderator")
    served = review_ctx.reviews.claim_next(bob, 60, gold_rate=1.0)
    review_ctx.reviews.release(bob, served.item_id)  # released like any claim: no error that gives it away
    assert review_ctx.reviews.item(served.item_id, viewer=bob)["state"] != "claimed"
    for item, label in zip(gold_items, ("confirmed_fake", "marked_real"), strict=True):
        assert review_ctx.reviews.item(item)["state"] == label  # gold answers never change the item
    rows = {r["moderator"]: r for r in review_ctx.reviews.agreement()}
    assert "gold-bob" not in rows  # a release is a skip: not scored
    assert rows["gold-ann"]["answered"] == 2 and rows["gold-ann"]["agreed"] == 1
    assert rows["gold-ann"]["agreement"] == pytest.approx(0.5)
