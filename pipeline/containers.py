"""What an image file's container promises, read from its structure before any decoder runs.

A cheap header can promise expensive work: every progressive JPEG scan re-walks every block of the image,
and Pillow parses each JPEG marker, PNG chunk, GIF extension block and TIFF strip entry in Python, so a few
megabytes of empty ones cost seconds and hundreds of megabytes. These walks skip from one length-prefixed
unit to the next (and search entropy-coded data with `re`), stop at the first limit crossed, and never
judge what they cannot parse: a broken structure is left to the decoder, which says `truncated` or
`corrupt`.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from pipeline.errors import InvalidInput

TOO_MANY_SCANS = "too_many_scans"
TOO_MANY_SEGMENTS = "too_many_segments"

# After a JPEG scan's header comes entropy-coded data, where 0xFF is followed by a stuffed 0x00 or a restart
# marker; any other byte after 0xFF starts the next segment (a run of 0xFF is fill: its last one counts).
# Both patterns are linear: no repetition is followed by anything that could make them backtrack.
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_FILL = re.compile(rb"\xff+")
_JPEG_STANDALONE = frozenset({0x01, *range(0xD0, 0xD8)})
_JPEG_PROGRESSIVE_FRAMES = frozenset({0xC2, 0xC6, 0xCA, 0xCE})
_JPEG_FRAMES = frozenset({*range(0xC0, 0xC4), *range(0xC5, 0xC8), *range(0xC9, 0xCC), *range(0xCD, 0xD0)})
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Structure:
    """What the walk learned: the container, whether it looks like one, and what the decoder will hold."""

    container: str  # JPEG, PNG, GIF, TIFF, WEBP, BMP
    segments: int = 0
    scans: int = 0
    # bytes a pixel of working memory the decoder keeps beside the decoded image (a progressive or
    # multi-scan JPEG keeps every DCT coefficient: 2 bytes per sample)
    work_bytes_per_pixel: float = 0.0


def sniff_container(data: bytes) -> str | None:
    """The allowed container `data` starts like, by its signature; None for anything else."""
    if data.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if data.startswith(_PNG_SIGNATURE):
        return "PNG"
    if data.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if data.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return "TIFF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    if data.startswith(b"BM"):
        return "BMP"
    return None


def walk(data: bytes, container: str, max_segments: int, max_jpeg_scans: int) -> Structure | None:
    """Walk `data` as `container`. None when its first structural unit does not parse (the signature was a
    coincidence: plain text that starts with 'BM', say); InvalidInput when a limit is crossed."""
    walker = _WALKERS[container]
    return walker(data, max_segments, max_jpeg_scans)


def _over(count: int, limit: int, what: str) -> None:
    if count > limit:
        raise InvalidInput(TOO_MANY_SEGMENTS, f"more than {limit} {what}")


# -- JPEG ----------------------------------------------------------------------------------------------------
def _walk_jpeg(data: bytes, max_segments: int, max_scans: int) -> Structure | None:
    """Markers up to EOI, and the bytes Pillow and libjpeg step over one at a time: fill bytes before a
    marker, junk between segments, runs of 0xFF inside entropy-coded data. Both count as units."""
    pos, units, segments, scans, end = 2, 0, 0, 0, len(data)
    frame: tuple[int, bytes] | None = None
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            if segments == 0:
                return None
            found_ff = data.find(b"\xff", pos)
            if found_ff < 0:
                break
            units += found_ff - pos
            pos = found_ff
        fill = _FILL.match(data, pos)
        if fill is not None:
            units += fill.end() - 1 - pos
            pos = fill.end() - 1  # the last of any fill bytes
        if pos + 1 >= end:
            break
        marker = data[pos + 1]
        if segments == 0 and marker < 0xC0:
            return None  # "\xff\xd8\xff" followed by text
        segments += 1
        _over(units + segments, max_segments, "JPEG markers and skipped bytes")
        pos += 2
        if marker == 0xD9:
            break  # EOI: an MPO's further images are never decoded
        if marker in _JPEG_STANDALONE:
            continue
        if pos + 2 > end:
            break
        (length,) = struct.unpack_from(">H", data, pos)
        if length < 2:
            break
        if marker in _JPEG_FRAMES and frame is None:
            frame = (marker, data[pos + 2 : pos + length])
        if marker != 0xDA:
            pos += length
            continue
        scans += 1
        if scans > max_scans:
            raise InvalidInput(TOO_MANY_SCANS, f"more than {max_scans} scans")
        found = _NEXT_MARKER.search(data, pos + length)
        stop = found.start() if found is not None else end
        units += data.count(b"\xff\xff", pos + length, stop)  # 0xFF runs: fill, or junk a decoder steps over
        _over(units + segments, max_segments, "JPEG markers and skipped bytes")
        if found is None:
            break
        pos = stop
    return Structure("JPEG", units + segments, scans, _jpeg_work(frame, scans))


def _jpeg_work(frame: tuple[int, bytes] | None, scans: int) -> float:
    """A progressive or multi-scan JPEG is decoded into a buffer of every coefficient (2 bytes a sample, at
    each component's sampling) before any pixel comes out; a single-scan one streams row by row."""
    if frame is None or (frame[0] not in _JPEG_PROGRESSIVE_FRAMES and scans <= 1):
        return 0.0
    body = frame[1]
    if len(body) < 6:
        return 0.0
    count = body[5]
    sampling = [(body[7 + 3 * i] >> 4, body[7 + 3 * i] & 15) for i in range(count) if 8 + 3 * i < len(body)]
    if not sampling:
        return 0.0
    h_max = max(h for h, _ in sampling) or 1
    v_max = max(v for _, v in sampling) or 1
    return sum(2.0 * h * v / (h_max * v_max) for h, v in sampling)


# -- PNG -----------------------------------------------------------------------------------------------------
def _walk_png(data: bytes, max_segments: int, _: int) -> Structure | None:
    if data[12:16] != b"IHDR" or len(data) < 16:
        return None
    pos, segments, end = 8, 0, len(data)
    while pos + 8 <= end:
        length, kind = struct.unpack_from(">I4s", data, pos)
        segments += 1
        _over(segments, max_segments, "PNG chunks")
        if kind == b"IEND":
            break
        pos += 12 + length
    return Structure("PNG", segments)


# -- GIF -----------------------------------------------------------------------------------------------------
def _walk_gif(data: bytes, max_segments: int, _: int) -> Structure | None:
    """Extension blocks, their data sub-blocks and any junk between them, up to the first image: Pillow
    reads each block, and steps over junk a byte at a time, in Python. The first image's own data is
    decoded in C; later frames are never read."""
    if len(data) < 13:
        return None
    flags = data[10]
    pos = 13 + (3 * (2 << (flags & 7)) if flags & 0x80 else 0)
    units, end = 0, len(data)
    while pos < end:
        introducer = data[pos]
        if introducer in (0x2C, 0x3B):
            break  # the first image, or the trailer
        if introducer != 0x21:
            following = [
                at for at in (data.find(b"!", pos), data.find(b",", pos), data.find(b";", pos)) if at >= 0
            ]
            units += (min(following) if following else end) - pos
            _over(units, max_segments, "GIF blocks and skipped bytes")
            pos = min(following) if following else end
            continue
        pos += 2
        units += 1
        while pos < end:
            size = data[pos]
            pos += 1 + size
            if size == 0:
                break
            units += 1
            _over(units, max_segments, "GIF blocks and skipped bytes")
        _over(units, max_segments, "GIF blocks and skipped bytes")
    return Structure("GIF", units)


# -- TIFF ----------------------------------------------------------------------------------------------------
_STRIP_TAGS = frozenset({273, 279, 324, 325})  # strip and tile offsets and byte counts


def _walk_tiff(data: bytes, max_segments: int, _: int) -> Structure | None:
    """The first IFD's entry count and the length of its strip and tile tables (Pillow builds one decoder
    call per strip from them). Later pages are never decoded."""
    order = "<" if data[:2] == b"II" else ">"
    big = data[2:4] in (b"+\x00", b"\x00+")
    try:
        if big:
            (offset,) = struct.unpack_from(order + "Q", data, 8)
            (count,) = struct.unpack_from(order + "Q", data, offset)
            entry, first, size = "HHQ", offset + 8, 20
        else:
            (offset,) = struct.unpack_from(order + "I", data, 4)
            (count,) = struct.unpack_from(order + "H", data, offset)
            entry, first, size = "HHI", offset + 2, 12
    except struct.error:
        return Structure("TIFF")  # too short to say: the decoder will
    _over(count, max_segments, "TIFF directory entries")
    segments = count
    for index in range(min(count, max(0, (len(data) - first) // size))):
        tag, _kind, values = struct.unpack_from(order + entry, data, first + index * size)
        if tag in _STRIP_TAGS:
            _over(values, max_segments, "TIFF strips or tiles")
            segments = max(segments, values)
    return Structure("TIFF", segments)


# -- WebP and BMP --------------------------------------------------------------------------------------------
def _walk_webp(data: bytes, max_segments: int, _: int) -> Structure | None:
    if data[12:16] not in (b"VP8 ", b"VP8L", b"VP8X"):
        return None
    pos, segments, end = 12, 0, len(data)
    while pos + 8 <= end:
        (length,) = struct.unpack_from("<I", data, pos + 4)
        segments += 1
        _over(segments, max_segments, "WebP chunks")
        pos += 8 + length + (length & 1)
    # the animation decoder composes frames on two full canvases of 4 bytes a pixel, beside the frame's own
    # decode buffer: a 40 MP lossless RGBA WebP peaked at 16.7 bytes a pixel in all (python -m bench.hostile)
    return Structure("WEBP", segments, work_bytes_per_pixel=10.0)


def _walk_bmp(data: bytes, _: int, __: int) -> Structure | None:
    if len(data) < 18 or struct.unpack_from("<I", data, 14)[0] not in (12, 16, 40, 52, 56, 64, 108, 124):
        return None
    return Structure("BMP", 1)


_WALKERS = {
    "JPEG": _walk_jpeg,
    "PNG": _walk_png,
    "GIF": _walk_gif,
    "TIFF": _walk_tiff,
    "WEBP": _walk_webp,
    "BMP": _walk_bmp,
}
