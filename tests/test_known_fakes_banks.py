"""Hash banks on real Postgres: decisions fill them and reversals empty them, the worker's index follows the
change log, CSV import and export, the re-scan hook, and confirmed_real matches served last."""

from __future__ import annotations

import hashlib
import io
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from db.engine import connect
from db.known_fakes import CONFIRMED_FAKE, BankError, BankStore, parse_bank_csv
from db.review_store import Actor, ReviewStore
from db.store import BlobKeys, Store
from devservices import fresh_database
from pipeline.events import UploadEvent
from pipeline.known_fakes import MATCHED_KNOWN_FAKE
from pipeline.pdq import pdq_hash
from pipeline.screen import FaceVerdict, Verdict
from workers.known_fakes import KnownFakeMemory

pytestmark = pytest.mark.services
MOD = Actor("mod-ann", "moderator")
ADMIN = Actor("admin-cat", "admin")


@dataclass
class Floor:
    store: Store
    reviews: ReviewStore
    banks: BankStore


@pytest.fixture
def floor() -> Iterator[Floor]:
    with fresh_database("deepscreen_kf") as url:
        engine = connect(url)
        yield Floor(Store(engine), ReviewStore(engine), BankStore(engine))
        engine.dispose()


def _image(name: str) -> np.ndarray:
    from skimage import data

    pixels = getattr(data, name)()
    if pixels.ndim == 2:
        pixels = np.stack([pixels] * 3, axis=-1)
    return np.ascontiguousarray(pixels[..., :3])


