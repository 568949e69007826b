"""pipeline.screen: one terminal verdict per item, in order, with the placeholder model."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.decide import Thresholds, decide
from pipeline.decode import decode_image
from pipeline.errors import InvalidInput
from pipeline.faces import FaceDetector, crop_face, resize_square
from pipeline.model import Classifier
from pipeline.screen import ScreenConfig, Screener, ScreenItem, Verdict

ImageFactory = Callable[..., bytes]


def _with_thresholds(classifier: Classifier, fake: float, real: float) -> Classifier:
    meta = replace(classifier.meta, threshold_fake=fake, threshold_real=real)
    return Classifier(net=classifier.net, meta=meta, device=classifier.device)


def _thresholds(classifier: Classifier) -> Thresholds:
    return Thresholds(fake=classifier.meta.threshold_fake, real=classifier.meta.threshold_real)


def _jpeg_size(data: bytes) -> tuple[int, int]:
    assert data[:3] == b"\xff\xd8\xff"
    image = Image.open(io.BytesIO(data))
    image.load()
    return image.size


@pytest.fixture(scope="module")
def corpus(astronaut: np.ndarray, image_factory: ImageFactory) -> dict[str, bytes]:
    face = image_factory(astronaut, "JPEG", quality=92)
    two = np.ascontiguousarray(np.concatenate([astronaut, astronaut[:, ::-1]], axis=1))
    return {
        "face": face,
        "two": image_factory(two, "JPEG", quality=92),
        "blank": image_factory(np.full((240, 320, 3), 200, np.uint8), "PNG"),
        "html": b"<!doctype html><html><body>not an image</body></html>",
        "cut": face[: len(face) // 2],
        "crop": image_factory(np.ascontiguousarray(astronaut[40:264, 112:336]), "JPEG", quality=95),
        "odd": image_factory(np.random.default_rng(0).integers(0, 256, (100, 150, 3), dtype=np.uint8), "PNG"),
    }


def _mixed(corpus: dict[str, bytes]) -> list[ScreenItem]:
    return [
        ScreenItem("face.jpg", corpus["face"]),
        ScreenItem("blank.png", corpus["blank"]),
        ScreenItem("page.html", corpus["html"]),
        ScreenItem("cut.jpg", corpus["cut"]),
        ScreenItem("gone.jpg", None, InvalidInput("not_found", "no such key")),
        ScreenItem("two.jpg", corpus["two"]),
    ]


@pytest.fixture(scope="module")
def mixed(classifier: Classifier, detector: FaceDetector, corpus: dict[str, bytes]) -> list[Verdict]:
    screener = Screener(classifier, ScreenConfig(heatmaps="all"), detector=detector)
    return screener.screen_batch(_mixed(corpus))


def test_one_verdict_per_item_in_order(mixed: list[Verdict], classifier: Classifier) -> None:
    assert [v.key for v in mixed] == ["face.jpg", "blank.png", "page.html", "cut.jpg", "gone.jpg", "two.jpg"]
    assert [v.status for v in mixed] == [
        "scored",
        "no_face",
        "invalid_input",
        "invalid_input",
        "invalid_input",
        "scored",
    ]
    assert mixed[2].reason == "not_an_image"
    assert mixed[3].reason in {"truncated", "corrupt"}
    assert mixed[4].reason == "not_found"
    assert all(v.model_version == classifier.version for v in mixed)


def test_overlapped_chunks_give_the_sequential_verdicts(
    classifier: Classifier, detector: FaceDetector, corpus: dict[str, bytes]
) -> None:
    """overlap_chunk only changes where the work runs: chunks are screened on two threads at once, and every
    verdict (status, scores, heatmaps) is the one of the plain sequential batch."""
    import threading

    items = _mixed(corpus) + [ScreenItem(f"again-{i.key}", i.data, i.error) for i in _mixed(corpus)]
    plain = Screener(classifier, ScreenConfig(heatmaps="all", overlap_chunk=0), detector=detector)
    chunked = Screener(classifier, ScreenConfig(heatmaps="all", overlap_chunk=4), detector=detector)
    threads: list[str] = []
    prepare = chunked._prepare

    def recording(works, clock):  # noqa: ANN001, ANN202
        threads.append(threading.current_thread().name)
        return prepare(works, clock)

    chunked._prepare = recording  # type: ignore[method-assign]
    expected, got = plain.screen_batch(items), chunked.screen_batch(items)
    assert len(threads) == 3 and all(name.startswith("screen") for name in threads)
    assert [v.key for v in got] == [i.key for i in items]
    for a, b in zip(expected, got, strict=True):
        assert (a.status, a.reason, a.verdict, a.sha256) == (b.status, b.reason, b.verdict, b.sha256)
        assert (a.fake_probability is None) == (b.fake_probability is None)
        if a.fake_probability is not None:
            assert a.fake_probability == pytest.approx(b.fake_probability, abs=1e-6)
        # the same boxes; the detector's kernels may round differently for other batch sizes (seen on AMX)
        assert [list(f.box) for f in a.faces] == [pytest.approx(list(f.box), abs=1e-3) for f in b.faces]
        assert [f.fake_probability for f in a.faces] == pytest.approx([f.fake_probability for f in b.faces], abs=1e-6)
        assert (a.heatmap_jpeg is None) == (b.heatmap_jpeg is None)
        assert all((f.heatmap_jpeg is None) == (g.heatmap_jpeg is None) for f, g in zip(a.faces, b.faces, strict=True))
        assert b.timings["batch_size"] == float(len(items))


def test_scored_verdict(
    mixed: list[Verdict], corpus: dict[str, bytes], classifier: Classifier, astronaut: np.ndarray
) -> None:
    verdict = mixed[0]
    assert verdict.sha256 == hashlib.sha256(corpus["face"]).hexdigest()
    assert verdict.size_bytes == len(corpus["face"])
    assert (verdict.width, verdict.height) == (512, 512)
    assert len(verdict.faces) >= 1
    for index, face in enumerate(verdict.faces):
        assert face.index == index
        x1, y1, x2, y2 = face.box
        assert 0 <= x1 < x2 <= 512 and 0 <= y1 < y2 <= 512
        assert face.detection_probability is not None and face.detection_probability >= 0.9
        assert 0.0 <= face.fake_probability <= 1.0
        assert face.verdict == decide(face.fake_probability, _thresholds(classifier))
    assert verdict.fake_probability == max(f.fake_probability for f in verdict.faces)
    assert verdict.verdict == decide(verdict.fake_probability, _thresholds(classifier))
    assert (verdict.threshold_fake, verdict.threshold_real, verdict.min_face_side) == (
        classifier.meta.threshold_fake, classifier.meta.threshold_real, classifier.meta.min_face_side)
    assert verdict.reason is None
    assert {"decode", "detect", "classify", "explain", "batch_size"} <= set(verdict.timings)
    assert verdict.timings["batch_size"] == 6.0


def test_face_score_is_the_classifier_on_the_full_res_crop(
    mixed: list[Verdict], classifier: Classifier, corpus: dict[str, bytes]
) -> None:
    pixels = decode_image(corpus["face"]).pixels
    face = mixed[0].faces[0]
    crop = crop_face(pixels, face.box, classifier.meta.crop_margin, classifier.meta.input_size)
    assert classifier.fake_probability([crop])[0] == pytest.approx(face.fake_probability, abs=1e-4)


def test_image_score_is_the_max_over_two_faces(mixed: list[Verdict]) -> None:
    verdict = mixed[5]
    assert (verdict.width, verdict.height) == (1024, 512)
    assert len(verdict.faces) >= 2
    centres = sorted((f.box[0] + f.box[2]) / 2 for f in verdict.faces)
    assert centres[0] < 512 < centres[-1]  # one face in each half
    assert verdict.fake_probability == max(f.fake_probability for f in verdict.faces)


def test_all_heatmaps(mixed: list[Verdict]) -> None:
    for verdict in (mixed[0], mixed[5]):
        assert _jpeg_size(verdict.heatmap_jpeg) == (verdict.width, verdict.height)
        for face in verdict.faces:
            assert face.heatmap_jpeg is not None and face.crop_jpeg is not None
            assert _jpeg_size(face.heatmap_jpeg) == (224, 224)
            assert Image.open(io.BytesIO(face.crop_jpeg)).format == "JPEG"


def test_no_face_and_invalid_verdicts(mixed: list[Verdict], corpus: dict[str, bytes]) -> None:
    blank = mixed[1]
    assert blank.reason == "no_face"
    assert (blank.width, blank.height) == (320, 240)
    assert blank.faces == () and blank.fake_probability is None and blank.verdict is None
    assert blank.heatmap_jpeg is None
    html, gone = mixed[2], mixed[4]
    assert html.sha256 == hashlib.sha256(corpus["html"]).hexdigest()
    assert html.size_bytes == len(corpus["html"])
    assert html.width is None and html.faces == () and html.verdict is None
    assert gone.sha256 is None and gone.size_bytes == 0


def test_no_heatmaps(classifier: Classifier, detector: FaceDetector, corpus: dict[str, bytes]) -> None:
    screener = Screener(classifier, ScreenConfig(heatmaps="none"), detector=detector)
    [verdict] = screener.screen_batch([ScreenItem("face.jpg", corpus["face"])])
    assert verdict.status == "scored" and verdict.faces
    assert verdict.heatmap_jpeg is None
    assert all(f.heatmap_jpeg is None and f.crop_jpeg is None for f in verdict.faces)


def test_flagged_heatmaps_follow_the_verdict(
    classifier: Classifier, detector: FaceDetector, corpus: dict[str, bytes]
) -> None:
    items = [ScreenItem("face.jpg", corpus["face"])]
    everything_fake = Screener(_with_thresholds(classifier, 0.01, 0.0), ScreenConfig(), detector=detector)
    [flagged] = everything_fake.screen_batch(items)
    assert flagged.verdict == "fake"
    assert flagged.heatmap_jpeg is not None and all(f.heatmap_jpeg is not None for f in flagged.faces)
    everything_real = Screener(_with_thresholds(classifier, 1.0, 0.999), ScreenConfig(), detector=detector)
    [cleared] = everything_real.screen_batch(items)
    assert cleared.verdict == "real"
    assert cleared.heatmap_jpeg is None and all(f.heatmap_jpeg is None for f in cleared.faces)
    assert cleared.fake_probability == pytest.approx(flagged.fake_probability, abs=1e-6)


def test_crops_mode(classifier: Classifier, corpus: dict[str, bytes]) -> None:
    screener = Screener(classifier, ScreenConfig(crops=True, heatmaps="all"))
    assert screener.detector is None
    verdicts = screener.screen_batch(
        [
            ScreenItem("crop.jpg", corpus["crop"]),
            ScreenItem("odd.png", corpus["odd"]),
            ScreenItem("page.html", corpus["html"]),
        ]
    )
    assert [v.status for v in verdicts] == ["scored", "scored", "invalid_input"]
    assert all(v.model_version == classifier.version + "+crops" for v in verdicts)
    for verdict, key in zip(verdicts[:2], ("crop", "odd"), strict=True):
        [face] = verdict.faces
        assert face.detection_probability is None
        assert face.box == (0.0, 0.0, float(verdict.width), float(verdict.height))
        assert face.heatmap_jpeg is not None
        pixels = decode_image(corpus[key]).pixels
        expected = classifier.fake_probability([resize_square(pixels, classifier.meta.input_size)])[0]
        assert face.fake_probability == pytest.approx(expected, abs=1e-4)
        assert verdict.fake_probability == face.fake_probability


def test_expected_sha256(classifier: Classifier, corpus: dict[str, bytes]) -> None:
    screener = Screener(classifier, ScreenConfig(crops=True, heatmaps="none", decode_threads=1))
    right = hashlib.sha256(corpus["crop"]).hexdigest()
    wrong = hashlib.sha256(b"something else").hexdigest()
    ok, bad = screener.screen_batch(
        [
            ScreenItem("ok.jpg", corpus["crop"], expected_sha256=right),
            ScreenItem("bad.jpg", corpus["crop"], expected_sha256=wrong),
        ]
    )
    assert ok.status == "scored"
    assert bad.status == "invalid_input" and bad.reason == "sha256_mismatch"
    assert bad.sha256 is None  # an event-level failure: nothing may be recorded against these bytes


def test_empty_batch(classifier: Classifier) -> None:
    assert Screener(classifier, ScreenConfig(crops=True)).screen_batch([]) == []


def test_all_invalid_batch(classifier: Classifier, detector: FaceDetector, corpus: dict[str, bytes]) -> None:
    screener = Screener(classifier, ScreenConfig(), detector=detector)
    verdicts = screener.screen_batch([ScreenItem("a", b""), ScreenItem("b", corpus["html"])])
    assert [(v.status, v.reason) for v in verdicts] == [
        ("invalid_input", "empty"),
        ("invalid_input", "not_an_image"),
    ]


EXAMPLES = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "examples"


@pytest.mark.skipif(not EXAMPLES.is_dir(), reason="../shared/data/examples is not beside the repository")
def test_example_frames(classifier: Classifier, detector: FaceDetector) -> None:
    """The 1920x1080 DFD frames decode, and the people in them are found and scored."""
    files = sorted(EXAMPLES.glob("*.jpg"))
    assert len(files) == 40
    for path in files:
        assert decode_image(path.read_bytes()).pixels.shape == (1080, 1920, 3)
    chosen = [
        EXAMPLES / name
        for name in ("real_frame_0.jpg", "real_frame_1.jpg", "fake_frame_0.jpg", "fake_frame_1.jpg")
    ]
    screener = Screener(classifier, ScreenConfig(heatmaps="none"), detector=detector)
    verdicts = screener.screen_batch([ScreenItem(p.name, p.read_bytes()) for p in chosen])
    assert [v.key for v in verdicts] == [p.name for p in chosen]
    assert all(v.status in ("scored", "no_face") for v in verdicts)
    assert sum(v.status == "scored" for v in verdicts) >= 3
    for verdict in verdicts:
        for face in verdict.faces:
            assert 0 <= face.box[0] < face.box[2] <= 1920 and 0 <= face.box[1] < face.box[3] <= 1080


# -- pixels in flight ----------------------------------------------------------------------------------------
def _large_scene(astronaut: np.ndarray, index: int) -> np.ndarray:
    """A 4000 x 3000 frame (12 megapixels, 36 MB as RGB) with the astronaut at twice her size in it."""
    scene = np.full((3000, 4000, 3), 60 + 12 * index, np.uint8)
    top, left = 200 + 250 * index, 300 + 450 * index
    scene[top : top + 1024, left : left + 1024] = np.asarray(Image.fromarray(astronaut).resize((1024, 1024)))
    return scene


def test_a_batch_of_large_images_holds_the_pixel_budget_not_every_image(
    classifier: Classifier, detector: FaceDetector, astronaut: np.ndarray, image_factory: ImageFactory
) -> None:
    """Decoded pixels are budgeted per chunk (ScreenConfig.chunk_pixels, 24 MP by default): once the images
    decoded so far reach it, their faces are cut and the full images let go, the ones with faces keeping only
    the canvas their overlay is drawn on. Six 12-megapixel frames in one chunk held all 216 MB of their RGB at
    once; now at most the budget and one image (108 MB), plus crops and canvases, are alive."""
    import tracemalloc

    items = [ScreenItem(f"big-{i}.jpg", image_factory(_large_scene(astronaut, i), "JPEG", quality=80))
             for i in range(6)]
    screener = Screener(classifier, ScreenConfig(heatmaps="all", screen_threads=1), detector=detector)
    tracemalloc.start()  # numpy reports its arrays' memory to tracemalloc
    try:
        verdicts = screener.screen_batch(items)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [v.status for v in verdicts] == ["scored"] * 6
    # the overlay is drawn on the kept canvas at the size it always had: the long side at annotate_max_side
    assert all(_jpeg_size(v.heatmap_jpeg or b"") == (1280, 960) for v in verdicts)
    assert peak < 150 * 2**20, f"{peak / 2**20:.0f} MB of arrays alive at once"


def test_a_small_pixel_budget_changes_no_verdict(
    classifier: Classifier, detector: FaceDetector, corpus: dict[str, bytes], astronaut: np.ndarray,
    image_factory: ImageFactory,
) -> None:
    """The budget only decides when full images are let go: with one image at a time (and every overlay drawn
    from a canvas made early), the verdicts are those of a batch that holds every image to the end."""
    wide = image_factory(np.ascontiguousarray(np.tile(astronaut, (2, 4, 1))), "JPEG", quality=90)  # 2048 x 1024
    items = [*_mixed(corpus), ScreenItem("wide.jpg", wide)]
    held = Screener(classifier, ScreenConfig(heatmaps="all", chunk_pixels=10**12), detector=detector)
    budgeted = Screener(classifier, ScreenConfig(heatmaps="all", chunk_pixels=1), detector=detector)
    expected, got = held.screen_batch(items), budgeted.screen_batch(items)
    assert got[-1].status == "scored" and len(got[-1].faces) >= 4
    for a, b in zip(expected, got, strict=True):
        assert (a.key, a.status, a.reason, a.verdict, a.width, a.height, a.pdq) == (
            b.key, b.status, b.reason, b.verdict, b.width, b.height, b.pdq)
        assert [list(f.box) for f in a.faces] == [pytest.approx(list(f.box), abs=1e-3) for f in b.faces]
        assert [f.fake_probability for f in a.faces] == pytest.approx([f.fake_probability for f in b.faces], abs=1e-6)
        assert (a.heatmap_jpeg is None) == (b.heatmap_jpeg is None)
        if a.heatmap_jpeg is not None and b.heatmap_jpeg is not None:
            assert _jpeg_size(a.heatmap_jpeg) == _jpeg_size(b.heatmap_jpeg)


def test_a_stream_of_large_images_is_screened_one_image_at_a_time(
    classifier: Classifier, detector: FaceDetector, image_factory: ImageFactory
) -> None:
    """Two chunks screen at once, but a chunk that holds no image waits, before its next image's pixels are
    allocated, while the other holds `chunk_pixels` or more: images each over the budget are never alive two
    at a time (measured as the arrays numpy allocates, which tracemalloc sees)."""
    import tracemalloc

    rng = np.random.default_rng(8)
    images = [image_factory(np.full((2000, 3000, 3), rng.integers(40, 200), np.uint8), "JPEG", quality=80)
              for _ in range(8)]
    config = ScreenConfig(heatmaps="none", overlap_chunk=1, screen_threads=2, chunk_pixels=4_000_000)
    screener = Screener(classifier, config, detector=detector)
    screener.screen_batch([ScreenItem("warm", images[0])])  # lazy imports and caches out of the measure
    tracemalloc.start()
    try:
        verdicts = screener.screen_batch([ScreenItem(f"large-{i}.jpg", data) for i, data in enumerate(images)])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [v.status for v in verdicts] == ["no_face"] * 8
    one_image = 2000 * 3000 * 3  # 18 MB; its decode also converts through strips of 8 MB
    assert peak < one_image + 16 * 2**20, f"{peak / 2**20:.0f} MB of arrays alive at once"


@pytest.mark.parametrize("isolated", [False, True])
def test_the_pixel_reservation_comes_with_the_size_before_the_pixels(isolated: bool, image_factory: ImageFactory) -> None:
    """decode_image's `reserve` hook, which the pixel gate waits in: called once with width x height, before
    the RGB pixels are allocated (in a decode process: after its header, before the pixels are read); never
    for a file refused by its structure or header."""
    from pipeline.decode import DecodeLimits

    seen: list[int] = []
    limits = DecodeLimits(isolated=isolated)
    image = decode_image(image_factory(np.full((30, 50, 3), 90, np.uint8), "PNG"), limits, seen.append)
    assert image.pixels.shape == (30, 50, 3) and seen == [1500]
    with pytest.raises(InvalidInput):
        decode_image(b"<!doctype html><html></html>", limits, seen.append)
    with pytest.raises(InvalidInput):
        decode_image(image_factory(np.zeros((10, 10, 3), np.uint8), "PNG"), replace(limits, max_pixels=50),
                     seen.append)
    assert seen == [1500]
