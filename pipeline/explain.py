"""Batched Grad-CAM for chosen faces, the heat overlay on a face crop, and boxes drawn on the image.

The old demos blended a BGR colormap onto an RGB face and re-normalised the result by its maximum, which
washed the face out and swapped red with blue. Here the colormap is converted to RGB, the blend is a plain
weighted sum, and the heat is only painted where the map is warm, so the face stays readable.
"""

from __future__ import annotations

import functools
import io
import threading
import weakref
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext

import cv2
import numpy as np
import torch
from PIL import Image, ImageDraw

from pipeline.faces import Box, square_region
from pipeline.model import Classifier, DetectorNet, crops_to_tensor

VERDICT_COLOURS = {"fake": (220, 30, 30), "uncertain": (245, 160, 0), "real": (30, 170, 60),
                   "too_small": (150, 150, 150)}


class _FakeLogit:
    """Grad-CAM target: the single fake logit of a (N, 1) output row."""

    def __call__(self, model_output):
        return model_output[..., 0]


def gradcam(classifier: Classifier, crops: Sequence[np.ndarray]) -> list[np.ndarray]:
    """One forward and one backward for all crops; hooks are released when the batch is done.

    Returns one float32 map in [0, 1] per crop, at the model's input size.
    """
    from pytorch_grad_cam import GradCAM

    if not crops:
        return []
    tensor = crops_to_tensor(crops, classifier.meta).to(classifier.device)
    layer = classifier.layer(classifier.meta.gradcam_layer)
    # Forward and backward run under the classifier's autocast (maps agree with fp32's; docs/benchmarks.md). grad-cam hands activations and gradients to numpy, which has no
    # bf16, so the target layer's output is cast to float32 by a hook registered before grad-cam's own: hooks
    # run in order, and grad-cam then sees (and takes gradients of) the float32 tensor.
    to_float = layer.register_forward_hook(lambda _m, _a, out: out.float()) if classifier.precision != "fp32" else None
    cam = None
    try:
        cam = GradCAM(model=classifier.net, target_layers=[layer])
        with classifier.autocast():
            maps = cam(input_tensor=tensor, targets=[_FakeLogit()] * len(crops))
    finally:  # the library's context manager swallows some errors; release explicitly instead
        if cam is not None:
            cam.activations_and_grads.release()
        if to_float is not None:
            to_float.remove()
        classifier.net.zero_grad(set_to_none=True)
    return [np.nan_to_num(m.astype(np.float32)) for m in maps]


class _Tail(torch.nn.Module):
    """The network from the Grad-CAM layer's output to the logit; `entry` stands for the layer itself."""

    net: DetectorNet

    def __init__(self, classifier: Classifier, stage: str) -> None:
        super().__init__()
        # Not a submodule: grad-cam calls eval() and zero_grad() on its model for every batch, and walking the
        # whole network's ~11,000 modules twice cost more than the tail's forward and backward together.
        self.__dict__["net"] = classifier.net
        self.stage = stage
        self.entry = torch.nn.Identity()
        # grad-cam reads the model's device from its first parameter: an empty one, on the network's device
        self.device_anchor = torch.nn.Parameter(torch.empty(0, device=classifier.device), requires_grad=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net.forward_from(self.stage, self.entry(features))

    def clear_grads(self) -> None:
        """Drop the gradients the backward left on the tail's own parameters (the rest of the network is not
        reached by it)."""
        for module in self.net.tail_modules(self.stage):
            module.zero_grad(set_to_none=True)


def gradcam_from_features(classifier: Classifier, features: torch.Tensor,
                           lock: AbstractContextManager[object] | None = None) -> list[np.ndarray]:
    """Grad-CAM from the activations the classification forward already produced (see
    `Classifier.fake_probability_with_features`), so a heatmap never costs a second forward of the network.

    When the network after the Grad-CAM layer is affine (InceptionResnetV1's is: average pool, dropout,
    linear, batch norm, linear), the fake logit's gradient with respect to the layer's activations is the same
    for every input. Grad-CAM's channel weights, the spatial means of that gradient, are then constants: they
    are taken once per network with grad-cam's own GradCAM, and a batch's maps are ReLU(sum_c w_c A_c), one
    weighted sum, with no backward at all and nothing on the shared network to lock. Otherwise the tail runs
    forward and backward under grad-cam for each batch, in float32, holding `lock` (the network is shared).

    Either way the maps equal `gradcam`'s (tests compare them): the same weights on the same activations,
    normalised, resized to the input size and normalised again as grad-cam does.
    """
    if len(features) == 0:
        return []
    stage = classifier.split_stage
    if stage is None:
        raise ValueError(f"{classifier.meta.gradcam_layer} cannot be resumed from; use gradcam()")
    weights = _affine_tail_weights(classifier, stage, tuple(features.shape[1:]), lock)
    if weights is not None:
        # summed in float64: 1,792 products, whose float32 rounding the min-max scaling below would magnify
        activations = features.detach().to(weights.device, torch.float64)
        small = torch.einsum("c,nchw->nhw", weights, activations).clamp_(min=0).cpu().numpy()
        small = _rescale(_rescale(small))  # grad-cam scales each layer's map, then the layers' mean
    else:
        with lock if lock is not None else nullcontext():
            small, _ = _tail_gradcam(classifier, stage, features)
    size = classifier.meta.input_size
    maps = _rescale(np.stack([cv2.resize(m, (size, size)) for m in small.astype(np.float32, copy=False)]))
    return list(np.nan_to_num(maps))


def _rescale(maps: np.ndarray) -> np.ndarray:
    """grad-cam's `scale_cam_image` without a resize, for a whole batch of maps at once: each map minus its
    minimum, over its new maximum (plus 1e-7)."""
    low = maps.min(axis=(1, 2), keepdims=True)
    shifted = (maps - low).astype(np.float32, copy=False)
    return shifted / (1e-7 + shifted.max(axis=(1, 2), keepdims=True))


def _tail_gradcam(classifier: Classifier, stage: str, features: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
    """grad-cam's GradCAM on the network's tail, from `features`: its maps at the features' own size, and the
    fake logit's gradients with respect to the features."""
    from pytorch_grad_cam import GradCAM

    tail = _Tail(classifier, stage)
    inputs = features.detach().float().to(classifier.device).requires_grad_(True)
    cam = None
    try:
        cam = GradCAM(model=tail, target_layers=[tail.entry])
        maps = cam(input_tensor=inputs, targets=[_FakeLogit()] * len(inputs))
        return maps, cam.activations_and_grads.gradients[0].float()
    finally:
        if cam is not None:
            cam.activations_and_grads.release()
        tail.clear_grads()


# Per network: the constant Grad-CAM weights of an affine tail (None: the tail is not affine), by stage and
# activation shape. Weak keys, so a network that is let go (a model switch) takes its entry with it. A
# network's weights are not changed after loading (screening only), so the cache never goes stale.
_TAIL_WEIGHTS: weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple[str, tuple[int, ...]], torch.Tensor | None]] = (
    weakref.WeakKeyDictionary())
