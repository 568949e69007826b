"""pipeline.explain: batched Grad-CAM without leaked hooks, the RGB heat overlay, and box drawing."""

from __future__ import annotations

import copy
import io

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.explain import (
    VERDICT_COLOURS,
    annotate,
    gradcam,
    gradcam_from_features,
    heat_colours,
    overlay,
    overlay_canvas,
    png_bytes,
)
from pipeline.model import Classifier


@pytest.fixture(scope="module")
def inverted(classifier: Classifier) -> Classifier:
    """The placeholder with its logit negated. The placeholder's own maps are all zero (its evidence for
    'fake' is negative everywhere and Grad-CAM keeps the positive part); negating gives non-trivial maps."""
    net = copy.deepcopy(classifier.net)
    with torch.no_grad():
        net.backbone.logits.weight.neg_()
    return Classifier(net=net, meta=classifier.meta, device=classifier.device)


def _crops(astronaut: np.ndarray) -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    face = np.ascontiguousarray(astronaut[40:200, 140:300])
    return [face, rng.integers(0, 256, (100, 100, 3), dtype=np.uint8), np.full((224, 224, 3), 128, np.uint8)]


def _hooks(module: torch.nn.Module) -> int:
    return sum(
        len(m._forward_hooks)
        + len(m._backward_hooks)
        + len(m._forward_pre_hooks)
        + len(m._backward_pre_hooks)
        for m in module.modules()
    )


def test_gradcam_one_map_per_crop(inverted: Classifier, astronaut: np.ndarray) -> None:
    crops = _crops(astronaut)
    maps = gradcam(inverted, crops)
    size = inverted.meta.input_size
    assert len(maps) == len(crops)
    for cam in maps:
        assert cam.shape == (size, size)
        assert cam.dtype == np.float32
        assert np.isfinite(cam).all()
        assert cam.min() >= 0.0 and cam.max() <= 1.0 + 1e-6
    assert maps[0].max() == pytest.approx(1.0, abs=1e-3)  # each map is scaled to its own maximum
    assert maps[0].std() > 0.01


def test_gradcam_batch_matches_single(inverted: Classifier, astronaut: np.ndarray) -> None:
    crops = _crops(astronaut)
    batch = gradcam(inverted, crops[:2])
    alone = gradcam(inverted, crops[1:2])
    np.testing.assert_allclose(batch[1], alone[0], atol=1e-3)


def test_gradcam_releases_hooks_and_grads(classifier: Classifier, inverted: Classifier) -> None:
    layer = classifier.layer(classifier.meta.gradcam_layer)
    assert _hooks(classifier.net) == 0
    crops = [np.full((224, 224, 3), 90, np.uint8)]
    for _ in range(2):
        maps = gradcam(classifier, crops)
        assert len(maps) == 1 and maps[0].shape == (224, 224)
        assert not layer._forward_hooks and not layer._backward_hooks
        assert not layer._forward_pre_hooks and not layer._backward_pre_hooks
        assert _hooks(classifier.net) == 0
    assert all(p.grad is None for p in classifier.net.parameters())
    assert not classifier.net.training
    gradcam(inverted, crops)
    assert _hooks(inverted.net) == 0


def test_gradcam_leaves_inference_unchanged(classifier: Classifier) -> None:
    crops = [np.random.default_rng(9).integers(0, 256, (224, 224, 3), dtype=np.uint8)]
    before = classifier.fake_probability(crops)
    gradcam(classifier, crops)
    np.testing.assert_allclose(classifier.fake_probability(crops), before, atol=1e-6)


