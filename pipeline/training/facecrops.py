"""A labelled folder of whole images turned into the face crops serving would score: MTCNN (the product's
detector and settings), the most confident face, cut with the model's margin at 224 px and stored as PNG, so
training sees a family such as gan-faces the way an upload of it is screened."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from pipeline.csv_cells import SafeDictWriter
from pipeline.decode import decode_image
from pipeline.errors import InvalidInput
from pipeline.faces import FaceDetector, crop_face
from pipeline.training.data import SOURCE_SIDE, read_manifest

log = logging.getLogger(__name__)


def crop_dataset(source: Path, out: Path, margin: float = 0.0, progress: bool = True) -> dict[str, int]:
    """Write `out/manifest.csv` and one PNG crop per source image that has a face. Images without a face are
    left out and counted; an existing output with the same source and margin is reused as it is."""
    stamp = {"source": str(Path(source).resolve()), "margin": margin, "side": SOURCE_SIDE}
    done = out / "crops.json"
    if done.is_file() and json.loads(done.read_text()).get("stamp") == stamp:
        return dict(json.loads(done.read_text())["counts"])
    detector = FaceDetector()
    samples = read_manifest(source)
    rows = []
    counts = {"images": len(samples), "cropped": 0, "no_face": 0, "invalid": 0}
    for sample in tqdm(samples, desc=f"cropping {source.name}", disable=not progress):
        try:
            pixels = decode_image((source / sample.file).read_bytes()).pixels
        except InvalidInput:
            counts["invalid"] += 1
            continue
        faces = detector.detect([pixels])[0]
        if not faces:
            counts["no_face"] += 1
            continue
        name = str(Path(sample.file).with_suffix(".png"))
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(crop_face(pixels, faces[0].box, margin, SOURCE_SIDE)).save(out / name)
        rows.append({"file": name, "label": "fake" if sample.label else "real", "group": sample.group,
                     "split": sample.split})
        counts["cropped"] += 1
    with (out / "manifest.csv").open("w", newline="") as handle:
        writer = SafeDictWriter(handle, fieldnames=["file", "label", "group", "split"])
        writer.writeheader()
        writer.writerows(rows)
    done.write_text(json.dumps({"stamp": stamp, "counts": counts}, indent=2) + "\n")
    log.info("cropped source=%s counts=%s", source, counts)
    return counts


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pipeline.training.facecrops", description=__doc__)
    parser.add_argument("source", type=Path, help="labelled folder with manifest.csv (e.g. ../shared/data/gan-faces)")
    parser.add_argument("out", type=Path, help="where the crops and their manifest.csv go")
    parser.add_argument("--margin", type=float, default=0.0, help="per side, as a share of the box (the model's)")
    args = parser.parse_args(argv)
    print(json.dumps(crop_dataset(args.source, args.out, args.margin), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
