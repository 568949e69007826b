"""`deepscreen bank`: list, show, import, export and delete the known-fake memory's hash banks."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from workers.outages import unavailable_line

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3


def _bank_store(args: argparse.Namespace):  # noqa: ANN202
    from db.known_fakes import BankStore
    from db.migrate import home_database
    from db.store import connect
    from workers.settings import Settings

    url = home_database(args.home) if args.home else args.database_url or Settings().database_url
    return BankStore(connect(url))


def cmd_bank(args: argparse.Namespace) -> int:
    from sqlalchemy.exc import OperationalError

    from db.known_fakes import BankError

    try:
        banks = _bank_store(args)
        return _run(args, banks)
    except BankError as exc:
        print(f"deepscreen bank {args.bank_command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except OperationalError as exc:
        print(unavailable_line(f"bank {args.bank_command}", exc), file=sys.stderr)
        return EXIT_UNAVAILABLE


def _run(args: argparse.Namespace, banks: Any) -> int:
    command = args.bank_command
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
            print(json.dumps(row) if args.json else
                  f"{row['id']:>6} {row['hash']} {row['label']:<4} item={row['review_item_id'] or '-'} "
                  f"decision={row['decision'] or '-'} by={row['decided_by'] or row['created_by']}")
        return EXIT_OK
    if command == "import":
        if args.csv != "-" and not os.path.isfile(args.csv):
            print(f"deepscreen bank import: no such file: {args.csv}", file=sys.stderr)
            return EXIT_USAGE
        handle = sys.stdin if args.csv == "-" else open(args.csv, encoding="utf-8-sig", newline="")  # noqa: SIM115
        try:
            report = banks.import_csv(args.bank, handle, args.label, created_by=_actor())
        finally:
            if handle is not sys.stdin:
                handle.close()
        if args.json:
            print(json.dumps(report.as_dict()))
        else:
            print(f"bank {report.bank}: {report.added} added, {report.duplicates} already there, "
                  f"{len(report.rejected)} rejected")
            for line, reason in report.rejected[:20]:
                print(f"  line {line}: {reason}", file=sys.stderr)
        return EXIT_OK if report.added or not report.rejected else EXIT_USAGE
    if command == "export":
        if args.out == "-":
            count = banks.export_csv(args.bank, sys.stdout)
        else:
            with open(args.out, "w", encoding="utf-8", newline="") as handle:
                count = banks.export_csv(args.bank, handle)
        print(json.dumps({"bank": args.bank, "entries": count, "out": args.out}) if args.json else
              f"{count} entries of {args.bank} written to {args.out}", file=sys.stderr if args.out == "-" else sys.stdout)
        return EXIT_OK
    if command == "delete":
        removed = banks.delete_bank(args.bank)
        print(json.dumps({"bank": args.bank, "removed": removed}) if args.json else
              f"bank {args.bank} deleted ({removed} entries)")
        return EXIT_OK
    return EXIT_USAGE


def _actor() -> str:
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli:unknown"


def add_bank_commands(sub: argparse._SubParsersAction) -> None:  # noqa: SLF001
    p = sub.add_parser("bank", help="known-fake memory: list, show, import, export, delete hash banks",
                       description="Hash banks of PDQ hashes. confirmed_fake and confirmed_real are filled by "
                       "moderators' decisions; other banks are imported from CSV (hash[,label], or a header "
                       "naming hash/signal_value/indicator and label). Workers pick up changes within "
                       "DEEPSCREEN_BANK_REFRESH_S seconds.")
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
    b = bsub.add_parser("export", help="write a bank as CSV (hash,label,quality,external_id,review_item_id,audit_id)")
    b.add_argument("bank")
    b.add_argument("--out", default="-", help="output file (default stdout)")
    b.add_argument("--json", action="store_true", help="print the summary as JSON")
    b = bsub.add_parser("delete", help="delete an imported bank and its entries")
    b.add_argument("bank")
    b.add_argument("--json", action="store_true")
    for b in bsub.choices.values():
        b.add_argument("--database-url", help="default $DEEPSCREEN_DATABASE_URL")
        b.add_argument("--home", help="an embedded scan home (SQLite) instead")
    p.set_defaults(func=cmd_bank)
