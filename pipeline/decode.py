"""bytes -> RGB uint8 image, or InvalidInput(reason).

Every limit is checked before a pixel is allocated: the container's structure is walked first (JPEG scans,
markers, chunks, blocks, strip tables: pipeline/containers.py), then the header's size and the memory its
mode will take. A 40000x40000 PNG bomb, a JPEG claiming 65000x65000 or one made of 5,000 empty scans is
refused from its bytes in milliseconds. With `DecodeLimits.isolated`, the decode itself runs in a separate
process whose CPU time, wall time and address space are capped (pipeline/isolation.py), so an unknown bomb
costs a bounded amount and ends as a typed refusal.
"""

from __future__ import annotations

import io
import struct
import threading
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

from pipeline.containers import Structure, sniff_container, walk
from pipeline.errors import InvalidInput
from pipeline.pixels import bytes_per_pixel, orient, orientation, rgb_pixels

# Never decode a truncated file into a half-grey image: it must be refused as `truncated`.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# Pillow warns once per malformed tag or chunk, and a crafted file carries thousands of them: the image
# still gets its typed result, the warnings would only flood stderr. (The isolated decoder counts them.)
warnings.filterwarnings("ignore", module=r"PIL\.")

# Called with an image's pixel count once its size is known, before its RGB pixels are allocated; it may wait
# for other images to be let go (pipeline/screen.py budgets the pixels a process holds).
Reserve = Callable[[int], None]

OUT_OF_MEMORY = "out_of_memory"
TOO_MUCH_MEMORY = "too_much_memory"
# What a decoder (Pillow, its C codecs, numpy) raises on a bad file. Anything else, such as a task's time-limit
# exception raised into the decode by a signal handler, is not the image's fault and must reach the caller.
_DECODER_FAILURES = (
    ArithmeticError,
    AssertionError,
    AttributeError,
    BufferError,
    EOFError,
    LookupError,
    OSError,
    RuntimeError,
    SyntaxError,
    TypeError,
    ValueError,
    struct.error,
    Image.DecompressionBombError,
)

# Formats a platform upload may legitimately be. Everything else (SVG, HTML, PDF, PSD...) is refused.
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP", "MPO"})


@dataclass(frozen=True)
class DecodeLimits:
    max_bytes: int = 40 * 1024 * 1024
    max_pixels: int = 40_000_000
    max_side: int = 16_384
    min_side: int = 1
    max_jpeg_scans: int = 100  # encoders write 1-10 scans (progressive); each scan re-walks every block
    max_segments: int = 100_000  # JPEG markers, PNG chunks, GIF extension blocks, TIFF strips, WebP chunks
    # what one decode may hold: the decoded image at its mode's bytes per pixel, the decoder's own working
    # memory and the RGB result (3 bytes a pixel); estimated from the header and refused beyond
    max_decode_bytes: int = 1024 * 1024 * 1024
    # decode in a separate process (pipeline/isolation.py) with these caps; in-process decoding cannot stop
    # a decoder that is inside C code
    isolated: bool = False
    cpu_seconds: float = 3.0
    wall_seconds: float = 30.0


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


