"""`deepscreen model`: the model folder (info, export, placeholder) and the registry (list, register, activate,
canary, canary-report)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from cli import common
from cli.common import EXIT_FAILED, EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "model", help="model tools: info, export, placeholder; the registry: list, register, activate, canary"
    )
    msub = p.add_subparsers(dest="model_command", required=True, metavar="ACTION")
    m = common.add_command(msub, "info", cmd_model_info)
    m.add_argument("--model", dest="model_dir", help="model folder (default $DEEPSCREEN_MODEL_DIR)")
    m = common.add_command(msub, "export", cmd_model_export)
    m.add_argument("--run", required=True, help="training run folder (with config.json and best/)")
    m.add_argument("--out", required=True, help="model folder to write (e.g. models/deepscreen-v2)")
    m.add_argument("--version", required=True, help="version string recorded with every verdict")
    m.add_argument("--max-val", type=int, default=0, help="use only the first N validation crops (0 = all)")
    m.add_argument(
        "--min-face-side",
        type=int,
        default=0,
        help="faces smaller than this (box's longer side, px) get no verdict; measure it with "
        "`python -m bench.face_size --model RUN/best` (0 = no limit)",
    )
    m = common.add_command(msub, "placeholder", cmd_model_placeholder)
    m.add_argument("--out", default="models/placeholder")
    _register_registry(msub)


def _register_registry(msub: argparse._SubParsersAction) -> None:
    m = msub.add_parser("list", help="registered model versions and which is active or canary")
    m.add_argument("--json", action="store_true")
    m = msub.add_parser("register", help="register a model folder under its version and sha256")
    m.add_argument("folder", type=Path)
    m = msub.add_parser("activate", help="make VERSION score new work; workers switch at their next batch")
    m.add_argument("version")
    m = msub.add_parser(
        "canary", help="score a fraction of traffic with VERSION too and record disagreements"
    )
    m.add_argument("version", nargs="?", help="omit with --off")
    m.add_argument("--fraction", type=float, default=0.05, help="share of images scored twice (default 0.05)")
    m.add_argument("--off", action="store_true", help="stop the canary")
    m = msub.add_parser("canary-report", help="images scored by both models and their disagreement rate")
    m.add_argument("--json", action="store_true")
    for action in ("list", "register", "activate", "canary", "canary-report"):
        common.add_database_flags(msub.choices[action])
        msub.choices[action].set_defaults(func=cmd_model_registry)


def cmd_model_info(args: argparse.Namespace) -> int:
    """load the model (sha256 checked) and print its metadata"""
    from pipeline.errors import ModelLoadError
    from pipeline.model import load_classifier

    folder = Path(args.model_dir or common.settings(args).model_dir)
    try:
        classifier = load_classifier(folder)
    except ModelLoadError as exc:
        print(f"deepscreen model info: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    meta = classifier.meta
    print(
        json.dumps(
            {
                "folder": str(folder),
                "version": meta.version,
                "placeholder": meta.placeholder,
                "sha256": meta.sha256,
                "input_size": meta.input_size,
                "crop_margin": meta.crop_margin,
                "temperature": meta.temperature,
                "logit_bias": meta.logit_bias,
                "threshold_fake": meta.threshold_fake,
                "threshold_real": meta.threshold_real,
                "architecture": meta.architecture,
                "min_face_side": meta.min_face_side,
            },
            indent=2,
        )
    )
    return EXIT_OK


def cmd_model_export(args: argparse.Namespace) -> int:
    """calibrate a training run's best weights on validation and ship them

    Fits the temperature, a logit shift and both thresholds on the validation split, measures validation AUC
    with fp16 weights and bf16 autocast, and writes the model folder (fp16 weights when they cost no AUC)."""
    from pipeline.training.export import export_model

    print(
        json.dumps(
            export_model(
                Path(args.run), Path(args.out), args.version, args.max_val, min_face_side=args.min_face_side
            ),
            indent=2,
        )
    )
    return EXIT_OK


def cmd_model_placeholder(args: argparse.Namespace) -> int:
    """write the seeded random PLACEHOLDER model (not a detector)"""
    from pipeline.model import make_placeholder

    meta = make_placeholder(Path(args.out))
    print(f"placeholder model (NOT a detector) written to {args.out}: version={meta.version}")
    return EXIT_OK


def cmd_model_registry(args: argparse.Namespace) -> int:
    from db.engine import connect
    from db.model_registry import ModelRegistry, RegistryError
    from pipeline.errors import ModelLoadError
    from pipeline.model import load_classifier

    registry = ModelRegistry(connect(common.database_url(args)))
    try:
        if args.model_command == "list":
            rows = registry.list()
            for row in rows:
                if args.json:
                    print(json.dumps(row.__dict__))
                else:
                    role = row.role + (f" ({row.canary_fraction:.0%})" if row.role == "canary" else "")
                    print(f"{row.version:<40} {role:<16} sha256={row.sha256[:12]}  {row.folder}")
            if not rows and not args.json:
                print(
                    "no models registered (a worker registers its own at start; or: deepscreen model register FOLDER)"
                )
        elif args.model_command == "register":
            meta = load_classifier(args.folder).meta  # loads it: a folder that cannot serve is refused now
            row = registry.register(meta.version, meta.sha256, str(args.folder.resolve()))
            print(f"registered {row.version} sha256={row.sha256[:12]} ({row.role})")
        elif args.model_command == "activate":
            row = registry.activate(args.version)
            print(f"active model is now {row.version}; workers switch at their next batch")
        elif args.model_command == "canary":
            if args.off:
                registry.set_canary(None)
                print("canary off")
            elif not args.version:
                print("deepscreen model canary: give VERSION or --off", file=sys.stderr)
                return EXIT_USAGE
            else:
                row = registry.set_canary(args.version, args.fraction)
                print(f"canary {args.version} scores {args.fraction:.1%} of images a second time")
        else:
            for report in registry.canary_report():
                print(
                    json.dumps(report)
                    if args.json
                    else f"{report['active_version']} vs {report['canary_version']}: {report['scored_by_both']} images, "
                    f"{report['disagreements']} disagreements ({(report['disagreement_rate'] or 0):.2%})"
                )
    except (RegistryError, ModelLoadError) as exc:
        print(f"deepscreen model {args.model_command}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - an outage is exit 3; a defect is re-raised
        return common.outage(f"model {args.model_command}", exc)
    return EXIT_OK