def test_gradcam_under_bf16_autocast_matches_fp32_and_leaves_no_hook(astronaut: np.ndarray) -> None:
    """On the shipped (trained) model: bf16 maps are the fp32 maps, up to rounding."""
    import dataclasses

    from PIL import ImageFilter

    from pipeline.model import load_classifier
    from workers.settings import SHIPPED_MODEL

    shipped = load_classifier(SHIPPED_MODEL, precision="fp32")
    face = np.ascontiguousarray(astronaut[40:200, 140:300])
    blurred = np.asarray(Image.fromarray(face).filter(ImageFilter.GaussianBlur(2)))  # the model calls it fake
    crops = [blurred, face]
    bf16 = dataclasses.replace(shipped, precision="bf16")
    fp32_maps, bf16_maps = gradcam(shipped, crops), gradcam(bf16, crops)
    assert fp32_maps[0].std() > 0.05, "a map with structure to compare"
    assert np.corrcoef(fp32_maps[0].ravel(), bf16_maps[0].ravel())[0, 1] > 0.99
    for b in bf16_maps:
        assert b.dtype == np.float32 and np.isfinite(b).all()
    assert _hooks(bf16.net) == 0
    assert all(p.grad is None for p in bf16.net.parameters())


def test_gradcam_of_nothing(classifier: Classifier) -> None:
    assert gradcam(classifier, []) == []


def test_gradcam_from_features_equals_the_full_gradcam(inverted: Classifier, astronaut: np.ndarray) -> None:
    """Resuming from the classification forward's activations gives the maps of a full Grad-CAM pass, and
    the probabilities of that forward are the plain ones."""
    crops = _crops(astronaut)
    probs, features = inverted.fake_probability_with_features(crops)
    assert features is not None and features.shape[0] == len(crops) and not features.requires_grad
    np.testing.assert_allclose(probs, inverted.fake_probability(crops), atol=1e-9)
    full = gradcam(inverted, crops)
    resumed = gradcam_from_features(inverted, features)
    assert full[0].std() > 0.01, "a map with structure to compare"
    for a, b in zip(full, resumed, strict=True):
        assert b.shape == a.shape and b.dtype == np.float32
        np.testing.assert_allclose(b, a, atol=1e-4)
    assert _hooks(inverted.net) == 0
    assert all(p.grad is None for p in inverted.net.parameters())


def test_an_affine_tail_is_explained_by_constant_weights_without_the_lock(inverted: Classifier,
                                                                         astronaut: np.ndarray) -> None:
    """After block8 the network is affine, so Grad-CAM's weights are taken once and a batch is one weighted
    sum: nothing touches the shared network, so the screening threads' lock is not taken."""
    from pipeline.explain import _affine_tail_weights

    _, features = inverted.fake_probability_with_features(_crops(astronaut))
    assert features is not None
    weights = _affine_tail_weights(inverted, "block8", tuple(features.shape[1:]), None)
    assert weights is not None and weights.shape == (features.shape[1],)

    class Refused:
        def __enter__(self) -> None:
            raise AssertionError("the lock was taken")

        def __exit__(self, *exc: object) -> None:
            return None

    maps = gradcam_from_features(inverted, features, lock=Refused())
    for a, b in zip(gradcam(inverted, _crops(astronaut)), maps, strict=True):
        np.testing.assert_allclose(b, a, atol=1e-4)


def test_a_tail_that_is_not_affine_is_explained_by_a_backward_under_the_lock(inverted: Classifier,
                                                                             astronaut: np.ndarray) -> None:
    """From repeat_3, the tail holds block8's convolutions and ReLUs: its weights differ per input, so each
    batch runs the tail forward and backward under grad-cam, holding the lock, and the maps still equal a full
    Grad-CAM pass at that layer."""
    import dataclasses
    import threading

    from pipeline.explain import _affine_tail_weights

    earlier = dataclasses.replace(inverted, meta=dataclasses.replace(inverted.meta, gradcam_layer="backbone.repeat_3"))
    crops = _crops(astronaut)
    _, features = earlier.fake_probability_with_features(crops)
    assert features is not None and earlier.split_stage == "repeat_3"
    assert _affine_tail_weights(earlier, "repeat_3", tuple(features.shape[1:]), None) is None
    taken = []

    class Counted:
        def __init__(self) -> None:
            self.lock = threading.Lock()

        def __enter__(self) -> None:
            taken.append(1)
            self.lock.acquire()

        def __exit__(self, *exc: object) -> None:
            self.lock.release()

    resumed = gradcam_from_features(earlier, features, lock=Counted())
    assert taken, "the backward through the shared network held the lock"
    full = gradcam(earlier, crops)
    assert full[0].std() > 0.01, "a map with structure to compare"
    for a, b in zip(full, resumed, strict=True):
        np.testing.assert_allclose(b, a, atol=1e-4)
    assert _hooks(earlier.net) == 0
    assert all(p.grad is None for p in earlier.net.parameters())


