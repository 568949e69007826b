"""`deepscreen bank`: list, show, import, export and delete the known-fake memory's hash banks."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from cli import common
from cli.common import EXIT_OK, EXIT_USAGE


def register(sub: argparse._SubParsersAction) -> None:
    p = common.add_command(sub, "bank", cmd_bank)
    bsub = p.add_subparsers(dest="bank_command", required=True, metavar="ACTION")
    b = bsub.add_parser("list", help="the banks and their sizes")
    b.add_argument("--json", action="store_true", help="one JSON object per bank")
    b = bsub.add_parser("show", help="a bank's entries, each with the decision that put it there")
    b.add_argument("bank")
    b.add_argument("--json", action="store_true", help="one JSON object per entry")
    b = bsub.add_parser("import", help="add the hashes of a CSV file to a bank (created if new)")
    b.add_argument("bank", help="bank name (not confirmed_fake or confirmed_real)")
    b.add_argument("csv", help="CSV file, or - for stdin")
    b.add_argument("--label", choices=["fake", "real"], help="label for rows without one")
    b.add_argument("--json", action="store_true", help="print the import report as JSON")
    b = bsub.add_parser(
        "export", help="write a bank as CSV (hash,label,quality,external_id,review_item_id,audit_id)"
    )
    b.add_argument("bank")
    b.add_argument("--out", default="-", help="output file (default stdout)")
    b.add_argument("--json", action="store_true", help="print the summary as JSON")
    b = bsub.add_parser("delete", help="delete an imported bank and its entries")
    b.add_argument("bank")
    b.add_argument("--json", action="store_true")
    for b in bsub.choices.values():
        common.add_database_flags(b, home=True)


def cmd_bank(args: argparse.Namespace) -> int:
    """known-fake memory: list, show, import, export, delete hash banks

    Hash banks of PDQ hashes. confirmed_fake and confirmed_real are filled by moderators' decisions; other
    banks are imported from CSV (hash[,label], or a header naming hash/signal_value/indicator and label).
    Workers pick up changes within DEEPSCREEN_BANK_REFRESH_S seconds."""
    from sqlalchemy.exc import OperationalError

    from db.engine import connect
    from db.known_fakes import BankError, BankStore

    try:
        return _run(args, BankStore(connect(common.database_url(args))))
    except BankError as exc:
        print(f"deepscreen bank {args.bank_command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OperationalError as exc:
        return common.unavailable(f"bank {args.bank_command}", exc)


def _run(args: argparse.Namespace, banks: Any) -> int:
    command = args.bank_command
    if command == "import":
        return _import(args, banks)
    if command == "list":
        rows = banks.banks()
        if args.json:
            for row in rows:
                print(json.dumps(row))
            return EXIT_OK
        print(f"{'bank':<24} {'kind':<10} {'entries':>9}")
        for row in rows:
            print(f"{row['name'][:24]:<24} {row['kind']:<10} {row['entries']:>9}")
        return EXIT_OK
    if command == "show":
        for row in banks.entries(args.bank):
            print(
                json.dumps(row)
                if args.json
                else f"{row['id']:>6} {row['hash']} {row['label']:<4} item={row['review_item_id'] or '-'} "
                f"decision={row['decision'] or '-'} by={row['decided_by'] or row['created_by']}"
            )
        return EXIT_OK
    if command == "export":
        if args.out == "-":
            count = banks.export_csv(args.bank, sys.stdout)
        else:
            with open(args.out, "w", encoding="utf-8", newline="") as handle:
                count = banks.export_csv(args.bank, handle)
        print(
            json.dumps({"bank": args.bank, "entries": count, "out": args.out})
            if args.json
            else f"{count} entries of {args.bank} written to {args.out}",
            file=sys.stderr if args.out == "-" else sys.stdout,
        )
        return EXIT_OK
    if command == "delete":
        removed = banks.delete_bank(args.bank)
        print(
            json.dumps({"bank": args.bank, "removed": removed})
            if args.json
            else f"bank {args.bank} deleted ({removed} entries)"
        )
        return EXIT_OK
    return EXIT_USAGE


def _import(args: argparse.Namespace, banks: Any) -> int:
    if args.csv != "-" and not os.path.isfile(args.csv):
        print(f"deepscreen bank import: no such file: {args.csv}", file=sys.stderr)
        return EXIT_USAGE
    handle = sys.stdin if args.csv == "-" else open(args.csv, encoding="utf-8-sig", newline="")  # noqa: SIM115
    try:
        report = banks.import_csv(args.bank, handle, args.label, created_by=common.cli_user())
    finally:
        if handle is not sys.stdin:
            handle.close()
    if args.json:
        print(json.dumps(report.as_dict()))
    else:
        print(
            f"bank {report.bank}: {report.added} added, {report.duplicates} already there, "
            f"{len(report.rejected)} rejected"
        )
        for line, reason in report.rejected[:20]:
            print(f"  line {line}: {reason}", file=sys.stderr)
    return EXIT_OK if report.added or not report.rejected else EXIT_USAGE
