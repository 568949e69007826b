"""The strings stored in `events.status` and `review_items.state`, and the groups the code asks about."""

from __future__ import annotations

from enum import StrEnum


class EventStatus(StrEnum):
    QUEUED = "queued"
    SCORED = "scored"
    NO_FACE = "no_face"
    INVALID_INPUT = "invalid_input"
    FAILED = "failed"  # retries exhausted: the dead-letter view
    ERASED = "erased"  # sent before an erasure of its bytes; nothing of it is kept


ERASED_URI = "erased:"  # all an erased event keeps of its image's address


# an event in one of these has ended: a redelivered message is skipped and the first end wins
TERMINAL = (EventStatus.SCORED, EventStatus.NO_FACE, EventStatus.INVALID_INPUT, EventStatus.FAILED, EventStatus.ERASED)
ERROR_STATUSES = (EventStatus.FAILED, EventStatus.INVALID_INPUT)


class ReviewState(StrEnum):
    PENDING = "pending"
    CLAIMED = "claimed"
    CONFIRMED_FAKE = "confirmed_fake"
    MARKED_REAL = "marked_real"
    ESCALATED = "escalated"
    WITHDRAWN = "withdrawn"  # its only ground, a known-fake match, was removed before a decision


OPEN_STATES = (ReviewState.PENDING, ReviewState.CLAIMED)
DECIDED_STATES = (ReviewState.CONFIRMED_FAKE, ReviewState.MARKED_REAL, ReviewState.ESCALATED)
