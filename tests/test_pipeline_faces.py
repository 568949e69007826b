"""pipeline.faces: downscaling, crop geometry, and batched MTCNN with boxes mapped to full resolution."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.faces import (
    DetectorConfig,
    Face,
    FaceDetector,
    crop_face,
    downscale,
    resize_square,
    square_region,
)

REPO = Path(__file__).resolve().parent.parent


def _gradient(height: int, width: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([xx % 256, yy % 256, (xx + yy) % 256], axis=2).astype(np.uint8)


# -- downscale ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "max_side", "small", "factor"),
    [
        ((500, 1000), 250, (125, 250), 4.0),
        ((1000, 500), 250, (250, 125), 4.0),
        ((300, 200), 960, (300, 200), 1.0),
        ((960, 10), 960, (960, 10), 1.0),
        ((333, 1001), 250, (83, 250), 1001 / 250),
    ],
)
def test_downscale_shape_and_factor(
    shape: tuple[int, int], max_side: int, small: tuple[int, int], factor: float
) -> None:
    pixels = _gradient(*shape)
    out, got = downscale(pixels, max_side)
    assert out.shape == (*small, 3)
    assert out.dtype == np.uint8
    assert got == pytest.approx(factor)
    assert max(out.shape[:2]) * got == pytest.approx(max(shape))  # the long side maps back exactly


def test_downscale_keeps_small_images_untouched() -> None:
    pixels = _gradient(40, 50)
    out, factor = downscale(pixels, 50)
    assert out is pixels and factor == 1.0


def test_downscale_extreme_aspect_keeps_at_least_one_pixel() -> None:
    out, factor = downscale(_gradient(2, 5000), 100)
    assert out.shape == (1, 100, 3)
    assert factor == 50.0


# -- crop geometry ------------------------------------------------------------------------------------


def test_square_region() -> None:
    left, top, side = square_region((10.0, 20.0, 50.0, 100.0), margin=0.1)
    assert side == pytest.approx(80 * 1.2)  # the long side (80) plus 10% per side
    assert left + side / 2 == pytest.approx(30.0)  # centred on the box
    assert top + side / 2 == pytest.approx(60.0)
    assert square_region((5.0, 5.0, 5.0, 5.0), margin=0.0)[2] == 2.0  # never degenerate
    tightened = square_region((0.0, 0.0, 100.0, 100.0), margin=-0.25)
    assert tightened[2] == pytest.approx(50.0)


@pytest.mark.parametrize("size", [32, 160, 224])
def test_crop_face_shape(size: int) -> None:
    crop = crop_face(_gradient(300, 400), (100.0, 50.0, 180.0, 170.0), margin=0.2, size=size)
    assert crop.shape == (size, size, 3)
    assert crop.dtype == np.uint8


def test_crop_face_inside_image_is_the_exact_region() -> None:
    pixels = _gradient(200, 300)
    crop = crop_face(pixels, (100.0, 50.0, 140.0, 90.0), margin=0.0, size=40)
    np.testing.assert_array_equal(crop, pixels[50:90, 100:140])


def test_crop_face_pads_by_edge_replication_at_the_border() -> None:
    pixels = _gradient(100, 120)
    # box at the top-left corner; margin 0.5 -> a 40 px square from (-10, -10) to (30, 30)
    crop = crop_face(pixels, (0.0, 0.0, 20.0, 20.0), margin=0.5, size=40)
    np.testing.assert_array_equal(crop[10:, 10:], pixels[0:30, 0:30])
    np.testing.assert_array_equal(crop[:10, 10:], np.repeat(pixels[0:1, 0:30], 10, axis=0))
    np.testing.assert_array_equal(crop[10:, :10], np.repeat(pixels[0:30, 0:1], 10, axis=1))
    assert (crop[:10, :10] == pixels[0, 0]).all()
    # bottom-right corner too: the face keeps its scale, nothing is stretched
    crop = crop_face(pixels, (100.0, 80.0, 120.0, 100.0), margin=0.5, size=40)
    np.testing.assert_array_equal(crop[:30, :30], pixels[70:100, 90:120])
    assert (crop[30:, 30:] == pixels[-1, -1]).all()


def test_margin_widens_the_crop() -> None:
    pixels = np.zeros((400, 400, 3), np.uint8)
    pixels[150:250, 150:250] = 255  # the "face"
    box = (150.0, 150.0, 250.0, 250.0)
    tight = crop_face(pixels, box, margin=0.0, size=96)
    wide = crop_face(pixels, box, margin=0.25, size=96)
    assert (tight == 255).mean() == pytest.approx(1.0)
    assert (wide > 127).mean() == pytest.approx((1 / 1.5) ** 2, abs=0.03)


def test_resize_square() -> None:
    pixels = _gradient(50, 80)
    assert resize_square(pixels, 64).shape == (64, 64, 3)
    assert resize_square(pixels, 300).shape == (300, 300, 3)
    same = _gradient(64, 64)
    np.testing.assert_array_equal(resize_square(same, 64), same)


# -- detection ----------------------------------------------------------------------------------------


def _check_faces(faces: list[Face], shape: tuple[int, ...]) -> None:
    height, width = shape[:2]
    for face in faces:
        x1, y1, x2, y2 = face.box
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height
        assert 0.9 <= face.detection_probability <= 1.0
    probabilities = [f.detection_probability for f in faces]
    assert probabilities == sorted(probabilities, reverse=True)


def _box_distance(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    return max(abs(p - q) for p, q in zip(a, b, strict=True))


def test_finds_the_astronaut(detector: FaceDetector, astronaut: np.ndarray) -> None:
    [faces] = detector.detect([astronaut])
    assert len(faces) >= 1
    _check_faces(faces, astronaut.shape)
    x1, y1, x2, y2 = faces[0].box
    # the face is in the upper middle of the photo, about 90 x 110 px
    assert 150 < (x1 + x2) / 2 < 300 and 60 < (y1 + y2) / 2 < 180
    assert 50 < x2 - x1 < 150


def test_detection_on_a_downscaled_copy_maps_back(detector: FaceDetector, astronaut: np.ndarray) -> None:
    [full] = detector.detect([astronaut])
    small_detector = FaceDetector(DetectorConfig(max_side=256))
    [small] = small_detector.detect([astronaut])
    assert full and small
    _check_faces(small, astronaut.shape)
    face_size = full[0].box[2] - full[0].box[0]
    assert _box_distance(full[0].box, small[0].box) < 0.1 * face_size


def test_detection_on_a_large_image_maps_back(detector: FaceDetector, astronaut: np.ndarray) -> None:
    big = np.asarray(Image.fromarray(astronaut).resize((1536, 1536), Image.Resampling.BICUBIC))
    [full] = detector.detect([astronaut])
    [large] = detector.detect([big])  # detected on a downscaled copy, boxes in 1536 px coordinates
    assert large
    _check_faces(large, big.shape)
    expected = tuple(v * 3 for v in full[0].box)
    assert _box_distance(expected, large[0].box) < 0.1 * (expected[2] - expected[0])


def test_batch_of_mixed_sizes_keeps_order(detector: FaceDetector, astronaut: np.ndarray) -> None:
    blank = np.full((300, 200, 3), 128, np.uint8)
    shifted = np.full((600, 700, 3), 40, np.uint8)
    shifted[50:562, 150:662] = astronaut  # the same face, 150 px right and 50 px down
    tiny = np.full((8, 8, 3), 200, np.uint8)
    images = [astronaut, blank, shifted, tiny, astronaut]
    results = detector.detect(images)
    assert len(results) == len(images)
    assert results[1] == [] and results[3] == []
    assert results[0] and results[2] and results[4]
    assert results[4] == results[0]
    for faces, image in zip(results, images, strict=True):
        _check_faces(faces, image.shape)
    moved = tuple(v - d for v, d in zip(results[2][0].box, (150, 50, 150, 50), strict=True))
    assert _box_distance(moved, results[0][0].box) < 0.1 * (results[0][0].box[2] - results[0][0].box[0])


def test_blank_image_has_no_face(detector: FaceDetector) -> None:
    assert detector.detect([np.zeros((240, 320, 3), np.uint8)]) == [[]]
    assert detector.detect([]) == []


def test_batch_size_one_gives_same_result(detector: FaceDetector, astronaut: np.ndarray) -> None:
    one_by_one = FaceDetector(DetectorConfig(batch_size=1))
    flipped = np.ascontiguousarray(astronaut[:, ::-1])
    batched = detector.detect([astronaut, flipped])
    single = one_by_one.detect([astronaut, flipped])
    assert len(batched[1]) >= 1
    for a, b in zip(batched, single, strict=True):
        assert len(a) == len(b)
        for fa, fb in zip(a, b, strict=True):
            assert _box_distance(fa.box, fb.box) < 1.0


def test_every_face_is_kept_three_faces_give_three_boxes(detector, astronaut) -> None:  # noqa: ANN001
    """Not just the largest face: three people in one image are three faces, left to right apart."""
    import numpy as np

    face = astronaut[0:300, 100:400]
    row = np.concatenate([face, face[:, ::-1], face], axis=1)
    found = detector.detect([row])[0]
    assert len(found) == 3
    centres = sorted((f.box[0] + f.box[2]) / 2 for f in found)
    assert centres[0] < 300 < centres[1] < 600 < centres[2]


# -- the cascade: facenet-pytorch's results, resampling from one integral image --------------------------


@pytest.mark.parametrize("shape", [(1, 57, 91, 3), (3, 64, 48, 3), (2, 405, 720, 3)])
def test_integral_resize_is_torch_area_interpolation_bit_for_bit(shape: tuple[int, ...]) -> None:
    import torch
    import torch.nn.functional as F

    from pipeline.cascade import Integral

    images = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    reference = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    integral = Integral(images)
    height, width = shape[1:3]
    # not 1 x 1: torch takes that as a plain mean, a different sum order (the cascade's sizes are >= 12 px)
    for size in [(height, width), (int(height * 0.6 + 1), int(width * 0.6 + 1)), (13, 12), (2, 3), (height + 5, 7)]:
        got = integral.resize(size)
        assert got.dtype == torch.float32 and got.shape == (shape[0], 3, *size)
        assert torch.equal(got, F.interpolate(reference, size=size, mode="area")), size


@pytest.mark.parametrize("side", [24, 48])
def test_integral_crops_are_torch_area_interpolation_of_each_box_bit_for_bit(side: int) -> None:
    import torch
    import torch.nn.functional as F

    from pipeline.cascade import Integral

    rng = np.random.default_rng(side)
    images = rng.integers(0, 256, (3, 120, 200, 3), dtype=np.uint8)
    reference = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    # random boxes, plus a one-pixel box, a whole image and boxes on the far edges
    y0 = np.concatenate([rng.integers(0, 119, 40), [5, 0, 119, 0]])
    x0 = np.concatenate([rng.integers(0, 199, 40), [7, 0, 0, 199]])
    y1 = np.minimum(120, y0 + np.concatenate([rng.integers(1, 150, 40), [1, 120, 1, 120]]))
    x1 = np.minimum(200, x0 + np.concatenate([rng.integers(1, 150, 40), [1, 200, 200, 1]]))
    owners = torch.from_numpy(rng.integers(0, 3, len(y0)))
    got = Integral(images).crops(owners, y0, y1, x0, x1, side)
    expected = torch.cat([F.interpolate(reference[n : n + 1, :, a:b, c:d], size=(side, side), mode="area")
                          for n, a, b, c, d in zip(owners.tolist(), y0, y1, x0, x1, strict=True)])
    assert torch.equal(got, expected)


def test_integral_refuses_anything_but_a_uint8_batch() -> None:
    from pipeline.cascade import Integral

    with pytest.raises(ValueError, match="uint8"):
        Integral(np.zeros((1, 8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        Integral(np.zeros((8, 8, 3), np.uint8))


def test_cascade_returns_facenet_pytorchs_boxes_and_probabilities(detector: FaceDetector,
                                                                    astronaut: np.ndarray) -> None:
    """Bit-identical to facenet-pytorch's own `MTCNN.detect` (same networks): one face, three faces, a batch
    of two, and an image with none."""
    import torch

    from pipeline import cascade

    mtcnn = detector._mtcnn
    face = astronaut[0:300, 100:400]
    three = np.ascontiguousarray(np.concatenate([face, face[:, ::-1], face], axis=1))
    flipped = np.ascontiguousarray(astronaut[:, ::-1])
    cut = np.ascontiguousarray(astronaut[100:, 150:])  # the face cut by the top and left edges
    noise = np.random.default_rng(5).integers(0, 256, (300, 400, 3), dtype=np.uint8)
    batches = [[astronaut], [three], [astronaut, flipped], [np.full((200, 260, 3), 90, np.uint8)],
               [astronaut, np.zeros_like(astronaut)], [cut], [noise]]
    found_faces = 0
    for batch in batches:
        with torch.inference_mode():
            boxes, probs = mtcnn.detect(np.stack(batch))
            ours = cascade.detect(np.stack(batch), mtcnn.pnet, mtcnn.rnet, mtcnn.onet, mtcnn.min_face_size,
                                  tuple(mtcnn.thresholds), mtcnn.factor)
        assert len(ours) == len(batch)
        for (got_boxes, got_probs), want_boxes, want_probs in zip(ours, boxes, probs, strict=True):
            if want_boxes is None:
                assert got_boxes.shape == (0, 4) and got_probs.shape == (0,)
                continue
            assert np.array_equal(got_boxes, want_boxes)
            assert np.array_equal(got_probs, np.asarray(want_probs, dtype=np.float32))
            found_faces += len(got_boxes)
    assert found_faces >= 1 + 3 + 2


def test_an_image_smaller_than_the_smallest_face_has_none(detector: FaceDetector, astronaut: np.ndarray) -> None:
    """Short side between MTCNN's 12 px window and the 20 px smallest face: an empty pyramid, not an error."""
    strip = np.ascontiguousarray(astronaut[200:216])
    assert detector.detect([strip, strip]) == [[], []]


