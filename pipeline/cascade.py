"""MTCNN's three-stage cascade on facenet-pytorch 2.6's networks and stage logic, with every resampling read
from one summed-area table per batch: on CPU the networks see bit-identical inputs and the boxes equal
`MTCNN.detect`'s (tests/test_pipeline_faces.py). It departs from STYLE.md's "use facenet-pytorch" because
`detect_face` takes its resampler from a module global, which only a process-wide patch could replace.
"""

from __future__ import annotations

from types import ModuleType

import numpy as np
import torch
from torchvision.ops.boxes import batched_nms

_NETWORK_BATCH = 512  # candidate crops per RNet/ONet call, as facenet-pytorch runs them


class Integral:
    """Summed-area table of a batch of 8-bit images (N, H, W, C): `table[n, y, x]` is the sum of the pixels
    above and left of (y, x), with a zero first row and column."""

    def __init__(self, images: np.ndarray, device: torch.device | str = "cpu") -> None:
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"expected a uint8 (N, H, W, C) batch, got {images.dtype} {images.shape}")
        count, height, width, channels = images.shape
        dtype = np.int32 if 255 * height * width < 2**31 else np.int64
        table = np.zeros((count, height + 1, width + 1, channels), dtype=dtype)
        inner = table[:, 1:, 1:]
        inner[:, 0] = images[:, 0]
        for row in range(1, height):  # row by row: whole contiguous rows at a time, faster than cumsum(axis=1)
            np.add(inner[:, row - 1], images[:, row], out=inner[:, row])
        np.cumsum(inner, axis=2, out=inner)
        self.height, self.width = height, width
        self.device = torch.device(device)
        self.table = torch.from_numpy(table).to(self.device)

    def resize(self, size: tuple[int, int]) -> torch.Tensor:
        """Every image area-resampled to `size` (height, width): float32 (N, C, h, w), channels-last strides,
        as `F.interpolate(images, size, mode="area")` returns it."""
        top, bottom = _windows(self.height, size[0], self.device)
        left, right = _windows(self.width, size[1], self.device)
        rows = self.table.index_select(1, bottom).sub_(self.table.index_select(1, top))
        sums = rows.index_select(2, right).sub_(rows.index_select(2, left))
        return _means(sums, (bottom - top)[:, None, None], (right - left)[None, :, None]).permute(0, 3, 1, 2)

    def crops(self, image: torch.Tensor, y0: np.ndarray, y1: np.ndarray, x0: np.ndarray, x1: np.ndarray,
              side: int) -> torch.Tensor:
        """Rows y0:y1 and columns x0:x1 of image `image[k]`, for every k, each area-resampled to side x side:
        float32 (K, C, side, side), channels-last strides."""
        image = image.to(self.device, torch.int64)
        top, bottom = _box_windows(self._tensor(y0), self._tensor(y1), side)
        left, right = _box_windows(self._tensor(x0), self._tensor(x1), side)
        stride = self.width + 1
        base = (image * (self.height + 1))[:, None, None]
        flat = self.table.reshape(-1, self.table.shape[-1])

        def corner(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
            index = (base + rows[:, :, None]) * stride + cols[:, None, :]
            return flat.index_select(0, index.reshape(-1)).reshape(*index.shape, -1)

        sums = corner(bottom, right).sub_(corner(top, right)).sub_(corner(bottom, left)).add_(corner(top, left))
        heights = (bottom - top)[:, :, None, None]
        widths = (right - left)[:, None, :, None]
        return _means(sums, heights, widths).permute(0, 3, 1, 2)

    def _tensor(self, values: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(values.astype(np.int64)).to(self.device)


def _windows(size_in: int, size_out: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """torch's adaptive-pooling windows: output i averages input [floor(i*in/out), ceil((i+1)*in/out))."""
    index = torch.arange(size_out, device=device)
    return (index * size_in) // size_out, ((index + 1) * size_in + size_out - 1) // size_out


def _box_windows(start: torch.Tensor, end: torch.Tensor, side: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`_windows` for many spans at once: (K, side) first and past-the-end input indices."""
    length = (end - start)[:, None]
    index = torch.arange(side, device=start.device)[None, :]
    return start[:, None] + (index * length) // side, start[:, None] + ((index + 1) * length + side - 1) // side


def _means(sums: torch.Tensor, heights: torch.Tensor, widths: torch.Tensor) -> torch.Tensor:
    # torch's kernel divides the float32 sum by the window height, then by its width: the same roundings.
    # In place: fresh temporaries of this size cost more in page faults than the arithmetic.
    return sums.to(torch.float32).div_(heights.to(torch.float32)).div_(widths.to(torch.float32))


def _facenet() -> ModuleType:
    """facenet-pytorch's `detect_face` helpers. Imported on first use: the package's import pulls in `requests`
    (its weight downloads), which importing `pipeline` must not (tests/test_layering.py)."""
    from facenet_pytorch.models.utils import detect_face

    return detect_face


def _normalise(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels - 127.5) * 0.0078125


def _run(net: torch.nn.Module, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
    parts = [net(batch[start : start + _NETWORK_BATCH]) for start in range(0, len(batch), _NETWORK_BATCH)]
    return tuple(torch.cat(outputs, dim=0) for outputs in zip(*parts, strict=True))


def _refine(integral: Integral, boxes: torch.Tensor, image_inds: torch.Tensor, net: torch.nn.Module, side: int,
            threshold: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One refinement stage: crop every candidate, score it with `net`, keep those over `threshold`.
    Returns the kept boxes (x1, y1, x2, y2, score), their image indices and their regression offsets."""
    y, ey, x, ex = _facenet().pad(boxes, integral.width, integral.height)
    inside = (ey > y - 1) & (ex > x - 1)
    if not inside.all():
        keep = torch.from_numpy(np.flatnonzero(inside)).to(boxes.device)
        boxes, image_inds = boxes[keep], image_inds[keep]
        y, ey, x, ex = y[inside], ey[inside], x[inside], ex[inside]
    if len(boxes) == 0:
        return boxes, image_inds, boxes.new_zeros((0, 4))
    crops = _normalise(integral.crops(image_inds, y - 1, ey, x - 1, ex, side))
    out = _run(net, crops)
    score = out[-1][:, 1]
    passed = score > threshold
    kept = torch.cat((boxes[passed, :4], score[passed].unsqueeze(1)), dim=1)
    return kept, image_inds[passed], out[0][passed]


def detect(images: np.ndarray, pnet: torch.nn.Module, rnet: torch.nn.Module, onet: torch.nn.Module,
           min_face_size: int, thresholds: tuple[float, float, float], factor: float = 0.709,
           ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Faces in a batch of same-size 8-bit RGB images (N, H, W, 3): per image, boxes (n, 4) as x1, y1, x2, y2
    and their probabilities (n,), most confident first within facenet-pytorch's final NMS order."""
    count, height, width = images.shape[:3]
    scale = 12.0 / min_face_size
    side = min(height, width) * scale
    scales = []
    while side >= 12:
        scales.append(scale)
        scale *= factor
        side *= factor
    if not scales:  # the image is smaller than the smallest face looked for (or PNet's 12 px window)
        return [(np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)) for _ in range(count)]
    facenet = _facenet()
    integral = Integral(np.ascontiguousarray(images), next(pnet.parameters()).device)

    # Stage 1: PNet over the pyramid; NMS within each scale and image, then within each image
    proposals, proposal_inds = [], []
    for scale in scales:
        pixels = _normalise(integral.resize((int(height * scale + 1), int(width * scale + 1))))
        reg, probs = pnet(pixels)
        found, inds = facenet.generateBoundingBox(reg, probs[:, 1], scale, thresholds[0])
        pick = batched_nms(found[:, :4], found[:, 4], inds, 0.5)
        proposals.append(found[pick])
        proposal_inds.append(inds[pick])
    boxes, image_inds = torch.cat(proposals, dim=0), torch.cat(proposal_inds, dim=0)
    pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
    boxes, image_inds = boxes[pick], image_inds[pick]
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    boxes = torch.stack([boxes[:, 0] + boxes[:, 5] * widths, boxes[:, 1] + boxes[:, 6] * heights,
                         boxes[:, 2] + boxes[:, 7] * widths, boxes[:, 3] + boxes[:, 8] * heights,
                         boxes[:, 4]], dim=1)
    boxes = facenet.rerec(boxes)

    # Stage 2: RNet on 24 px crops
    if len(boxes):
        boxes, image_inds, offsets = _refine(integral, boxes, image_inds, rnet, 24, thresholds[1])
        pick = batched_nms(boxes[:, :4], boxes[:, 4], image_inds, 0.7)
        boxes = facenet.rerec(facenet.bbreg(boxes[pick], offsets[pick]))
        image_inds = image_inds[pick]

    # Stage 3: ONet on 48 px crops; final NMS by the smaller box's area
    if len(boxes):
        boxes, image_inds, offsets = _refine(integral, boxes, image_inds, onet, 48, thresholds[2])
        boxes = facenet.bbreg(boxes, offsets)
        pick = facenet.batched_nms_numpy(boxes[:, :4], boxes[:, 4], image_inds, 0.7, "Min")
        boxes, image_inds = boxes[pick], image_inds[pick]

    found = boxes.cpu().numpy()
    owners = image_inds.cpu().numpy()
    return [(found[owners == n, :4], found[owners == n, 4]) for n in range(count)]
