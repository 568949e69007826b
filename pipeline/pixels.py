"""A loaded Pillow image -> H x W x 3 uint8 RGB, strip by strip, and its EXIF orientation.

Conversions run over strips of a few megabytes written into one preallocated result, so a 40-megapixel
16-bit, float or RGBA image costs its decoded size plus the 3-byte result, never full-size float64 copies
(those peaked at 0.8-1.3 GB). The orientation is read from the EXIF block's first directory only, without
Pillow's EXIF parser, which walks (and warns about) every one of thousands of crafted tags.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterator

import numpy as np
from PIL import Image

_STRIP_BYTES = 8 << 20
_ONE_BYTE_MODES = frozenset({"1", "L", "P"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_XMP_ORIENTATION = re.compile(rb'tiff:Orientation(?:="|>)([1-8])')
_ORIENTATION_TAG = 0x0112


def bytes_per_pixel(mode: str) -> int:
    """What Pillow stores a decoded pixel of `mode` in: one byte for 1/L/P, two for 16-bit grey, four for
    everything else (RGB included, kept as RGBX)."""
    if mode in _ONE_BYTE_MODES:
        return 1
    return 2 if mode in _SIXTEEN_BIT_MODES else 4


# -- orientation ---------------------------------------------------------------------------------------------
def orientation(img: Image.Image) -> int:
    """The EXIF orientation (1-8), from the EXIF block, a TIFF's own first directory, or XMP; 1 if none."""
    tags = getattr(img, "tag_v2", None)
    if tags is not None:  # a TIFF: its first directory is the EXIF directory, already parsed
        value = tags.get(_ORIENTATION_TAG)
        return value if isinstance(value, int) and 1 <= value <= 8 else 1
    exif = img.info.get("exif")
    if exif is None and "Raw profile type exif" in img.info:  # ImageMagick's PNG text chunk: hex digits
        exif = _raw_profile(img.info["Raw profile type exif"])
    if isinstance(exif, bytes):
        value = exif_orientation(exif)
        if value:
            return value
    for key in ("xmp", "XML:com.adobe.xmp"):
        xmp = img.info.get(key)
        if isinstance(xmp, str):
            xmp = xmp.encode("utf-8", "replace")
        if isinstance(xmp, bytes):
            match = _XMP_ORIENTATION.search(xmp)
            if match:
                return int(match[1])
    return 1


