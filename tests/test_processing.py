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
