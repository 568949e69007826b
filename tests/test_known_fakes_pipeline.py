"""The known-fake memory's pure parts: PDQ hashes, the binary index, the match rule."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from pipeline.hash_index import HashIndex, IndexHit
from pipeline.known_fakes import MATCHED_KNOWN_FAKE, apply_bank_hits
from pipeline.pdq import hamming, hex_to_bytes, pdq_dihedral, pdq_hash
from pipeline.screen import Verdict


def _reencoded(pixels: np.ndarray, scale: float, quality: int) -> np.ndarray:
    image = Image.fromarray(pixels)
    image = image.resize((int(image.width * scale), int(image.height * scale)), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def _random_hex(rng: np.random.Generator) -> str:
    return rng.integers(0, 256, 32, dtype=np.uint8).tobytes().hex()


def _flip_bits(hex_hash: str, bits: list[int]) -> str:
    value = int(hex_hash, 16)
    for bit in bits:
        value ^= 1 << bit
    return f"{value:064x}"


def test_a_reencoded_resized_copy_is_near_and_a_different_image_is_far(astronaut) -> None:  # noqa: ANN001
    from skimage import data

    original = pdq_hash(astronaut)
    assert len(original.hex) == 64 and len(hex_to_bytes(original.hex)) == 32
    assert original.quality >= 50 and not original.low_quality
    copy = pdq_hash(_reencoded(astronaut, 0.6, 40))
    assert hamming(original.hex, copy.hex) <= 31
    other = pdq_hash(np.ascontiguousarray(data.coffee()))
    assert hamming(original.hex, other.hex) > 31
    # the flip defeats PDQ, and the dihedral hashes of the original catch it
    flipped = pdq_hash(np.ascontiguousarray(astronaut[:, ::-1]))
    assert hamming(original.hex, flipped.hex) > 31
    assert min(hamming(h, flipped.hex) for h in pdq_dihedral(astronaut).values()) <= 31
    with_mirror = pdq_hash(astronaut, mirror=True)
    assert with_mirror.hex == original.hex and hamming(with_mirror.mirror, flipped.hex) <= 31


def _reference_images() -> list[np.ndarray]:
    """Natural images at sizes that exercise every window and edge case of PDQ's downsample (odd, prime,
    below and above 64 and 128, above the 512 px bound), JPEG round trips, and noise down to PDQ's 5 px minimum."""
    from skimage import data

    images = []
    for name in ("astronaut", "coffee", "chelsea", "rocket"):
        base = Image.fromarray(getattr(data, name)()).convert("RGB")
        for size in ((7, 5), (33, 64), (63, 65), (100, 300), (129, 257), (224, 224), (511, 200), (700, 1300)):
            images.append(np.asarray(base.resize(size)))
        images.append(_reencoded(np.asarray(base), 0.7, 60))
    rng = np.random.default_rng(11)
    images += [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((5, 5, 3), (6, 9, 3), (64, 64, 3), (97, 31, 3))]
    images += [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((1, 1, 3), (4, 100, 3), (100, 4, 3))]
    return [np.ascontiguousarray(image) for image in images]


def test_pdq_gives_the_reference_implementation_s_bits_and_quality() -> None:
    """Partners' hash lists are made with PDQ's reference; pipeline/pdq.py must give its exact bits (all eight
    dihedral hashes, so the mirror too) and quality, not merely near ones."""
    import pdqhash  # a dev dependency: the reference, never imported by the product

    from pipeline.pdq import DIHEDRAL_NAMES, MIRROR, _bounded, bits_to_hex

    for image in _reference_images():
        reference, quality = pdqhash.compute_dihedral(_bounded(image, 512))
        expected = [bits_to_hex(bits) for bits in reference]
        ours = pdq_hash(image, mirror=True)
        assert (ours.hex, ours.mirror, ours.quality) == (expected[0], expected[MIRROR], quality), image.shape
        assert [pdq_dihedral(image)[name] for name in DIHEDRAL_NAMES] == expected, image.shape


