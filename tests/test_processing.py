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


def test_batches_screened_at_once_on_two_threads_equal_one_after_the_other(tmp_path: Path, tmp_model: Path) -> None:
    """pool=threads runs two batches at once on one runtime (one model, one detector, one store): the verdicts
    must be the ones the same batches get one after the other."""
    import threading

    from sqlalchemy import select

    from db.schema import Event, Verdict
    from workers.runtime import embedded_runtime
    from workers.settings import Settings

    faces = _noise_faces(tmp_path / "faces", 8, seed=5)
    jobs = [Job(UploadEvent(event_id=f"t{i}", image_uri=str(path))) for i, path in enumerate(faces)]
    settings = Settings(model_dir=tmp_model, torch_threads=1, detect_max_side=320, heatmaps="all")

    def probabilities(runtime) -> dict[str, tuple[str, float | None]]:  # noqa: ANN001
        with runtime.store.engine.connect() as conn:
            rows = conn.execute(select(Event.event_id, Verdict.status, Verdict.fake_probability)
                                .join(Verdict, Verdict.id == Event.verdict_id)).all()
        return {row.event_id: (row.status, row.fake_probability) for row in rows}

    alone = embedded_runtime(settings, tmp_path / "alone")
    for half in (jobs[:4], jobs[4:]):
        process_events(alone, half)
    shared = embedded_runtime(settings, tmp_path / "shared")
    start = threading.Barrier(2)
    outcomes: list = []

    def run(half: list[Job]) -> None:
        start.wait()
        outcomes.extend(process_events(shared, half))

    threads = [threading.Thread(target=run, args=(half,)) for half in (jobs[:4], jobs[4:])]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert len(outcomes) == 8 and all(o.saved is not None for o in outcomes)
    expected, got = probabilities(alone), probabilities(shared)
    assert set(got) == {j.event.event_id for j in jobs}
    assert sum(status == "scored" for status, _ in got.values()) >= 6  # the faces were found: real work ran
    for event_id, (status, probability) in expected.items():
        assert got[event_id][0] == status, event_id
        if probability is not None:
            assert abs(got[event_id][1] - probability) < 0.02, event_id
    heatmaps = list((tmp_path / "shared" / "blobs").rglob("face-*.jpg"))
    assert len(heatmaps) >= 6  # Grad-CAM ran for the faces of both batches


def _noise_faces(folder: Path, count: int, seed: int) -> list[Path]:
    """Distinct 256 px JPEGs of one face, each with its own noise (a different sha256, the same face)."""
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    base = np.asarray(Image.fromarray(data.astronaut()).resize((256, 256))).astype(np.int16)
    paths = []
    for index in range(count):
        path = folder / f"face{index}.jpg"
        Image.fromarray(np.clip(base + rng.integers(-4, 5, base.shape), 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


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
    """`scan` saves batch n in a background thread while it screens batch n+1: every input still gets its
    row, in order, and the same bytes in two consecutive batches end with one verdict row."""
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


def test_a_suspect_is_screened_with_no_other_batch_in_flight() -> None:
    """pool=threads: a message that was in hand when a worker died waits for the batch in flight and holds
    new batches back, so if it kills the process again no batch-mate's start count goes up with it."""
    import threading
    import time

    from workers.tasks import _Quarantine

    quarantine = _Quarantine()
    events: list[str] = []
    first_in = threading.Event()

    def batch(name: str, hold: float, signal: threading.Event | None = None) -> None:
        with quarantine.batch():
            events.append(f"{name} start")
            if signal is not None:
                signal.set()
            time.sleep(hold)
            events.append(f"{name} end")

    def suspect() -> None:
        with quarantine.alone():
            events.append("suspect start")
            time.sleep(0.2)
            events.append("suspect end")

    running = threading.Thread(target=batch, args=("a", 0.3, first_in))
    running.start()
    first_in.wait(5)
    alone = threading.Thread(target=suspect)
    alone.start()
    time.sleep(0.05)  # the suspect is waiting now; a batch arriving after it must wait for it
    later = threading.Thread(target=batch, args=("b", 0.0))
    later.start()
    for thread in (running, alone, later):
        thread.join(5)
    assert events == ["a start", "a end", "suspect start", "suspect end", "b start", "b end"]


def test_a_workers_batches_in_flight_share_the_screening_threads() -> None:
    from workers.settings import Settings

    assert Settings().pool == "solo" and Settings().concurrency == 1
    assert Settings(pool="threads").concurrency == 2
    assert Settings(pool="threads", screen_threads=2).batch_screen_threads() == 1  # two batches, one thread each
    assert Settings(pool="threads", screen_threads=4, concurrency=2).batch_screen_threads() == 2
    assert Settings(screen_threads=2, pool="solo", concurrency=1).batch_screen_threads() == 2
    assert Settings(pool="threads", screen_threads=1, concurrency=3).batch_screen_threads() == 1  # never zero
    assert Settings(screen_threads=2).screen_config().screen_threads == 2  # `scan` keeps both
    assert Settings(pool="prefork").concurrency == 1 and Settings(pool="solo").concurrency == 1  # one model unless asked
    with pytest.raises(ValueError, match="one batch at a time"):
        Settings(pool="solo", concurrency=2)


def test_the_threads_pool_reserves_one_batch_more_than_it_runs() -> None:
    from workers.app import prefetch_multiplier
    from workers.settings import Settings

    threads = Settings(batch_size=32, pool="threads")  # x 2
    assert prefetch_multiplier(threads) * threads.concurrency == 96  # two batches running, a full one waiting
    solo = Settings(batch_size=32, pool="solo")
    assert prefetch_multiplier(solo) * solo.concurrency == 64
    prefork = Settings(batch_size=32, pool="prefork", concurrency=2)
    assert prefetch_multiplier(prefork) * prefork.concurrency == 64


def test_free_memory_is_trimmed_when_idle_and_once_per_interval_under_load() -> None:
    import threading

    from workers import tasks

    interval = tasks.app.conf.deepscreen_settings.malloc_trim_interval_s
    assert tasks._trim_due()  # nothing else running: the worker goes idle, trim
    release, entered = threading.Event(), threading.Event()

    def other_batch() -> None:
        with tasks._quarantine.batch():
            entered.set()
            release.wait(10)

    thread = threading.Thread(target=other_batch)
    thread.start()
    try:
        entered.wait(5)
        assert not tasks._trim_due()  # another batch is running and the last trim is recent
        tasks._last_trim[0] -= interval + 1
        assert tasks._trim_due()  # under load, once per interval
        assert not tasks._trim_due()
    finally:
        release.set()
        thread.join(10)
