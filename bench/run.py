"""The benchmark harness (`make bench`): every embedded row measured in one run on the same images, printed
as a table with ratios and written to bench/results/<timestamp>.json. The rows (`--only`) are described in
docs/benchmarks.md; times cover the screening loop only (model load is reported separately).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"


def cpu_name() -> str:
    """The CPU's model name (the machine behind these figures changes between sessions), or the platform's."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def crop_files(limit: int) -> list[Path]:
    """Face crops: the DFDC test split when present, else generated crops of a real face."""
    root = SHARED / "dfdc-faces"
    if (root / "manifest.csv").is_file():
        with (root / "manifest.csv").open() as handle:
            rows = [r for r in csv.DictReader(handle) if r["split"] == "test"]
        return [root / r["file"] for r in rows[:limit]]
    return generated_crops(limit)


def generated_crops(limit: int) -> list[Path]:
    import numpy as np
    from PIL import Image
    from skimage import data

    folder = Path(tempfile.mkdtemp(prefix="bench-crops-"))
    face = np.asarray(Image.fromarray(data.astronaut()).crop((150, 20, 330, 200)).resize((224, 224)))
    rng = np.random.default_rng(0)
    paths = []
    for i in range(limit):
        noisy = np.clip(face.astype(np.int16) + rng.integers(-6, 7, face.shape), 0, 255).astype(np.uint8)
        path = folder / f"crop-{i:05d}.jpg"
        Image.fromarray(noisy).save(path, quality=80)
        paths.append(path)
    return paths


def frame_files() -> list[Path]:
    folder = SHARED / "examples"
    if folder.is_dir():
        return sorted(folder.glob("*.jpg"))
    import numpy as np
    from PIL import Image
    from skimage import data

    out = Path(tempfile.mkdtemp(prefix="bench-frames-"))
    face = Image.fromarray(data.astronaut())
    paths = []
    for i in range(40):
        canvas = Image.fromarray(np.full((1080, 1920, 3), 60 + i, np.uint8))
        canvas.paste(face.resize((300 + 5 * i, 300 + 5 * i)), (200 + 20 * i, 150))
        path = out / f"frame-{i:02d}.jpg"
        canvas.save(path, quality=90)
        paths.append(path)
    return paths


def model_folder(spec: str) -> Path:
    """A model folder from a path, or from `git:REV:PATH` (its model.json and model.safetensors at REV)."""
    import subprocess

    if not spec.startswith("git:"):
        return Path(spec)
    _, rev, path = spec.split(":", 2)
    folder = Path(tempfile.mkdtemp(prefix="bench-model-"))
    for name in ("model.json", "model.safetensors"):
        blob = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:{path.rstrip('/')}/{name}"],
                              check=True, capture_output=True).stdout
        (folder / name).write_bytes(blob)
    return folder


def bench_seed_baseline(settings, files: list[Path]) -> dict[str, Any]:  # noqa: ANN001
    """The single-image demos this product replaces, implemented faithfully with our weights: per image,
    MTCNN(select_largest=False, post_process=False) on the full image for one face, the crop resized to
    256x256 and divided by 255, one pass inside Grad-CAM (eigen_smooth, fake logit) and one more for the score."""
    import torch
    import torch.nn.functional as F
    from facenet_pytorch import MTCNN
    from PIL import Image
    from pytorch_grad_cam import GradCAM

    from pipeline.model import load_classifier
    from workers.runtime import configure_torch

    configure_torch(settings)
    classifier = load_classifier(settings.model_dir, device="cpu", precision="fp32", fold=False)  # as the demos ran it
    model = classifier.net.eval()
    mtcnn = MTCNN(select_largest=False, post_process=False, device="cpu").eval()
    layer = classifier.layer(classifier.meta.gradcam_layer)

    def one(path: Path) -> float | None:
        image = Image.open(path).convert("RGB")
        face = mtcnn(image)
        if face is None:
            return None
        face = F.interpolate(face.unsqueeze(0), size=(256, 256), mode="bilinear", align_corners=False) / 255.0
        cam = GradCAM(model=model, target_layers=[layer])
        cam(input_tensor=face, targets=[lambda out: out[..., 0]], eigen_smooth=True)
        cam.activations_and_grads.release()
        with torch.no_grad():
            return float(torch.sigmoid(model(face).squeeze()))

    one(files[0])  # warm-up
    started = time.perf_counter()
    scored = sum(1 for path in files if one(path) is not None)
    seconds = time.perf_counter() - started
    return {"images": len(files), "seconds": seconds, "images_per_s": len(files) / seconds, "with_face": scored}


