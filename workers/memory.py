"""The worker's allocator settings: fewer glibc malloc arenas, and freed memory handed back after each batch.

Measured with `python -m bench.load --events 1200 --distinct 1200 --side 320` (README, Performance): glibc's
default of up to 8 arenas per core let a worker's RSS grow 44% between 10% and 100% of the run; with
MALLOC_ARENA_MAX=2 it grew 17%. glibc reads MALLOC_ARENA_MAX only when a process starts, so `deepscreen worker`
sets it and re-executes itself once before anything is loaded.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger(__name__)

_REEXEC_MARK = "DEEPSCREEN_ALLOCATOR_SET"


def ensure_arena_limit(arena_max: int) -> None:
    """Re-execute this process with MALLOC_ARENA_MAX set, unless it is set already (or arena_max is 0)."""
    if arena_max <= 0 or os.environ.get("MALLOC_ARENA_MAX") or os.environ.get(_REEXEC_MARK):
        return
    os.environ["MALLOC_ARENA_MAX"] = str(arena_max)
    os.environ[_REEXEC_MARK] = "1"
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, list(sys.orig_argv))  # exactly as started: `-m`, interpreter flags and all


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name) if name else None
    except OSError:
        return None


_LIBC = _libc()


def release_free_memory() -> None:
    """Give freed heap pages back to the system (glibc malloc_trim); a no-op elsewhere."""
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)
