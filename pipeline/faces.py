"""Face detection (MTCNN, batched, on downscaled copies) and crop cutting from the full-resolution image."""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from pipeline import cascade
from pipeline.pixels import area_downscale

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Face:
    """A detected face, in full-resolution pixel coordinates."""

    box: Box  # x1, y1, x2, y2
    detection_probability: float


@dataclass(frozen=True)
class DetectorConfig:
    max_side: int = 720  # detect on a copy whose long side is at most this (DETECT_MAX_SIDE in docs/configuration.md)
    min_face_size: int = 20  # in pixels of the downscaled copy
    min_probability: float = 0.90
    max_faces: int = 20  # per image; the most confident are kept
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)
    batch_size: int = 16  # images per MTCNN call within one size bucket


def downscale(pixels: np.ndarray, max_side: int) -> tuple[np.ndarray, float]:
    """A copy whose long side is at most max_side, and the factor that maps its coordinates back."""
    long_side = max(pixels.shape[:2])
    if long_side <= max_side:
        return pixels, 1.0
    # area averaging from the array itself; against Pillow's bilinear on the 40 example frames: the same 48
    # faces, boxes 0.65 px apart at the median, detection probabilities within 0.011
    return area_downscale(pixels, max_side), long_side / max_side


class FaceDetector:
    """facenet-pytorch's MTCNN networks over a batch of images, run by `pipeline.cascade` (facenet-pytorch's
    boxes, with its resampling read from one integral image). Images of the same downscaled size share a call."""

    def __init__(self, config: DetectorConfig = DetectorConfig(), device: str | torch.device = "cpu") -> None:
        from facenet_pytorch import MTCNN  # heavy import kept off module import

        self.config = config
        self.device = torch.device(device)
        self._mtcnn = MTCNN(
            keep_all=True,
            select_largest=False,
            post_process=False,
            min_face_size=config.min_face_size,
            thresholds=list(config.thresholds),
            device=self.device,
        )
        if self.device.type == "cpu":
            # Channels-last convolutions hand their max-pools channels-last tensors, which torch pools with
            # vector instructions; in torch's default layout they pool one element at a time. The boxes are
            # the same either way.
            for net in (self._mtcnn.pnet, self._mtcnn.rnet, self._mtcnn.onet):
                net.to(memory_format=torch.channels_last)

    def detect(self, images: list[np.ndarray]) -> list[list[Face]]:
        """Every face in every image, most confident first, boxes in full-resolution coordinates."""
        results: list[list[Face]] = [[] for _ in images]
        buckets: dict[tuple[int, int], list[tuple[int, np.ndarray, float]]] = defaultdict(list)
        for index, pixels in enumerate(images):
            small, factor = downscale(pixels, self.config.max_side)
            buckets[small.shape[:2]].append((index, small, factor))
        step = max(1, self.config.batch_size)
        for members in buckets.values():
            for start in range(0, len(members), step):
                chunk = members[start : start + step]
                self._detect_chunk(chunk, images, results)
        return results

    def _detect_chunk(
        self,
        chunk: list[tuple[int, np.ndarray, float]],
        images: list[np.ndarray],
        results: list[list[Face]],
    ) -> None:
        smalls = [small for _, small, _ in chunk]
        mtcnn = self._mtcnn
        with torch.inference_mode():
            found = cascade.detect(np.stack(smalls), mtcnn.pnet, mtcnn.rnet, mtcnn.onet, mtcnn.min_face_size,
                                   self.config.thresholds, mtcnn.factor)
        for (index, _, factor), (boxes, probs) in zip(chunk, found, strict=True):
            results[index] = self._faces(boxes, probs, factor, images[index].shape)

    def _faces(self, boxes: np.ndarray, probs: np.ndarray, factor: float, shape: tuple[int, ...]) -> list[Face]:
        height, width = shape[:2]
        faces = []
        for box, prob in zip(boxes, probs, strict=True):
            if float(prob) < self.config.min_probability:
                continue
            x1, y1, x2, y2 = (float(v) * factor for v in box)
            x1, y1 = max(0.0, x1), max(0.0, y1)
            x2, y2 = min(float(width), x2), min(float(height), y2)
            if x2 - x1 < 2 or y2 - y1 < 2:
                continue
            faces.append(Face(box=(x1, y1, x2, y2), detection_probability=float(prob)))
        faces.sort(key=lambda f: -f.detection_probability)
        return faces[: self.config.max_faces]


def square_region(box: Box, margin: float) -> tuple[float, float, float]:
    """(left, top, side) of the square a face crop is cut from: the box's long side plus `margin` per side."""
    x1, y1, x2, y2 = box
    side = max(max(x2 - x1, y2 - y1) * (1.0 + 2.0 * margin), 2.0)
    return (x1 + x2) / 2.0 - side / 2.0, (y1 + y2) / 2.0 - side / 2.0, side


def crop_face(pixels: np.ndarray, box: Box, margin: float, size: int) -> np.ndarray:
    """Cut a square crop around a face box from the full-resolution image and resize it to size x size.

    `margin` is added on each side as a fraction of the box's longer side (negative tightens). Parts of the
    square that fall outside the image are filled by edge replication, so a face at the border keeps its
    scale instead of being stretched.
    """
    fleft, ftop, fside = square_region(box, margin)
    left, top = int(round(fleft)), int(round(ftop))
    right, bottom = left + int(round(fside)), top + int(round(fside))
    height, width = pixels.shape[:2]
    pad_l, pad_t = max(0, -left), max(0, -top)
    pad_r, pad_b = max(0, right - width), max(0, bottom - height)
    region = pixels[max(0, top) : min(height, bottom), max(0, left) : min(width, right)]
    if pad_l or pad_t or pad_r or pad_b:
        region = np.pad(region, ((pad_t, pad_b), (pad_l, pad_r), (0, 0)), mode="edge")
    return resize_square(region, size)


def resize_square(pixels: np.ndarray, size: int) -> np.ndarray:
    """Resize an RGB crop to size x size (area-averaging when shrinking, bicubic when enlarging)."""
    if pixels.shape[0] == size and pixels.shape[1] == size:
        return np.ascontiguousarray(pixels)
    shrinking = pixels.shape[0] > size
    method = Image.Resampling.BOX if shrinking else Image.Resampling.BICUBIC
    return np.asarray(Image.fromarray(np.ascontiguousarray(pixels)).resize((size, size), method))