def bench_forward(settings, crops: list[Path], batch: int, threads: int = 1) -> dict[str, Any]:  # noqa: ANN001
    """The bare forward on pre-decoded, pre-cut crops in batches of `batch`; with `threads` > 1, that many
    batches run at once on Python threads (each with the settings' torch threads), as scan's chunks do."""
    from concurrent.futures import ThreadPoolExecutor

    from pipeline.decode import decode_image
    from pipeline.faces import resize_square
    from pipeline.model import crops_to_tensor, load_classifier
    from workers.runtime import configure_torch

    configure_torch(settings)
    classifier = load_classifier(settings.model_dir, device=settings.device, precision=settings.precision)
    size = classifier.meta.input_size
    pixels = [resize_square(decode_image(p.read_bytes()).pixels, size) for p in crops]
    tensors = [crops_to_tensor(pixels[i : i + batch], classifier.meta) for i in range(0, len(pixels), batch)]
    with ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="forward") as pool:
        list(pool.map(classifier.logits, tensors[: max(1, threads)]))  # warm-up, on every thread
        started = time.perf_counter()
        list(pool.map(classifier.logits, tensors))
        seconds = time.perf_counter() - started
    return {"images": len(pixels), "seconds": seconds, "images_per_s": len(pixels) / seconds}


def _merge_rounds(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Rounds of one row: all images over all seconds, with each round's own figure kept for the spread."""
    out = dict(runs[-1])
    images, seconds = sum(r["images"] for r in runs), sum(r["seconds"] for r in runs)
    out.update(images=images, seconds=seconds, images_per_s=images / seconds,
               rounds=[round(r["images_per_s"], 2) for r in runs])
    if all("cpu_seconds" in r for r in runs):
        out["cpu_seconds"] = sum(r["cpu_seconds"] for r in runs)
    return out


def bench_scan(settings, files: list[Path], crops: bool, rounds: int = 1) -> dict[str, Any]:  # noqa: ANN001
    """`rounds` timed scans of the same files, each into a fresh home (so none is answered from another's
    store); the figure is all images over all seconds, and the rounds' own figures show the spread."""
    return _merge_rounds([_scan_once(settings, files, crops) for _ in range(max(1, rounds))])


def _scan_once(settings, files: list[Path], crops: bool) -> dict[str, Any]:  # noqa: ANN001
    from workers.embedded import scan
    from workers.runtime import embedded_runtime

    home = Path(tempfile.mkdtemp(prefix="bench-home-"))
    warm_home = Path(tempfile.mkdtemp(prefix="bench-warm-"))
    try:
        # A whole scan of the first batch into a throwaway home first: a worker or a long scan runs warm, so
        # one-time costs (lazy imports, first statements, kernel selection) stay out of the figure, and nothing
        # the timed scan screens is answered from this warm-up's store.
        warm = embedded_runtime(settings, warm_home, crops=crops)
        scan(warm, files[: settings.batch_size], settings.batch_size, progress=False)
        warm.store.engine.dispose()
        loaded = time.perf_counter()
        runtime = embedded_runtime(settings, home, crops=crops)
        load_seconds = time.perf_counter() - loaded
        cpu = os.times()
        report = scan(runtime, files, settings.batch_size, progress=False)
        cpu_after = os.times()
        runtime.store.engine.dispose()
    finally:
        shutil.rmtree(home, ignore_errors=True)
        shutil.rmtree(warm_home, ignore_errors=True)
    return {"images": len(files), "seconds": report.seconds, "images_per_s": report.images_per_second,
            "model_load_s": load_seconds, "counts": report.counts(),
            "cpu_seconds": cpu_after.user - cpu.user + cpu_after.system - cpu.system}  # the timed scan's alone


def main(argv: list[str] | None = None) -> int:
    from pipeline.model import cpu_has_bf16_units, resolve_device, resolve_precision
    from workers.settings import Settings

    parser = argparse.ArgumentParser(prog="bench.run", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crops", type=int, default=1000, help="number of face crops (default 1000)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: settings)")
    parser.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=None,
                        help="the classifier's autocast (default: settings, auto)")
    parser.add_argument("--only", default="seed,forward,forward-all,forward-chunks,scan-crops,scan-crops-none,scan,scan-all,scan-none",
                        help="comma-separated rows to run")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of each frame row, and of the crops rows (run interleaved): one round is noisy")
    parser.add_argument("--sweep", default="",
                        help="comma-separated batch sizes: also time the forward-chunks arrangement at each, to check "
                             "that CROPS_CHUNK is the bare forward's best (the bar scan --crops is held to)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--model", default=None, help="model folder (default: settings' model_dir)")
    parser.add_argument("--compare", default=None,
                        help="a second model (folder or git:REV:PATH) whose forward, scan-crops and scan rows run "
                             "in the same run, suffixed @compare")
    args = parser.parse_args(argv)

    overrides: dict[str, Any] = {}
    if args.threads:
        overrides["torch_threads"] = args.threads
    if args.precision:
        overrides["precision"] = args.precision
    if args.model:
        overrides["model_dir"] = model_folder(args.model)
    settings = Settings(**overrides)
    rows = set(args.only.split(","))
    crops = crop_files(args.crops)
    frames = frame_files()
    results: dict[str, Any] = {}
    if "seed" in rows:
        results["seed"] = bench_seed_baseline(settings, frames)
    if "forward" in rows:
        results["forward"] = bench_forward(settings, crops, settings.batch_size)
    # The crops rows and their ceilings run interleaved, round by round, so a slow spell of this shared machine
    # lands on all of them alike instead of on whichever row it happened to hit.
    cores = settings.torch_threads * max(1, settings.screen_threads)
    crop_rows: dict[str, Any] = {
        "forward-all": lambda: bench_forward(settings.model_copy(update={"torch_threads": cores}), crops,
                                             settings.batch_size),
        "forward-chunks": lambda: bench_forward(settings, crops, max(1, settings.crops_chunk),
                                                threads=max(1, settings.screen_threads)),
        "scan-crops": lambda: _scan_once(settings, crops, crops=True),
        "scan-crops-none": lambda: _scan_once(settings.model_copy(update={"heatmaps": "none"}), crops, crops=True),
    }
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in crop_rows if name in rows}
    for _ in range(max(1, args.rounds) if runs else 0):
        for name in runs:
            runs[name].append(crop_rows[name]())
    for name, done in runs.items():
        results[name] = _merge_rounds(done)
    if "forward-all" in results:
        results["forward-all"]["torch_threads"] = cores
    for size in [int(v) for v in args.sweep.split(",") if v.strip()]:
        results[f"forward-chunks@{size}"] = _merge_rounds(
            [bench_forward(settings, crops, size, threads=max(1, settings.screen_threads))
             for _ in range(max(1, args.rounds))])
    if "scan" in rows:
        results["scan"] = bench_scan(settings, frames, crops=False, rounds=args.rounds)
    if "scan-all" in rows:
        results["scan-all"] = bench_scan(settings.model_copy(update={"heatmaps": "all"}), frames, crops=False,
                                         rounds=args.rounds)
    if "scan-none" in rows:
        results["scan-none"] = bench_scan(settings.model_copy(update={"heatmaps": "none"}), frames, crops=False,
                                          rounds=args.rounds)
    if args.compare:
        other = settings.model_copy(update={"model_dir": model_folder(args.compare)})
        if "forward" in rows:
            results["forward@compare"] = bench_forward(other, crops, other.batch_size)
        if "scan-crops" in rows:
            results["scan-crops@compare"] = _merge_rounds(
                [_scan_once(other, crops, crops=True) for _ in range(max(1, args.rounds))])
        if "scan" in rows:
            results["scan@compare"] = bench_scan(other, frames, crops=False, rounds=args.rounds)
    meta = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "model_dir": str(settings.model_dir),
            "compare": args.compare,
            "torch_threads": settings.torch_threads, "screen_threads": settings.screen_threads,
            "overlap_chunk": settings.overlap_chunk, "crops_chunk": settings.crops_chunk,
            "precision": resolve_precision(settings.precision, resolve_device(settings.device)),
            "cpu": cpu_name(), "cpu_bf16_units": cpu_has_bf16_units(), "decode_threads": settings.decode_threads,
            "batch_size": settings.batch_size, "detect_max_side": settings.detect_max_side,
            "python": sys.version.split()[0]}
    print_table(results, meta)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"bench-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json"
    path.write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"\nwritten to {path}")
    return 0


