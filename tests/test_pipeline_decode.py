"""pipeline.decode on a hostile corpus generated here: every input gives RGB pixels or InvalidInput(reason)."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from pipeline.decode import DecodedImage, DecodeLimits, decode_image
from pipeline.errors import InvalidInput

REPO = Path(__file__).resolve().parent.parent
REASONS = {
    "empty",
    "too_many_bytes",
    "not_an_image",
    "truncated",
    "corrupt",
    "too_many_pixels",
    "unsupported_format",
    "too_small",
    "too_many_scans",
    "too_many_segments",
    "too_much_memory",
}


def _encode(image: Image.Image | np.ndarray, fmt: str, **params: object) -> bytes:
    image = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _reason(data: bytes, limits: DecodeLimits = DecodeLimits()) -> str:
    with pytest.raises(InvalidInput) as info:
        decode_image(data, limits)
    assert info.value.reason in REASONS
    return info.value.reason


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return (
        struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)
    )


def png_bomb(width: int = 40_000, height: int = 40_000) -> bytes:
    """A PNG whose IHDR claims width x height RGB, with a tiny zlib stream behind it."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 4096, 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def patched_png(width: int, height: int) -> bytes:
    """A real PIL-written 4x4 PNG with its IHDR size patched and the CRC fixed."""
    data = bytearray(_encode(_noise(4, 4), "PNG"))
    assert data[12:16] == b"IHDR"
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])) & 0xFFFFFFFF)
    return bytes(data)


def jpeg_claiming(width: int, height: int) -> bytes:
    data = bytearray(_encode(_noise(16, 16), "JPEG", quality=90))
    sof = data.find(b"\xff\xc0")
    assert sof > 0
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


# -- refusals -----------------------------------------------------------------------------------------


def test_zero_bytes() -> None:
    assert _reason(b"") == "empty"


@pytest.mark.parametrize(
    "data",
    [
        b"<!DOCTYPE html><html><body><img src=x onerror=alert(1)></body></html>",
        b"\xef\xbb\xbf  <html><head></head></html>",
        b"This is definitely a JPEG, trust me.",
        b"\xff\xd8\xff but then plain text follows",
        b'{"image": "not really"}',
        b"%PDF-1.7\n1 0 obj\n<<>>\nendobj\n",
        bytes(range(256)) * 4,
    ],
)
def test_text_and_junk_posing_as_images(data: bytes) -> None:
    assert _reason(data) == "not_an_image"


@pytest.mark.parametrize(
    "svg",
    [
        b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><rect width="10" height="10"/></svg>',
        b'<?xml version="1.0" encoding="UTF-8"?>\n<svg xmlns="http://www.w3.org/2000/svg"></svg>',
        b"\n\n   <!-- a comment first -->\n<svg></svg>",
    ],
)
def test_svg_refused(svg: bytes) -> None:
    assert _reason(svg) == "not_an_image"


@pytest.mark.parametrize("fraction", [0.5, 0.9])
def test_truncated_jpeg(fraction: float) -> None:
    data = _encode(_noise(64, 80), "JPEG", quality=90)
    assert _reason(data[: int(len(data) * fraction)]) == "truncated"


