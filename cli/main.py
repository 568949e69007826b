"""`deepscreen`: the parser assembled from each command group's `register`, logging, and the run of a command."""

from __future__ import annotations

import argparse
import logging
import os

from cli import bank, migrate, model, ops, queues, rescan, review, scan, submit, training, webhooks, worker
from cli.common import run_command

# in the order `deepscreen --help` lists them
GROUPS = (scan, submit, worker, migrate, queues, model, rescan, training, ops, bank, review, webhooks)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepscreen",
        description="Deepfake-image screening: scan files locally, or run the distributed pipeline (submit, "
        "worker, migrate).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level on stderr")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in GROUPS:
        group.register(sub)
    return parser


def configure_logging(args: argparse.Namespace) -> None:
    from workers import logs

    # read here, not through Settings: a bad setting must still be reported through a working logger
    logs.configure_logging(
        logging.INFO if args.verbose else logging.WARNING, os.environ.get("DEEPSCREEN_LOG_FORMAT", "text")
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(args)
    return run_command(args)