def print_table(results: dict[str, Any], meta: dict[str, Any]) -> None:
    print(f"\n{meta['date']}  torch_threads={meta['torch_threads']} screen_threads={meta['screen_threads']} "
          f"overlap_chunk={meta['overlap_chunk']} crops_chunk={meta['crops_chunk']} precision={meta['precision']} "
          f"batch={meta['batch_size']} detect_max_side={meta['detect_max_side']}")
    print(f"cpu: {meta['cpu']} (bf16 units: {'yes' if meta['cpu_bf16_units'] else 'no'})")
    print(f"{'row':<15} {'images':>7} {'seconds':>8} {'images/s':>9}  ratio")
    speed = {name: row["images_per_s"] for name, row in results.items()}
    against = {"scan-crops": "forward", "scan-crops-none": "forward", "scan": "seed", "scan-all": "seed",
               "scan-none": "seed", "forward@compare": "forward", "scan-crops@compare": "scan-crops",
               "scan@compare": "scan"}
    for name, row in results.items():
        base = against.get(name)
        ratio = f"{speed[name] / speed[base]:.2f} x {base}" if base in speed and speed[base] else ""
        if name in ("scan-crops", "scan-crops-none"):
            for ceiling in ("forward-all", "forward-chunks"):
                if speed.get(ceiling):
                    ratio += f"{'; ' if ratio else ''}{speed[name] / speed[ceiling]:.2f} x {ceiling}"
        if name in ("scan-all", "scan-none") and speed.get("scan"):
            ratio += f"{'; ' if ratio else ''}{speed[name] / speed['scan']:.2f} x scan"
        spread = f"  (rounds: {', '.join(f'{r:.2f}' for r in row['rounds'])})" if len(row.get("rounds", [])) > 1 else ""
        print(f"{name:<15} {row['images']:>7} {row['seconds']:>8.1f} {row['images_per_s']:>9.2f}  {ratio}{spread}")


if __name__ == "__main__":
    sys.exit(main())
