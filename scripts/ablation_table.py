"""The lever ablation table: one row per finished run folder (runs/PREFIX-NAME), from its config, metrics.jsonl
and calibration.json, as Markdown. Validation figures only; the test split is not read.

    python scripts/ablation_table.py [--prefix abl2] [--against r]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefix", default="abl2")
    parser.add_argument("--against", default="r", help="the reference run the differences are taken against")
    args = parser.parse_args(argv)
    rows = {}
    for run in sorted((REPO / "runs").glob(f"{args.prefix}-*")):
        metrics = run / "metrics.jsonl"
        if not (run / "calibration.json").is_file() or not metrics.is_file():
            continue
        last = json.loads(metrics.read_text().splitlines()[-1])
        config = json.loads((run / "config.json").read_text())
        rows[run.name[len(args.prefix) + 1 :]] = {
            "val_auc": last["val_auc"], "val_auc_gan": last.get("val_auc_gan-faces-crops"),
            "minutes": last["seconds"] / 60, "images_per_s": last["images_per_s"],
            "images": round(last["seconds"] * last["images_per_s"]), "architecture": config["architecture"],
        }
    reference = rows.get(args.against)
    print("| run | start | val AUC | vs r | gan-faces val AUC | vs r | train minutes | images | images/s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, row in rows.items():
        def delta(key: str, row: dict = row, name: str = name) -> str:
            if reference is None or row[key] is None or reference[key] is None or name == args.against:
                return "-"
            return f"{row[key] - reference[key]:+.3f}"

        gan = f"{row['val_auc_gan']:.3f}" if row["val_auc_gan"] is not None else "-"
        print(f"| {name} | {row['architecture']} | {row['val_auc']:.3f} | {delta('val_auc')} | {gan} | "
              f"{delta('val_auc_gan')} | {row['minutes']:.1f} | {row['images']:,} | "
              f"{row['images_per_s']:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