def test_gradcam_from_features_under_bf16_matches_fp32(astronaut: np.ndarray) -> None:
    """On the shipped model, with the bf16 classification forward's activations: the fp32 maps, up to rounding."""
    import dataclasses

    from PIL import ImageFilter

    from pipeline.model import load_classifier
    from workers.settings import SHIPPED_MODEL

    shipped = load_classifier(SHIPPED_MODEL, precision="fp32")
    face = np.ascontiguousarray(astronaut[40:200, 140:300])
    crops = [np.asarray(Image.fromarray(face).filter(ImageFilter.GaussianBlur(2))), face]
    bf16 = dataclasses.replace(shipped, precision="bf16")
    _, features = bf16.fake_probability_with_features(crops)
    assert features is not None
    full, resumed = gradcam(shipped, crops), gradcam_from_features(bf16, features)
    assert full[0].std() > 0.05, "a map with structure to compare"
    assert np.corrcoef(full[0].ravel(), resumed[0].ravel())[0, 1] > 0.99
    for a, b in zip(full, resumed, strict=True):
        # bf16 keeps 8 bits of mantissa through 13 depthwise blocks: pixels move by up to ~0.12, the map stays
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99
        assert np.abs(a - b).mean() < 0.04 and np.abs(a - b).max() < 0.2


def test_features_are_not_kept_for_a_layer_that_cannot_be_resumed(classifier: Classifier) -> None:
    import dataclasses

    other = dataclasses.replace(classifier, meta=dataclasses.replace(classifier.meta, gradcam_layer="backbone.repeat_3.0"))
    probs, features = other.fake_probability_with_features([np.full((224, 224, 3), 90, np.uint8)])
    assert features is None and probs.shape == (1,)
    with pytest.raises(ValueError, match="cannot be resumed"):
        gradcam_from_features(other, torch.zeros(1, 1792, 5, 5))


# -- colours and overlay ------------------------------------------------------------------------------


def test_heat_colours_are_rgb() -> None:
    hot = heat_colours(np.ones((2, 2), np.float32))[0, 0].astype(int)
    cold = heat_colours(np.zeros((2, 2), np.float32))[0, 0].astype(int)
    assert hot[0] > 100 and hot[2] < 30  # JET's top is dark red: red high, blue low
    assert cold[2] > 100 and cold[0] < 30  # and its bottom is dark blue
    assert heat_colours(np.full((3, 5), 0.5, np.float32)).shape == (3, 5, 3)


def test_overlay_keeps_shape_and_dtype() -> None:
    crop = np.random.default_rng(1).integers(0, 256, (64, 48, 3), dtype=np.uint8)
    out = overlay(crop, np.random.default_rng(2).random((224, 224)).astype(np.float32))
    assert out.shape == crop.shape and out.dtype == np.uint8


def test_zero_cam_leaves_the_crop_unchanged() -> None:
    crop = np.random.default_rng(3).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    np.testing.assert_array_equal(overlay(crop, np.zeros((32, 32), np.float32)), crop)


