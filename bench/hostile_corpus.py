"""Hostile inputs generated from code: files whose cheap header promises expensive work, sizes and modes that
cost memory, malformed containers and metadata floods. Used by `bench/hostile.py` and the decode tests.

Every maker is deterministic and returns the file's bytes. The sizes stay within the product's default
limits (40 MB, 40 megapixels) unless the point of the input is to cross one.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable

import numpy as np
from PIL import Image

_GIANT = 6300  # 6300 x 6300 = 39.7 megapixels: just inside the default pixel limit


def _encode(image: Image.Image, fmt: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


# -- JPEG ----------------------------------------------------------------------------------------------------
class _BitWriter:
    """Huffman-coded bits with JPEG byte stuffing (0xFF -> 0xFF 0x00)."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.acc = 0
        self.count = 0

    def put(self, value: int, length: int) -> None:
        for shift in range(length - 1, -1, -1):
            self.acc = (self.acc << 1) | ((value >> shift) & 1)
            self.count += 1
            if self.count == 8:
                self.out.append(self.acc)
                if self.acc == 0xFF:
                    self.out.append(0)
                self.acc = self.count = 0

    def flush(self) -> bytes:
        if self.count:
            pad = 8 - self.count
            self.put((1 << pad) - 1, pad)  # padding bits are ones
        return bytes(self.out)


def _segment(marker: int, body: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(body) + 2) + body


def jpeg_scan_bomb(width: int, height: int, scans: int, components: int = 1) -> bytes:
    """A flat progressive JPEG whose AC scan (one EOB run over every block) is repeated `scans` times: each
    repeat costs the decoder a walk over every block for a dozen bytes of file."""
    blocks = ((width + 7) // 8) * ((height + 7) // 8)
    out = bytearray(b"\xff\xd8")
    out += _segment(0xDB, b"\x00" + bytes([1] * 64))
    layout = b"".join(bytes([i + 1, 0x11, 0]) for i in range(components))
    out += _segment(0xC2, struct.pack(">BHHB", 8, height, width, components) + layout)
    out += _segment(0xC4, bytes([0x00]) + bytes([1] + [0] * 15) + bytes([0]))  # DC: category 0 only
    counts = [0] * 16
    counts[3] = 15  # AC: the fifteen EOB-run symbols, four bits each
    out += _segment(0xC4, bytes([0x10]) + bytes(counts) + bytes(r << 4 for r in range(15)))
    dc = bytes([components]) + b"".join(bytes([i + 1, 0x00]) for i in range(components)) + bytes([0, 0, 0])
    bits = _BitWriter()
    for _ in range(blocks * components):
        bits.put(0, 1)
    out += _segment(0xDA, dc) + bits.flush()
    bits, left = _BitWriter(), blocks
    while left:
        run = min(left, 32767)
        size = run.bit_length() - 1
        bits.put(size, 4)
        bits.put(run - (1 << size), size)
        left -= run
    out += (_segment(0xDA, bytes([1, 1, 0x00, 1, 63, 0])) + bits.flush()) * scans
    return bytes(out + b"\xff\xd9")


def jpeg_marker_flood(markers: int) -> bytes:
    """A small JPEG with `markers` empty comment segments before its frame header."""
    base = _encode(Image.new("RGB", (64, 64), (90, 90, 90)), "JPEG")
    return base[:2] + b"\xff\xfe\x00\x02" * markers + base[2:]


def jpeg_padding(where: str, count: int) -> bytes:
    """A small JPEG with `count` bytes that decoders step over one at a time: 0xFF fill before its scan
    (`fill`), junk before its scan (`junk`), or a run of 0xFF inside its entropy-coded data (`entropy`)."""
    base = _encode(Image.new("RGB", (64, 64), (90, 90, 90)), "JPEG")
    scan = base.index(b"\xff\xda")
    if where == "fill":
        return base[:scan] + b"\xff" * count + base[scan:]
    if where == "junk":
        return base[:scan] + bytes(count) + base[scan:]
    return base[:-2] + b"\xff" * count + b"\x00" + base[-2:]


def jpeg_icc_flood(chunks: int = 255) -> bytes:
    """An ICC profile split over `chunks` full APP2 segments (about 16 MB of profile for a 64x64 image)."""
    body = bytes(65519 - 14)
    app2 = b"".join(_segment(0xE2, b"ICC_PROFILE\x00" + bytes([i + 1, chunks]) + body) for i in range(chunks))
    base = _encode(Image.new("RGB", (64, 64), (90, 90, 90)), "JPEG")
    return base[:2] + app2 + base[2:]


def exif_flood(tags: int = 5000, fmt: str = "JPEG") -> bytes:
    """EXIF whose IFD0 lists `tags` entries that each claim more data than the file holds: every one is a
    'tag data larger than file' warning in a parser that walks them. JPEG's APP1 holds about 5,000."""
    entries = b"".join(struct.pack("<HHII", 0x1000 + i, 7, 100_000, 8) for i in range(tags))
    tiff = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", tags) + entries + b"\x00\x00\x00\x00"
    image = Image.new("RGB", (64, 48), (120, 60, 30))
    return _encode(image, fmt, exif=(b"Exif\x00\x00" if fmt == "JPEG" else b"") + tiff)


def jpeg_header_bomb(width: int = 65_000, height: int = 65_000) -> bytes:
    """A 16x16 JPEG whose frame header claims width x height."""
    data = bytearray(_encode(Image.new("RGB", (16, 16), (1, 2, 3)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def cmyk_progressive_giant() -> bytes:
    return _encode(
        Image.new("CMYK", (_GIANT, _GIANT), (10, 200, 30, 5)),
        "JPEG",
        progressive=True,
        quality=90,
        subsampling=0,
    )


# -- PNG -----------------------------------------------------------------------------------------------------
def _chunk(kind: bytes, body: bytes) -> bytes:
    crc = zlib.crc32(kind + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)


def png_header_bomb(width: int = 40_000, height: int = 40_000) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(bytes(4096), 9))
        + _chunk(b"IEND", b"")
    )


def png_flat(width: int, height: int, bit_depth: int, colour_type: int, interlace: int = 0) -> bytes:
    """A flat PNG of any depth and colour type, compressed to a few hundred kilobytes: a decompression bomb
    inside the pixel limit (every row is filter 0 and zeros)."""
    channels = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}[colour_type]
    row = (width * channels * bit_depth + 7) // 8
    compressor = zlib.compressobj(9)
    line = b"\x00" + bytes(row)
    passes = height if not interlace else height * 2  # Adam7 rows are shorter; zeros decode as zeros anyway
    body = b"".join(compressor.compress(line) for _ in range(passes)) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, interlace)
    palette = _chunk(b"PLTE", bytes(range(3))) if colour_type == 3 else b""
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + palette + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")
    )


