"""bytes -> RGB uint8 image, or InvalidInput(reason).

Every limit is checked on the header, before a pixel is allocated: a 40000x40000 PNG bomb or a JPEG
claiming 65000x65000 is refused from its first few hundred bytes.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from pipeline.errors import InvalidInput

# Never decode a truncated file into a half-grey image: it must be refused as `truncated`.
ImageFile.LOAD_TRUNCATED_IMAGES = False

OUT_OF_MEMORY = "out_of_memory"

# Formats a platform upload may legitimately be. Everything else (SVG, HTML, PDF, PSD...) is refused.
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP", "MPO"})


@dataclass(frozen=True)
class DecodeLimits:
    max_bytes: int = 40 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_side: int = 16_384
    min_side: int = 1


@dataclass(frozen=True)
class DecodedImage:
    pixels: np.ndarray  # H x W x 3, uint8, RGB, EXIF orientation applied
    format: str
    original_mode: str

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])


_TEXT_PREFIXES = (b"<?xml", b"<svg", b"<!doctype", b"<html", b"<head", b"<body", b"{", b"[", b"%pdf")
_IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"II*\x00", b"MM\x00*", b"BM")


def _sniff_text(data: bytes) -> str | None:
    """Name the text format posing as an image; None for anything that starts like an image file."""
    if data.startswith(_IMAGE_SIGNATURES) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
        return None  # text inside an image's metadata must not dodge screening
    head = data[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(_TEXT_PREFIXES) or b"<svg" in head:
        return "svg" if b"<svg" in data[:4096].lower() else "text"
    return None


def decode_image(data: bytes, limits: DecodeLimits = DecodeLimits()) -> DecodedImage:
    """Decode untrusted bytes into RGB pixels. Raises InvalidInput and nothing else."""
    try:
        return _decode(data, limits)
    except InvalidInput:
        raise
    except MemoryError:
        # the machine's state, not the image's: callers retry this reason rather than record it
        raise InvalidInput(OUT_OF_MEMORY, "decoder ran out of memory") from None
    except Exception as exc:  # noqa: BLE001 - untrusted input: any decoder failure is a typed refusal
        raise InvalidInput("corrupt", f"{type(exc).__name__}: {exc}"[:200]) from None


def _decode(data: bytes, limits: DecodeLimits) -> DecodedImage:
    if not data:
        raise InvalidInput("empty", "zero bytes")
    if len(data) > limits.max_bytes:
        raise InvalidInput("too_many_bytes", f"{len(data)} > {limits.max_bytes}")
    kind = _sniff_text(data)
    if kind is not None:
        raise InvalidInput("not_an_image", f"looks like {kind}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise InvalidInput("too_many_pixels", str(exc)[:200]) from None
        except UnidentifiedImageError:
            raise InvalidInput("not_an_image", "unrecognised format") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise InvalidInput("truncated" if _is_truncation(exc) else "corrupt", str(exc)[:200]) from None
        with img:
            return _to_rgb(img, limits)


def _check_header(img: Image.Image, limits: DecodeLimits) -> None:
    if img.format not in ALLOWED_FORMATS:
        raise InvalidInput("unsupported_format", str(img.format))
    width, height = img.size
    if width < limits.min_side or height < limits.min_side:
        raise InvalidInput("too_small", f"{width}x{height}")
    if width > limits.max_side or height > limits.max_side or width * height > limits.max_pixels:
        raise InvalidInput("too_many_pixels", f"{width}x{height} > {limits.max_pixels} pixels")


def _is_truncation(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(word in text for word in ("truncat", "premature", "end of file", "unexpected end", "broken data"))


def _to_rgb(img: Image.Image, limits: DecodeLimits) -> DecodedImage:
    _check_header(img, limits)
    fmt = str(img.format)
    if getattr(img, "is_animated", False):
        img.seek(0)  # animated GIF/WebP/APNG: screen the first frame
    try:
        img.load()
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidInput("truncated" if _is_truncation(exc) else "corrupt", str(exc)[:200]) from None
    mode = img.mode
    ImageOps.exif_transpose(img, in_place=True)  # in place: without a rotation, the default returns a copy
    rgb = _convert_mode(img)
    pixels = np.asarray(rgb, dtype=np.uint8)
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise InvalidInput("corrupt", f"unexpected pixel shape {pixels.shape}")
    return DecodedImage(pixels=np.ascontiguousarray(pixels), format=fmt, original_mode=mode)


def _convert_mode(img: Image.Image) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16/32-bit greyscale: scale the real range to 0..255; PIL's plain convert would clip to white.
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if mode.startswith("I;16") or arr.max() <= 65535 else float(arr.max())
        grey = np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        scaled = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        return Image.fromarray(np.nan_to_num(scaled).astype(np.uint8), "L").convert("RGB")
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Flatten transparency onto white, the way a browser shows an upload on a light page.
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    # CMYK (Adobe-inverted JPEGs included), YCbCr, LAB, L, 1, P: PIL's converters are correct for these.
    return img.convert("RGB")
