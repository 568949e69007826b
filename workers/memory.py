"""The worker's allocator settings: fewer glibc malloc arenas, and freed memory handed back when it goes idle.

glibc's default of up to 8 arenas per core lets a long-running worker's RSS creep (figures in
docs/benchmarks.md). glibc reads MALLOC_ARENA_MAX only when a process starts, so `deepscreen worker` sets it and
re-executes itself once before anything is loaded.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

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


class HeapTrimmer:
    """Hands freed heap back (`release_free_memory`) once a process has been idle for `idle_s`, and after a
    batch when the last trim is `interval_s` old, so a worker that is never idle still trims now and then.

    Trimming after every batch (`interval_s` 0) keeps the heap at its smallest, but the next batch allocates
    the same pages again and faults each one in: in one process on the distributed adapters (320 px images,
    batches of 16), system time went from 3.5-4.2 to 8.1-9.3 ms an image, of 60-70 ms of CPU in all."""

    def __init__(self, interval_s: float, idle_s: float = 1.0, trim: Callable[[], None] = release_free_memory,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s, self.idle_s = interval_s, idle_s
        self._trim_now, self._clock = trim, clock
        self._lock = threading.Lock()
        self._busy = 0
        self._dirty = False  # freed memory may be held since the last trim
        self._last_trim = self._last_end = clock()
        self._watcher_pid: int | None = None
        self._stopped = threading.Event()

    @contextmanager
    def batch(self) -> Iterator[None]:
        """Around one batch: no idle trim while it runs; its end may trim (the interval)."""
        self.batch_started()
        try:
            yield
        finally:
            self.batch_finished()

    def batch_started(self) -> None:
        with self._lock:
            self._busy += 1
        self._ensure_watcher()

    def batch_finished(self) -> None:
        with self._lock:
            self._busy = max(0, self._busy - 1)
            self._last_end = self._clock()
            self._dirty = True
            if self._last_end - self._last_trim >= self.interval_s:
                self._trim()

    def trim_if_idle(self) -> bool:
        """Trim if no batch is running, one ended at least `idle_s` ago, and none ran since the last trim."""
        with self._lock:
            if self._busy or not self._dirty or self._clock() - self._last_end < self.idle_s:
                return False
            self._trim()
            return True

    def _trim(self) -> None:  # with the lock held: a batch that starts meanwhile waits for the trim to end
        self._trim_now()
        self._dirty = False
        self._last_trim = self._clock()

    def _ensure_watcher(self) -> None:
        """One watcher thread per process (a forked pool child inherits the object, not the thread); none when
        every batch trims (`interval_s` 0), which leaves nothing for it to do."""
        pid = os.getpid()
        if self._watcher_pid == pid or self.interval_s <= 0:
            return
        self._watcher_pid = pid
        try:
            threading.Thread(target=self._watch, name="heap-trim", daemon=True).start()
        except RuntimeError:  # no thread to be had: trims still happen every interval, never a batch lost
            log.exception("heap trim watcher did not start")

    def stop(self) -> None:
        """End this process's watcher thread (the worker never does: it trims until the process ends)."""
        self._stopped.set()

    def _watch(self) -> None:
        while not self._stopped.wait(self.idle_s / 2):
            try:
                self.trim_if_idle()
            except Exception:  # noqa: BLE001 - a failed trim costs memory, never a batch
                log.exception("heap trim failed")
