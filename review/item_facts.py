"""What a moderator needs beside the pixels: where an image came from, how large each face is, and which
thresholds turned the scores into the verdict."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from db.model_registry import ModelRegistry
from pipeline.errors import ModelLoadError
from pipeline.model import read_metadata
from review.context import ReviewContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Origin:
    """An image's location as a moderator reads it: an object key in a bucket, or a file in a folder."""

    kind: str  # "object key" | "file" | "location"
    name: str
    container: str  # the bucket or the folder; "" when the location is neither


@dataclass(frozen=True)
class Thresholds:
    """The cut-offs behind a verdict: stored with it, or read from its model's metadata for older verdicts."""

    version: str
    fake: float
    real: float
    min_face_side: int
    verdict_model: bool  # False: the verdict's model is unknown here, these are the served model's
    stored: bool = False  # recorded with the verdict itself


def origin(uri: str) -> Origin:
    if uri.startswith("s3://"):
        bucket, _, key = uri[5:].partition("/")
        return Origin("object key", key, bucket)
    path = uri.removeprefix("file://")
    if path.startswith("/"):
        pure = PurePosixPath(path)
        return Origin("file", pure.name, str(pure.parent))
    return Origin("location", uri, "")


def box_size(box: Sequence[float]) -> str:
    """A face box (x1, y1, x2, y2) as its width x height in pixels of the original."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return f"{round(x2 - x1)}×{round(y2 - y1)} px"


def thresholds(ctx: ReviewContext, verdict: Mapping[str, Any]) -> Thresholds | None:
    """The thresholds stored with the verdict; for a verdict recorded before they were stored, its model's
    from metadata when reachable (the registry's folder for that version, or the model this server runs),
    else the served model's, marked as not the verdict's."""
    model_version = str(verdict["model_version"])
    if verdict.get("threshold_fake") is not None and verdict.get("threshold_real") is not None:
        return Thresholds(model_version, float(verdict["threshold_fake"]), float(verdict["threshold_real"]),
                          int(verdict.get("min_face_side") or 0), verdict_model=True, stored=True)
    served = _read(Path(ctx.settings.model_dir))
    if served is not None and served.version == model_version:
        return served
    for model in ModelRegistry(ctx.store.engine).list():
        if model.version == model_version:
            found = _read(Path(model.folder))
            if found is not None and found.version == model_version:
                return found
    if served is None:
        return None
    return Thresholds(served.version, served.fake, served.real, served.min_face_side, verdict_model=False)


def _read(folder: Path) -> Thresholds | None:
    # a folder may exist only in a worker's container, and a metadata file may be broken: neither breaks a page
    try:
        meta = read_metadata(folder)
        return Thresholds(
            str(meta.version),
            float(meta.threshold_fake),
            float(meta.threshold_real),
            int(meta.min_face_side),
            verdict_model=True,
        )
    except (ModelLoadError, OSError, TypeError, ValueError) as exc:
        log.debug("model metadata unreadable folder=%s error=%s", folder, type(exc).__name__)
        return None