_TAIL_WEIGHTS_LOCK = threading.Lock()


def _affine_tail_weights(classifier: Classifier, stage: str, shape: tuple[int, ...],
                         lock: AbstractContextManager[object] | None) -> torch.Tensor | None:
    """The tail's Grad-CAM channel weights (C,) when they are the same for every input, else None.

    grad-cam computes them at three random activation tensors of different scales and signs; a tail with any
    active non-linearity (a ReLU, a max pool, a batch norm in training mode) gives weights that differ between
    them, and is explained per batch instead."""
    key = (stage, shape)
    with _TAIL_WEIGHTS_LOCK:
        known = _TAIL_WEIGHTS.setdefault(classifier.net, {})
        if key in known:
            return known[key]
        generator = torch.Generator().manual_seed(0)
        probes = torch.randn((3, *shape), generator=generator) * torch.tensor([0.5, 2.0, 8.0]).view(3, 1, 1, 1)
        probes[1] = probes[1].abs()
        with lock if lock is not None else nullcontext():
            _, grads = _tail_gradcam(classifier, stage, probes)
        channel = grads.mean(dim=(2, 3))  # GradCAM.get_cam_weights: the spatial mean of the gradient
        affine = (torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-7)
                  and torch.allclose(grads[0], grads[2], rtol=1e-4, atol=1e-7))
        known[key] = channel[0].to(classifier.device, torch.float64).contiguous() if affine else None
        return known[key]


def _levels(cam: np.ndarray) -> np.ndarray:
    """A [0, 1] map -> 256 uint8 levels (what the colour map and the blend weight are looked up by)."""
    return cv2.convertScaleAbs(np.clip(cam, 0, 1, dtype=np.float32), alpha=255.0)


def heat_colours(cam: np.ndarray) -> np.ndarray:
    """A [0, 1] map -> RGB uint8 jet colours (OpenCV returns BGR; convert, or red and blue swap)."""
    return _colours(_levels(cam))


