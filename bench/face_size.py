"""How small a face the model can judge: validation crops shrunk to a face of N pixels and scaled back up as
serving does, with the AUC and the share of reals flagged at each size. The smallest size whose AUC stays within
`--max-auc-drop` of the full-size crops, and whose reals are flagged no more often than `--max-fpr-rise` above
the full-size rate, is the model's `min_face_side`.

    python -m bench.face_size [--model DIR] [--split val] [--limit N]

Use the validation split to choose the size; the test split is for one look per candidate model.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "dfdc-faces"
SIDES = (224, 160, 128, 112, 96, 80, 64, 48, 32)


def shrunk(pixels: np.ndarray, side: int) -> np.ndarray:
    """The crop as a face `side` pixels across would give it: area-averaged down to side x side."""
    if side >= pixels.shape[0]:
        return pixels
    return np.asarray(Image.fromarray(pixels).resize((side, side), Image.Resampling.BOX))


def choose_min_side(rows: list[dict[str, float]], max_auc_drop: float, max_fpr_rise: float) -> int:
    """The smallest side such that it and every larger side keep the AUC and the reals' flag rate in bounds."""
    full = rows[0]
    chosen = int(full["side"])
    for row in rows:  # from the largest side down
        if row["auc"] < full["auc"] - max_auc_drop or row["real_flagged"] > full["real_flagged"] + max_fpr_rise:
            break
        chosen = int(row["side"])
    return chosen


def main(argv: list[str] | None = None) -> int:
    from pipeline.decode import decode_image
    from pipeline.faces import resize_square
    from pipeline.model import load_classifier
    from pipeline.training.metrics import auc
    from workers.settings import Settings

    parser = argparse.ArgumentParser(prog="bench.face_size", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--split", choices=["test", "val"], default="val")
    parser.add_argument("--limit", type=int, default=0, help="first N crops of the split (0 = all)")
    parser.add_argument("--max-auc-drop", type=float, default=0.02)
    parser.add_argument("--max-fpr-rise", type=float, default=0.02)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    settings = Settings()
    classifier = load_classifier(args.model or settings.model_dir, precision=settings.precision)
    with (DATA / "manifest.csv").open() as handle:
        rows = [r for r in csv.DictReader(handle) if r["split"] == args.split][: args.limit or None]
    labels = np.array([int(r["label"] == "fake") for r in rows])
    crops = [decode_image((DATA / r["file"]).read_bytes()).pixels for r in rows]
    size = classifier.meta.input_size
    table = []
    for side in SIDES:
        probs = classifier.fake_probability([resize_square(shrunk(c, side), size) for c in crops])
        table.append({"side": side, "auc": auc(labels, probs),
                      "real_flagged": float(np.mean(probs[labels == 0] >= classifier.meta.threshold_fake)),
                      "fake_cleared": float(np.mean(probs[labels == 1] <= classifier.meta.threshold_real)),
                      "mean_p_real": float(np.mean(probs[labels == 0]))})
    result = {"model_version": classifier.meta.version, "split": args.split, "crops": len(rows), "sizes": table,
              "min_face_side": choose_min_side(table, args.max_auc_drop, args.max_fpr_rise),
              "max_auc_drop": args.max_auc_drop, "max_fpr_rise": args.max_fpr_rise}
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    print(f"{classifier.meta.version} on {len(rows)} {args.split} crops")
    print(f"{'face px':>7} {'AUC':>6} {'reals flagged':>14} {'fakes cleared':>14} {'mean P(real)':>12}")
    for row in table:
        print(f"{row['side']:>7} {row['auc']:>6.3f} {row['real_flagged']:>14.1%} {row['fake_cleared']:>14.1%} "
              f"{row['mean_p_real']:>12.3f}")
    print(f"min_face_side: {result['min_face_side']} px (AUC within {args.max_auc_drop} and reals flagged within "
          f"{args.max_fpr_rise:.0%} of full size)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
