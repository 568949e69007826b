"""pipeline.events: the UploadEvent schema and S3 ObjectCreated notifications."""

from __future__ import annotations

import copy
import hashlib
import json
from datetime import UTC, datetime

import pytest

from pipeline.errors import InvalidEvent
from pipeline.events import (
    MAX_EVENT_BYTES,
    UploadEvent,
    events_from_s3_notification,
    is_s3_notification,
    parse_event,
    parse_payload,
)

SHA = hashlib.sha256(b"image").hexdigest()


def _event(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "event_id": "upload-1",
        "image_uri": "s3://uploads/2026/11/cat.jpg",
        "sha256": SHA,
        "source": "web",
        "uploaded_at": "2026-11-23T10:00:00Z",
        "priority": "upload",
    }
    base.update(overrides)
    return base


def _record(key: str, etag: str = "abc123", name: str = "ObjectCreated:Put", bucket: str = "uploads") -> dict:
    return {
        "eventVersion": "2.1",
        "eventSource": "aws:s3",
        "eventTime": "2026-11-23T10:00:00.000Z",
        "eventName": name,
        "s3": {
            "bucket": {"name": bucket},
            "object": {"key": key, "size": 1234, "eTag": etag, "sequencer": "0055"},
        },
    }


def test_valid_event_from_json_text_bytes_and_dict() -> None:
    as_dict = parse_event(_event())
    assert as_dict == parse_event(json.dumps(_event())) == parse_event(json.dumps(_event()).encode())
    assert as_dict.event_id == "upload-1"
    assert as_dict.image_uri == "s3://uploads/2026/11/cat.jpg"
    assert as_dict.sha256 == SHA
    assert as_dict.priority == "upload"
    assert as_dict.uploaded_at == datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def test_defaults_and_normalisation() -> None:
    event = parse_event(
        {
            "event_id": "  e-2  ",
            "image_uri": "incoming/a.png",
            "sha256": SHA.upper(),
            "uploaded_at": "2026-01-01T00:00:00",
        }
    )
    assert event.event_id == "e-2"  # whitespace stripped
    assert event.sha256 == SHA  # upper-case hex accepted, stored lower-case
    assert event.source == "default"
    assert event.priority == "upload"
    assert event.uploaded_at.tzinfo is not None  # a naive time is taken as UTC
    assert parse_event({"event_id": "e", "image_uri": "a.png"}).uploaded_at.tzinfo is not None


def test_round_trip_through_to_json() -> None:
    event = parse_event(_event(priority="rescan"))
    assert parse_event(event.to_json()) == event


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"event_id": None}, "event_id"),
        ({"event_id": ""}, "event_id"),
        ({"event_id": "has space"}, "event_id"),
        ({"event_id": "x" * 201}, "event_id"),
        ({"image_uri": ""}, "image_uri"),
        ({"image_uri": "s3://uploads/a\x00.jpg"}, "image_uri"),
        ({"priority": "urgent"}, "priority"),
        ({"uploaded_at": "yesterday"}, "uploaded_at"),
        ({"source": ""}, "source"),
    ],
)
def test_invalid_field_is_named(overrides: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidEvent, match=field):
        parse_event(_event(**overrides))


@pytest.mark.parametrize("field", ["event_id", "image_uri"])
def test_missing_required_field_is_named(field: str) -> None:
    payload = _event()
    del payload[field]
    with pytest.raises(InvalidEvent, match=rf"{field}: Field required"):
        parse_event(payload)


def test_every_problem_is_named_at_once() -> None:
    with pytest.raises(InvalidEvent) as info:
        parse_event({"event_id": "bad id", "image_uri": "http://x/y", "priority": "now"})
    for field in ("event_id", "image_uri", "priority"):
        assert field in str(info.value)


def test_unknown_field_refused() -> None:
    with pytest.raises(InvalidEvent, match="callback_url"):
        parse_event(_event(callback_url="http://evil.example/"))


@pytest.mark.parametrize("bad", ["abc", "g" * 64, SHA[:-1], SHA + "0", 12])
def test_bad_sha256(bad: object) -> None:
    with pytest.raises(InvalidEvent, match="sha256"):
        parse_event(_event(sha256=bad))


def test_oversize_payload_refused_before_parsing() -> None:
    payload = json.dumps(_event(source="s" * 100)) + " " * MAX_EVENT_BYTES
    with pytest.raises(InvalidEvent, match="larger than"):
        parse_event(payload)
    with pytest.raises(InvalidEvent, match="larger than"):
        parse_event(payload.encode())


@pytest.mark.parametrize("payload", [b"{not json", b"\xff\xfe\x00", "[1, 2", "42", "[]", '"s3://b/k"'])
def test_not_a_json_object(payload: bytes | str) -> None:
    with pytest.raises(InvalidEvent):
        parse_event(payload)


@pytest.mark.parametrize(
    "uri",
    [
        "s3://b/../x",
        "s3://b/a/../../etc/passwd",
        "s3://b/./x",
        "s3://b/a/..",
        "s3://bucket",
        "s3:///key",
        "s3://bucket/",
    ],
)
def test_s3_uri_traversal_and_shape_refused(uri: str) -> None:
    with pytest.raises(InvalidEvent, match="image_uri"):
        parse_event(_event(image_uri=uri))


@pytest.mark.parametrize(
    "uri",
    ["http://example.com/a.jpg", "https://example.com/a.jpg", "file:///etc/passwd", "gs://b/k", "S3://b/k"],
)
def test_non_s3_url_refused(uri: str) -> None:
    with pytest.raises(InvalidEvent, match="image_uri"):
        parse_event(_event(image_uri=uri))


