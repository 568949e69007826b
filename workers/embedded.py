"""The in-process runner behind `deepscreen scan`: the same process_events as a worker, with SQLite and a
local folder as adapters. No Redis, Postgres or S3 needed."""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline.events import UploadEvent
from workers.processing import Job, Outcome, Runtime, Screened, persist_events, screen_events

log = logging.getLogger(__name__)


# what a folder walk picks up by default: a README or labels.csv beside the images is not an upload
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})


def expand_paths(paths: Iterable[str | Path], all_files: bool = False) -> list[Path]:
    """Files as given, whatever their name, and the image files under given folders (recursive, sorted, hidden
    entries skipped; every file with `all_files`)."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                found.extend(Path(root) / f for f in sorted(files)
                             if not f.startswith(".") and (all_files or Path(f).suffix.lower() in IMAGE_SUFFIXES))
        else:
            found.append(path)  # a missing file still gets a result: invalid_input / not_found
    return found


@dataclass
class ScanReport:
    results: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        return len(self.results) / self.seconds if self.seconds > 0 else 0.0

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for row in self.results:
            key = row["verdict"] or row["status"]
            out[key] = out.get(key, 0) + 1
        return out


SCREENED_AT_ONCE = 2  # batches in screening at once: one finishing, the next starting


def batches(paths: list[Path], size: int, max_bytes: int | None = None) -> Iterator[list[Path]]:
    """Runs of at most `size` files; with `max_bytes`, a run also ends at the file that brings it to that many
    bytes. A batch's files are all read before it is screened, and two batches are in flight, so this bounds
    the raw bytes a scan holds: 32 files at the 40 MB limit would be 1.3 GB a batch."""
    batch: list[Path] = []
    held = 0
    for path in paths:
        batch.append(path)
        held += _file_bytes(path)
        if len(batch) >= size or (max_bytes is not None and held >= max_bytes):
            yield batch
            batch, held = [], 0
    if batch:
        yield batch


def _file_bytes(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0  # a missing file costs nothing here and gets its result (not_found) when read


def scan(runtime: Runtime, paths: list[Path], batch_size: int, progress: bool = True,
         on_result: Any = None, batch_bytes: int | None = None) -> ScanReport:
    """Screen files in micro-batches (of at most `batch_size` files and, with `batch_bytes`, about that many
    bytes); `on_result(row)` is called for each input as soon as it is done.

    Two batches are screened at once, on one pool of chunk threads (pipeline.screen.Screener): while batch n's
    last chunks finish, batch n+1 is read, checked against the store and its first chunks start, so no core
    waits at a batch's edge. One more thread saves batch n (blobs, rows, the result rows) while the next ones
    screen; batches are saved and reported in order. An image that appears in two batches in flight is
    screened twice and saved once (the save links it to the verdict already there)."""
    report = ScanReport()
    run_id = uuid.uuid4().hex[:12]
    started = time.perf_counter()

    def save(chunk: list[Path], screened: Screened) -> list[dict[str, Any]]:
        outcomes = persist_events(runtime, screened)
        return result_rows(runtime, chunk, outcomes)

    def collect(rows: list[dict[str, Any]]) -> None:
        for row in rows:
            report.results.append(row)
            if on_result is not None:
                on_result(row)
        bar.update(len(rows))

    with tqdm(total=len(paths), unit="img", disable=not progress, desc="screening", dynamic_ncols=True) as bar, \
            ThreadPoolExecutor(max_workers=SCREENED_AT_ONCE, thread_name_prefix="batch") as screening, \
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="save") as saver:
        in_flight: deque[tuple[list[Path], Future[Screened]]] = deque()
        saving: Future[list[dict[str, Any]]] | None = None

        def next_done() -> None:
            nonlocal saving
            chunk, future = in_flight.popleft()
            try:
                screened = future.result()
            except BaseException:
                for _, later in in_flight:  # not begun: nothing of theirs is half done
                    later.cancel()
                if saving is not None:  # the batch already being saved is still reported, then the error
                    collect(saving.result())
                    saving = None
                raise
            if saving is not None:
                collect(saving.result())
            saving = saver.submit(save, chunk, screened)

        first = 0  # the index of the batch's first file in the run
        for chunk in batches(paths, batch_size, batch_bytes):
            jobs = [
                Job(UploadEvent(event_id=f"scan-{run_id}-{first + i}", image_uri=str(p.resolve()), source="local"))
                for i, p in enumerate(chunk)
            ]
            first += len(chunk)
            in_flight.append((chunk, screening.submit(screen_events, runtime, jobs)))
            if len(in_flight) >= SCREENED_AT_ONCE:
                next_done()
        while in_flight:
            next_done()
        if saving is not None:
            collect(saving.result())
    report.seconds = time.perf_counter() - started
    return report


def result_rows(runtime: Runtime, paths: Sequence[Path], outcomes: Sequence[Outcome]) -> list[dict[str, Any]]:
    """Each input's result in the stable `--json` shape, read back from the store: the batch's verdicts
    in two queries and its bank matches in one (per-row reads held the interpreter lock long enough to
    slow the screening threads beside them)."""
    verdict_ids = [o.saved.verdict_id for o in outcomes if o.saved is not None and o.saved.verdict_id is not None]
    documents = runtime.store.verdict_documents(verdict_ids)
    matches = runtime.known_fakes.banks.matches_for_verdicts(verdict_ids) if runtime.known_fakes is not None else {}
    locate = runtime.blobs.locate
    rows = []
    for path, outcome in zip(paths, outcomes, strict=True):
        saved = outcome.saved
        row: dict[str, Any] = {"source": str(path), "sha256": None, "status": "failed", "verdict": None,
                               "fake_probability": None, "faces": [], "heatmap": None,
                               "reason": outcome.retry_reason, "model_version": runtime.screener.model_version,
                               "bank_matches": []}
        rows.append(row)
        if saved is None:
            continue
        if saved.verdict_id is None:
            row.update(status=saved.status, reason=saved.reason)
            continue
        document = documents[saved.verdict_id]
        faces = [
            {"box": [round(v, 1) for v in f["box"]], "detection_probability": f["detection_probability"],
             "fake_probability": f["fake_probability"], "verdict": f["verdict"]}
            for f in document["faces"]
        ]
        row.update(sha256=document["sha256"], status=document["status"], verdict=document["verdict"],
                   fake_probability=document["fake_probability"], faces=faces,
                   heatmap=locate(document["heatmap"]) if document["heatmap"] else None,
                   reason=document["reason"], model_version=document["model_version"],
                   bank_matches=matches.get(saved.verdict_id, []))
    return rows
