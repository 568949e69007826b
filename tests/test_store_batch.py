"""Store.save_many writes what Store.save writes, one verdict at a time: the same rows, the same results.

Checked on both dialects the product runs on (Postgres for workers, SQLite for `deepscreen scan`), with a batch
that holds every case the batch path decides: fresh verdicts with and without faces, two events with the same
bytes, an image that already had a verdict, a verdict that needs review and one that does not, an invalid
input (no sha256), a bank match, and a re-scan event sharing new bytes with an upload (written by save's own
path inside the batch). The batch path runs in groups; a group size of 2 splits duplicates across groups.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import NoResultFound

from db.schema import Event, FaceRow, Image, PerceptualHashRow, ReviewItem, Verdict
from db.store import BlobKeys, Store
from pipeline.events import UploadEvent
from pipeline.pdq import PerceptualHash
from pipeline.screen import BankMatch, FaceVerdict
from pipeline.screen import Verdict as ScreenVerdict

MODEL = "test-model-1"


def _sha(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def _scored(name: str, label: str, probability: float, faces: int = 1, **extra: Any) -> ScreenVerdict:
    sha = _sha(name)
    return ScreenVerdict(
        key=sha, status="scored", model_version=MODEL, sha256=sha, size_bytes=100, width=640, height=480,
        verdict=label, fake_probability=probability, timings={"classify": 0.01},
        faces=tuple(FaceVerdict(index=i, box=(10.0 + i, 20.0, 110.0, 140.0), detection_probability=0.99,
                                fake_probability=probability, verdict=label) for i in range(faces)),
        pdq=PerceptualHash("ab" * 32, 80, mirror="cd" * 32), **extra)


def _keys(verdict: ScreenVerdict) -> BlobKeys:
    if not verdict.faces:
        return BlobKeys()
    return BlobKeys(heatmap=f"h/{verdict.sha256}/image.jpg",
                    faces={f.index: (f"h/{verdict.sha256}/face-{f.index}.jpg", None) for f in verdict.faces})


def _batch() -> list[tuple[UploadEvent, ScreenVerdict, BlobKeys, int]]:
    fake = _scored("fake", "fake", 0.97, faces=2)
    real = _scored("real", "real", 0.03)
    unsure = _scored("unsure", "uncertain", 0.55)
    earlier = _scored("earlier", "real", 0.1)  # saved before the batch: the batch reuses its verdict
    no_face = ScreenVerdict(key=_sha("wall"), status="no_face", model_version=MODEL, sha256=_sha("wall"),
                            size_bytes=10, width=64, height=64, reason="no_face")
    broken = ScreenVerdict(key="error:5", status="invalid_input", model_version=MODEL, reason="corrupt")
    matched = _scored("matched", "fake", 0.99, reason="matched_known_fake",
                      matches=(BankMatch(entry_id=999, label="fake", distance=3),))
    second = _scored("second", "uncertain", 0.6)
    shared = _scored("shared", "uncertain", 0.5)  # a re-scan and an upload of the same new bytes in one batch
    rescan = UploadEvent(event_id="a-rescan", image_uri="s3://uploads/s.jpg", source="rescan", priority="rescan",
                         rescan_run=777)  # sorts before the upload: in `save`'s order it writes the verdict
    events = [UploadEvent(event_id=f"ev-{i}", image_uri=f"s3://uploads/{i}.jpg", source="test") for i in range(9)]
    items = [(events[0], fake, _keys(fake), 1), (events[1], real, _keys(real), 1),
             (events[2], fake, _keys(fake), 2),  # the same bytes again in the batch
             (events[3], unsure, _keys(unsure), 1), (events[4], earlier, _keys(earlier), 1),
             (events[5], no_face, BlobKeys(), 1), (events[6], broken, BlobKeys(), 3),
             (events[7], matched, _keys(matched), 1), (events[8], second, _keys(second), 1),
             (UploadEvent(event_id="ev-9", image_uri="s3://uploads/s.jpg", source="test"), shared, _keys(shared), 1),
             (rescan, shared, _keys(shared), 2)]
    return items


def _snapshot(store: Store) -> dict[str, Any]:
    """Every row the saves wrote, without ids and clocks, keyed by what identifies it."""
    with store.sessions() as session:
        images = {i.id: i.sha256 for i in session.scalars(select(Image))}
        verdicts = {v.id: (images[v.image_id], v.model_version) for v in session.scalars(select(Verdict))}
        return {
            "images": sorted((i.sha256, i.uri, i.source, i.size_bytes, i.width, i.height)
                             for i in session.scalars(select(Image))),
            "verdicts": sorted((images[v.image_id], v.model_version, v.status, v.verdict, v.fake_probability,
                                v.reason, v.heatmap_key, v.face_count, v.attempts, str(sorted(v.timings.items())))
                               for v in session.scalars(select(Verdict))),
            "faces": sorted((verdicts[f.verdict_id], f.face_index, f.x1, f.y1, f.x2, f.y2, f.detection_probability,
                             f.fake_probability, f.verdict, f.heatmap_key, f.crop_key)
                            for f in session.scalars(select(FaceRow))),
            "hashes": sorted((verdicts[h.verdict_id], images[h.image_id], h.pdq, h.pdq_mirror, h.quality,
                              h.low_quality) for h in session.scalars(select(PerceptualHashRow))),
            "reviews": sorted((verdicts[r.verdict_id], images[r.image_id], r.state, r.reason, r.fake_probability,
                               r.source) for r in session.scalars(select(ReviewItem))),
            "events": sorted((e.event_id, e.image_uri, e.status, e.reason, e.attempts,
                              images.get(e.image_id) if e.image_id else None,
                              verdicts.get(e.verdict_id) if e.verdict_id else None, e.finished_at is not None)
                             for e in session.scalars(select(Event))),
        }


def _results(saved: list) -> list[tuple]:  # noqa: ANN001
    return [(s.event_id, s.status, s.verdict, s.reused, s.review_item_id is not None, s.reason) for s in saved]


@pytest.fixture(params=["sqlite", "postgres"])
def two_stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Store, Store]]:
    if request.param == "sqlite":
        from db.migrate import home_database

        yield Store.from_url(home_database(tmp_path / "one")), Store.from_url(home_database(tmp_path / "batch"))
        return
    from devservices import fresh_database

    with fresh_database("deepscreen_batch_one") as one, fresh_database("deepscreen_batch_many") as many:
        stores = Store.from_url(one), Store.from_url(many)
        yield stores
        for store in stores:
            store.engine.dispose()


@pytest.mark.services
@pytest.mark.parametrize("group", [100, 2])
def test_save_many_writes_what_save_writes(two_stores: tuple[Store, Store], group: int,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("db.store.PLAIN_GROUP", group)
    one_by_one, batched = two_stores
    items = _batch()
    earlier = items[4]
    for store in two_stores:  # the image that already had a verdict, from an earlier event
        store.save(UploadEvent(event_id="ev-before", image_uri="s3://uploads/before.jpg", source="test"),
                   earlier[1], earlier[2])
    expected = [one_by_one.save(event, verdict, keys, attempts) for event, verdict, keys, attempts in
                sorted(items, key=lambda item: (item[1].sha256 or "", item[0].event_id))]
    got = batched.save_many(items)
    assert [s.event_id for s in got] == [item[0].event_id for item in items]  # in the items' order
    by_event = {s.event_id: s for s in expected}
    assert _results(got) == _results([by_event[item[0].event_id] for item in items])
    assert _snapshot(batched) == _snapshot(one_by_one)
    first, again = got[0], got[2]  # the same bytes twice: one verdict, written by the first, one review item
    assert first.verdict_id == again.verdict_id and not first.reused and again.reused
    assert first.review_item_id == again.review_item_id is not None
    assert got[4].reused and got[1].review_item_id is None and got[3].review_item_id is not None
    # saved again (a redelivered batch): nothing changes, and every event keeps its first terminal status
    before = _snapshot(batched)
    assert [s.reused for s in batched.save_many(items) if s.verdict_id is not None] == [True] * 10
    assert _snapshot(batched) == before


@pytest.mark.services
def test_verdict_documents_read_every_verdict_of_a_batch(two_stores: tuple[Store, Store]) -> None:
    """A scan's batch of results is read back in two queries; each document must hold what that verdict's own
    rows hold (faces in index order, the image's sha256), and an id with no verdict is left out."""
    store = two_stores[1]
    saved = store.save_many(_batch())
    ids = sorted({s.verdict_id for s in saved if s.verdict_id is not None})
    documents = store.verdict_documents([*ids, ids[0], 10**9])
    assert sorted(documents) == ids
    with store.sessions() as session:
        for verdict in session.scalars(select(Verdict).where(Verdict.id.in_(ids))):
            faces = sorted(verdict.faces, key=lambda f: f.face_index)
            assert documents[verdict.id] == {
                "verdict_id": verdict.id, "sha256": verdict.image.sha256, "status": verdict.status,
                "verdict": verdict.verdict, "fake_probability": verdict.fake_probability,
                "faces": [{"box": [f.x1, f.y1, f.x2, f.y2], "detection_probability": f.detection_probability,
                           "fake_probability": f.fake_probability, "verdict": f.verdict, "heatmap": f.heatmap_key}
                          for f in faces],
                "heatmap": verdict.heatmap_key, "reason": verdict.reason, "model_version": verdict.model_version,
                "threshold_fake": verdict.threshold_fake, "threshold_real": verdict.threshold_real,
                "min_face_side": verdict.min_face_side}
    assert len(documents[saved[0].verdict_id]["faces"]) == 2
    assert store.verdict_document(ids[-1]) == documents[ids[-1]]
    with pytest.raises(NoResultFound):
        store.verdict_document(10**9)