def test_a_candidate_wholly_outside_the_image_is_dropped_with_its_score() -> None:
    """facenet-pytorch dropped only the crop and then failed on boxes and scores of different lengths."""
    import torch

    from pipeline.cascade import Integral, _refine

    class Scores(torch.nn.Module):  # RNet's outputs: offsets, then (not-face, face) probabilities
        def forward(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            face = crops.mean(dim=(1, 2, 3)).sigmoid()
            return torch.full((len(crops), 4), 0.01), torch.stack([1 - face, face], dim=1)

    images = np.full((2, 60, 80, 3), 255, np.uint8)
    boxes = torch.tensor([[10.0, 10, 40, 40, 0.9], [200, 10, 230, 40, 0.9], [5, 5, 30, 30, 0.8]])
    owners = torch.tensor([0, 0, 1])
    kept, kept_owners, offsets = _refine(Integral(images), boxes, owners, Scores(), 24, 0.5)
    assert kept[:, :4].tolist() == [[10.0, 10, 40, 40], [5, 5, 30, 30]]
    assert kept_owners.tolist() == [0, 1]
    assert offsets.shape == (2, 4)
    assert torch.all(kept[:, 4] > 0.5)


# -- memory --------------------------------------------------------------------------------------------------
_PEAK_SCRIPT = """
import numpy as np
from {module} import {name}

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

pixels = np.full((6000, 6000, 3), 90, np.uint8)
pixels[::7, ::5] = 30
{name}(np.zeros((64, 96, 3), np.uint8), 48)  # lazy imports and caches before the peak is reset
open("/proc/self/clear_refs", "w").write("5")  # the peak resident size starts again from here
start = status("VmRSS")
{name}(pixels, {max_side})
print(status("VmHWM") - start)
"""


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's resettable peak RSS")
@pytest.mark.parametrize(("module", "name", "max_side"), [("pipeline.faces", "downscale", 720),
                                                           ("pipeline.pdq", "pdq_hash", 512)])
def test_shrinking_a_large_image_makes_no_full_size_copy(module: str, name: str, max_side: int) -> None:
    """Detection and the PDQ hash shrink a 36-megapixel image (108 MB) from its own array: a Pillow resize
    first copied it into a 4-byte-per-pixel image, 144 MB more at the peak of every large input."""
    script = _PEAK_SCRIPT.format(module=module, name=name, max_side=max_side)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    growth = int(done.stdout.split()[-1])
    assert growth < 40 * 2**20, f"peak grew {growth / 2**20:.0f} MB"
