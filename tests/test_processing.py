"""process_events on the embedded adapters (SQLite + local folder): event-level failures and reuse."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import InvalidEvent
from pipeline.events import UploadEvent, parse_event
from workers.processing import Job, process_events


@pytest.fixture()
def runtime(tmp_path: Path, tmp_model: Path):  # noqa: ANN201
    from workers.runtime import embedded_runtime
    from workers.settings import Settings

    return embedded_runtime(Settings(model_dir=tmp_model, torch_threads=1, detect_max_side=320), tmp_path / "home")


def test_a_wrong_sha256_fails_that_event_only_and_the_bytes_are_screened_later(runtime, tmp_path: Path) -> None:  # noqa: ANN001
    image = tmp_path / "img.png"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(image)
    digest = hashlib.sha256(image.read_bytes()).hexdigest()
    bad = Job(UploadEvent(event_id="e-bad", image_uri=str(image), sha256="0" * 64))
    good = Job(UploadEvent(event_id="e-good", image_uri=str(image), sha256=digest))
    first = process_events(runtime, [bad])[0].saved
    assert (first.status, first.reason, first.verdict_id) == ("invalid_input", "sha256_mismatch", None)
    assert runtime.store.find_verdict(digest, runtime.screener.model_version) is None  # nothing cached
    second = process_events(runtime, [good])[0].saved
    assert second.status == "no_face" and second.verdict_id is not None and not second.reused


def test_fifo_and_missing_files_are_refused_without_hanging(runtime, tmp_path: Path) -> None:  # noqa: ANN001
    import os

    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    outcomes = process_events(runtime, [Job(UploadEvent(event_id="f1", image_uri=str(fifo))),
                                        Job(UploadEvent(event_id="f2", image_uri=str(tmp_path / "nope.jpg")))])
    assert [(o.saved.status, o.saved.reason) for o in outcomes] == [("invalid_input", "unreadable"),
                                                                    ("invalid_input", "not_found")]


def test_event_fields_are_validated_without_rewriting_the_key() -> None:
    with pytest.raises(InvalidEvent, match="source"):
        parse_event({"event_id": "x", "image_uri": "s3://b/k", "source": "a\x00b"})
    event = parse_event({"event_id": " x ", "image_uri": "s3://b/key ending in a space ", "source": " t "})
    assert (event.event_id, event.source) == ("x", "t")
    assert event.image_uri == "s3://b/key ending in a space "  # an S3 key is taken exactly as given


def test_rescan_submissions_get_their_own_event_ids() -> None:
    from workers.submit import _event_id

    assert _event_id("s3", "abc", "upload") == "s3-abc"
    assert _event_id("s3", "abc", "rescan") != "s3-abc" and _event_id("s3", "abc", "rescan").startswith("rescan-")


def test_threads_pool_refuses_shared_model_concurrency() -> None:
    from pydantic import ValidationError

    from workers.settings import Settings

    with pytest.raises(ValidationError, match="prefork"):
        Settings(pool="threads", concurrency=2)


def _noise_crops(folder: Path, count: int, seed: int) -> list[Path]:
    """Distinct 64 px noise images (PNG): each a different sha256, each screened in crops mode."""
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        path = folder / f"crop{index}.png"
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_scan_saves_one_batch_while_screening_the_next(tmp_path: Path, tmp_model: Path) -> None:
    """`scan` saves batch n in a background thread while it screens the next ones (two at once): every input
    still gets its row, in order, and the same bytes in two consecutive batches end with one verdict row."""
    from sqlalchemy import func, select

    from db.schema import Verdict
    from workers.embedded import scan
    from workers.runtime import embedded_runtime
    from workers.settings import Settings

    runtime = embedded_runtime(Settings(model_dir=tmp_model, torch_threads=1, heatmaps="all"), tmp_path / "home",
                               crops=True)
    paths = _noise_crops(tmp_path, 5, seed=4)
    (tmp_path / "copy-of-0.png").write_bytes(paths[0].read_bytes())
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    inputs = [paths[0], paths[1], tmp_path / "copy-of-0.png", paths[2], tmp_path / "broken.jpg", paths[3], paths[4]]
    seen: list[str] = []
    report = scan(runtime, inputs, batch_size=2, progress=False, on_result=lambda row: seen.append(row["source"]))
    assert seen == [str(p) for p in inputs] == [row["source"] for row in report.results]
    statuses = [row["status"] for row in report.results]
    assert statuses == ["scored"] * 4 + ["invalid_input", "scored", "scored"]
    assert report.results[0]["sha256"] == report.results[2]["sha256"]
    with runtime.store.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Verdict).where(Verdict.status == "scored")) == 5


def test_scan_screens_two_batches_at_once_on_one_pool_of_chunk_threads(tmp_path: Path, tmp_model: Path) -> None:
    """`scan` starts batch n+1 while batch n's last chunks run, and both batches' chunks share the screener's
    threads: batches overlap, yet no more chunks run at once than SCREEN_THREADS, and rows stay in order."""
    import threading
    import time as _time

    from workers.embedded import scan
    from workers.runtime import embedded_runtime
    from workers.settings import Settings

    runtime = embedded_runtime(Settings(model_dir=tmp_model, torch_threads=1, screen_threads=2, crops_chunk=1),
                               tmp_path / "home", crops=True)
    screener = runtime.screener
    lock, active, most, batches = threading.Lock(), [0], [0], []
    prepare, screen_batch = screener._prepare, screener.screen_batch

    def counted(works, clock):  # noqa: ANN001, ANN202 - one chunk
        with lock:
            active[0] += 1
            most[0] = max(most[0], active[0])
        try:
            _time.sleep(0.05)
            return prepare(works, clock)
        finally:
            with lock:
                active[0] -= 1

    def timed(items):  # noqa: ANN001, ANN202 - one batch
        began = _time.perf_counter()
        out = screen_batch(items)
        batches.append((began, _time.perf_counter()))
        return out

    screener._prepare, screener.screen_batch = counted, timed
    paths = _noise_crops(tmp_path, 12, seed=21)
    report = scan(runtime, paths, batch_size=3, progress=False)
    assert [row["source"] for row in report.results] == [str(p) for p in paths]
    assert all(row["status"] == "scored" for row in report.results)
    batches.sort()
    assert len(batches) == 4
    assert any(later[0] < earlier[1] for earlier, later in zip(batches, batches[1:], strict=False)), \
        "no two batches overlapped"
    assert most[0] == 2  # both threads busy, never a third chunk


def _screened(runtime, verdicts, jobs, to_screen):  # noqa: ANN001, ANN202
    import time as _time

    from workers.processing import Screened

    return Screened(jobs, _time.perf_counter(), runtime.screener.model_version, {}, verdicts, to_screen, {})


def _no_face(runtime, seed: int, **extra):  # noqa: ANN001, ANN202
    from pipeline.screen import Verdict

    sha = hashlib.sha256(f"image-{seed}".encode()).hexdigest()
    return Verdict(key=sha, status="no_face", model_version=runtime.screener.model_version, sha256=sha,
                   size_bytes=10, width=64, height=64, reason="no_face", **extra)


def test_a_batch_of_verdicts_is_saved_in_one_commit(runtime) -> None:  # noqa: ANN001
    """persist_events writes the batch's rows in one transaction (one commit), and two events with the same
    bytes in one batch end on one verdict row."""
    from sqlalchemy import event as sa_event
    from sqlalchemy import func, select

    from db.schema import Event, Verdict
    from workers.processing import persist_events

    verdicts = [_no_face(runtime, i) for i in range(3)]
    jobs = [Job(UploadEvent(event_id=f"b{i}", image_uri=f"/x/{i}.png")) for i in range(4)]
    to_screen = {verdicts[0].key: [0, 3], verdicts[1].key: [1], verdicts[2].key: [2]}
    commits: list[int] = []
    sa_event.listen(runtime.store.engine, "commit", lambda _conn: commits.append(1))
    outcomes = persist_events(runtime, _screened(runtime, verdicts, jobs, to_screen))
    assert len(commits) == 1
    assert [o.saved.status for o in outcomes] == ["no_face"] * 4
    assert outcomes[0].saved.verdict_id == outcomes[3].saved.verdict_id and outcomes[3].saved.reused
    with runtime.store.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Verdict)) == 3
        assert session.scalar(select(func.count()).select_from(Event).where(Event.status == "no_face")) == 4


def test_a_bad_row_costs_only_its_own_event_a_retry(runtime) -> None:  # noqa: ANN001
    """One verdict whose row cannot be written fails the batch's transaction; the batch is then saved row by
    row, so its batch-mates are saved and only the bad one is retried, with nothing of it left behind."""
    from sqlalchemy import func, select

    from db.schema import Event, Image
    from workers.processing import persist_events

    good = [_no_face(runtime, 10), _no_face(runtime, 11)]
    bad = _no_face(runtime, 12, timings={"not json": object()})  # the verdict row's JSON column refuses it
    verdicts = [good[0], bad, good[1]]
    jobs = [Job(UploadEvent(event_id=f"r{i}", image_uri=f"/x/{i}.png")) for i in range(3)]
    outcomes = persist_events(runtime, _screened(runtime, verdicts, jobs, {v.key: [i] for i, v in enumerate(verdicts)}))
    assert outcomes[0].saved is not None and outcomes[2].saved is not None
    assert outcomes[1].saved is None and outcomes[1].retry_reason.startswith("save_error")
    with runtime.store.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Image).where(Image.sha256 == bad.sha256)) == 0
        assert session.scalar(select(Event.status).where(Event.event_id == "r1")) is None
        assert session.scalar(select(func.count()).select_from(Event).where(Event.status == "no_face")) == 2


def test_deliveries_are_counted_per_attempt_in_one_statement(runtime) -> None:  # noqa: ANN001
    """count_deliveries: 1 the first time a message's screening begins, +1 each time it begins again, back to
    1 for a new attempt; an event that already ended is left alone."""
    store = runtime.store
    a, b = UploadEvent(event_id="d-a", image_uri="/a.png"), UploadEvent(event_id="d-b", image_uri="/b.png")
    assert store.count_deliveries([(a, 1), (b, 1), (a, 1)]) == {"d-a": 1, "d-b": 1}
    assert store.count_deliveries([(a, 1), (b, 2)]) == {"d-a": 2, "d-b": 1}
    store.mark_failed(a, "failed", "test", 1)
    assert store.count_deliveries([(a, 1), (b, 2)]) == {"d-b": 2}
    assert store.started_before([(a, 1), (b, 2), (b, 3)]) == {"d-b": 0}


def test_a_face_crop_s_image_heatmap_is_its_face_heatmap_stored_once(tmp_path: Path, tmp_model: Path) -> None:
    """In crops mode the image is the face: the verdict's heatmap is the face's heatmap object, written once,
    and it is a JPEG of the crop with heat on it."""
    import io

    from workers.embedded import scan
    from workers.runtime import embedded_runtime
    from workers.settings import Settings

    runtime = embedded_runtime(Settings(model_dir=tmp_model, torch_threads=1, heatmaps="all"), tmp_path / "home",
                               crops=True)
    paths = _noise_crops(tmp_path, 2, seed=9)
    report = scan(runtime, paths, batch_size=2, progress=False)
    for row in report.results:
        document = runtime.store.verdict_document(_verdict_id(runtime, row["sha256"]))
        assert document["heatmap"] is not None and document["heatmap"] == document["faces"][0]["heatmap"]
        with Image.open(io.BytesIO(runtime.blobs.get(document["heatmap"]))) as picture:
            assert picture.format == "JPEG" and picture.size == (224, 224)
    stored = sorted(p.name for p in (tmp_path / "home" / "blobs").rglob("*.jpg"))
    assert stored == ["crop-0.jpg", "crop-0.jpg", "face-0.jpg", "face-0.jpg"]


def _verdict_id(runtime, sha256: str) -> int:  # noqa: ANN001
    from sqlalchemy import select

    from db.schema import Image as ImageRow
    from db.schema import Verdict

    with runtime.store.sessions() as session:
        return session.scalar(select(Verdict.id).join(ImageRow, ImageRow.id == Verdict.image_id)
                              .where(ImageRow.sha256 == sha256))
