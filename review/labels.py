"""Moderators' decisions as training labels: a dataset folder `deepscreen train` reads.

out/real/*.jpg, out/fake/*.jpg and out/manifest.csv (file,label,group,split; pipeline.training.data
read_manifest). Each face is cut from the original with the same crop_face and margin serving uses, at the
dataset's side. A `marked_real` image gives all its faces as real. A `confirmed_fake` image gives the face
that decided its score (the highest P(fake)) and any other face the model called fake; its remaining faces
are left out, since the decision does not say which of them were manipulated. The split is drawn from the
image's sha256, so every face of one image lands in the same split, on every run.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from PIL import Image
from tqdm import tqdm

from pipeline.csv_cells import SafeDictWriter
from pipeline.decode import DecodeLimits, decode_image
from pipeline.errors import InvalidInput
from pipeline.faces import crop_face
from pipeline.training.data import SOURCE_SIDE
from review.context import ReviewContext

log = logging.getLogger(__name__)


@dataclass
class ExportReport:
    items: int = 0
    crops: dict[str, int] = field(default_factory=lambda: {"real": 0, "fake": 0})
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def as_dict(self) -> dict[str, Any]:
        return {"items": self.items, "crops": self.crops, "skipped": self.skipped}


def split_of(sha256: str, val_percent: int) -> str:
    return "val" if int(sha256[:8], 16) % 100 < val_percent else "train"


def faces_to_export(label: str, faces: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if label == "real" or not faces:
        return list(faces)
    top = max(f["fake_probability"] for f in faces)
    return [f for f in faces if f["fake_probability"] == top or f["verdict"] == "fake"]


def export_labels(ctx: ReviewContext, out: Path, margin: float, val_percent: int = 10,
                  progress: bool = True) -> ExportReport:
    out.mkdir(parents=True, exist_ok=True)
    for label in ("real", "fake"):
        (out / label).mkdir(exist_ok=True)
    limits = DecodeLimits(max_bytes=ctx.settings.max_image_bytes, max_pixels=ctx.settings.max_image_pixels)
    report = ExportReport()
    rows: list[dict[str, str]] = []
    items = ctx.images.labelled()
    for item in tqdm(items, desc="export-labels", unit="image", disable=not progress):
        report.items += 1
        chosen = faces_to_export(item["label"], item["faces"])
        if not chosen:
            report.skip("no_face")
            continue
        try:
            pixels = decode_image(ctx.reader.read(item["uri"]), limits).pixels
        except InvalidInput as exc:
            report.skip(f"original_{exc.reason}")
            continue
        except Exception as exc:  # noqa: BLE001 - one unreadable original must not end the export
            report.skip(f"original_{type(exc).__name__}")
            continue
        split = split_of(item["sha256"], val_percent)
        for face in chosen:
            crop = crop_face(pixels, tuple(face["box"]), margin, SOURCE_SIDE)  # type: ignore[arg-type]
            name = f"{item['label']}/{item['sha256'][:20]}-face{face['index']}.jpg"
            buffer = io.BytesIO()
            Image.fromarray(crop).save(buffer, format="JPEG", quality=95)
            (out / name).write_bytes(buffer.getvalue())
            rows.append({"file": name, "label": item["label"], "group": item["sha256"], "split": split})
            report.crops[item["label"]] += 1
    with (out / "manifest.csv").open("w", newline="") as handle:
        writer = SafeDictWriter(handle, fieldnames=["file", "label", "group", "split"])
        writer.writeheader()
        writer.writerows(rows)
    (out / "export.json").write_text(json.dumps({"exported_at": datetime.now(UTC).isoformat(), "margin": margin,
                                                 "side": SOURCE_SIDE, "val_percent": val_percent,
                                                 **report.as_dict()}, indent=2) + "\n")
    log.info("export-labels out=%s items=%d real=%d fake=%d", out, report.items, report.crops["real"],
             report.crops["fake"])
    return report
