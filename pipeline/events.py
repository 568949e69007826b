"""The UploadEvent schema, and S3/MinIO ObjectCreated notifications turned into events."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import unquote_plus

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.errors import InvalidEvent

Priority = Literal["upload", "rescan"]
MAX_EVENT_BYTES = 16 * 1024

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_EVENT_ID = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,200}$")


class UploadEvent(BaseModel):
    """One image to screen. `event_id` is the producer's idempotency key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: str = Field(min_length=1, max_length=200)
    image_uri: str = Field(min_length=1, max_length=2048)
    sha256: str | None = None
    source: str = Field(default="default", min_length=1, max_length=200)
    uploaded_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    priority: Priority = "upload"
    rescan_run: int | None = Field(default=None, ge=1)  # set by the re-scan driver on the events it enqueues

    @model_validator(mode="after")
    def _rescan_run_only_on_rescans(self) -> UploadEvent:
        if self.rescan_run is not None and self.priority != "rescan":
            raise ValueError("rescan_run is only allowed on priority=rescan events")
        return self

    @field_validator("source")
    @classmethod
    def _source_printable(cls, value: str) -> str:
        value = value.strip()
        if not value or not value.isprintable():
            raise ValueError("source must be non-empty printable text")
        return value

    @field_validator("event_id", mode="before")
    @classmethod
    def _event_id_strip(cls, value: object) -> object:
        return value.strip() if isinstance(value, str) else value

    @field_validator("event_id")
    @classmethod
    def _event_id_chars(cls, value: str) -> str:
        if not _EVENT_ID.match(value):
            raise ValueError("event_id may hold letters, digits and ._:@/+=- only")
        return value

    @field_validator("sha256")
    @classmethod
    def _sha256_hex(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.lower()
        if not _SHA256.match(value):
            raise ValueError("sha256 must be 64 hex digits")
        return value

    @field_validator("image_uri")
    @classmethod
    def _uri_shape(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("image_uri holds a NUL byte")
        if value.startswith("s3://"):
            bucket, _, key = value[5:].partition("/")
            if not bucket or not key:
                raise ValueError("an s3 uri needs a bucket and a key: s3://bucket/key")
            if any(part in ("..", ".") for part in key.split("/")):
                raise ValueError("image_uri key may not contain '.' or '..' segments")
            return value
        if "://" in value:
            raise ValueError("image_uri must be s3://bucket/key or a local path")
        return value

    @field_validator("uploaded_at")
    @classmethod
    def _aware(cls, value: datetime) -> datetime:
        return value if value.tzinfo else value.replace(tzinfo=UTC)

    def to_json(self) -> str:
        return self.model_dump_json()


def _json(text: bytes | str, what: str) -> Any:
    """JSON text to Python values; malformed or absurdly nested text is an InvalidEvent, never a crash."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidEvent(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:  # the decoder recurses once per level: [[[[...]]]] exhausts the stack
        raise InvalidEvent(f"{what} nests too deep to be an event") from None


def parse_event(payload: bytes | str | dict[str, Any]) -> UploadEvent:
    """Validate one event from JSON text or a dict; raise InvalidEvent with every problem named."""
    if isinstance(payload, bytes | str):
        if len(payload) > MAX_EVENT_BYTES:
            raise InvalidEvent(f"event is larger than {MAX_EVENT_BYTES} bytes")
        payload = _json(payload, "event")
    if not isinstance(payload, dict):
        raise InvalidEvent("event must be a JSON object")
    try:
        return UploadEvent.model_validate(payload)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'event'}: {err['msg']}" for err in exc.errors()
        )
        raise InvalidEvent(problems) from None


def is_s3_notification(payload: dict[str, Any]) -> bool:
    records = payload.get("Records")
    return isinstance(records, list) and any(
        isinstance(r, dict) and str(r.get("eventName", "")).startswith(("ObjectCreated", "s3:ObjectCreated"))
        for r in records
    )


def events_from_s3_notification(
    payload: dict[str, Any], source: str = "s3", priority: Priority = "upload"
) -> list[UploadEvent]:
    """Turn an S3 or MinIO bucket notification into events; records other than ObjectCreated are skipped.

    The event_id is derived from bucket, key and the object's ETag/sequencer, so a notification that is
    delivered twice (S3 delivers at least once) gives the same event_id and is screened once.
    """
    records = payload.get("Records")
    if not isinstance(records, list):
        raise InvalidEvent("an S3 notification needs a Records list")
    events: list[UploadEvent] = []
    for record in records:
        if not isinstance(record, dict):
            raise InvalidEvent("each S3 notification record must be an object")
        name = str(record.get("eventName", ""))
        if not name.startswith(("ObjectCreated", "s3:ObjectCreated")):
            continue
        try:
            bucket = record["s3"]["bucket"]["name"]
            obj = record["s3"]["object"]
            key = unquote_plus(obj["key"])
        except (KeyError, TypeError):
            raise InvalidEvent("S3 record lacks s3.bucket.name or s3.object.key") from None
        version = str(obj.get("eTag") or obj.get("sequencer") or obj.get("versionId") or "")
        digest = hashlib.sha256(f"{bucket}\x00{key}\x00{version}".encode()).hexdigest()[:32]
        raw_time = record.get("eventTime")
        fields: dict[str, Any] = {
            "event_id": f"s3-{digest}",
            "image_uri": f"s3://{bucket}/{key}",
            "source": source,
            "priority": priority,
        }
        if raw_time:
            fields["uploaded_at"] = raw_time
        events.append(parse_event(fields))
    return events


def parse_payload(payload: bytes | str | dict[str, Any]) -> list[UploadEvent]:
    """Accept a single event, a JSON list of events, or an S3 notification."""
    if isinstance(payload, bytes | str):
        payload = _json(payload, "payload")
    if isinstance(payload, list):
        return [parse_event(item) for item in payload]
    if isinstance(payload, dict) and "Records" in payload:
        return events_from_s3_notification(payload)
    return [parse_event(payload)]  # type: ignore[arg-type]
