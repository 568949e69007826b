"""What counts as a service outage for the CLI (exit 3), and the one line a command answers one with."""

from __future__ import annotations

import sys

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
