"""What the command groups share: exit codes, settings from flags, the CLI user, common flags, and the one
line (exit 3) that answers a service outage in any command."""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workers.settings import Settings

# 0 done; 1 failed (see the message); 2 bad usage or input (argparse, malformed events);
# 3 a service or the model could not be reached or loaded
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNAVAILABLE = 0, 1, 2, 3

# flags named after the setting they override, where a command has them
SETTING_FLAGS = (
    "database_url",
    "model_dir",
    "precision",
    "torch_threads",
    "batch_size",
    "heatmaps",
    "detect_max_side",
    "device",
)

# (module, exception class, the service it means); a module nobody imported cannot have raised its exceptions,
# so they are looked up in sys.modules and a command pays no import for the check
OUTAGE_TYPES = (
    ("sqlalchemy.exc", "OperationalError", "database"),
    ("sqlalchemy.exc", "InterfaceError", "database"),
    ("redis.exceptions", "ConnectionError", "broker"),
    ("redis.exceptions", "TimeoutError", "broker"),
    ("kombu.exceptions", "OperationalError", "broker"),
    ("botocore.exceptions", "ConnectionError", "object store"),
)


def settings(args: argparse.Namespace) -> Settings:
    """The settings from the environment, with the command's flags over them."""
    from workers.settings import Settings

    overrides: dict[str, Any] = {}
    for name in SETTING_FLAGS:
        value = getattr(args, name, None)
        if value is not None and value != "":
            overrides[name] = value
    if "heatmaps" not in overrides and getattr(args, "heatmaps_default", None):
        overrides["heatmaps"] = args.heatmaps_default  # evaluate: no heatmaps unless asked
    return Settings(**overrides)


def database_url(args: argparse.Namespace) -> str:
    """The database a command works on: an embedded scan home's (--home, migrated first), --database-url's,
    or the setting's."""
    if getattr(args, "home", None):
        from db.migrate import home_database

        return home_database(args.home)
    return getattr(args, "database_url", None) or settings(args).database_url


def cli_user() -> str:
    """`cli:<login>`: whom the audit log and the banks record a command's changes under."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry (a container's arbitrary uid)
        return "cli:unknown"


def add_command(
    sub: argparse._SubParsersAction, name: str, func: Callable[[argparse.Namespace], int], **defaults: Any
) -> argparse.ArgumentParser:
    """A subcommand that runs `func`, its --help taken from func's docstring: the first paragraph is the line
    in the command list, the rest the description."""
    summary, _, description = inspect.cleandoc(func.__doc__ or "").partition("\n\n")
    parser = sub.add_parser(name, help=summary, description=description or None)
    parser.set_defaults(func=func, **defaults)
    return parser


def add_database_flags(parser: argparse.ArgumentParser, home: bool = False) -> None:
    parser.add_argument("--database-url", help="default $DEEPSCREEN_DATABASE_URL")
    if home:
        parser.add_argument("--home", help="an embedded scan home (SQLite) instead")


def add_compute_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", dest="model_dir", type=Path, help="model folder (model.safetensors + model.json)"
    )
    parser.add_argument(
        "--precision",
        choices=["auto", "fp32", "bf16", "fp16"],
        help="autocast precision of the classifier (auto: bf16 where the CPU or GPU computes it "
        "natively, else fp32 on a CPU and fp16 on a GPU)",
    )
    parser.add_argument("--threads", dest="torch_threads", type=int, help="torch intra-op threads")
    parser.add_argument("--batch-size", type=int, help="images per micro-batch")
    parser.add_argument(
        "--heatmaps", choices=["flagged", "all", "none"], help="which faces get a Grad-CAM heatmap"
    )
    parser.add_argument("--detect-max-side", type=int, help="long side of the copy MTCNN runs on")
    parser.add_argument("--device", help="cpu or cuda[:N]")


def outage_service(exc: BaseException) -> str | None:
    """The service whose outage `exc` (or an exception it was raised from) reports; None when it is no outage."""
    seen: BaseException | None = exc
    while seen is not None:
        for module_name, class_name, service in OUTAGE_TYPES:
            kind = getattr(sys.modules.get(module_name), class_name, None)
            if kind is not None and isinstance(seen, kind):
                return service
        if isinstance(seen, ConnectionError | TimeoutError):
            return "service"
        seen = seen.__cause__
    return None


def unavailable_line(command: str, exc: BaseException) -> str:
    """One line for stderr: the command, the service and the driver's first line. A SQLAlchemy error is shown
    by its driver error (`orig`), never with the statement and parameters that SQLAlchemy appends."""
    shown = getattr(exc, "orig", None) or exc
    first = next((line.strip() for line in str(shown).splitlines() if line.strip()), type(shown).__name__)
    service = outage_service(exc) or "service"
    return f"deepscreen {command}: {service} unavailable: {first}"


def unavailable(command: str, exc: BaseException) -> int:
    print(unavailable_line(command, exc), file=sys.stderr)
    return EXIT_UNAVAILABLE


def outage(command: str, exc: BaseException) -> int:
    """Exit 3 with one line when `exc` is a service outage; anything else is a defect and keeps its traceback."""
    if outage_service(exc) is None:
        raise exc
    return unavailable(command, exc)


def run_command(args: argparse.Namespace) -> int:
    """Runs the chosen subcommand. An outage of the database, broker or object store that reaches here, in any
    subcommand, is one line on stderr and exit 3; any other error keeps its traceback."""
    try:
        return int(args.func(args) or 0)
    except Exception as exc:
        if outage_service(exc) is None:
            raise
        return unavailable(command_name(args), exc)


def command_name(args: argparse.Namespace) -> str:
    """`token create`, `bank list`, `migrate`: the subcommand and its action, as the user typed them."""
    actions = [
        value for name, value in vars(args).items() if name.endswith("_command") and isinstance(value, str)
    ]
    return " ".join([args.command, *actions])
