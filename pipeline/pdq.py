"""PDQ perceptual hashes of decoded images: 256 bits as 64 hex characters, with PDQ's quality score.

The hex form is the ThreatExchange one: the 256 bits in order, most significant first. Hashes are taken on
a copy at most `max_side` pixels long (PDQ itself works on a 64 x 64 downsample, and a 1080p frame costs
60-100 ms at full size against about 3 ms at 512 px on this CPU); every hash deepscreen stores is made the
same way, so stored hashes compare like with like.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pdqhash
from PIL import Image

HASH_BITS = 256
HASH_HEX_CHARS = HASH_BITS // 4
DEFAULT_MAX_DISTANCE = 31  # PDQ's documented match threshold, of 256 bits
DEFAULT_MIN_QUALITY = 50  # below this PDQ's own docs call the hash too unreliable to match on
DEFAULT_MAX_SIDE = 512
# pdqhash's order. flip_y mirrors about the vertical axis (left-right): the flip uploads use.
DIHEDRAL_NAMES = ("original", "rotate90", "rotate180", "rotate270", "flip_x", "flip_y", "flip_plus1",
                  "flip_minus1")
MIRROR = DIHEDRAL_NAMES.index("flip_y")


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
    height, width = pixels.shape[:2]
    if max(height, width) <= max_side:
        return np.ascontiguousarray(pixels)
    image = Image.fromarray(pixels)
    image.thumbnail((max_side, max_side), Image.Resampling.BOX)
    return np.asarray(image)


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


def pdq_hash(pixels: np.ndarray, max_side: int = DEFAULT_MAX_SIDE, min_quality: int = DEFAULT_MIN_QUALITY,
             mirror: bool = False) -> PerceptualHash:
    """The PDQ hash of an H x W x 3 uint8 RGB image; with `mirror`, also the hash of its mirror image."""
    bounded = _bounded(pixels, max_side)
    if mirror:
        hashes, quality = pdqhash.compute_dihedral(bounded)
        return PerceptualHash(bits_to_hex(hashes[0]), int(quality), min_quality, bits_to_hex(hashes[MIRROR]))
    bits, quality = pdqhash.compute(bounded)
    return PerceptualHash(bits_to_hex(bits), int(quality), min_quality)


def pdq_dihedral(pixels: np.ndarray, max_side: int = DEFAULT_MAX_SIDE) -> dict[str, str]:
    """The hashes of the image's eight rotations and flips (one pass, a little dearer than one hash)."""
    hashes, _quality = pdqhash.compute_dihedral(_bounded(pixels, max_side))
    return {name: bits_to_hex(bits) for name, bits in zip(DIHEDRAL_NAMES, hashes, strict=True)}


def hamming(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()
