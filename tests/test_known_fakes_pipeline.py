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
