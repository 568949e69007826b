"""`deepscreen evaluate` and `deepscreen train`: measure the model on labelled data, and train it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cli import common
from cli.common import EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE


def register(sub: argparse._SubParsersAction) -> None:
    p = common.add_command(sub, "evaluate", cmd_evaluate, heatmaps_default="none")
    p.add_argument("--data", required=True, help="labelled folder")
    p.add_argument("--labels", help="CSV with columns file,label (real|fake), paths relative to --data")
    p.add_argument("--split", help="keep only the CSV rows of this split (e.g. test, with a manifest.csv)")
    p.add_argument("--crops", action="store_true", help="inputs are face crops: skip detection")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--no-progress", action="store_true")
    common.add_compute_flags(p)

    p = common.add_command(sub, "train", cmd_train)
    p.add_argument("--config", help="JSON run config")
    p.add_argument("--data", help="dataset folder with manifest.csv")
    p.add_argument("--out", help="run folder")
    p.add_argument("--epochs", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int)
    p.add_argument("--device")
    p.add_argument("--no-progress", action="store_true")


def cmd_evaluate(args: argparse.Namespace) -> int:
    """score a labelled folder and write metrics.json, scores.csv and a report

    Evaluate the model on real/ and fake/ subfolders, or on a CSV of file,label relative to --data. Full
    images run the whole pipeline (detect, classify, image score = max over faces); --crops takes every input
    as a face crop."""
    from pipeline.errors import ModelLoadError
    from workers.evaluate import evaluate, fresh_home, labelled_files
    from workers.runtime import embedded_runtime

    settings = common.settings(args)
    out = Path(args.out)
    try:
        files = labelled_files(Path(args.data), Path(args.labels) if args.labels else None, args.split)
    except (OSError, ValueError) as exc:
        print(f"deepscreen evaluate: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        runtime = embedded_runtime(settings, fresh_home(out), crops=args.crops)
    except ModelLoadError as exc:
        print(f"deepscreen evaluate: cannot load the model: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    document = evaluate(
        runtime, files, out, settings.batch_size, str(args.data), progress=not args.no_progress
    )
    keys = (
        "n",
        "auc",
        "ece",
        "accuracy",
        "precision",
        "recall",
        "f1",
        "face_detection_rate",
        "status_counts",
    )
    print(json.dumps({k: document[k] for k in keys}, indent=2))
    print(f"metrics.json, scores.csv and report.md in {out}", file=sys.stderr)
    return EXIT_OK


def cmd_train(args: argparse.Namespace) -> int:
    """train the real/fake classifier (resumes an interrupted run)

    Train from a config file (see configs/) or flags. Re-running the same command resumes from the run
    folder's checkpoint."""
    from pipeline.training.train import TrainConfig, Trainer

    overrides = {
        "data": args.data,
        "out": args.out,
        "epochs": args.epochs,
        "seed": args.seed,
        "threads": args.threads,
        "device": args.device,
    }
    if args.config:
        cfg = TrainConfig.from_file(Path(args.config), **overrides)
    elif args.data:
        cfg = TrainConfig.from_dict({k: v for k, v in overrides.items() if v is not None})
    else:
        print("deepscreen train: give --config FILE or --data DIR", file=sys.stderr)
        return EXIT_USAGE
    summary = Trainer(cfg, progress=not args.no_progress).fit()
    print(json.dumps(summary, indent=2))
    return EXIT_OK
