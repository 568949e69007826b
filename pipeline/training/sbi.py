"""Self-blended fakes (after Shiohara & Yamasaki, CVPR 2022): a real face blended with a transformed copy
of itself through a soft mask, so the network learns blending boundaries, not one generator's fingerprint.

The paper takes the mask from 81 dlib landmarks. The dataset crops here are tight (eyebrows to chin) and
centred, so this version draws a jittered ellipse over the inner face instead: an approximation.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter


def face_mask(rng: np.random.Generator, side: int) -> np.ndarray:
    """A soft elliptical mask over the inner face, with random centre, axes, rotation and feathering."""
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side
    cx, cy = rng.uniform(0.44, 0.56), rng.uniform(0.48, 0.60)
    ax, ay = rng.uniform(0.26, 0.40), rng.uniform(0.30, 0.45)
    theta = rng.uniform(-0.25, 0.25)
    dx, dy = xx - cx, yy - cy
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    hard = ((u / ax) ** 2 + (v / ay) ** 2 <= 1.0).astype(np.uint8) * 255
    feather = rng.uniform(0.02, 0.08) * side
    soft = Image.fromarray(hard).filter(ImageFilter.GaussianBlur(feather))
    mask = np.asarray(soft, dtype=np.float32) / 255.0
    return mask * rng.uniform(0.6, 1.0) if rng.random() < 0.3 else mask


def self_blend(pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blend a colour/geometry-shifted copy of a real face into itself."""
    side = pixels.shape[0]
    img = Image.fromarray(pixels)
    source = ImageEnhance.Color(img).enhance(rng.uniform(0.8, 1.2))
    source = ImageEnhance.Brightness(source).enhance(rng.uniform(0.85, 1.15))
    source = ImageEnhance.Contrast(source).enhance(rng.uniform(0.85, 1.15))
    if rng.random() < 0.5:
        source = source.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2)))
    else:
        source = source.filter(ImageFilter.UnsharpMask(radius=2, percent=int(rng.integers(40, 120))))
    scale = rng.uniform(0.95, 1.05)
    shift = rng.uniform(-0.03, 0.03, size=2) * side
    scaled_side = max(2, int(round(side * scale)))
    source = source.resize((scaled_side, scaled_side), Image.Resampling.BILINEAR)
    canvas = Image.fromarray(pixels.copy())
    offset = (int(round((side - scaled_side) / 2 + shift[0])), int(round((side - scaled_side) / 2 + shift[1])))
    canvas.paste(source, offset)
    moved = np.asarray(canvas, dtype=np.float32)
    mask = face_mask(rng, side)[..., None]
    blended = moved * mask + pixels.astype(np.float32) * (1.0 - mask)
    return np.clip(blended, 0, 255).astype(np.uint8)