# OpenCV's jet colour of each of the 256 levels, as RGB, in a table: looked up, not recomputed per face
_JET = np.ascontiguousarray(cv2.cvtColor(cv2.applyColorMap(np.arange(256, dtype=np.uint8).reshape(1, 256),
                                                           cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB))


def _colours(levels: np.ndarray) -> np.ndarray:
    return np.asarray(cv2.LUT(cv2.merge([levels, levels, levels]), _JET))


@functools.lru_cache(maxsize=8)
def _heat_weights(strength: float) -> np.ndarray:
    """The blend weight of each heat level: `strength * heat ** 0.7`, so warm areas show clearly early."""
    return (strength * (np.arange(256, dtype=np.float64) / 255.0) ** 0.7).astype(np.float32).reshape(1, 256)


def overlay(crop: np.ndarray, cam: np.ndarray, strength: float = 0.6) -> np.ndarray:
    """Blend the heat onto the crop; the blend weight follows the heat, so cold areas show the face."""
    height, width = crop.shape[:2]
    if cam.shape[:2] != (height, width):
        cam = cv2.resize(cam, (width, height), interpolation=cv2.INTER_LINEAR)
    levels = _levels(cam)
    # colour and weight looked up per level (tables of 256) rather than computed per pixel; OpenCV's weighted
    # sum does the blend
    alpha = cv2.LUT(levels, _heat_weights(strength))
    return np.asarray(cv2.blendLinear(_colours(levels), np.ascontiguousarray(crop), alpha, 1.0 - alpha))


def _canvas_size(width: int, height: int, max_side: int) -> tuple[tuple[int, int], float]:
    """(width, height) of an image's overlay canvas, and the scale from the image to it."""
    scale = min(1.0, max_side / max(height, width))
    return (max(1, round(width * scale)), max(1, round(height * scale))), scale


def overlay_canvas(pixels: np.ndarray, max_side: int = 1280) -> np.ndarray:
    """The image as `annotate` draws on it, at most max_side long: what a screening keeps of a large image
    once its faces are cut. The pixels themselves when they are no longer than that."""
    (width, height), scale = _canvas_size(pixels.shape[1], pixels.shape[0], max_side)
    if scale >= 1:
        return pixels
    # bilinear: the cheapest of OpenCV's resizes, and the canvas is only looked at
    return np.asarray(cv2.resize(pixels, (width, height), interpolation=cv2.INTER_LINEAR))


def annotate(
    pixels: np.ndarray,
    faces: Sequence[tuple[Box, str, float]],
    cams: Sequence[np.ndarray | None],
    margin: float,
    max_side: int = 1280,
    image_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """The image (downscaled to max_side) with each explained face's heat painted in place and every box drawn.

    `faces` holds (box, verdict, fake_probability); `cams[i]` is the map of face i's crop or None. `pixels` is
    the image, or its `overlay_canvas` when `image_size` gives the (width, height) of the image the boxes are
    in. Either way the result is the same fresh array.
    """
    width, height = image_size or (pixels.shape[1], pixels.shape[0])
    size, scale = _canvas_size(width, height, max_side)
    if pixels.shape[:2] == (size[1], size[0]):  # the canvas already, or an image no longer than max_side
        canvas = pixels.copy()
    else:
        canvas = overlay_canvas(pixels, max_side)  # a fresh, smaller copy
    for (box, _, _), cam in zip(faces, cams, strict=True):
        if cam is not None:
            _paint(canvas, box, cam, margin, scale)
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    line = max(2, round(max(size) / 400))
    for box, verdict, probability in faces:
        x1, y1, x2, y2 = (v * scale for v in box)
        colour = VERDICT_COLOURS.get(verdict, (255, 255, 255))
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=line)
        label = f"{verdict} {probability:.2f}"
        text_y = max(0.0, y1 - 12 - line)
        draw.rectangle((x1, text_y, x1 + 7 * len(label) + 4, text_y + 12), fill=colour)
        draw.text((x1 + 2, text_y), label, fill=(255, 255, 255))
    return np.asarray(image)


def _paint(canvas: np.ndarray, box: Box, cam: np.ndarray, margin: float, scale: float) -> None:
    """Paint a crop's map back onto the square region of the canvas the crop was cut from."""
    left, top, side = square_region(box, margin)
    left, top, side = round(left * scale), round(top * scale), max(1, round(side * scale))
    heat = cv2.resize(cam, (side, side), interpolation=cv2.INTER_LINEAR)
    height, width = canvas.shape[:2]
    x0, y0 = max(0, left), max(0, top)
    x1, y1 = min(width, left + side), min(height, top + side)
    if x1 <= x0 or y1 <= y0:
        return
    region = canvas[y0:y1, x0:x1]
    part = heat[y0 - top : y1 - top, x0 - left : x1 - left]
    canvas[y0:y1, x0:x1] = overlay(region, part)


def jpeg_bytes(pixels: np.ndarray, quality: int = 90) -> bytes:
    """Heatmaps and crops are stored as JPEG: a 1280 px overlay encodes in ~3 ms and ~100 KB at quality 90,
    against ~80 ms and ~1 MB as PNG (measured on a 1080p example frame), with no visible loss for a heat
    overlay that a moderator looks at."""
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    # level 1: a 1280 px overlay encodes ~5x faster than at the default 6, for files ~30% larger
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=False, compress_level=1)
    return buffer.getvalue()