def exif_orientation(exif: bytes) -> int | None:
    """The Orientation entry of the first image directory of an EXIF (TIFF-structured) block; None if the
    block has none. Bounded by the directory's entry count (at most 65,535), and silent on any damage."""
    if exif.startswith(b"Exif\x00\x00"):
        exif = exif[6:]
    order = {b"II": "<", b"MM": ">"}.get(exif[:2])
    if order is None or len(exif) < 8:
        return None
    (directory,) = struct.unpack_from(order + "I", exif, 4)
    if directory + 2 > len(exif):
        return None
    (count,) = struct.unpack_from(order + "H", exif, directory)
    for index in range(min(count, (len(exif) - directory - 2) // 12)):
        at = directory + 2 + 12 * index
        tag, kind = struct.unpack_from(order + "HH", exif, at)
        if tag != _ORIENTATION_TAG:
            continue
        if kind == 3:  # SHORT
            value = struct.unpack_from(order + "H", exif, at + 8)[0]
        elif kind == 4:  # LONG
            value = struct.unpack_from(order + "I", exif, at + 8)[0]
        else:
            return None
        return value if 1 <= value <= 8 else None
    return None


def _raw_profile(text: object) -> bytes | None:
    if not isinstance(text, str):
        return None
    try:
        return bytes.fromhex("".join(text.split("\n")[3:]))
    except ValueError:
        return None


# Pillow's exif_transpose methods, as views of an H x W x C array
_ORIENT: dict[int, Callable[[np.ndarray], np.ndarray]] = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: a.transpose(1, 0, 2)[:, ::-1],
    7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
    8: lambda a: a.transpose(1, 0, 2)[::-1],
}


def orient(pixels: np.ndarray, turn: int) -> np.ndarray:
    """The pixels as displayed: a view for orientation 1, one contiguous copy otherwise."""
    view = _ORIENT.get(turn)
    return pixels if view is None else np.ascontiguousarray(view(pixels))


# -- modes -> RGB --------------------------------------------------------------------------------------------
def rgb_pixels(img: Image.Image) -> np.ndarray:
    """H x W x 3 uint8 RGB of a loaded image, converted strip by strip into one result array."""
    width, height = img.size
    out = np.empty((height, width, 3), np.uint8)
    mode = img.mode
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        _grey_integers(img, out)
    elif mode == "F":
        _grey_floats(img, out)
    elif mode in _ALPHA_MODES or (mode == "P" and "transparency" in img.info):
        for top, strip in _strips(img):
            out[top : top + strip.height] = _on_white(np.asarray(strip.convert("RGBA")))
    else:
        # RGB as it is; CMYK (Adobe-inverted JPEGs included), YCbCr, LAB, L, 1, P: Pillow's converters
        for top, strip in _strips(img):
            out[top : top + strip.height] = np.asarray(strip if strip.mode == "RGB" else strip.convert("RGB"))
    return out


def _strips(img: Image.Image) -> Iterator[tuple[int, Image.Image]]:
    width, height = img.size
    rows = max(1, _STRIP_BYTES // max(1, width * 4))
    for top in range(0, height, rows):
        yield top, img.crop((0, top, width, min(height, top + rows)))


def _on_white(rgba: np.ndarray) -> np.ndarray:
    """Flatten transparency onto white, the way a browser shows an upload on a light page."""
    alpha = rgba[..., 3:4].astype(np.uint16)
    blended = rgba[..., :3].astype(np.uint16) * alpha + 255 * (255 - alpha)
    return ((blended + 127) // 255).astype(np.uint8)


def _grey_integers(img: Image.Image, out: np.ndarray) -> None:
    """16/32-bit greyscale scaled from its real range to 0..255 (PIL's plain convert would clip to white):
    16-bit by 65535, 32-bit by 65535 or its maximum when that is higher."""
    top = 65535
    if img.mode == "I":
        top = max(top, max((int(np.asarray(strip).max()) for _, strip in _strips(img)), default=0))
    for row, strip in _strips(img):
        values = np.clip(np.asarray(strip).astype(np.int64), 0, None)
        out[row : row + strip.height] = ((values * 255) // top).astype(np.uint8)[..., None]


def _grey_floats(img: Image.Image, out: np.ndarray) -> None:
    """Float greyscale stretched from its finite minimum to its maximum; NaN is black."""
    low, high = np.inf, -np.inf
    for _, strip in _strips(img):
        values = np.asarray(strip)
        finite = values[np.isfinite(values)]
        if finite.size:
            low, high = min(low, float(finite.min())), max(high, float(finite.max()))
    scale = 255.0 / (high - low) if high > low else 0.0
    for row, strip in _strips(img):
        values = np.asarray(strip, dtype=np.float32)
        scaled = np.nan_to_num(
            (values - np.float32(low if np.isfinite(low) else 0.0)) * np.float32(scale),
            nan=0.0,
            posinf=255.0,
            neginf=0.0,
        )
        out[row : row + strip.height] = np.clip(scaled, 0, 255).astype(np.uint8)[..., None]


# -- shrinking -----------------------------------------------------------------------------------------------
def area_downscale(pixels: np.ndarray, max_side: int) -> np.ndarray:
    """`pixels` when its long side is at most `max_side`, else an area-averaged copy that long. OpenCV reads
    the uint8 array where it is; a Pillow resize first copied it into a 4-byte-per-pixel image (144 MB more
    for 36 megapixels), and took half as long again on a 1080p frame."""
    import cv2  # here, not at the top: the decode processes import this module and never shrink

    height, width = pixels.shape[:2]
    long_side = max(height, width)
    if long_side <= max_side:
        return pixels
    scale = max_side / long_side
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(cv2.resize(pixels, size, interpolation=cv2.INTER_AREA))
