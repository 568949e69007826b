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