def test_hot_area_turns_red_cold_area_untouched() -> None:
    crop = np.full((40, 40, 3), 100, np.uint8)
    cam = np.zeros((40, 40), np.float32)
    cam[:, :20] = 1.0
    out = overlay(crop, cam).astype(int)
    hot, cold = out[20, 5], out[20, 35]
    assert hot[0] > 100 and hot[2] < 100 and hot[0] > hot[2] + 40  # red rises, blue falls: RGB, not BGR
    assert cold.tolist() == [100, 100, 100]


# -- annotate -----------------------------------------------------------------------------------------


def test_annotate_draws_boxes_in_verdict_colours() -> None:
    pixels = np.full((200, 300, 3), 128, np.uint8)
    faces = [((50.0, 60.0, 150.0, 160.0), "fake", 0.97), ((200.0, 100.0, 260.0, 180.0), "real", 0.1)]
    out = annotate(pixels, faces, [None, None], margin=0.0)
    assert out.shape == pixels.shape and out.dtype == np.uint8
    assert tuple(out[110, 50]) == VERDICT_COLOURS["fake"]  # left edge
    assert tuple(out[160, 100]) == VERDICT_COLOURS["fake"]  # bottom edge
    assert tuple(out[140, 200]) == VERDICT_COLOURS["real"]
    assert tuple(out[110, 100]) == (128, 128, 128)  # inside: untouched without a map
    assert tuple(out[5, 5]) == (128, 128, 128)
    assert (pixels == 128).all()  # the input is not drawn on


def test_annotate_from_the_overlay_canvas_draws_what_the_full_image_gives() -> None:
    """A screening keeps only the overlay canvas of a large image once its faces are cut: drawn from it, with
    the full image's size, the overlay is the one drawn from the full image, and the canvas is not drawn on."""
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, (1500, 2600, 3), dtype=np.uint8)
    faces = [((400.0, 300.0, 900.0, 900.0), "fake", 0.95), ((1800.0, 200.0, 2100.0, 560.0), "real", 0.05)]
    cams = [rng.random((224, 224), dtype=np.float32), None]
    canvas = overlay_canvas(pixels, 1280)
    assert canvas.shape == (738, 1280, 3)
    kept = canvas.copy()
    full = annotate(pixels, faces, cams, margin=0.1)
    assert np.array_equal(annotate(canvas, faces, cams, margin=0.1, image_size=(2600, 1500)), full)
    assert np.array_equal(canvas, kept)
    small = pixels[:600, :800]
    assert overlay_canvas(small, 1280) is small  # no longer than the canvas: kept as it is


def test_annotate_paints_heat_inside_the_box() -> None:
    pixels = np.full((200, 300, 3), 100, np.uint8)
    box = (50.0, 60.0, 150.0, 160.0)
    out = annotate(pixels, [(box, "uncertain", 0.7)], [np.ones((224, 224), np.float32)], margin=0.0)
    inside = out[110, 100].astype(int)
    assert inside[0] > 110 and inside[2] < 60
    assert tuple(out[110, 250]) == (100, 100, 100)


def test_annotate_downscales() -> None:
    pixels = np.full((400, 600, 3), 128, np.uint8)
    out = annotate(pixels, [((100.0, 100.0, 300.0, 300.0), "real", 0.2)], [None], margin=0.0, max_side=150)
    assert out.shape == (100, 150, 3)
    assert tuple(out[50, 25]) == VERDICT_COLOURS["real"]  # the box is scaled with the image


def test_annotate_box_at_the_border() -> None:
    pixels = np.full((100, 100, 3), 128, np.uint8)
    out = annotate(
        pixels, [((0.0, 0.0, 40.0, 40.0), "fake", 0.99)], [np.ones((224, 224), np.float32)], margin=0.5
    )
    assert out.shape == pixels.shape
    assert tuple(out[20, 0]) == VERDICT_COLOURS["fake"]


def test_png_bytes_decode() -> None:
    pixels = np.random.default_rng(4).integers(0, 256, (30, 20, 3), dtype=np.uint8)
    data = png_bytes(pixels)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(data))), pixels)
