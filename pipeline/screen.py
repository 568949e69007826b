"""screen_batch(items) -> verdicts: the one orchestration that `deepscreen scan`, the Celery task,
`deepscreen evaluate` and the benchmark all call. Every item gets exactly one terminal status (scored,
no_face or invalid_input); nothing in here raises for a bad input. Memory is bounded by decoded pixels in
flight (`chunk_pixels`), not by image count: a full image is let go once its faces are cut.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch

from pipeline.decide import FACE_TOO_SMALL, Thresholds, decide, image_score, too_small
from pipeline.decode import DecodeLimits, decode_image
from pipeline.errors import InvalidInput
from pipeline.explain import annotate, gradcam, gradcam_from_features, jpeg_bytes, overlay, overlay_canvas
from pipeline.faces import Box, DetectorConfig, Face, FaceDetector, crop_face, resize_square
from pipeline.model import Classifier
from pipeline.pdq import DEFAULT_MAX_SIDE, DEFAULT_MIN_QUALITY, PerceptualHash, pdq_hash

log = logging.getLogger(__name__)

HeatmapMode = Literal["flagged", "all", "none"]
Status = Literal["scored", "no_face", "invalid_input"]


@dataclass(frozen=True)
class ScreenConfig:
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    decode: DecodeLimits = field(default_factory=DecodeLimits)
    heatmaps: HeatmapMode = "flagged"
    crops: bool = False  # each input is already a face crop: detection is skipped
    decode_threads: int = 1
    classify_batch: int = 64
    overlap_chunk: int = 8  # a batch runs in chunks of this many, on screen_threads threads; 0 = one piece
    screen_threads: int = 2  # chunks screened at once (each with the process's torch thread count)
    annotate_max_side: int = 1280
    # full-resolution pixels a chunk holds before it cuts their faces and lets them go (eight 1080p frames
    # stay one detection batch); one image over it is still screened whole
    chunk_pixels: int = 24_000_000
    pdq: bool = True  # a PDQ hash of every decoded image, for the known-fake memory
    pdq_max_side: int = DEFAULT_MAX_SIDE
    pdq_min_quality: int = DEFAULT_MIN_QUALITY
    pdq_mirror: bool = True  # also the mirror image's hash: a flipped re-upload defeats a plain PDQ hash


@dataclass(frozen=True)
class ScreenItem:
    """One input: its bytes, or the typed reason they could not be had."""

    key: str
    data: bytes | None
    error: InvalidInput | None = None
    expected_sha256: str | None = None


@dataclass(frozen=True)
class FaceVerdict:
    index: int
    box: Box
    detection_probability: float | None  # None in crops mode
    fake_probability: float
    verdict: str
    heatmap_jpeg: bytes | None = None  # the Grad-CAM overlay on the crop
    crop_jpeg: bytes | None = None  # the crop the classifier saw (kept with explained faces)


@dataclass(frozen=True)
class BankMatch:
    """A hit in a hash bank: the entry, its label (fake | real) and the Hamming distance in bits."""

    entry_id: int
    label: str
    distance: int
    mirrored: bool = False  # the upload's mirror image matched


@dataclass(frozen=True)
class Verdict:
    key: str
    status: Status
    model_version: str
    sha256: str | None = None
    size_bytes: int = 0
    width: int | None = None
    height: int | None = None
    verdict: str | None = None
    fake_probability: float | None = None
    faces: tuple[FaceVerdict, ...] = ()
    heatmap_jpeg: bytes | None = None  # the image with boxes and heat painted in place
    reason: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    pdq: PerceptualHash | None = None  # None when the image could not be decoded
    matches: tuple[BankMatch, ...] = ()  # set by the known-fake memory (pipeline/known_fakes.py)
    # the cut-offs that made this verdict, stored with it: a later model change must not rewrite its evidence
    threshold_fake: float | None = None
    threshold_real: float | None = None
    min_face_side: int | None = None


@dataclass
class _Work:
    item: ScreenItem
    sha256: str | None = None
    size: tuple[int, int] | None = None  # (width, height) once decoded
    pixels: np.ndarray | None = None  # the full image until its faces are cut; then its overlay canvas, or None
    reserved: int = 0  # the full image's pixels, counted in the Screener's _PixelGate until it is let go
    error: InvalidInput | None = None
    faces: list[Face] = field(default_factory=list)
    crops: list[np.ndarray] = field(default_factory=list)
    probabilities: list[float] = field(default_factory=list)
    features: Any = None  # the Grad-CAM layer's activations of each crop (a tensor), when kept
    pdq: PerceptualHash | None = None
    verdict: Verdict | None = None


class Screener:
    """Holds the loaded models and screens batches. Build one per process; a batch's chunks run on
    `screen_threads` threads. Grad-CAM runs unlocked where the network after its layer is affine (a weighted
    sum of the kept activations); a backward or hooks on the shared network are serialised by `_explain_lock`."""

    def __init__(self, classifier: Classifier, config: ScreenConfig, detector: FaceDetector | None = None) -> None:
        if not config.crops and detector is None:
            detector = FaceDetector(config.detector, device=classifier.device)
        self.classifier = classifier
        self.detector = detector
        self.config = config
        self.thresholds = Thresholds(fake=classifier.meta.threshold_fake, real=classifier.meta.threshold_real)
        self._explain_lock = threading.Lock()
        self._gate = _PixelGate(config.chunk_pixels)
        self._pool: ThreadPoolExecutor | None = None  # the chunk threads, shared by every batch of this process
        self._pool_pid = 0
        self._pool_lock = threading.Lock()

    def _chunk_pool(self, threads: int) -> ThreadPoolExecutor:
        """One pool of `threads` chunk threads for all batches, so two batches screened at once (`deepscreen
        scan` keeps the next one going) share the cores instead of each taking its own: the next batch's chunks
        queue behind this one's and start on a core as soon as this batch's last chunks leave it. Made again in
        a forked child, which inherits the pool but not its threads."""
        with self._pool_lock:
            if self._pool is None or self._pool_pid != os.getpid():
                self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="screen")
                self._pool_pid = os.getpid()
            return self._pool

    @property
    def model_version(self) -> str:
        """The version verdicts are keyed by: the model, plus `+crops` when detection is skipped, since the
        same bytes screened as a face crop and as a full image are two different screenings."""
        return self.classifier.version + ("+crops" if self.config.crops else "")

    def screen_batch(self, items: Sequence[ScreenItem]) -> list[Verdict]:
        """Screen a batch. With `overlap_chunk` > 0 the batch runs in chunks of that many items on
        `screen_threads` threads (one after another on one thread), each chunk decoded, detected, classified,
        explained and encoded by one thread: on a CPU with one torch thread per chunk, every core is busy and no
        stage waits on another (crops mode too: 35.9 crops/s against 23.8 in one piece on one core)."""
        clocks: list[dict[str, float]] = []
        works = [_Work(item) for item in items]
        step = self.config.overlap_chunk
        threads = max(1, self.config.screen_threads)

        def run(part: list[_Work]) -> None:
            clock: dict[str, float] = {}
            clocks.append(clock)
            try:
                self._prepare(part, clock)
                self._finish(part, clock)
            finally:
                for work in part:
                    self._let_go(work)

        if step <= 0 or len(works) <= step:
            run(works)
        else:
            parts = [works[i : i + step] for i in range(0, len(works), step)]
            if threads == 1:  # still in chunks: a batch in one piece allocates activations glibc would mmap afresh
                for part in parts:
                    run(part)
            else:
                list(self._chunk_pool(threads).map(run, parts))  # re-raises the first failure
        total: dict[str, float] = {}
        for clock in clocks:
            for stage, seconds in clock.items():
                total[stage] = total.get(stage, 0.0) + seconds
        # seconds per image of each stage; with chunks in parallel they add up to more than the batch's wall time
        per_image = {stage: round(seconds / max(1, len(items)), 5) for stage, seconds in total.items()}
        per_image["batch_size"] = float(len(items))
        verdicts = [w.verdict for w in works]
        assert all(v is not None for v in verdicts), "every item gets a verdict"
        return [replace(v, timings=per_image) for v in verdicts if v is not None]

    def _prepare(self, works: list[_Work], clock: dict[str, float]) -> None:
        """Decode (`decode_threads` at a time) until the chunk's full-resolution images reach `chunk_pixels`,
        then cut their faces and let them go; again until the chunk is done."""
        cut: list[_Work] = []  # faces cut, the full image kept for its overlay while the chunk has room
        uncut: list[_Work] = []
        step = max(1, self.config.decode_threads)
        for start in range(0, len(works), step):
            part = works[start : start + step]
            with _timed(clock, "decode"):
                # a chunk that holds pixels never waits for others to let theirs go: it may be what they wait for
                self._decode(part, wait=not uncut and not cut)
            uncut += [w for w in part if w.pixels is not None]
            if _full_pixels(uncut) + _full_pixels(cut) >= self.config.chunk_pixels:
                cut = self._cut(uncut, cut, clock)
                uncut = []
        if uncut:
            self._cut(uncut, cut, clock)

    def _cut(self, uncut: list[_Work], cut: list[_Work], clock: dict[str, float]) -> list[_Work]:
        """Detect and crop the `uncut` images, and let go of those that get no overlay. The ones that may get
        one stay whole while the chunk's `cut` images stay under `chunk_pixels`, else all shrink to their
        canvases. Returns the images still whole."""
        with _timed(clock, "detect"):
            self._detect(uncut)
        overlays = self.config.heatmaps != "none" and not self.config.crops
        for work in uncut:
            if overlays and work.faces:
                cut.append(work)
            else:
                self._let_go(work)  # the verdict needs only the image's size, hash and crops
        if _full_pixels(cut) < self.config.chunk_pixels:
            return cut
        with _timed(clock, "encode"):
            for work in cut:
                self._let_go(work, keep_canvas=True)
        return []

    def _let_go(self, work: _Work, keep_canvas: bool = False) -> None:
        """Drop the full image, or shrink it to its overlay canvas, and give its pixels back to the gate."""
        if keep_canvas and work.pixels is not None:
            work.pixels = overlay_canvas(work.pixels, self.config.annotate_max_side)
        else:
            work.pixels = None
        self._gate.release(work.reserved)
        work.reserved = 0

    def _finish(self, works: list[_Work], clock: dict[str, float]) -> None:
        live = [w for w in works if w.size is not None]
        # A network that cannot be resumed from its Grad-CAM layer is explained by hooks on the shared network,
        # which would also catch another thread's forward: there, classifying waits for explaining too.
        hooked = self.config.heatmaps != "none" and self.classifier.split_stage is None
        with _timed(clock, "classify"), (self._explain_lock if hooked else nullcontext()):
            self._classify(live)
        with _timed(clock, "explain"):
            cams = self._explain(live)
        with _timed(clock, "encode"):
            for work in works:
                work.verdict = self._verdict(work, cams, {})
                self._let_go(work)
                work.features = None  # only the verdict is needed past this point
                work.crops = []

    # -- stages ----------------------------------------------------------------------------------------
    def _decode(self, works: list[_Work], wait: bool) -> None:
        """Decode and hash; each image's pixels are counted in the gate (waited for when `wait`) before they
        are allocated."""

        def one(work: _Work) -> None:
            item = work.item
            if item.data is None:
                work.error = item.error or InvalidInput("not_found", "no bytes")
                return
            work.sha256 = hashlib.sha256(item.data).hexdigest()
            if item.expected_sha256 and item.expected_sha256 != work.sha256:
                # a property of this event, not of these bytes: nothing is recorded against their sha256
                work.error = InvalidInput("sha256_mismatch", f"event says {item.expected_sha256[:12]}")
                work.sha256 = None
                return

            def reserve(pixels: int) -> None:
                self._gate.take(pixels, wait=wait)
                work.reserved += pixels

            try:
                image = decode_image(item.data, self.config.decode, reserve)
            except InvalidInput as exc:
                self._let_go(work)  # refused after its size was read: nothing of it is held
                work.error = exc
                return
            work.pixels, work.size = image.pixels, (image.width, image.height)
            if self.config.pdq:
                work.pdq = pdq_hash(image.pixels, self.config.pdq_max_side, self.config.pdq_min_quality,
                                    mirror=self.config.pdq_mirror)

        threads = max(1, self.config.decode_threads)
        if threads == 1 or len(works) == 1:
            for work in works:
                one(work)
        else:
            with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode") as pool:
                list(pool.map(one, works))

    def _detect(self, live: list[_Work]) -> None:
        """Faces and crops of decoded images, which still hold their full-resolution pixels."""
        size = self.classifier.meta.input_size
        images = [w.pixels for w in live if w.pixels is not None]
        assert len(images) == len(live), "faces are cut from the full image"
        if self.config.crops:
            for work, pixels in zip(live, images, strict=True):
                height, width = pixels.shape[:2]
                work.faces = [Face(box=(0.0, 0.0, float(width), float(height)), detection_probability=1.0)]
                work.crops = [resize_square(pixels, size)]
            return
        assert self.detector is not None
        found = self.detector.detect(images)
        margin = self.classifier.meta.crop_margin
        for work, pixels, faces in zip(live, images, found, strict=True):
            work.faces = faces
            work.crops = [crop_face(pixels, f.box, margin, size) for f in faces]

    def _classify(self, live: list[_Work]) -> None:
        crops = [crop for w in live for crop in w.crops]
        keep = self.config.heatmaps != "none"  # the activations Grad-CAM resumes from
        probs, features = self.classifier.fake_probability_with_features(
            crops, batch_size=max(1, self.config.classify_batch), keep=keep)
        cursor = 0
        for work in live:
            end = cursor + len(work.crops)
            work.probabilities = [float(p) for p in probs[cursor:end]]
            work.features = features[cursor:end] if features is not None else None
            cursor = end

    def _explain(self, live: list[_Work]) -> dict[tuple[int, int], np.ndarray]:
        mode = self.config.heatmaps
        if mode == "none":
            return {}
        chosen: list[tuple[int, int]] = []
        min_side = self.classifier.meta.min_face_side
        for w_index, work in enumerate(live):
            for f_index, prob in enumerate(work.probabilities):
                if too_small(work.faces[f_index].box, min_side):
                    continue
                if mode == "all" or decide(prob, self.thresholds) != "real":
                    chosen.append((w_index, f_index))
        cams: dict[tuple[int, int], np.ndarray] = {}
        step = max(1, self.config.classify_batch)
        for start in range(0, len(chosen), step):
            part = chosen[start : start + step]
            if all(live[w].features is not None for w, _ in part):
                # no lock for an affine tail (a weighted sum of the activations); a backward otherwise
                maps = gradcam_from_features(self.classifier, torch.stack([live[w].features[f] for w, f in part]),
                                             lock=self._explain_lock)
            else:  # a network that cannot be resumed from its Grad-CAM layer: a forward and backward of its own,
                with self._explain_lock:  # with hooks on the shared network
                    maps = gradcam(self.classifier, [live[w].crops[f] for w, f in part])
            for (w, f), cam in zip(part, maps, strict=True):
                cams[(id(live[w]), f)] = cam
        return cams

    # -- results ---------------------------------------------------------------------------------------
    def _verdict(self, work: _Work, cams: dict[tuple[int, int], np.ndarray], timings: dict[str, float]) -> Verdict:
        base: dict[str, Any] = {"key": work.item.key, "model_version": self.model_version, "sha256": work.sha256,
                "size_bytes": len(work.item.data or b""), "timings": timings,
                "threshold_fake": self.thresholds.fake, "threshold_real": self.thresholds.real,
                "min_face_side": self.classifier.meta.min_face_side}
        if work.size is None:
            error = work.error or InvalidInput("corrupt")
            return Verdict(status="invalid_input", reason=error.reason, **base)
        base.update(width=work.size[0], height=work.size[1], pdq=work.pdq)
        if not work.faces:
            return Verdict(status="no_face", reason="no_face", **base)
        faces = []
        face_cams: list[np.ndarray | None] = []
        min_side = self.classifier.meta.min_face_side
        for index, (face, crop, prob) in enumerate(zip(work.faces, work.crops, work.probabilities, strict=True)):
            cam = cams.get((id(work), index))
            face_cams.append(cam)
            small = too_small(face.box, min_side)
            faces.append(FaceVerdict(
                index=index, box=face.box,
                detection_probability=None if self.config.crops else face.detection_probability,
                fake_probability=prob, verdict=FACE_TOO_SMALL if small else decide(prob, self.thresholds),
                heatmap_jpeg=jpeg_bytes(overlay(crop, cam)) if cam is not None else None,
                crop_jpeg=jpeg_bytes(crop, quality=92) if cam is not None else None,
            ))
        # A face too small to judge is no evidence either way. Counting it as uncertain would send every crowd
        # shot to review on a score the model cannot back, so it is left out of the image's score; an image
        # whose every face is too small is recorded as having no face that can be judged.
        score = image_score([f.fake_probability for f in faces if f.verdict != FACE_TOO_SMALL])
        if score is None:
            return Verdict(status="no_face", reason="face_too_small", faces=tuple(faces), **base)
        heatmap = None
        if self.config.crops and face_cams[0] is not None:
            heatmap = faces[0].heatmap_jpeg  # the image is the face: its heatmap is the face's, not drawn twice
        elif any(c is not None for c in face_cams):
            assert work.pixels is not None, "an image with faces keeps its overlay canvas"
            drawn = annotate(work.pixels, [(f.box, f.verdict, f.fake_probability) for f in faces],
                             face_cams, self.classifier.meta.crop_margin, self.config.annotate_max_side,
                             image_size=work.size)
            heatmap = jpeg_bytes(drawn)
        return Verdict(status="scored", verdict=decide(score, self.thresholds), fake_probability=score,
                       faces=tuple(faces), heatmap_jpeg=heatmap, **base)


class _PixelGate:
    """The full-resolution pixels a Screener's chunks hold. A chunk that holds none waits before taking an
    image's pixels while they and what the others hold would pass `limit` (at most `_GATE_WAIT_S`: the decode
    process a holder needs next may be the one the waiting chunk occupies, so the wait is a preference, never
    a deadlock). A chunk that holds some never waits: the others may be waiting for it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0
        self._changed = threading.Condition()

    def take(self, pixels: int, wait: bool) -> None:
        with self._changed:
            if wait:
                self._changed.wait_for(lambda: self.held == 0 or self.held + pixels <= self.limit, _GATE_WAIT_S)
            self.held += pixels

    def release(self, pixels: int) -> None:
        if pixels:
            with self._changed:
                self.held -= pixels
                self._changed.notify_all()


_GATE_WAIT_S = 10.0  # a 40-megapixel image is decoded, hashed, detected and cropped in about a second


def _full_pixels(works: list[_Work]) -> int:
    return sum(w.pixels.shape[0] * w.pixels.shape[1] for w in works if w.pixels is not None)


class _timed:
    def __init__(self, clock: dict[str, float], name: str) -> None:
        self.clock, self.name = clock, name

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.clock[self.name] = self.clock.get(self.name, 0.0) + time.perf_counter() - self.start


ScreenFn = Callable[[Sequence[ScreenItem]], list[Verdict]]
