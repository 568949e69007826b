"""Opening review items: one per verdict a moderator must see, and what a re-scan verdict does to the items an
image already has.

A re-scan verdict (`review_for_rescan`, inside the verdict's transaction):
- fake/uncertain and the image has no open item: a new review item;
- fake/uncertain and an item is already pending or claimed: a note on that item, no second item;
- any verdict while a decided item exists: a note, and the decision stands unless the run asked to reopen;
- real (or no face) while an item is pending: a note on it; the item stays for a moderator.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db import known_fakes
from db.schema import AuditEntry, RescanRun, ReviewItem
from db.states import DECIDED_STATES, OPEN_STATES, ReviewState
from pipeline.decide import needs_review
from pipeline.screen import Verdict as ScreenVerdict


def review_row(verdict_id: int, image_id: int, label: str | None, result: ScreenVerdict, source: str,
               now: datetime) -> dict[str, Any]:
    return {"verdict_id": verdict_id, "image_id": image_id, "state": ReviewState.PENDING,
            "reason": known_fakes.review_reason(result, label), "fake_probability": result.fake_probability,
            "source": source, "created_at": now, "updated_at": now}


def open_review(session: Session, insert: Any, verdict_id: int, image_id: int, label: str | None,  # noqa: ANN401
                result: ScreenVerdict, source: str) -> int | None:
    """The verdict's review item, opened once (`insert`: the dialect's insert); None when it needs none."""
    if not needs_review(label):
        return None
    review_id = session.scalar(
        insert(ReviewItem)
        .values(review_row(verdict_id, image_id, label, result, source, datetime.now(UTC)))
        .on_conflict_do_nothing(index_elements=["verdict_id"])
        .returning(ReviewItem.id)
    )
    if review_id is None:
        review_id = session.scalar(select(ReviewItem.id).where(ReviewItem.verdict_id == verdict_id))
    return review_id


def review_for_rescan(session: Session, *, run_id: int, verdict_id: int, image_id: int, label: str | None,
                      fake_probability: float | None, model_version: str, needs_review: bool,
                      open_item: Callable[[], int | None]) -> int | None:
    """The review side of one new re-scan verdict (see the module docstring). `open_item` opens the verdict's
    own item the way every verdict does. Returns the open item's id."""
    run = session.get(RescanRun, run_id)
    reopen = bool(run and run.reopen_decided)
    items = session.scalars(select(ReviewItem).where(ReviewItem.image_id == image_id, ReviewItem.verdict_id != verdict_id)
                            .order_by(ReviewItem.id.desc())).all()
    open_item_row = next((i for i in items if i.state in OPEN_STATES), None)
    decided = next((i for i in items if i.state in DECIDED_STATES), None)
    summary = f"re-scan run {run_id} with model {model_version}: now {label or 'no verdict'}" + (
        f" (fake probability {fake_probability:.3f})" if fake_probability is not None else "")
    if open_item_row is not None:
        _note(session, run_id, open_item_row,
              summary + ("; this item stays open for a decision" if not needs_review else ""))
        return open_item_row.id if needs_review else None
    if decided is not None and not (reopen and needs_review):
        _note(session, run_id, decided, summary + f"; the decision ({decided.state}) stands")
        return None
    if not needs_review:
        return None
    item_id = open_item()
    if decided is not None:  # reopened on request: say so on the old item
        _note(session, run_id, decided, summary + f"; reopened as review item {item_id} (the run asked to reopen)")
    return item_id


def _note(session: Session, run_id: int, item: ReviewItem, note: str) -> None:
    session.add(AuditEntry(at=datetime.now(UTC), actor=f"rescan-run-{run_id}", actor_role="system",
                           action="rescan_note", review_item_id=item.id, previous_state=item.state,
                           new_state=item.state, note=note[:4000], details={"run_id": run_id}))