def png_chunk_flood(chunks: int) -> bytes:
    """A 64x64 PNG with `chunks` empty private chunks before its image data."""
    base = _encode(Image.new("RGB", (64, 64)), "PNG")
    at = base.index(b"IDAT") - 4
    return base[:at] + _chunk(b"prVt", b"") * chunks + base[at:]


def png_split_idat(width: int, height: int, piece: int) -> bytes:
    """Noise whose compressed stream is cut into IDAT chunks of `piece` bytes."""
    pixels = np.random.default_rng(5).integers(0, 256, (height, width, 3), dtype=np.uint8)
    raw = b"".join(b"\x00" + pixels[y].tobytes() for y in range(height))
    stream = zlib.compress(raw, 1)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    body = b"".join(_chunk(b"IDAT", stream[i : i + piece]) for i in range(0, len(stream), piece))
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + body + _chunk(b"IEND", b"")


def apng(frames: int, first_sequence: int = 0, first_width: int = 32) -> bytes:
    """An animated PNG of `frames` 1-pixel frames after a 32x32 first frame. A first frame control whose
    sequence number is not 0, or whose width overflows the canvas, makes a malformed APNG."""
    ihdr = struct.pack(">IIBBBBB", 32, 32, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"".join(b"\x00" + bytes(96) for _ in range(32)))
    tiny = zlib.compress(b"\x00\x00\x00\x00")
    parts = [b"\x89PNG\r\n\x1a\n", _chunk(b"IHDR", ihdr), _chunk(b"acTL", struct.pack(">II", frames, 0))]
    parts.append(
        _chunk(b"fcTL", struct.pack(">IIIIIHHBB", first_sequence, first_width, 32, 0, 0, 1, 10, 0, 0))
    )
    parts.append(_chunk(b"IDAT", idat))
    sequence = first_sequence + 1
    for index in range(1, frames):
        parts.append(_chunk(b"fcTL", struct.pack(">IIIIIHHBB", sequence, 1, 1, index % 32, 0, 1, 10, 0, 0)))
        parts.append(_chunk(b"fdAT", struct.pack(">I", sequence + 1) + tiny))
        sequence += 2
    return b"".join(parts) + _chunk(b"IEND", b"")


def png_text_bomb(chunks: int = 60) -> bytes:
    """A 64x64 PNG with `chunks` compressed text chunks of just under 1 MB each (Pillow's per-chunk cap):
    60 MB of text held while the header is parsed, from about 60 KB of file."""
    base = _encode(Image.new("RGB", (64, 64)), "PNG")
    at = base.index(b"IDAT") - 4
    text = zlib.compress(bytes(1_000_000), 9)
    texts = b"".join(_chunk(b"zTXt", f"note{i}".encode() + b"\x00\x00" + text) for i in range(chunks))
    return base[:at] + texts + base[at:]