def test_pdq_hashes_on_two_threads_at_once_agree_with_one() -> None:
    """The hash runs on the screening threads, several at a time: its cached matrices are shared."""
    from concurrent.futures import ThreadPoolExecutor

    images = _reference_images()
    alone = [pdq_hash(image, mirror=True) for image in images]
    with ThreadPoolExecutor(max_workers=4) as pool:
        assert list(pool.map(lambda image: pdq_hash(image, mirror=True), images * 3)) == alone * 3


def test_a_flat_image_is_marked_low_quality() -> None:
    flat = pdq_hash(np.full((200, 200, 3), 128, dtype=np.uint8))
    assert flat.low_quality and flat.quality < 50


def test_the_index_finds_within_the_distance_and_forgets_removed_entries(tmp_path) -> None:  # noqa: ANN001
    rng = np.random.default_rng(7)
    base = _random_hex(rng)
    index = HashIndex()
    index.add([(1, base, "fake"), (2, _flip_bits(base, list(range(31))), "real"),
               (3, _flip_bits(base, list(range(32))), "fake")] + [(100 + i, _random_hex(rng), "fake") for i in range(500)])
    hits = index.search(base, 31)
    assert [(h.entry_id, h.distance, h.label) for h in hits] == [(1, 0, "fake"), (2, 31, "real")]
    assert [h.entry_id for h in index.search(base, 32)] == [1, 2, 3]
    index.remove([1])
    assert [h.entry_id for h in index.search(base, 31)] == [2]
    index.remove([100 + i for i in range(300)])  # compaction: a quarter is dead
    assert len(index) == 202 and [h.entry_id for h in index.search(base, 32)] == [2, 3]
    index.revision = 42
    path = tmp_path / "index.npz"
    index.save(path)
    loaded = HashIndex.load(path)
    assert loaded.revision == 42 and len(loaded) == 202
    assert [h.entry_id for h in loaded.search(base, 32)] == [2, 3]
    assert loaded.search_many([], 31) == []


def _verdict(status: str = "scored", label: str | None = "real", quality: int = 100) -> Verdict:
    from pipeline.pdq import PerceptualHash

    return Verdict(key="k", status=status, model_version="m", sha256="0" * 64, verdict=label,  # type: ignore[arg-type]
                   fake_probability=0.1 if status == "scored" else None, pdq=PerceptualHash("ab" * 32, quality),
                   reason=None if status == "scored" else status)


@pytest.mark.parametrize("status", ["scored", "no_face"])
def test_a_fake_hit_overrides_the_classifier_and_keeps_its_score(status: str) -> None:
    out = apply_bank_hits(_verdict(status), [IndexHit(9, 20, "real"), IndexHit(5, 12, "fake"), IndexHit(6, 3, "fake")])
    assert (out.status, out.verdict, out.reason) == ("scored", "fake", MATCHED_KNOWN_FAKE)
    assert out.fake_probability == (0.1 if status == "scored" else None)
    assert {(m.entry_id, m.label, m.distance) for m in out.matches} == {(6, "fake", 3), (9, "real", 20)}
    via_mirror = apply_bank_hits(_verdict(status), [IndexHit(9, 20, "real")], [IndexHit(5, 12, "fake")])
    assert via_mirror.reason == MATCHED_KNOWN_FAKE
    assert {(m.entry_id, m.mirrored) for m in via_mirror.matches} == {(5, True), (9, False)}


def test_a_real_hit_never_changes_the_verdict_and_low_quality_never_matches() -> None:
    fake_by_classifier = _verdict(label="fake")
    out = apply_bank_hits(fake_by_classifier, [IndexHit(9, 2, "real")])
    assert out.verdict == "fake" and out.reason is None and [m.label for m in out.matches] == ["real"]
    low = _verdict(quality=10)
    assert apply_bank_hits(low, [IndexHit(5, 0, "fake")]) == low
    broken = Verdict(key="k", status="invalid_input", model_version="m", reason="truncated")
    assert apply_bank_hits(broken, [IndexHit(5, 0, "fake")]) == broken


def test_the_lookup_bench_runs_and_finds_every_near_duplicate() -> None:
    from bench.known_fakes import bench_lookup

    [row] = bench_lookup([2000], queries=100)
    assert row["hashes"] == 2000 and row["queries"] == 100 and row["recall_near"] == 1.0
    assert 0 < row["p50_ms"] <= row["p99_ms"] and row["index_mb"] > 0