@pytest.mark.parametrize(
    "uri", ["s3://b/k.jpg", "s3://b/dir/..hidden/x.jpg", "s3://b/a..b.jpg", "local/dir/x.png"]
)
def test_acceptable_uris(uri: str) -> None:
    assert parse_event(_event(image_uri=uri)).image_uri == uri


def test_event_is_frozen() -> None:
    event = parse_event(_event())
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises its ValidationError on a frozen model
        event.event_id = "other"  # type: ignore[misc]
    assert isinstance(event, UploadEvent)


# -- S3 notifications -------------------------------------------------------------------------------


def _notification() -> dict:
    return {
        "Records": [
            _record("photos/summer+holiday%2Bfriends%20%C3%A9t%C3%A9.jpg", etag="e1"),
            _record("photos/b.png", etag="e2", name="ObjectRemoved:Delete"),
            _record("photos/c.png", etag="e3", name="s3:ObjectCreated:CompleteMultipartUpload"),
            {"eventName": "s3:TestEvent"},
        ]
    }


def test_notification_becomes_events() -> None:
    payload = _notification()
    assert is_s3_notification(payload)
    events = events_from_s3_notification(payload, source="minio", priority="rescan")
    assert [e.image_uri for e in events] == [
        "s3://uploads/photos/summer holiday+friends été.jpg",  # URL-encoded key decoded (+ is a space)
        "s3://uploads/photos/c.png",
    ]
    assert all(e.source == "minio" and e.priority == "rescan" for e in events)
    assert all(e.event_id.startswith("s3-") for e in events)
    assert events[0].event_id != events[1].event_id
    assert events[0].uploaded_at == datetime(2026, 11, 23, 10, 0, tzinfo=UTC)


def test_notification_delivered_twice_gives_same_ids() -> None:
    first = events_from_s3_notification(_notification())
    second = events_from_s3_notification(copy.deepcopy(_notification()))
    assert [e.event_id for e in first] == [e.event_id for e in second]


def test_new_version_of_same_key_gets_new_id() -> None:
    a = events_from_s3_notification({"Records": [_record("k.jpg", etag="v1")]})
    b = events_from_s3_notification({"Records": [_record("k.jpg", etag="v2")]})
    c = events_from_s3_notification({"Records": [_record("k.jpg", etag="v1", bucket="other")]})
    assert len({a[0].event_id, b[0].event_id, c[0].event_id}) == 3


def test_notification_without_created_records() -> None:
    payload = {"Records": [_record("x.jpg", name="ObjectRemoved:Delete")]}
    assert not is_s3_notification(payload)
    assert events_from_s3_notification(payload) == []
    assert parse_payload(payload) == []


def test_notification_key_with_encoded_traversal_refused() -> None:
    with pytest.raises(InvalidEvent, match="image_uri"):
        events_from_s3_notification({"Records": [_record("a/%2E%2E/secret.jpg")]})


@pytest.mark.parametrize(
    "payload",
    [
        {"Records": "nope"},
        {"Records": ["not a record"]},
        {"Records": [{"eventName": "ObjectCreated:Put", "s3": {"bucket": {}}}]},
        {"Records": [{"eventName": "ObjectCreated:Put", "s3": None}]},
    ],
)
def test_malformed_notification(payload: dict) -> None:
    with pytest.raises(InvalidEvent):
        events_from_s3_notification(payload)


def test_parse_payload_shapes() -> None:
    single = parse_payload(_event())
    assert [e.event_id for e in single] == ["upload-1"]
    listed = parse_payload(json.dumps([_event(event_id="a"), _event(event_id="b")]))
    assert [e.event_id for e in listed] == ["a", "b"]
    from_notification = parse_payload(json.dumps(_notification()).encode())
    assert from_notification == events_from_s3_notification(_notification())
    assert parse_payload("[]") == []


def test_parse_payload_refuses_bad_member_and_bad_json() -> None:
    with pytest.raises(InvalidEvent, match="event_id"):
        parse_payload([_event(), _event(event_id="bad id")])
    with pytest.raises(InvalidEvent, match="not valid JSON"):
        parse_payload(b"{oops")


from hypothesis import HealthCheck, given  # noqa: E402
from hypothesis import settings as fuzz_settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=40))
_json = st.recursive(_json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(st.text(max_size=12), inner, max_size=5)),
                     max_leaves=20)
_event_like = st.fixed_dictionaries({}, optional={
    "event_id": st.one_of(st.text(max_size=220), _json_leaf), "image_uri": st.one_of(st.text(max_size=60), _json_leaf),
    "sha256": st.one_of(st.text(max_size=70), _json_leaf), "source": st.one_of(st.text(max_size=30), _json_leaf),
    "uploaded_at": st.one_of(st.text(max_size=30), _json_leaf), "priority": st.one_of(st.text(max_size=8), _json_leaf),
    "extra": _json_leaf})


@fuzz_settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=st.one_of(_event_like, _json, st.binary(max_size=200), st.text(max_size=200)))
def test_fuzz_parse_payload_returns_events_or_invalid_event(payload: object) -> None:
    from pipeline.errors import InvalidEvent
    from pipeline.events import UploadEvent, parse_payload

    try:
        events = parse_payload(payload)  # type: ignore[arg-type]
    except InvalidEvent:
        return
    assert all(isinstance(e, UploadEvent) for e in events)