def png_exif_flood(tags: int = 60_000) -> bytes:
    """A PNG whose eXIf chunk (PNG sets no size limit) lists `tags` corrupt entries."""
    return exif_flood(tags, fmt="PNG")


# -- GIF -----------------------------------------------------------------------------------------------------
def _gif_base() -> tuple[bytes, int]:
    base = _encode(Image.new("P", (64, 64)), "GIF")
    flags = base[10]
    table = 3 * (2 << (flags & 7)) if flags & 0x80 else 0
    return base, 13 + table


def gif_extension_flood(extensions: int) -> bytes:
    """A GIF with `extensions` one-byte comment extensions before its first image."""
    base, at = _gif_base()
    return base[:at] + b"\x21\xfe\x01a\x00" * extensions + base[at:]


def gif_junk(count: int) -> bytes:
    """`count` bytes of junk between the header and the first image (Pillow skips them one by one)."""
    base, at = _gif_base()
    return base[:at] + b"\x99" * count + base[at:]


def gif_long_comment(sub_blocks: int) -> bytes:
    """One comment extension made of `sub_blocks` full 255-byte data sub-blocks."""
    base, at = _gif_base()
    return base[:at] + b"\x21\xfe" + (b"\xff" + bytes(255)) * sub_blocks + b"\x00" + base[at:]


def gif_frame_bomb(frames: int) -> bytes:
    """`frames` one-pixel frames on a 64x64 screen."""
    base, at = _gif_base()
    frame = (
        b"\x21\xf9\x04\x00\x01\x00\x00\x00" + b"\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00"
    )
    end = base.rindex(b"\x3b")
    return base[:end] + frame * frames + b"\x3b"


# -- TIFF ----------------------------------------------------------------------------------------------------
def tiff_float_giant() -> bytes:
    values = np.tile(np.repeat(np.linspace(0.0, 1.0, 50, dtype=np.float32), 126), (_GIANT, 1))
    return _encode(Image.fromarray(values, "F"), "TIFF", compression="tiff_adobe_deflate")


def tiff_strip_flood(strips: int) -> bytes:
    """A 64x64 8-bit grey uncompressed TIFF whose strip tables list `strips` one-byte strips."""
    width = height = 64
    pixels = bytes(width * height)
    entries: list[tuple[int, int, int, bytes]] = []
    offsets_at = 8 + len(pixels)

    def long_array(values: list[int]) -> bytes:
        return struct.pack(f"<{len(values)}I", *values)

    offsets = long_array([8 + (i % len(pixels)) for i in range(strips)])
    counts = long_array([1] * strips)
    entries = [
        (256, 3, 1, struct.pack("<HH", width, 0)),
        (257, 3, 1, struct.pack("<HH", height, 0)),
        (258, 3, 1, struct.pack("<HH", 8, 0)),
        (259, 3, 1, struct.pack("<HH", 1, 0)),
        (262, 3, 1, struct.pack("<HH", 1, 0)),
        (273, 4, strips, b""),
        (277, 3, 1, struct.pack("<HH", 1, 0)),
        (278, 4, 1, struct.pack("<I", 1)),
        (279, 4, strips, b""),
    ]
    ifd_at = offsets_at + len(offsets) + len(counts)
    blob = b"II*\x00" + struct.pack("<I", ifd_at) + pixels + offsets + counts
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        if tag == 273:
            value = struct.pack("<I", offsets_at)
        elif tag == 279:
            value = struct.pack("<I", offsets_at + len(offsets))
        ifd += struct.pack("<HHI", tag, kind, count) + value
    return blob + ifd + b"\x00\x00\x00\x00"


def tiff_page_flood(pages: int) -> bytes:
    """A 16x16 grey TIFF followed by `pages` more pages, each a minimal IFD pointing at the same pixels."""
    first = _encode(Image.new("L", (16, 16), 7), "TIFF")
    count = struct.unpack_from("<H", first, struct.unpack_from("<I", first, 4)[0])[0]
    ifd_at = struct.unpack_from("<I", first, 4)[0]
    ifd = first[ifd_at + 2 : ifd_at + 2 + 12 * count]
    size = 2 + 12 * count + 4
    out = bytearray(first[: ifd_at + 2 + 12 * count])
    start = len(out) + 4
    out += struct.pack("<I", start)
    for page in range(pages):
        following = start + size * (page + 1) if page + 1 < pages else 0
        out += struct.pack("<H", count) + ifd + struct.pack("<I", following)
    return bytes(out)


