"""PDQ perceptual hashes of decoded images: 256 bits as 64 hex characters in ThreatExchange's order, with
PDQ's quality score, computed in numpy as Meta's reference defines it (the downsample is two matrix products,
which release the interpreter lock). Every stored hash is taken on a copy at most `max_side` long, so stored
hashes compare like with like.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from pipeline.pixels import area_downscale

HASH_BITS = 256
HASH_HEX_CHARS = HASH_BITS // 4
DEFAULT_MAX_DISTANCE = 31  # PDQ's documented match threshold, of 256 bits
DEFAULT_MIN_QUALITY = 50  # below this PDQ's own docs call the hash too unreliable to match on
DEFAULT_MAX_SIDE = 512
# PDQ's order. flip_y mirrors about the vertical axis (left-right): the flip uploads use.
DIHEDRAL_NAMES = ("original", "rotate90", "rotate180", "rotate270", "flip_x", "flip_y", "flip_plus1",
                  "flip_minus1")
MIRROR = DIHEDRAL_NAMES.index("flip_y")
MIN_HASHABLE_SIDE = 5  # PDQ gives an image narrower than this the all-zero hash and quality 0
_SIDE = 64  # PDQ's downsample
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
# the DCT rows PDQ keeps: frequencies 1-16 of the 64-point DCT-II (no constant term)
_DCT = (np.sqrt(2 / _SIDE) * np.cos(np.pi / 2 / _SIDE * np.arange(1, 17)[:, None]
                                     * (2 * np.arange(_SIDE)[None, :] + 1))).astype(np.float32)
# A left-right flip of the image negates the DCT's odd columns (frequencies 1, 3, ...); the other
# dihedral transforms are that, the same on rows, and the transpose. As (transpose, negate rows, negate columns):
_DIHEDRAL = ((False, False, False), (True, True, False), (False, True, True), (True, False, True),
             (False, True, False), (False, False, True), (True, False, False), (True, True, True))
_ALTERNATE = np.where(np.arange(16) % 2 == 0, -1.0, 1.0).astype(np.float32)


@dataclass(frozen=True)
class PerceptualHash:
    hex: str  # 64 lowercase hex characters
    quality: int  # 0-100, PDQ's gradient-based confidence
    min_quality: int = DEFAULT_MIN_QUALITY
    mirror: str | None = None  # the hash of the left-right mirrored image (PDQ's dihedral hash, same cost)

    @property
    def low_quality(self) -> bool:
        """Too flat or featureless to match reliably: stored, never matched on."""
        return self.quality < self.min_quality


def _bounded(pixels: np.ndarray, max_side: int) -> np.ndarray:
    """The copy a hash is taken on, area-averaged from the array itself (no full-size copy of a large image).
    Against the Pillow box filter used before, the 40 example frames' hashes moved 0-6 bits of 256 (PDQ
    matches within 31)."""
    return np.ascontiguousarray(area_downscale(pixels, max_side))


def bits_to_hex(bits: np.ndarray) -> str:
    return np.packbits(np.asarray(bits, dtype=np.uint8)).tobytes().hex()


def hex_to_bytes(value: str) -> bytes:
    """The 32 bytes of a hash; ValueError when `value` is not 64 hex characters."""
    text = value.strip().lower()
    if len(text) != HASH_HEX_CHARS:
        raise ValueError(f"a PDQ hash is {HASH_HEX_CHARS} hex characters, got {len(text)}")
    return bytes.fromhex(text)


def normalize_hex(value: str) -> str:
    return hex_to_bytes(value).hex()


@functools.lru_cache(maxsize=256)
def _reducer(length: int) -> np.ndarray:
    """PDQ's downsample along one axis of `length` pixels as a (64 x length) matrix: two passes of its box
    filter (window `ceil(length / 128)`, shortened and renormalised at the edges as the reference does),
    then the rows it keeps when it decimates to 64."""
    window = (length + 2 * _SIDE - 1) // (2 * _SIDE)
    ahead = (window + 2) // 2 - 1  # the reference's window reaches this many pixels ahead, the rest behind
    index = np.arange(length)
    low, high = np.maximum(0, index - (window - 1 - ahead)), np.minimum(length - 1, index + ahead)
    box = ((index[None, :] >= low[:, None]) & (index[None, :] <= high[:, None])) / (high - low + 1)[:, None]
    keep = ((np.arange(_SIDE) + 0.5) * length / _SIDE).astype(np.int64)
    return np.ascontiguousarray((box @ box)[keep], dtype=np.float32)


def _dct16(pixels: np.ndarray) -> tuple[np.ndarray | None, int]:
    """PDQ's 16 x 16 DCT of an RGB image and its quality (0-100); None for an image too small to hash."""
    height, width = pixels.shape[:2]
    if height < MIN_HASHABLE_SIDE or width < MIN_HASHABLE_SIDE:
        return None, 0
    luma = pixels.astype(np.float32) @ _LUMA
    small = _reducer(height) @ luma @ _reducer(width).T
    # quality: the summed steps between neighbours, each truncated to a whole number, as the reference sums them
    steps = (np.abs(np.diff(small, axis=0)) * 100 / 255).astype(np.int32).sum()
    steps += (np.abs(np.diff(small, axis=1)) * 100 / 255).astype(np.int32).sum()
    return _DCT @ small @ _DCT.T, min(100, int(steps) // 90)


def _bits_hex(dct: np.ndarray | None) -> str:
    """Each coefficient above the median (the lower middle value, as the reference's Torben median gives) is a
    1; the hex is PDQ's: the last coefficient's bit first."""
    if dct is None:
        return "0" * HASH_HEX_CHARS
    flat = dct.reshape(-1)
    median = np.partition(flat, flat.size // 2 - 1)[flat.size // 2 - 1]
    return bits_to_hex((flat > median)[::-1])


def _dihedral(dct: np.ndarray | None, index: int) -> np.ndarray | None:
    if dct is None:
        return None
    transpose, rows, cols = _DIHEDRAL[index]
    out = dct.T if transpose else dct
    if rows:
        out = out * _ALTERNATE[:, None]
    if cols:
        out = out * _ALTERNATE[None, :]
    return out


def pdq_hash(pixels: np.ndarray, max_side: int = DEFAULT_MAX_SIDE, min_quality: int = DEFAULT_MIN_QUALITY,
             mirror: bool = False) -> PerceptualHash:
    """The PDQ hash of an H x W x 3 uint8 RGB image; with `mirror`, also the hash of its mirror image."""
    dct, quality = _dct16(_bounded(pixels, max_side))
    return PerceptualHash(_bits_hex(dct), quality, min_quality,
                          _bits_hex(_dihedral(dct, MIRROR)) if mirror else None)


def pdq_dihedral(pixels: np.ndarray, max_side: int = DEFAULT_MAX_SIDE) -> dict[str, str]:
    """The hashes of the image's eight rotations and flips (one downsample, eight sign patterns)."""
    dct, _quality = _dct16(_bounded(pixels, max_side))
    return {name: _bits_hex(_dihedral(dct, index)) for index, name in enumerate(DIHEDRAL_NAMES)}


def hamming(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()