def _copy(pixels: np.ndarray, scale: float = 0.7, quality: int = 45) -> np.ndarray:
    image = Image.fromarray(pixels)
    image = image.resize((int(image.width * scale), int(image.height * scale)), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def _screened(pixels: np.ndarray, label: str, score: float) -> Verdict:
    """What screen_batch returns for this image (a face, the classifier's verdict, the PDQ hash)."""
    sha = hashlib.sha256(pixels.tobytes()).hexdigest()
    face = FaceVerdict(0, (10.0, 10.0, 60.0, 60.0), 0.99, score, label)
    return Verdict(key=sha, status="scored", model_version="m1", sha256=sha, size_bytes=pixels.nbytes,
                   width=pixels.shape[1], height=pixels.shape[0], verdict=label, fake_probability=score,
                   faces=(face,), pdq=pdq_hash(pixels, mirror=True))


def _save(floor: Floor, verdict: Verdict, source: str = "tenant"):  # noqa: ANN202
    event = UploadEvent(event_id=f"evt-{uuid.uuid4().hex}", image_uri=f"s3://uploads/{verdict.sha256}", source=source)
    return floor.store.save(event, verdict, BlobKeys())


def _decide(floor: Floor, item_id: int, decision: str):  # noqa: ANN202
    floor.reviews.claim(MOD, item_id, 60)
    return floor.reviews.decide(MOD, item_id, decision)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_confirmed_fake_enters_the_bank_with_its_decision_and_a_reversal_removes_it(floor) -> None:  # noqa: ANN001
    original = _save(floor, _screened(_image("astronaut"), "uncertain", 0.6))
    decided = _decide(floor, original.review_item_id, "confirm_fake")
    assert decided.bank_entry_id is not None
    [entry] = floor.banks.entries(CONFIRMED_FAKE)
    assert entry["id"] == decided.bank_entry_id and entry["label"] == "fake"
    assert entry["review_item_id"] == original.review_item_id
    assert entry["hash"] == pdq_hash(_image("astronaut")).hex
    assert (entry["decision"], entry["decided_by"]) == ("confirm_fake", "mod-ann")  # through the audit row
    audit = {a["id"]: a for a in floor.reviews.audit_log(item_id=original.review_item_id)}
    assert audit[entry["audit_id"]]["action"] == "confirm_fake"

    floor.reviews.reverse(ADMIN, original.review_item_id, note="wrong call")
    assert floor.banks.entries(CONFIRMED_FAKE) == []
    assert [(c.op, c.entry_id) for c in floor.banks.changes_since(0)] == [("add", entry["id"]), ("remove", entry["id"])]
    item = floor.reviews.item(original.review_item_id)
    assert item["state"] == "pending" and item["decision"] is None
    assert item["history"][-1]["action"] == "reverse"
    assert item["history"][-1]["details"] == {"reversed_decision": "confirm_fake", "bank_entries_removed": 1}
    # decided again the other way: it lands in confirmed_real
    assert _decide(floor, original.review_item_id, "mark_real").bank_entry_id is not None
    assert [e["label"] for e in floor.banks.entries("confirmed_real")] == ["real"]


def test_the_index_follows_bank_changes_within_refresh_s_and_matches_are_saved_with_links(floor) -> None:  # noqa: ANN001
    clock = Clock()
    memory = KnownFakeMemory(floor.banks, max_distance=31, refresh_s=60, clock=clock)
    astronaut = _image("astronaut")
    copy = _screened(_copy(astronaut), "real", 0.05)
    assert memory.apply([copy])[0].matches == ()  # empty banks

    original = _save(floor, _screened(astronaut, "fake", 0.95))
    _decide(floor, original.review_item_id, "confirm_fake")
    clock.now += 30
    assert memory.apply([copy])[0].reason is None  # within refresh_s the index may lag
    clock.now += 31
    [matched] = memory.apply([copy])
    assert (matched.verdict, matched.reason, matched.fake_probability) == ("fake", MATCHED_KNOWN_FAKE, 0.05)
    assert matched.matches[0].label == "fake" and matched.matches[0].distance <= 31

    [flipped] = memory.apply([_screened(_copy(np.ascontiguousarray(astronaut[:, ::-1]), 0.9, 70), "real", 0.1)])
    assert flipped.reason == MATCHED_KNOWN_FAKE and flipped.matches[0].mirrored  # caught by its mirror hash
    assert not matched.matches[0].mirrored

    saved = _save(floor, matched)
    assert saved.verdict == "fake" and saved.review_item_id is not None
    item = floor.reviews.item(saved.review_item_id)
    assert item["reason"] == MATCHED_KNOWN_FAKE
    [match] = item["bank_matches"]
    assert match["matched_review_item_id"] == original.review_item_id
    assert match["matched_image_id"] == floor.reviews.item(original.review_item_id)["image_id"]
    assert (match["bank"], match["revoked"], match["distance"]) == (CONFIRMED_FAKE, False, matched.matches[0].distance)

    floor.reviews.reverse(ADMIN, original.review_item_id)
    assert floor.banks.matches_for_item(saved.review_item_id)[0]["revoked"] is True
    clock.now += 61
    assert memory.apply([copy])[0].reason is None  # the reversal reached the index


def test_import_and_export_a_bank(floor, tmp_path) -> None:  # noqa: ANN001
    rng = np.random.default_rng(3)
    hashes = [rng.integers(0, 256, 32, dtype=np.uint8).tobytes().hex() for _ in range(5)]
    text = "signal_value,label,indicator_id\n" + "".join(f"{h.upper()},fake,te-{i}\n" for i, h in enumerate(hashes[:4]))
    text += f"{hashes[4]},real,te-4\nnot-a-hash,fake,x\n{hashes[0]},,te-0\n{hashes[1]},maybe,z\n"
    report = floor.banks.import_csv("threatexchange", io.StringIO(text), None, created_by="test")
    assert (report.added, report.duplicates) == (5, 0)
    assert report.rejected == [(7, "bad_hash"), (8, "no_label"), (9, "bad_label")]
    again = floor.banks.import_csv("threatexchange", io.StringIO(text), None, created_by="test")
    assert (again.added, again.duplicates) == (0, 5)
    out = io.StringIO()
    assert floor.banks.export_csv("threatexchange", out) == 5
    parsed, rejected = parse_bank_csv(io.StringIO(out.getvalue()), None)
    assert rejected == [] and sorted((h, label) for h, label, _ in parsed) == sorted(
        [(h, "fake") for h in hashes[:4]] + [(hashes[4], "real")])
    assert {e["external_id"] for e in floor.banks.entries("threatexchange")} == {f"te-{i}" for i in range(5)}
    # a headerless export of another tool (hash,quality) with a default label
    headerless = floor.banks.import_csv("pdq-tool", io.StringIO(f"{hashes[0]},100\n"), "fake", created_by="test")
    assert headerless.added == 1
    assert {b["name"]: b["entries"] for b in floor.banks.banks()} == {"threatexchange": 5, "pdq-tool": 1}
    with pytest.raises(BankError, match="decision_bank"):
        floor.banks.import_csv(CONFIRMED_FAKE, io.StringIO(text), None, created_by="test")
    memory = KnownFakeMemory(floor.banks, refresh_s=60)
    memory.refresh()
    assert memory.index is not None and len(memory.index) == 6
    assert floor.banks.delete_bank("pdq-tool") == 1
    memory.refresh(force=True)
    assert len(memory.index) == 5


def test_a_new_confirmed_fake_queues_stored_images_near_it(floor) -> None:  # noqa: ANN001
    astronaut = _image("astronaut")
    earlier_copy = _save(floor, _screened(_copy(astronaut, 0.5, 35), "real", 0.02))  # missed by the classifier
    unrelated = _save(floor, _screened(_image("coffee"), "real", 0.03))
    assert earlier_copy.review_item_id is None
    original = _save(floor, _screened(astronaut, "uncertain", 0.5))
    decided = _decide(floor, original.review_item_id, "confirm_fake")
    queued = floor.banks.rescan_entry(decided.bank_entry_id, 31)
    assert [q["verdict_id"] for q in queued] == [earlier_copy.verdict_id]
    item = floor.reviews.item(queued[0]["review_item_id"])
    assert item["state"] == "pending" and item["reason"] == MATCHED_KNOWN_FAKE
    [match] = item["bank_matches"]
    assert (match["found_by"], match["matched_review_item_id"]) == ("rescan", original.review_item_id)
    assert floor.banks.matches_for_verdict(unrelated.verdict_id) == []
    assert floor.banks.rescan_entry(decided.bank_entry_id, 31) == [{**queued[0]}]  # idempotent: same item


def test_a_confirmed_real_match_is_served_last_but_never_overrides_a_fake(floor) -> None:  # noqa: ANN001
    clock = Clock()
    memory = KnownFakeMemory(floor.banks, refresh_s=60, clock=clock)
    camera = _image("camera")
    known_real = _save(floor, _screened(camera, "uncertain", 0.5))
    _decide(floor, known_real.review_item_id, "mark_real")
    [resembles_real] = memory.apply([_screened(_copy(camera), "fake", 0.97)])
    assert resembles_real.verdict == "fake" and resembles_real.reason is None
    assert [m.label for m in resembles_real.matches] == ["real"]
    older = _save(floor, resembles_real).review_item_id
    newer = _save(floor, _screened(_image("coffee"), "fake", 0.9)).review_item_id
    assert floor.reviews.claim_next(MOD, 60).item_id == newer
    assert floor.reviews.claim_next(MOD, 60).item_id == older


def test_a_flat_image_fills_no_bank_and_decided_items_are_not_requeued(floor) -> None:  # noqa: ANN001
    flat = _save(floor, _screened(np.full((200, 200, 3), 120, np.uint8), "fake", 0.9))
    assert _decide(floor, flat.review_item_id, "confirm_fake").bank_entry_id is None  # low quality: no entry
    assert floor.banks.entries(CONFIRMED_FAKE) == []

    astronaut = _image("astronaut")
    decided_copy = _save(floor, _screened(_copy(astronaut, 0.5, 50), "uncertain", 0.5))
    _decide(floor, decided_copy.review_item_id, "mark_real")
    original = _save(floor, _screened(astronaut, "fake", 0.9))
    entry_id = _decide(floor, original.review_item_id, "confirm_fake").bank_entry_id
    assert floor.banks.rescan_entry(entry_id, 31) == []  # a moderator already decided the copy
    assert floor.reviews.item(decided_copy.review_item_id)["state"] == "marked_real"
    [match] = floor.banks.matches_for_verdict(decided_copy.verdict_id)  # but the resemblance is on record
    assert match["found_by"] == "rescan" and match["matched_review_item_id"] == original.review_item_id


def test_an_unreadable_index_file_is_rebuilt_from_the_banks(floor, tmp_path) -> None:  # noqa: ANN001
    original = _save(floor, _screened(_image("astronaut"), "fake", 0.9))
    entry_id = _decide(floor, original.review_item_id, "confirm_fake").bank_entry_id
    path = tmp_path / "known_fakes_index.npz"
    path.write_bytes(b"not an index")
    memory = KnownFakeMemory(floor.banks, index_path=path)
    [matched] = memory.apply([_screened(_copy(_image("astronaut")), "real", 0.1)])
    assert matched.reason == MATCHED_KNOWN_FAKE and matched.matches[0].entry_id == entry_id
    from pipeline.hash_index import HashIndex

    assert len(HashIndex.load(path)) == 1  # and the rebuilt index was saved in its place


def _rows_naming(engine, needles: list[str]) -> dict[str, int]:  # noqa: ANN001
    """Per table, how many rows mention any of `needles` in any column (as text)."""
    from db.schema import Base

    found: dict[str, int] = {}
    with engine.connect() as conn:
        for table in Base.metadata.sorted_tables:
            hits = sum(1 for row in conn.execute(table.select()) if any(n in str(v) for v in row for n in needles))
            if hits:
                found[table.name] = hits
    return found


def test_erasing_a_confirmed_fake_removes_its_entry_like_a_reversal_and_scrubs_its_hash(floor, tmp_path) -> None:  # noqa: ANN001
    from sqlalchemy import select

    from db.erasure_store import ErasureStore
    from db.schema import Verdict as VerdictRow
    from pipeline.hash_index import HashIndex

    clock = Clock()
    never_refreshed = KnownFakeMemory(floor.banks, refresh_s=60, clock=clock)  # replays the whole log later
    never_refreshed.refresh()
    memory = KnownFakeMemory(floor.banks, refresh_s=60, clock=clock, index_path=tmp_path / "known_fakes_index.npz")
    astronaut = _image("astronaut")
    screened = _screened(astronaut, "fake", 0.95)
    original = _save(floor, screened)
    entry_id = _decide(floor, original.review_item_id, "confirm_fake").bank_entry_id
    clock.now += 61
    copy = _screened(_copy(astronaut), "real", 0.05)  # the classifier alone would not have queued it
    doubtful = _screened(_copy(astronaut, 0.8, 70), "uncertain", 0.5)  # the classifier alone would have
    matched_copy, matched_doubtful = memory.apply([copy, doubtful])
    assert matched_copy.reason == matched_doubtful.reason == MATCHED_KNOWN_FAKE
    saved_copy, saved_doubtful = _save(floor, matched_copy), _save(floor, matched_doubtful)
    assert len(HashIndex.load(memory.index_path)) == 1
    pdq = pdq_hash(astronaut, mirror=True)

    erasures = ErasureStore(floor.store.engine)
    erasures.erase(erasures.plan(sha256=screened.sha256), "dpo", "admin", "user request")

    # the same path as a reversal: a logged removal, matches revoked, matched items re-checked
    assert floor.banks.entries(CONFIRMED_FAKE) == []
    assert [(c.op, c.entry_id) for c in floor.banks.changes_since(0)] == [("add", entry_id), ("remove", entry_id)]
    assert floor.banks.matches_for_item(saved_copy.review_item_id)[0]["revoked"] is True
    withdrawn = floor.reviews.item(saved_copy.review_item_id)
    assert withdrawn["state"] == "withdrawn" and withdrawn["history"][-1]["action"] == "bank_recheck"
    still_open = floor.reviews.item(saved_doubtful.review_item_id)
    assert (still_open["state"], still_open["reason"]) == ("pending", "uncertain")  # its own ground remains
    with floor.store.sessions() as session:
        verdicts = {v.id: v for v in session.scalars(select(VerdictRow))}
    assert (verdicts[saved_copy.verdict_id].verdict, verdicts[saved_copy.verdict_id].reason) == ("real", None)
    assert (verdicts[saved_doubtful.verdict_id].verdict, verdicts[saved_doubtful.verdict_id].reason) == ("uncertain", None)
    # the hash survives nowhere: not in the change log, not in any row
    assert _rows_naming(floor.store.engine, [pdq.hex, pdq.mirror]) == {}

    lagging = memory.apply([_screened(_copy(astronaut, 0.6, 55), "real", 0.04)])[0]
    assert lagging.reason == MATCHED_KNOWN_FAKE  # within refresh_s the index may still hold the entry
    saved_lagging = _save(floor, lagging)  # but the save knows it is gone: the classifier's verdict stands
    assert (saved_lagging.verdict, saved_lagging.review_item_id) == ("real", None)
    assert floor.banks.matches_for_verdict(saved_lagging.verdict_id)[0]["revoked"] is True

    clock.now += 61
    assert memory.apply([copy])[0].reason is None and len(memory.index) == 0  # the worker's index dropped it
    assert len(HashIndex.load(memory.index_path)) == 0
    assert never_refreshed.apply([copy])[0].reason is None  # a scrubbed add replays as nothing


def test_a_reversal_withdraws_the_items_its_entry_queued_and_a_new_entry_reopens_them(floor) -> None:  # noqa: ANN001
    astronaut = _image("astronaut")
    earlier_copy = _save(floor, _screened(_copy(astronaut, 0.5, 35), "real", 0.02))  # the classifier missed it
    original = _save(floor, _screened(astronaut, "uncertain", 0.5))
    first = _decide(floor, original.review_item_id, "confirm_fake").bank_entry_id
    [queued] = floor.banks.rescan_entry(first, 31)
    assert floor.reviews.item(queued["review_item_id"])["state"] == "pending"

    floor.reviews.reverse(ADMIN, original.review_item_id, note="not a fake after all")
    item = floor.reviews.item(queued["review_item_id"])
    assert item["state"] == "withdrawn"  # its only ground is gone; the classifier said real
    assert item["history"][-1]["action"] == "bank_recheck" and item["history"][-1]["previous_state"] == "pending"

    again = _decide(floor, original.review_item_id, "confirm_fake").bank_entry_id
    assert [q["review_item_id"] for q in floor.banks.rescan_entry(again, 31)] == [queued["review_item_id"]]
    reopened = floor.reviews.item(queued["review_item_id"])
    assert (reopened["state"], reopened["reason"]) == ("pending", MATCHED_KNOWN_FAKE)
    assert earlier_copy.review_item_id is None
