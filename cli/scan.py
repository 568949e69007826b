"""`deepscreen scan`: screen files or folders in-process (SQLite + a local folder; no services)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from cli import common
from cli.common import EXIT_OK, EXIT_UNAVAILABLE, EXIT_USAGE


def register(sub: argparse._SubParsersAction) -> None:
    p = common.add_command(sub, "scan", cmd_scan)
    p.add_argument(
        "paths",
        nargs="+",
        help="image files (screened whatever their name) or folders (their "
        "jpg, jpeg, png, webp, bmp, gif, tif and tiff files, any case); a missing path exits 2",
    )
    p.add_argument(
        "--all-files", action="store_true", help="take every file under the folders, not only images"
    )
    p.add_argument(
        "--home",
        help="folder for the SQLite database and heatmaps (default $DEEPSCREEN_HOME or ./.deepscreen)",
    )
    p.add_argument("--crops", action="store_true", help="inputs are face crops: skip detection")
    p.add_argument("--json", action="store_true", help="one JSON object per input on stdout")
    p.add_argument("--summary", action="store_true", help="print the summary table (on stderr with --json)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    common.add_compute_flags(p)


def cmd_scan(args: argparse.Namespace) -> int:
    """screen files or folders in-process (SQLite + local folder; no services)

    Screen image files (folders are searched recursively). Prints a summary table, or one JSON object per
    input with --json."""
    from pipeline.errors import ModelLoadError
    from workers.embedded import expand_paths, scan
    from workers.runtime import embedded_runtime

    settings = common.settings(args)
    home = Path(args.home or os.environ.get("DEEPSCREEN_HOME") or ".deepscreen")
    paths = expand_paths(args.paths, all_files=args.all_files)
    if not paths:
        print(
            "deepscreen scan: no image files found under the given paths (--all-files takes every file)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    # a missing path is still screened (stored as invalid_input / not_found), then answered with exit 2
    missing = [raw for raw in args.paths if not Path(raw).exists()]
    try:
        runtime = embedded_runtime(settings, home, crops=args.crops)
    except ModelLoadError as exc:
        print(f"deepscreen scan: cannot load the model: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    if runtime.screener.classifier.meta.placeholder:
        print(
            "warning: the model is a PLACEHOLDER with random weights; its verdicts mean nothing "
            "(see README.md, 'Model')",
            file=sys.stderr,
        )

    def emit(row: dict[str, Any]) -> None:
        if args.json:
            print(json.dumps(row), flush=True)

    report = scan(
        runtime,
        paths,
        settings.batch_size,
        progress=not args.no_progress,
        on_result=emit,
        batch_bytes=settings.scan_batch_mb << 20,
    )
    if not args.json or args.summary:
        _print_summary(report, home, file=sys.stderr if args.json else sys.stdout)
    for raw in missing:
        print(f"deepscreen scan: no such file or folder: {raw}", file=sys.stderr)
    return EXIT_USAGE if missing else EXIT_OK


def _print_summary(report: Any, home: Path, file: Any) -> None:
    rows = report.results
    width = min(60, max([len(_short(r["source"])) for r in rows] + [6]))
    print(f"\n{'input':<{width}}  {'status':<22} {'verdict':<9} {'P(fake)':>7} {'faces':>5}", file=file)
    for r in rows:
        prob = f"{r['fake_probability']:.3f}" if r["fake_probability"] is not None else "-"
        status = r["status"] if r["status"] != "invalid_input" else f"invalid:{r['reason']}"
        print(
            f"{_short(r['source']):<{width}}  {status[:22]:<22} {r['verdict'] or '-':<9} {prob:>7} "
            f"{len(r['faces']):>5}",
            file=file,
        )
    counts = ", ".join(f"{k}={v}" for k, v in sorted(report.counts().items()))
    print(
        f"\n{len(rows)} inputs in {report.seconds:.1f}s ({report.images_per_second:.2f} images/s): {counts}",
        file=file,
    )
    print(f"results and heatmaps: {home}", file=file)


def _short(path: str) -> str:
    return path if len(path) <= 60 else "..." + path[-57:]