# -- WebP and BMP --------------------------------------------------------------------------------------------
def webp_frame_bomb(frames: int) -> bytes:
    """An animated WebP of `frames` 1x1 lossless frames on a 64x64 canvas."""
    one = _encode(Image.new("RGBA", (1, 1), (1, 2, 3, 255)), "WEBP", lossless=True)
    vp8l = one[12:]  # the image's VP8L chunk, header included
    frame = (
        struct.pack("<I", 0)[:3] * 2 + (0).to_bytes(3, "little") * 2 + struct.pack("<I", 100)[:3] + b"\x00"
    )
    anmf_body = frame + vp8l
    anmf = b"ANMF" + struct.pack("<I", len(anmf_body)) + anmf_body + (b"\x00" if len(anmf_body) % 2 else b"")
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes([0x12, 0, 0, 0]) + (63).to_bytes(3, "little") * 2
    anim = b"ANIM" + struct.pack("<I", 6) + bytes(4) + struct.pack("<H", 0)
    body = b"WEBP" + vp8x + anim + anmf * frames
    return b"RIFF" + struct.pack("<I", len(body)) + body


def webp_giant() -> bytes:
    return _encode(Image.new("RGBA", (_GIANT, _GIANT), (10, 20, 30, 128)), "WEBP", lossless=True, quality=0)


def bmp_rle_giant() -> bytes:
    """An RLE8 BMP of 6300x6300 written as runs of 255 pixels: a 40-megapixel image in about 300 KB."""
    width = height = _GIANT
    row = b"".join(bytes([min(255, width - x), 7]) for x in range(0, width, 255)) + b"\x00\x00"
    pixels = row * height + b"\x00\x01"
    palette = b"".join(bytes([i, i, i, 0]) for i in range(256))
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 1, len(pixels), 2835, 2835, 256, 0)
    offset = 14 + len(info) + len(palette)
    header = b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset)
    return header + info + palette + pixels


CORPUS: dict[str, Callable[[], bytes]] = {
    "jpeg-scan-bomb-2k": lambda: jpeg_scan_bomb(2048, 2048, 20_000),
    "jpeg-scan-bomb-6k": lambda: jpeg_scan_bomb(6000, 6000, 5_000, components=3),
    "jpeg-scans-at-limit-6k": lambda: jpeg_scan_bomb(6000, 6000, 99, components=3),  # 100 with the DC scan
    "jpeg-marker-flood": lambda: jpeg_marker_flood(2_000_000),
    "jpeg-fill-flood": lambda: jpeg_padding("fill", 30_000_000),
    "jpeg-junk-flood": lambda: jpeg_padding("junk", 30_000_000),
    "jpeg-entropy-ff-run": lambda: jpeg_padding("entropy", 30_000_000),
    "jpeg-icc-16mb": jpeg_icc_flood,
    "jpeg-exif-flood": exif_flood,
    "jpeg-cmyk-progressive-giant": cmyk_progressive_giant,
    "jpeg-header-bomb": jpeg_header_bomb,
    "png-header-bomb": png_header_bomb,
    "png-16bit-grey-giant": lambda: png_flat(_GIANT, _GIANT, 16, 0),
    "png-16bit-rgba-giant": lambda: png_flat(_GIANT, _GIANT, 16, 6),
    "png-rgba-giant": lambda: png_flat(_GIANT, _GIANT, 8, 6),
    "png-grey-alpha-interlaced-giant": lambda: png_flat(_GIANT, _GIANT, 8, 4, interlace=1),
    "png-palette-giant": lambda: png_flat(_GIANT, _GIANT, 8, 3),
    "png-chunk-flood": lambda: png_chunk_flood(2_000_000),
    "png-idat-flood": lambda: png_split_idat(2000, 2000, 64),
    "png-exif-flood": png_exif_flood,
    "png-text-bomb": png_text_bomb,
    "apng-frame-bomb": lambda: apng(200_000),
    "apng-bad-sequence": lambda: apng(3, first_sequence=7),
    "apng-frame-off-canvas": lambda: apng(3, first_width=4000),
    "gif-extension-flood": lambda: gif_extension_flood(4_000_000),
    "gif-long-comment": lambda: gif_long_comment(150_000),
    "gif-junk-flood": lambda: gif_junk(30_000_000),
    "gif-frame-bomb": lambda: gif_frame_bomb(1_000_000),
    "tiff-float-giant": tiff_float_giant,
    "tiff-strip-flood": lambda: tiff_strip_flood(4_000_000),
    "tiff-page-flood": lambda: tiff_page_flood(200_000),
    "webp-frame-bomb": lambda: webp_frame_bomb(400_000),
    "webp-rgba-giant": webp_giant,
    "bmp-rle-giant": bmp_rle_giant,
}