def _sniff_text(data: bytes) -> str | None:
    """Name the text format posing as an image; None for anything that starts like an image file."""
    if sniff_container(data) is not None:
        return None  # text inside an image's metadata must not dodge screening
    head = data[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(_TEXT_PREFIXES) or b"<svg" in head:
        return "svg" if b"<svg" in data[:4096].lower() else "text"
    return None


def decode_image(
    data: bytes, limits: DecodeLimits = DecodeLimits(), reserve: Reserve | None = None
) -> DecodedImage:
    """Decode untrusted bytes into RGB pixels. Raises InvalidInput and nothing else; `reserve` (see Reserve) is
    called at most once, and only for an image whose pixels are then allocated or refused."""
    ahead = _take_ahead(data, limits)
    if ahead is not None:
        if isinstance(ahead, InvalidInput):
            raise ahead
        if reserve is not None:
            reserve(ahead.width * ahead.height)
        return ahead
    if limits.isolated:
        from pipeline.isolation import shared_decoder

        return shared_decoder(limits).decode(data, reserve)
    return decode_in_process(data, limits, reserve)


def decode_in_process(data: bytes, limits: DecodeLimits, reserve: Reserve | None = None) -> DecodedImage:
    """`decode_image` in this process: every structural and memory limit, but no CPU or wall-time cap."""
    try:
        return _decode(data, limits, reserve)
    except InvalidInput:
        raise
    except MemoryError:
        # the machine's state, not the image's: callers retry this reason rather than record it
        raise InvalidInput(OUT_OF_MEMORY, "decoder ran out of memory") from None
    except _DECODER_FAILURES as exc:  # untrusted input: any decoder failure is a typed refusal
        raise InvalidInput("corrupt", f"{type(exc).__name__}: {exc}"[:200]) from None


# -- decoding ahead of a lock --------------------------------------------------------------------------------
_ahead: dict[int, tuple[bytes, DecodeLimits, DecodedImage | InvalidInput]] = {}
_ahead_lock = threading.Lock()


@contextmanager
def decoded_ahead(data: bytes, limits: DecodeLimits) -> Iterator[DecodedImage | InvalidInput]:
    """Decode `data` now, so that a caller who screens under a lock decodes outside it: inside the block,
    the first `decode_image` of equal bytes and limits takes this result instead of decoding again. What
    nothing took is dropped when the block ends."""
    try:
        result: DecodedImage | InvalidInput = decode_image(data, limits)
    except InvalidInput as exc:
        result = exc
    token = id(result)
    with _ahead_lock:
        _ahead[token] = (data, limits, result)
    try:
        yield result
    finally:
        with _ahead_lock:
            _ahead.pop(token, None)


def _take_ahead(data: bytes, limits: DecodeLimits) -> DecodedImage | InvalidInput | None:
    if not _ahead:  # the screening path when nobody decoded ahead: no lock, no comparison
        return None
    with _ahead_lock:
        for token, (held, held_limits, result) in _ahead.items():
            if held_limits == limits and len(held) == len(data) and held == data:
                del _ahead[token]
                return result
    return None


def _decode(data: bytes, limits: DecodeLimits, reserve: Reserve | None) -> DecodedImage:
    if not data:
        raise InvalidInput("empty", "zero bytes")
    if len(data) > limits.max_bytes:
        raise InvalidInput("too_many_bytes", f"{len(data)} > {limits.max_bytes}")
    container = sniff_container(data)
    structure = walk(data, container, limits.max_segments, limits.max_jpeg_scans) if container else None
    if structure is None:
        kind = _sniff_text(data)
        if kind is not None:
            raise InvalidInput("not_an_image", f"looks like {kind}")
    img = _open(data, structure)
    with img:
        return _to_rgb(img, limits, structure, reserve)


def _open(data: bytes, structure: Structure | None) -> Image.Image:
    """Pillow's header parse. A file whose structure was recognised is opened by its own plugin only, and
    that plugin's refusal is `corrupt` (a malformed APNG is a broken PNG, not an unknown format)."""
    formats = [structure.container] if structure is not None else None
    try:
        return Image.open(io.BytesIO(data), formats=formats)
    except Image.DecompressionBombError as exc:
        raise InvalidInput("too_many_pixels", str(exc)[:200]) from None
    except UnidentifiedImageError:
        if structure is None:
            raise InvalidInput("not_an_image", "unrecognised format") from None
        raise InvalidInput("corrupt", _plugin_refusal(data, structure.container)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidInput("truncated" if _is_truncation(exc) else "corrupt", str(exc)[:200]) from None


def _plugin_refusal(data: bytes, container: str) -> str:
    """Why the format's plugin refused the file (Image.open keeps only 'cannot identify')."""
    factory = Image.OPEN[container][0]
    try:
        factory(io.BytesIO(data), "").close()
    except _DECODER_FAILURES as exc:  # the refusal is the answer
        return f"{container}: {type(exc).__name__}: {exc}"[:200]
    return f"{container}: unidentified"


def _check_header(img: Image.Image, limits: DecodeLimits) -> None:
    if img.format not in ALLOWED_FORMATS:
        raise InvalidInput("unsupported_format", str(img.format))
    width, height = img.size
    if width < limits.min_side or height < limits.min_side:
        raise InvalidInput("too_small", f"{width}x{height}")
    if width > limits.max_side or height > limits.max_side or width * height > limits.max_pixels:
        raise InvalidInput("too_many_pixels", f"{width}x{height} > {limits.max_pixels} pixels")


def decode_memory(img: Image.Image, structure: Structure | None) -> int:
    """Bytes one decode holds at its peak: the decoded image at its mode's bytes per pixel, the decoder's
    working memory (a progressive JPEG's coefficients, a WebP animation's canvases) and the RGB result."""
    width, height = img.size
    work = structure.work_bytes_per_pixel if structure is not None else 0.0
    return int(width * height * (bytes_per_pixel(img.mode) + work + 3))


def _is_truncation(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(
        word in text for word in ("truncat", "premature", "end of file", "unexpected end", "broken data")
    )


def _to_rgb(
    img: Image.Image, limits: DecodeLimits, structure: Structure | None, reserve: Reserve | None
) -> DecodedImage:
    _check_header(img, limits)
    needed = decode_memory(img, structure)
    if needed > limits.max_decode_bytes:
        raise InvalidInput(
            TOO_MUCH_MEMORY,
            f"{img.size[0]}x{img.size[1]} {img.mode}: about {needed >> 20} MB "
            f"> {limits.max_decode_bytes >> 20} MB",
        )
    fmt, mode = str(img.format), img.mode
    if reserve is not None:
        reserve(img.size[0] * img.size[1])
    try:
        img.load()  # an animated file's first frame: the current one after open
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidInput("truncated" if _is_truncation(exc) else "corrupt", str(exc)[:200]) from None
    turn = orientation(img)
    pixels = rgb_pixels(img)
    img.close()  # the decoded image goes before a turned copy is made
    pixels = orient(pixels, turn)
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise InvalidInput("corrupt", f"unexpected pixel shape {pixels.shape}")
    return DecodedImage(pixels=np.ascontiguousarray(pixels), format=fmt, original_mode=mode)
