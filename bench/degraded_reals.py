"""False positives on degraded real faces: the real test crops as they are, after a strong blur, and after
JPEG quality 30. A model that learnt "blurry means fake" shows it here.

    python -m bench.degraded_reals [--model DIR] [--limit N] [--split test|val]

Use `--split val` to compare training runs (ablations); the test split is for one look per candidate model.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "dfdc-faces"


def degrade(pixels: np.ndarray, how: str) -> np.ndarray:
    img = Image.fromarray(pixels)
    if how == "blur":
        img = img.filter(ImageFilter.GaussianBlur(3.0))
    elif how == "jpeg30":
        buffer = io.BytesIO()
        img.save(buffer, format="JPEG", quality=30)
        img = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return np.asarray(img)


def main(argv: list[str] | None = None) -> int:
    from pipeline.decode import decode_image
    from pipeline.faces import resize_square
    from pipeline.model import load_classifier
    from workers.settings import Settings

    parser = argparse.ArgumentParser(prog="bench.degraded_reals", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--limit", type=int, default=0, help="first N real test crops (0 = all)")
    parser.add_argument("--precision", default=None)
    parser.add_argument("--split", choices=["test", "val"], default="test")
    args = parser.parse_args(argv)
    settings = Settings()
    classifier = load_classifier(args.model or settings.model_dir, precision=args.precision or settings.precision)
    with (DATA / "manifest.csv").open() as handle:
        rows = [r for r in csv.DictReader(handle) if r["split"] == args.split and r["label"] == "real"]
    rows = rows[: args.limit or None]
    size = classifier.meta.input_size
    crops = [resize_square(decode_image((DATA / r["file"]).read_bytes()).pixels, size) for r in rows]
    meta = classifier.meta
    result = {"model_version": meta.version, "split": args.split, "reals": len(crops), "threshold_fake": meta.threshold_fake,
              "threshold_real": meta.threshold_real}
    for how in ("none", "blur", "jpeg30"):
        probs = classifier.fake_probability([degrade(c, how) if how != "none" else c for c in crops])
        result[how] = {"false_positive_rate": float(np.mean(probs >= meta.threshold_fake)),
                       "sent_to_review": float(np.mean(probs > meta.threshold_real)),
                       "mean_p_fake": float(np.mean(probs))}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
