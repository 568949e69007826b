"""API bodies and responses (pydantic at the boundary), and the bounds of the numbers routes take.

Every number a route accepts has a floor and a ceiling (tests/test_review_hostile.py walks the routes): a
value past what the database holds would otherwise end as an OverflowError or a DataError, a 500.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Path
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

Decision = Literal["confirm_fake", "mark_real", "escalate", "skip"]
Role = Literal["service", "moderator", "admin"]

MAX_ROW_ID = 2**63 - 1  # the largest integer SQLite and a Postgres bigint hold
MAX_AGE_S = 100 * 365 * 86400.0  # further back than any item; datetime arithmetic past it overflows
MAX_PAGE = 1_000_000  # console queue pages of 50
MAX_FACE_INDEX = 10_000
MAX_TOKEN_DAYS = 36_500.0
RowId = Annotated[int, Path(ge=1, le=MAX_ROW_ID)]


def refuse_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("text may not contain a NUL character")
    return value


StoredText = Annotated[str, AfterValidator(refuse_nul)]  # form text that is written to the database


class Body(BaseModel):
    """A request body: numbers are finite, and text holds no NUL (Postgres cannot store one)."""

    model_config = ConfigDict(allow_inf_nan=False)

    @field_validator("*")
    @classmethod
    def _no_nul(cls, value: object) -> object:
        return refuse_nul(value) if isinstance(value, str) else value


class Error(BaseModel):
    error: str
    detail: str | None = None


class Readiness(BaseModel):
    """The public readiness answer: nothing but up or down."""

    status: Literal["ready", "unavailable"]


class ReadinessCheck(BaseModel):
    ok: bool
    detail: str | None = None
    seconds: float


class ReadinessDetail(Readiness):
    failing: list[str]
    checks: dict[str, ReadinessCheck]


def error_response(
    status: int, error: str, *, headers: Mapping[str, str] | None = None, **fields: Any
) -> JSONResponse:
    """The one shape of a JSON error: a stable `error` code clients branch on, then the fields that explain
    it (`Error` documents the common ones)."""
    return JSONResponse({"error": error, **fields}, status_code=status, headers=headers)


class EventsAccepted(BaseModel):
    accepted: list[str] = Field(description="event ids recorded and queued now")
    duplicates: list[str] = Field(description="event ids seen before: nothing was queued again")


class FaceOut(BaseModel):
    index: int
    box: list[float]
    detection_probability: float | None
    fake_probability: float
    verdict: str
    heatmap_url: str | None = None
    crop_url: str | None = None


class VerdictOut(BaseModel):
    verdict_id: int
    model_version: str
    status: str
    verdict: str | None
    fake_probability: float | None
    reason: str | None
    heatmap_url: str | None = None
    threshold_fake: float | None = None  # the cut-offs that made the verdict (None: recorded before they were kept)
    threshold_real: float | None = None
    min_face_side: int | None = None
    faces: list[FaceOut]


class ImageOut(BaseModel):
    id: int
    sha256: str
    source: str
    width: int | None
    height: int | None
    size_bytes: int
    uploaded_at: datetime | None
    first_seen_at: datetime | None
    original_url: str | None
    links_expire_in_s: int | None = Field(description="lifetime of presigned links; None for proxied links")
    verdicts: list[VerdictOut]
    review_items: list[dict[str, Any]]


class ItemSummary(BaseModel):
    id: int
    state: str
    verdict_id: int
    image_id: int
    sha256: str
    reason: str
    fake_probability: float | None
    source: str
    created_at: datetime | None
    age_s: float | None
    claimed_by: str | None
    lease_expires_at: datetime | None
    decision: str | None
    decided_by: str | None
    decided_at: datetime | None
    skips: int
    gold_label: str | None = None


class QueuePage(BaseModel):
    items: list[ItemSummary]
    total: int
    limit: int
    offset: int


class AuditOut(BaseModel):
    id: int
    at: datetime | None
    actor: str
    actor_role: str
    action: str
    review_item_id: int | None
    previous_state: str | None
    new_state: str | None
    note: str | None
    details: dict[str, Any]


class ItemDetail(ItemSummary):
    image: dict[str, Any]
    verdict: dict[str, Any]
    faces: list[dict[str, Any]]
    history: list[AuditOut]
    bundles: list[dict[str, Any]] = []
    bank_matches: list[dict[str, Any]] = []  # known-fake memory: the nearest fake and real bank hits


class ClaimOut(BaseModel):
    item_id: int
    lease_expires_at: datetime | None


class DecisionIn(Body):
    decision: Decision
    note: str | None = Field(default=None, max_length=4000)


class ReverseIn(Body):
    note: str | None = Field(default=None, max_length=4000)


class DecisionOut(BaseModel):
    item_id: int
    decision: str
    previous_state: str
    new_state: str
    bundle_id: int | None = None


class BundleOut(BaseModel):
    id: int
    review_item_id: int
    manifest_sha256: str
    signature: str
    created_by: str
    created_at: datetime | None
    download_url: str


class TokenIn(Body):
    name: str = Field(min_length=1, max_length=200)
    role: Role
    expires_days: float | None = Field(default=None, gt=0, le=MAX_TOKEN_DAYS)


class TokenOut(BaseModel):
    id: int
    name: str
    role: str
    prefix: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None


class TokenCreated(TokenOut):
    token: str = Field(description="shown once; only its sha256 is stored")


class GoldIn(Body):
    label: Literal["fake", "real"] | None


class DeliveryOut(BaseModel):
    id: int
    delivery_id: str
    topic: str
    bundle_id: int | None
    target: str
    attempt: int
    status_code: int | None
    error: str | None
    succeeded: bool
    seconds: float
    at: datetime | None


class AgreementOut(BaseModel):
    moderator: str
    answered: int
    agreed: int
    agreement: float | None
