"""The known-fake memory's benchmark: index lookup latency and memory, and PDQ's robustness on our images.

    python -m bench.known_fakes lookup|robustness|faces|all [--out bench/results/known_fakes.json]

What each mode measures, and how: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import time
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from pipeline.hash_index import HashIndex
from pipeline.pdq import DEFAULT_MAX_DISTANCE, hamming, pdq_dihedral, pdq_hash

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO.parent / "shared" / "data" / "examples"
FACES = REPO.parent / "shared" / "data" / "dfdc-faces"


# -- lookup --------------------------------------------------------------------------------------------
def _rss_bytes() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _flip(codes: np.ndarray, rng: np.random.Generator, max_bits: int) -> np.ndarray:
    """Each row with 1..max_bits distinct random bits flipped."""
    bits = np.unpackbits(codes, axis=1)
    for row in bits:
        flip = rng.choice(256, size=int(rng.integers(1, max_bits + 1)), replace=False)
        row[flip] ^= 1
    return np.packbits(bits, axis=1)


def bench_lookup(sizes: list[int], queries: int, seed: int = 0) -> list[dict[str, Any]]:
    import faiss

    faiss.omp_set_num_threads(1)
    rng = np.random.default_rng(seed)
    results = []
    for size in sizes:
        rss_before = _rss_bytes()
        started = time.perf_counter()
        unique = size - size // 10
        codes = rng.integers(0, 256, size=(unique, 32), dtype=np.uint8)
        near = _flip(codes[rng.integers(0, unique, size // 10)], rng, DEFAULT_MAX_DISTANCE)
        codes = np.concatenate([codes, near])
        index = HashIndex()
        index.add_codes(np.arange(1, size + 1, dtype=np.int64), codes, (rng.random(size) < 0.8).astype(np.int8))
        build_s = time.perf_counter() - started
        del near
        rss_after = _rss_bytes()
        targets = rng.integers(0, size, queries // 2)
        near_queries = _flip(codes[targets], rng, DEFAULT_MAX_DISTANCE)
        random_queries = rng.integers(0, 256, size=(queries - queries // 2, 32), dtype=np.uint8)
        hexes = [row.tobytes().hex() for row in np.concatenate([near_queries, random_queries])]
        for h in hexes[:20]:
            index.search(h, DEFAULT_MAX_DISTANCE)  # warm-up
        latencies, cpu, found = [], [], 0
        for i, h in enumerate(hexes):
            c0, t0 = time.thread_time(), time.perf_counter()
            hits = index.search(h, DEFAULT_MAX_DISTANCE)
            latencies.append(time.perf_counter() - t0)
            cpu.append(time.thread_time() - c0)
            if i < len(targets) and any(hit.entry_id == int(targets[i]) + 1 for hit in hits):
                found += 1
        batch = [hexes[i:i + 32] for i in range(0, len(hexes), 32)]
        t0 = time.perf_counter()
        for part in batch:
            index.search_many(part, DEFAULT_MAX_DISTANCE)
        batch_ms = (time.perf_counter() - t0) / len(batch) * 1000
        ms, cpu_ms = np.array(latencies) * 1000, np.array(cpu) * 1000
        row = {"hashes": size, "queries": len(hexes), "p50_ms": round(float(np.percentile(ms, 50)), 3),
               "p99_ms": round(float(np.percentile(ms, 99)), 3), "max_ms": round(float(ms.max()), 3),
               "cpu_p50_ms": round(float(np.percentile(cpu_ms, 50)), 3),
               "cpu_p99_ms": round(float(np.percentile(cpu_ms, 99)), 3),
               "batch32_ms": round(batch_ms, 2), "recall_near": round(found / len(targets), 4),
               "index_mb": round(index.nbytes / 2**20, 1), "rss_delta_mb": round((rss_after - rss_before) / 2**20, 1),
               "build_s": round(build_s, 2)}
        print(json.dumps(row), file=sys.stderr)
        results.append(row)
        del index, codes
    return results


# -- robustness ----------------------------------------------------------------------------------------
def _jpeg(image: Image.Image, quality: int) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _resize(image: Image.Image, scale: float) -> Image.Image:
    return image.resize((max(8, round(image.width * scale)), max(8, round(image.height * scale))),
                        Image.Resampling.BICUBIC)


def _crop(image: Image.Image, share: float) -> Image.Image:
    dx, dy = round(image.width * share), round(image.height * share)
    return image.crop((dx, dy, image.width - dx, image.height - dy))


def _border(image: Image.Image, pixels: int = 10) -> Image.Image:
    out = Image.new("RGB", (image.width + 2 * pixels, image.height + 2 * pixels), (0, 0, 0))
    out.paste(image, (pixels, pixels))
    return out


def _caption(image: Image.Image) -> Image.Image:
    bar = max(16, image.height // 8)
    out = Image.new("RGB", (image.width, image.height + bar), (255, 255, 255))
    out.paste(image, (0, 0))
    ImageDraw.Draw(out).text((bar // 4, image.height + bar // 4), "you won't believe what he said next!!",
                             fill=(0, 0, 0))
    return out


def _screenshot(image: Image.Image) -> Image.Image:
    shot = _resize(image, 0.8).filter(ImageFilter.UnsharpMask(radius=2, percent=120, threshold=2))
    return _jpeg(shot, 85)


TRANSFORMS: dict[str, Any] = {
    **{f"jpeg_q{q}": partial(_jpeg, quality=q) for q in (30, 50, 70, 95)},
    **{f"resize_{s}x": partial(_resize, scale=s) for s in (0.25, 0.5, 1.5, 2.0)},
    **{f"crop_{int(c * 100)}pct_per_side": partial(_crop, share=c) for c in (0.01, 0.02, 0.05, 0.1, 0.2)},
    "border_10px": _border,
    "caption_bar": _caption,
    "screenshot_rescale_sharpen": _screenshot,
    "hflip": lambda im: im.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
}


def _images(max_crops: int) -> list[tuple[str, str, Image.Image]]:
    """(set, name, image): example frames, DFDC face crops (one per group), generated test images."""
    out: list[tuple[str, str, Image.Image]] = []
    if EXAMPLES.is_dir():
        for path in sorted(EXAMPLES.glob("*.jpg")):
            out.append(("frames", path.name, Image.open(path).convert("RGB")))
    if (FACES / "manifest.csv").is_file() and max_crops:
        seen: set[str] = set()
        with open(FACES / "manifest.csv", newline="") as handle:
            for row in csv.DictReader(handle):
                if row["split"] != "test" or row["group"] in seen:
                    continue
                seen.add(row["group"])
                out.append(("crops", row["file"], Image.open(FACES / row["file"]).convert("RGB")))
                if len(seen) >= max_crops:
                    break
    from skimage import data

    # skimage.data.cat is chelsea under another name: not a distinct image
    for name in ("astronaut", "coffee", "chelsea", "camera", "rocket", "coins", "clock", "brick", "immunohistochemistry",
                 "hubble_deep_field"):
        pixels = getattr(data, name)()
        if pixels.ndim == 2:
            pixels = np.stack([pixels] * 3, axis=-1)
        out.append(("generated", name, Image.fromarray(np.ascontiguousarray(pixels[..., :3]))))
    return out


def bench_robustness(max_crops: int, max_distance: int = DEFAULT_MAX_DISTANCE) -> dict[str, Any]:
    images = _images(max_crops)
    originals = []
    per: dict[str, dict[str, list[int]]] = {name: {} for name in TRANSFORMS}
    flip_dihedral: dict[str, list[int]] = {}
    flip_mirror: dict[str, list[int]] = {}
    hash_ms = []
    for kind, name, image in images:
        pixels = np.asarray(image)
        t0 = time.perf_counter()
        original = pdq_hash(pixels)
        hash_ms.append((time.perf_counter() - t0) * 1000)
        originals.append((kind, name, original))
        for transform, fn in TRANSFORMS.items():
            copy = pdq_hash(np.asarray(fn(image)))
            per[transform].setdefault(kind, []).append(hamming(original.hex, copy.hex))
            if transform == "hflip":
                best = min(hamming(h, copy.hex) for h in pdq_dihedral(pixels).values())
                flip_dihedral.setdefault(kind, []).append(best)
                # what the pipeline does: the upload's own mirror-image hash against the bank's hash
                mirrored = pdq_hash(np.asarray(fn(image)), mirror=True).mirror
                flip_mirror.setdefault(kind, []).append(min(hamming(original.hex, copy.hex),
                                                            hamming(original.hex, mirrored or copy.hex)))
    per["hflip_vs_8_dihedral_hashes"] = flip_dihedral
    per["hflip_with_mirror_hash (pipeline)"] = flip_mirror
    rates = {}
    for transform, by_kind in per.items():
        row = {}
        for kind, distances in by_kind.items():
            d = np.array(distances)
            row[kind] = {"n": len(d), "match_rate": round(float((d <= max_distance).mean()), 4),
                         "median_distance": float(np.median(d))}
        rates[transform] = row
    pairs, close = 0, []
    for i in range(len(originals)):
        for j in range(i + 1, len(originals)):
            pairs += 1
            distance = hamming(originals[i][2].hex, originals[j][2].hex)
            if distance <= max_distance:
                close.append({"a": originals[i][1], "b": originals[j][1], "distance": distance})
    low_quality = [name for _, name, h in originals if h.low_quality]
    return {"images": {k: sum(1 for i in images if i[0] == k) for k in ("frames", "crops", "generated")},
            "max_distance": max_distance, "transforms": rates,
            "false_match": {"pairs": pairs, "matches": len(close), "rate": round(len(close) / max(1, pairs), 6),
                            "matched_pairs": close},
            "low_quality": low_quality, "hash_ms_p50": round(float(np.median(hash_ms)), 2)}


def _face_hashes(detector: Any, image: Image.Image, margin: float = 0.3) -> list[str]:
    """PDQ hashes of the square region around each detected face (a study: the pipeline does not do this)."""
    from pipeline.faces import crop_face

    pixels = np.ascontiguousarray(np.asarray(image))
    [faces] = detector.detect([pixels])
    return [pdq_hash(crop_face(pixels, face.box, margin, 256)).hex for face in faces]


def bench_faces(max_distance: int = DEFAULT_MAX_DISTANCE) -> dict[str, Any]:
    """Match rates when each face region is hashed instead of the whole frame: a copy matches when any of
    its face hashes is within the distance of any of the original's; false matches across distinct frames."""
    import torch

    from pipeline.faces import FaceDetector

    torch.set_num_threads(1)
    detector = FaceDetector()
    frames = [(name, image) for kind, name, image in _images(0) if kind == "frames"]
    originals = {name: _face_hashes(detector, image) for name, image in frames}
    rates: dict[str, Any] = {}
    for transform, fn in TRANSFORMS.items():
        matched = found = 0
        for name, image in frames:
            if not originals[name]:
                continue
            copies = _face_hashes(detector, fn(image))
            found += bool(copies)
            matched += any(hamming(a, b) <= max_distance for a in originals[name] for b in copies)
        with_face = sum(1 for v in originals.values() if v)
        rates[transform] = {"frames_with_face": with_face, "copies_with_face": found,
                            "match_rate": round(matched / max(1, with_face), 4)}
        print(json.dumps({transform: rates[transform]}), file=sys.stderr)
    names = [n for n in originals if originals[n]]
    pairs = close = 0
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            pairs += 1
            close += any(hamming(a, b) <= max_distance for a in originals[names[i]] for b in originals[names[j]])
    return {"frames": len(frames), "transforms": rates, "false_match": {"frame_pairs": pairs, "matches": close}}