def test_truncated_png() -> None:
    data = _encode(_noise(64, 80), "PNG")
    assert _reason(data[: len(data) // 2]) == "truncated"


def test_jpeg_cut_inside_its_headers() -> None:
    data = _encode(_noise(64, 80), "JPEG", quality=90)
    assert _reason(data[:200]) in {"truncated", "corrupt"}


@pytest.mark.parametrize(
    "bomb",
    [png_bomb(), patched_png(40_000, 40_000), jpeg_claiming(65_000, 65_000)],
    ids=["png-handmade", "png-patched", "jpeg-sof"],
)
def test_bombs_refused_from_header(bomb: bytes) -> None:
    assert len(bomb) < 4096
    assert _reason(bomb) == "too_many_pixels"


@pytest.mark.parametrize(("width", "height"), [(7_000, 7_000), (20_000, 10), (10, 16_385)])
def test_our_limits_below_pillows(width: int, height: int) -> None:
    """Sizes Pillow itself would open without a warning are still refused by DecodeLimits."""
    assert _reason(patched_png(width, height)) == "too_many_pixels"


def test_bombs_are_cheap() -> None:
    """In a fresh interpreter (so ru_maxrss starts low): < 1 s and < 200 MB of growth per bomb."""
    script = f"""
import json, resource, sys, time
sys.path.insert(0, {str(REPO)!r})
from pipeline.decode import decode_image
from pipeline.errors import InvalidInput
results = []
for data in [bytes.fromhex(h) for h in json.loads(sys.stdin.read())]:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    try:
        decode_image(data)
        reason = None
    except InvalidInput as exc:
        reason = exc.reason
    results.append({{"reason": reason, "seconds": time.perf_counter() - start,
                     "grew_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before}})
print(json.dumps(results))
"""
    bombs = [
        png_bomb(),
        patched_png(40_000, 40_000),
        jpeg_claiming(65_000, 65_000),
        patched_png(7_000, 7_000),
    ]
    out = subprocess.run(
        [sys.executable, "-c", script],
        input=json.dumps([b.hex() for b in bombs]),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    results = json.loads(out.stdout)
    assert len(results) == len(bombs)
    for result in results:
        assert result["reason"] == "too_many_pixels"
        assert result["seconds"] < 1.0
        assert result["grew_kb"] < 200 * 1024


def test_byte_limit() -> None:
    data = _encode(_noise(32, 32), "PNG")
    assert _reason(data, DecodeLimits(max_bytes=len(data) - 1)) == "too_many_bytes"
    assert decode_image(data, DecodeLimits(max_bytes=len(data))).width == 32


def test_min_side() -> None:
    assert _reason(_encode(_noise(1, 5), "PNG"), DecodeLimits(min_side=2)) == "too_small"


@pytest.mark.parametrize("fmt", ["ICO", "PPM", "TGA", "PCX"])
def test_formats_outside_the_allow_list(fmt: str) -> None:
    assert _reason(_encode(_noise(16, 16), fmt)) == "unsupported_format"


# -- decodes ------------------------------------------------------------------------------------------


def _decode(data: bytes) -> DecodedImage:
    decoded = decode_image(data)
    assert decoded.pixels.dtype == np.uint8
    assert decoded.pixels.ndim == 3 and decoded.pixels.shape[2] == 3
    assert decoded.pixels.flags["C_CONTIGUOUS"]
    return decoded


def test_cmyk_jpeg_colours() -> None:
    red = Image.new("CMYK", (32, 32), (0, 255, 255, 0))
    decoded = _decode(_encode(red, "JPEG", quality=95))
    assert decoded.original_mode == "CMYK"
    r, g, b = decoded.pixels[16, 16].astype(int)
    assert r > 200 and g < 60 and b < 60


def test_sixteen_bit_grey_png_scaled_not_clipped() -> None:
    values = np.array([[0, 32768, 65535]], dtype=np.uint16).repeat(4, axis=0)
    image = Image.fromarray(values)
    assert image.mode.startswith("I;16")
    decoded = _decode(_encode(image, "PNG"))
    assert decoded.pixels.shape == (4, 3, 3)
    row = decoded.pixels[0, :, 0].astype(int)
    assert row[0] == 0
    assert abs(row[1] - 128) <= 1  # mid-grey, not white
    assert row[2] == 255
    assert (decoded.pixels[..., 0] == decoded.pixels[..., 2]).all()


def test_palette_png_with_transparency_flattened_on_white() -> None:
    image = Image.new("P", (8, 8), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.paste(1, (0, 0, 4, 8))  # left half: palette index 1 (blue), declared transparent
    decoded = _decode(_encode(image, "PNG", transparency=1))
    assert decoded.original_mode == "P"
    assert (decoded.pixels[:, :4] == 255).all()
    assert (decoded.pixels[:, 4:] == (255, 0, 0)).all()


def test_rgba_half_transparent_blends_on_white() -> None:
    decoded = _decode(_encode(Image.new("RGBA", (4, 4), (0, 0, 0, 128)), "PNG"))
    assert abs(int(decoded.pixels[0, 0, 0]) - 127) <= 1


def test_animated_gif_first_frame() -> None:
    frames = [Image.new("RGB", (10, 10), colour) for colour in [(255, 0, 0), (0, 255, 0), (0, 0, 255)]]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    decoded = _decode(data)
    assert decoded.format == "GIF"
    assert tuple(decoded.pixels[5, 5]) == (255, 0, 0)


@pytest.mark.parametrize(
    ("fmt", "params"), [("WEBP", {"lossless": True}), ("TIFF", {}), ("BMP", {}), ("PNG", {})]
)
def test_lossless_formats_exact(fmt: str, params: dict) -> None:
    pixels = _noise(20, 30, seed=3)
    decoded = _decode(_encode(pixels, fmt, **params))
    assert decoded.format == fmt
    np.testing.assert_array_equal(decoded.pixels, pixels)


def test_exif_orientation_applied() -> None:
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)
    pixels[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    decoded = _decode(_encode(pixels, "JPEG", exif=exif.tobytes(), quality=95))
    assert (decoded.width, decoded.height) == (20, 40)
    assert decoded.pixels[5, 10, 0] > 200 and decoded.pixels[5, 10, 2] < 60  # the left (red) half is on top
    assert decoded.pixels[35, 10, 2] > 200 and decoded.pixels[35, 10, 0] < 60


@pytest.mark.parametrize(("fmt", "mode"), [("JPEG", "L"), ("PNG", "RGB"), ("PNG", "RGBA")])
def test_exif_orientation_applied_in_other_formats_and_modes(fmt: str, mode: str) -> None:
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = 255  # white left half, black right half
    image = Image.fromarray(pixels).convert(mode)
    exif = Image.Exif()
    exif[0x0112] = 8  # rotate 90 degrees counter-clockwise to display
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))
    decoded = _decode(buffer.getvalue())
    assert (decoded.width, decoded.height) == (20, 40) and decoded.pixels.shape == (40, 20, 3)
    assert decoded.pixels[35, 10].min() > 200 and decoded.pixels[5, 10].max() < 60  # the left half is at the bottom


def test_one_pixel() -> None:
    decoded = _decode(_encode(np.array([[[1, 2, 3]]], np.uint8), "PNG"))
    assert decoded.pixels.tolist() == [[[1, 2, 3]]]


def test_panorama() -> None:
    pixels = np.tile(np.linspace(0, 255, 12_000, dtype=np.uint8)[None, :, None], (300, 1, 3))
    decoded = _decode(_encode(pixels, "JPEG", quality=80))
    assert (decoded.width, decoded.height) == (12_000, 300)


@pytest.mark.parametrize("mode", ["L", "1", "LA", "I"])
def test_other_modes_become_rgb(mode: str) -> None:
    image = Image.fromarray(np.full((6, 6), 200, np.uint8)).convert(mode)
    decoded = _decode(_encode(image, "PNG" if mode != "I" else "TIFF"))
    assert decoded.pixels.shape == (6, 6, 3)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_image_with_svg_text_in_its_metadata_still_decodes(fmt: str) -> None:
    pixels = np.full((40, 60, 3), 90, np.uint8)
    if fmt == "JPEG":
        data = _encode(pixels, "JPEG", comment=b"made with <svg> tools")
    else:
        info = PngImagePlugin.PngInfo()
        info.add_text("Comment", "<svg xmlns='http://www.w3.org/2000/svg'/>")
        data = _encode(pixels, "PNG", pnginfo=info)
    assert b"<svg" in data[:512]
    assert _decode(data).pixels.shape == (40, 60, 3)


# -- bombs by class: a cheap header that promises expensive work ---------------------------------------


def _fresh_interpreter(script: str, payloads: list[bytes], timeout: float = 180) -> list[dict]:
    """Run `script` in a new interpreter (its ru_maxrss starts low) with the payloads on stdin."""
    out = subprocess.run([sys.executable, "-c", script], input=json.dumps([p.hex() for p in payloads]),
                         capture_output=True, text=True, timeout=timeout, check=True, cwd=REPO)
    return json.loads(out.stdout)


# Peak memory is the process's VmHWM, reset before each input (ru_maxrss would carry the high-water mark of
# the forking parent's address space across exec).
_COST_SCRIPT = """
import json, sys, time, warnings
from pipeline.decode import DecodeLimits, decode_image
from pipeline.errors import InvalidInput

def peak_kb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))

rows = []
for data in [bytes.fromhex(h) for h in json.loads(sys.stdin.read())]:
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    before = peak_kb()
    start = time.process_time()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            shape, reason = list(decode_image(data).pixels.shape), None
        except InvalidInput as exc:
            shape, reason = None, exc.reason
    rows.append({"reason": reason, "shape": shape, "cpu_s": time.process_time() - start, "warnings": len(caught),
                 "grew_mb": (peak_kb() - before) / 1024})
print(json.dumps(rows))
"""


def test_jpeg_scan_bombs_are_refused_from_their_structure() -> None:
    """Thousands of empty progressive scans each re-walk every block: refused by counting SOS markers, in
    about the time it takes to read the file, whatever the image's size."""
    from bench.hostile_corpus import jpeg_scan_bomb

    bombs = [jpeg_scan_bomb(2048, 2048, 5_000), jpeg_scan_bomb(6000, 6000, 1_000, components=3)]
    for row in _fresh_interpreter(_COST_SCRIPT, bombs):
        assert row["reason"] == "too_many_scans"
        assert row["cpu_s"] < 0.5  # generous: the walk is a few milliseconds


def test_progressive_jpegs_within_the_scan_limit_decode() -> None:
    from bench.hostile_corpus import jpeg_scan_bomb

    assert _decode(jpeg_scan_bomb(256, 128, 60)).pixels.shape == (128, 256, 3)
    progressive = _encode(_noise(64, 80), "JPEG", quality=90, progressive=True)
    assert _decode(progressive).pixels.shape == (64, 80, 3)
    assert _reason(jpeg_scan_bomb(256, 128, 60), DecodeLimits(max_jpeg_scans=59)) == "too_many_scans"


def test_container_floods_are_refused_cheaply() -> None:
    """Markers, chunks, blocks, strip tables and padding that Pillow would parse or skip one by one."""
    from bench.hostile_corpus import (
        gif_extension_flood,
        gif_junk,
        jpeg_marker_flood,
        jpeg_padding,
        png_chunk_flood,
        tiff_strip_flood,
        webp_frame_bomb,
    )

    floods = [jpeg_marker_flood(500_000), png_chunk_flood(500_000), gif_extension_flood(500_000),
              tiff_strip_flood(1_000_000), webp_frame_bomb(200_000), jpeg_padding("fill", 2_000_000),
              jpeg_padding("junk", 2_000_000), jpeg_padding("entropy", 2_000_000), gif_junk(2_000_000)]
    rows = _fresh_interpreter(_COST_SCRIPT, floods)
    assert [row["reason"] for row in rows] == ["too_many_segments"] * len(floods)
    for row in rows:
        assert row["cpu_s"] < 0.5 and row["grew_mb"] < 100


def test_segment_limit_leaves_ordinary_files_alone() -> None:
    from bench.hostile_corpus import png_split_idat

    data = png_split_idat(300, 200, 512)  # about 350 IDAT chunks
    assert _decode(data).pixels.shape == (200, 300, 3)
    assert _reason(data, DecodeLimits(max_segments=100)) == "too_many_segments"


@pytest.mark.parametrize("maker", ["bad-sequence", "frame-off-canvas"])
def test_malformed_apng_is_corrupt_not_unrecognised(maker: str) -> None:
    from bench.hostile_corpus import apng

    data = apng(3, first_sequence=7) if maker == "bad-sequence" else apng(3, first_width=4000)
    assert data.startswith(b"\x89PNG")
    assert _reason(data) == "corrupt"


def test_structurally_broken_files_of_every_allowed_format_are_corrupt() -> None:
    png = bytearray(_encode(_noise(8, 8), "PNG"))
    png[16:24] = struct.pack(">II", 0, 0)  # a zero-sized IHDR: Pillow's plugin refuses it at open
    png[29:33] = struct.pack(">I", zlib.crc32(bytes(png[12:29])) & 0xFFFFFFFF)
    assert _reason(bytes(png)) in {"corrupt", "too_small"}
    gif = _encode(Image.fromarray(_noise(8, 8)).convert("P"), "GIF")
    palette_end = 13 + 3 * (2 << (gif[10] & 7))
    broken = gif[:palette_end] + b"\x99" * 20  # a block that is neither an image, an extension nor the trailer
    assert _reason(broken) in {"corrupt", "truncated"}


def test_exif_floods_do_not_flood_stderr() -> None:
    """5,000 (JPEG APP1) and 60,000 (PNG eXIf) corrupt EXIF tags: Pillow warns once per tag, and Python's
    default filter prints each distinct message. Decoding them in a fresh interpreter prints nothing."""
    from bench.hostile_corpus import exif_flood, png_exif_flood

    script = """
import json, sys
from pipeline.decode import decode_image
for data in [bytes.fromhex(h) for h in json.loads(sys.stdin.read())]:
    print(decode_image(data).pixels.shape)
"""
    payloads = [exif_flood(), png_exif_flood()]
    out = subprocess.run([sys.executable, "-c", script], input=json.dumps([p.hex() for p in payloads]),
                         capture_output=True, text=True, timeout=120, check=True, cwd=REPO)
    assert out.stdout.split("\n")[:2] == ["(48, 64, 3)"] * 2
    assert out.stderr.count("\n") < 5, out.stderr[:500]


def test_exif_floods_cost_little() -> None:
    from bench.hostile_corpus import exif_flood, png_exif_flood

    for row in _fresh_interpreter(_COST_SCRIPT, [exif_flood(), png_exif_flood()]):
        assert row["shape"] == [48, 64, 3] and row["cpu_s"] < 0.5


def test_tiff_orientation_tag_applied() -> None:
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = 255
    data = _encode(pixels, "TIFF", tiffinfo={274: 8})
    decoded = _decode(data)
    assert decoded.pixels.shape == (40, 20, 3)
    assert decoded.pixels[35, 10].min() > 200 and decoded.pixels[5, 10].max() < 60


def test_xmp_orientation_applied_when_exif_has_none() -> None:
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = 255
    xmp = b'<x:xmpmeta><rdf:Description tiff:Orientation="8"/></x:xmpmeta>'
    decoded = _decode(_encode(pixels, "JPEG", quality=95, xmp=xmp))
    assert decoded.pixels.shape == (40, 20, 3)
    assert decoded.pixels[35, 10].min() > 200


# -- memory: budget by bytes per pixel of the decoded mode, conversions without full-size float copies ------


def test_memory_heavy_modes_decode_within_a_small_multiple_of_their_pixels() -> None:
    """40-megapixel 16-bit grey and 16-bit RGBA PNGs, an RGBA PNG and a float32 TIFF. The floor is the
    decoded image (2 or 4 bytes a pixel) plus the RGB result (3): about 200-280 MB; measured before, the
    float64 conversions peaked at 0.8-1.3 GB."""
    from bench.hostile_corpus import png_flat, tiff_float_giant

    giants = [png_flat(6300, 6300, 16, 0), png_flat(6300, 6300, 16, 6), png_flat(6300, 6300, 8, 6),
              tiff_float_giant()]
    rows = _fresh_interpreter(_COST_SCRIPT, giants)
    for row in rows:
        assert row["shape"] == [6300, 6300, 3], row
    assert max(row["grew_mb"] for row in rows) < 400, rows


def test_sixteen_bit_and_float_conversions_match_the_reference() -> None:
    """The chunked integer conversions give what the float64 formula gave."""
    values = np.random.default_rng(1).integers(0, 65536, (37, 51), dtype=np.uint16)
    decoded = _decode(_encode(Image.fromarray(values), "PNG"))
    expected = np.clip(values.astype(np.float64) * (255.0 / 65535.0), 0, 255).astype(np.uint8)
    assert np.abs(decoded.pixels[..., 0].astype(int) - expected.astype(int)).max() <= 1
    floats = np.random.default_rng(2).normal(size=(33, 47)).astype(np.float32)
    floats[3, 4] = np.nan
    decoded = _decode(_encode(Image.fromarray(floats, "F"), "TIFF"))
    finite = np.nan_to_num(floats, nan=0.0)
    lo, hi = float(np.nanmin(floats)), float(np.nanmax(floats))
    reference = np.nan_to_num((floats.astype(np.float64) - lo) * (255.0 / (hi - lo))).astype(np.uint8)
    mask = np.isfinite(floats)
    assert np.abs(decoded.pixels[..., 1][mask].astype(int) - reference[mask].astype(int)).max() <= 1
    assert finite.shape == decoded.pixels.shape[:2]


def test_memory_budget_counts_bytes_per_pixel_of_the_mode() -> None:
    """The same pixel count passes as 8-bit grey and is refused as RGBA under one byte budget."""
    from bench.hostile_corpus import png_flat

    limits = DecodeLimits(max_decode_bytes=20_000_000)  # 2000 x 2000: grey 1 + 3 bytes a pixel, RGBA 4 + 3
    assert decode_image(png_flat(2000, 2000, 8, 0), limits).pixels.shape == (2000, 2000, 3)
    assert _reason(png_flat(2000, 2000, 8, 6), limits) == "too_much_memory"
    assert _reason(png_flat(2000, 2000, 16, 6), limits) == "too_much_memory"


# -- fuzz ---------------------------------------------------------------------------------------------

SEEDS = [
    _encode(_noise(12, 16, seed=1), "JPEG", quality=85),
    _encode(_noise(12, 16, seed=2), "PNG"),
    _encode(Image.fromarray(_noise(10, 10, seed=3)).convert("P"), "GIF"),
    # the other containers the structure walks read (pipeline/containers.py)
    _encode(_noise(12, 16, seed=4), "JPEG", quality=85, progressive=True),
    _encode(_noise(8, 10, seed=5), "TIFF"),
    _encode(_noise(8, 10, seed=6), "WEBP", lossless=True),
    _encode(_noise(6, 7, seed=7), "BMP"),
]


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete", "random"]))
        if not data:
            break
        position = draw(st.integers(0, len(data) - 1))
        if op == "flip":
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif op == "set":
            data[position] = draw(st.integers(0, 255))
        elif op == "truncate":
            del data[position:]
        elif op == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[position : position + draw(st.integers(1, 16))]
        else:
            data[position : position + 8] = draw(st.binary(min_size=8, max_size=8))
    return bytes(data)


@settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(mutated_images(), st.binary(max_size=64)))
def test_fuzz_decode_returns_rgb_or_invalid_input(data: bytes) -> None:
    try:
        decoded = decode_image(data)
    except InvalidInput as exc:
        assert exc.reason in REASONS
        return
    assert isinstance(decoded, DecodedImage)
    assert decoded.pixels.dtype == np.uint8
    assert decoded.pixels.ndim == 3 and decoded.pixels.shape[2] == 3
    assert decoded.width >= 1 and decoded.height >= 1
