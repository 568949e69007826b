"""`deepscreen evaluate`: run a labelled folder through the same screening as `scan`, then score it.

Inputs: `real/` and `fake/` subfolders, or a CSV with `file,label` relative to the folder. Full images go
through detect -> classify (image score = max over faces); `--crops` takes each input as a face crop.
An input with no face or an invalid one has no score: it counts as P(fake) = 0 in the metrics (a real
upload it would have been), and appears in status_counts and face_detection_rate.
"""

from __future__ import annotations

import csv
import json
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.csv_cells import SafeWriter, restore_cell
from pipeline.training.report import markdown_report, metrics_document, write_plots
from workers.embedded import scan
from workers.processing import Runtime

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


def labelled_files(data: Path, labels_csv: Path | None = None, split: str | None = None) -> list[tuple[Path, int]]:
    """(path, label) pairs, label 1 = fake. `split` keeps the CSV rows of that split (a manifest.csv)."""
    if labels_csv is not None:
        with labels_csv.open(newline="") as handle:
            rows = [{k: restore_cell(v) if isinstance(v, str) else v for k, v in row.items()}
                    for row in csv.DictReader(handle)]  # manifests we write quote formula-like cells
        if not rows or not {"file", "label"} <= set(rows[0]):
            raise ValueError(f"{labels_csv} needs the columns file,label")
        if split is not None:
            if "split" not in rows[0]:
                raise ValueError(f"{labels_csv} has no split column")
            rows = [r for r in rows if r["split"] == split]
        out = []
        for row in rows:
            label = row["label"].strip().lower()
            if label not in ("real", "fake", "0", "1"):
                raise ValueError(f"{labels_csv}: unknown label {row['label']!r}")
            out.append((data / row["file"], int(label in ("fake", "1"))))
        return out
    if split is not None:
        manifest = data / "manifest.csv"
        if not manifest.is_file():
            raise ValueError("--split needs --labels CSV or a manifest.csv in the data folder")
        return labelled_files(data, manifest, split)
    pairs = []
    for label_name, label in (("real", 0), ("fake", 1)):
        folder = data / label_name
        if folder.is_dir():
            pairs += [(p, label) for p in sorted(folder.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]
    if not pairs:
        raise ValueError(f"{data} has no real/ or fake/ images; give --labels CSV")
    return pairs


def fresh_home(out: Path) -> Path:
    """Each evaluation screens afresh: a cached verdict from other settings must not answer for this one."""
    home = out / "home"
    if home.exists():
        shutil.rmtree(home)
    return home


def evaluate(runtime: Runtime, files: list[tuple[Path, int]], out: Path, batch_size: int, data_name: str,
             progress: bool = True) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    report = scan(runtime, [p for p, _ in files], batch_size, progress=progress)
    labels = np.array([label for _, label in files])
    probs = np.array([r["fake_probability"] if r["fake_probability"] is not None else 0.0 for r in report.results])
    statuses = Counter(r["status"] for r in report.results)
    meta = runtime.screener.classifier.meta
    crops = runtime.screener.config.crops
    document = metrics_document(
        labels, probs, meta.threshold_fake, meta.threshold_real,
        data=data_name, mode="crops" if crops else "full-image", model_version=runtime.screener.model_version,
        face_detection_rate=statuses.get("scored", 0) / max(1, len(files)),
        status_counts=dict(statuses), images_per_s=report.images_per_second,
    )
    with (out / "scores.csv").open("w", newline="") as handle:
        writer = SafeWriter(handle)
        writer.writerow(["file", "label", "status", "reason", "fake_probability", "verdict", "faces"])
        for (path, label), row in zip(files, report.results, strict=True):
            writer.writerow([str(path), "fake" if label else "real", row["status"], row["reason"] or "",
                             "" if row["fake_probability"] is None else f"{row['fake_probability']:.6f}",
                             row["verdict"] or "", len(row["faces"])])
    plots = write_plots(labels, probs, document, out)
    (out / "metrics.json").write_text(json.dumps(document, indent=2) + "\n")
    (out / "report.md").write_text(markdown_report(document, plots))
    return document