def _markdown(results: dict[str, Any]) -> str:
    lines = []
    if "lookup" in results:
        lines += ["| hashes | p50 lookup | p99 lookup | p50 / p99 CPU time | 32 queries at once | recall (near-duplicates) | index memory | RSS growth | build |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in results["lookup"]:
            lines.append(f"| {r['hashes']:,} | {r['p50_ms']} ms | {r['p99_ms']} ms | {r['cpu_p50_ms']} / {r['cpu_p99_ms']} ms | {r['batch32_ms']} ms | "
                         f"{r['recall_near']:.0%} | {r['index_mb']} MB | {r['rss_delta_mb']} MB | {r['build_s']} s |")
        lines.append("")
    if "robustness" in results:
        rob = results["robustness"]
        kinds = [k for k, n in rob["images"].items() if n]
        lines += ["| transform | " + " | ".join(f"{k} (n={rob['images'][k]}): match rate, median distance" for k in kinds) + " |",
                  "| --- | " + " | ".join("---" for _ in kinds) + " |"]
        for transform, row in rob["transforms"].items():
            cells = [f"{row[k]['match_rate']:.0%}, {row[k]['median_distance']:.0f}" if k in row else "-" for k in kinds]
            lines.append(f"| {transform} | " + " | ".join(cells) + " |")
        fm = rob["false_match"]
        lines += ["", f"False matches at distance {rob['max_distance']}: {fm['matches']} of {fm['pairs']:,} pairs of "
                  f"distinct images ({fm['rate']:.4%}).",
                  *(f"- {p['a']} ~ {p['b']}: {p['distance']} bits" for p in fm["matched_pairs"][:30])]
    if "faces" in results:
        faces = results["faces"]
        lines += ["| transform | face-region hash: match rate | copies with a face found |", "| --- | --- | --- |"]
        for transform, row in faces["transforms"].items():
            lines.append(f"| {transform} | {row['match_rate']:.0%} | {row['copies_with_face']} of {row['frames_with_face']} |")
        fm = faces["false_match"]
        lines += ["", f"False matches between distinct frames (any face pair): {fm['matches']} of {fm['frame_pairs']} pairs."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.known_fakes", description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["lookup", "robustness", "all", "faces"])
    parser.add_argument("--sizes", default="10000,100000,1000000", help="bank sizes for lookup")
    parser.add_argument("--queries", type=int, default=2000, help="lookups per size")
    parser.add_argument("--crops", type=int, default=100, help="DFDC face crops in the robustness study (one per group)")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    from bench.run import cpu_name

    results: dict[str, Any] = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                               "machine": f"{cpu_name()}, {os.cpu_count()} vCPU"}
    if args.what in ("lookup", "all"):
        results["lookup"] = bench_lookup([int(s) for s in args.sizes.split(",")], args.queries)
    if args.what in ("robustness", "all"):
        results["robustness"] = bench_robustness(args.crops)
    if args.what == "faces":
        results["faces"] = bench_faces()
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(_markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
