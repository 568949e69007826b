"""Augmentations that real uploads go through, drawn once per real/fake pair and applied to both members.

Drawing the parameters once per pair means the only difference left between the two images of a pair is
the manipulation itself: blur, JPEG and noise can never become a class signal.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter


@dataclass(frozen=True)
class AugmentConfig:
    window: int = 160  # output side, native scale: a window of the 224 crop, not a downscale of it
    window_scale: tuple[float, float] = (0.94, 1.25)  # window side / output side (crop jitter and zoom)
    flip: float = 0.5
    color: float = 0.8  # probability of colour jitter
    color_strength: float = 0.2
    blur: float = 0.2
    blur_sigma: tuple[float, float] = (0.4, 1.6)
    downup: float = 0.2
    downup_scale: tuple[float, float] = (0.45, 0.9)
    jpeg: float = 0.5
    jpeg_quality: tuple[int, int] = (40, 100)
    noise: float = 0.15
    noise_sigma: tuple[float, float] = (2.0, 7.0)
    # Extra blur on the REAL member only (its own draw): fakes in the set are blurrier than reals, and a pair
    # augmented identically still lets "blurry means fake" pay. Blurring some reals alone breaks that.
    real_blur: float = 0.0


@dataclass(frozen=True)
class AugmentParams:
    """Everything random about one augmentation, so it can be replayed on the second member of a pair."""

    box: tuple[int, int, int, int]  # left, top, right, bottom in the source crop
    flip: bool
    brightness: float
    contrast: float
    saturation: float
    blur_sigma: float  # 0 = none
    downup_scale: float  # 1 = none
    jpeg_quality: int  # 0 = none
    noise_sigma: float  # 0 = none
    noise_seed: int
    real_blur_sigma: float = 0.0  # extra blur applied to the real member only (0 = none)


def draw_params(rng: np.random.Generator, source_side: int, cfg: AugmentConfig) -> AugmentParams:
    side = int(round(cfg.window * rng.uniform(*cfg.window_scale)))
    side = min(side, source_side)
    left = int(rng.integers(0, source_side - side + 1))
    top = int(rng.integers(0, source_side - side + 1))
    jitter = rng.random() < cfg.color
    strength = cfg.color_strength
    return AugmentParams(
        box=(left, top, left + side, top + side),
        flip=bool(rng.random() < cfg.flip),
        brightness=float(rng.uniform(1 - strength, 1 + strength)) if jitter else 1.0,
        contrast=float(rng.uniform(1 - strength, 1 + strength)) if jitter else 1.0,
        saturation=float(rng.uniform(1 - strength, 1 + strength)) if jitter else 1.0,
        blur_sigma=float(rng.uniform(*cfg.blur_sigma)) if rng.random() < cfg.blur else 0.0,
        downup_scale=float(rng.uniform(*cfg.downup_scale)) if rng.random() < cfg.downup else 1.0,
        jpeg_quality=int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1)) if rng.random() < cfg.jpeg else 0,
        noise_sigma=float(rng.uniform(*cfg.noise_sigma)) if rng.random() < cfg.noise else 0.0,
        noise_seed=int(rng.integers(0, 2**31 - 1)),
        real_blur_sigma=float(rng.uniform(*cfg.blur_sigma)) if cfg.real_blur and rng.random() < cfg.real_blur else 0.0,
    )


def apply_params(pixels: np.ndarray, params: AugmentParams, out_side: int, real: bool = False) -> np.ndarray:
    img = Image.fromarray(pixels).crop(params.box)
    if real and params.real_blur_sigma > 0:
        img = img.filter(ImageFilter.GaussianBlur(params.real_blur_sigma))
    if img.size[0] != out_side:
        img = img.resize((out_side, out_side), Image.Resampling.BICUBIC)
    if params.flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if params.brightness != 1.0:
        img = ImageEnhance.Brightness(img).enhance(params.brightness)
    if params.contrast != 1.0:
        img = ImageEnhance.Contrast(img).enhance(params.contrast)
    if params.saturation != 1.0:
        img = ImageEnhance.Color(img).enhance(params.saturation)
    if params.blur_sigma > 0:
        img = img.filter(ImageFilter.GaussianBlur(params.blur_sigma))
    if params.downup_scale < 1.0:
        small = max(8, int(round(out_side * params.downup_scale)))
        img = img.resize((small, small), Image.Resampling.BILINEAR).resize((out_side, out_side), Image.Resampling.BILINEAR)
    if params.jpeg_quality:
        buffer = io.BytesIO()
        img.save(buffer, format="JPEG", quality=params.jpeg_quality)
        img = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    out = np.asarray(img, dtype=np.uint8)
    if params.noise_sigma > 0:
        noise = np.random.default_rng(params.noise_seed).normal(0.0, params.noise_sigma, out.shape)
        out = np.clip(out.astype(np.float32) + noise, 0, 255).astype(np.uint8)
    return out


def difference_mask(real: np.ndarray, fake: np.ndarray, grid: int, scale: float = 12.0) -> np.ndarray:
    """A soft manipulation mask from a real/fake pair: mean absolute difference pooled to grid x grid.

    `scale` is the per-pixel difference (0..255) that counts as fully manipulated.
    """
    diff = np.abs(real.astype(np.float32) - fake.astype(np.float32)).mean(axis=2)
    side = diff.shape[0] - diff.shape[0] % grid
    pooled = diff[:side, :side].reshape(grid, side // grid, grid, side // grid).mean(axis=(1, 3))
    return np.clip(pooled / scale, 0.0, 1.0).astype(np.float32)
