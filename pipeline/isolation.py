"""Decoding in separate processes, so that no input costs more than a bounded amount.

A decoder inside C code cannot be interrupted from Python (a signal waits for it to return), so each decode
runs in a persistent child process (`python -m pipeline.isolation`) capped in CPU, wall time and address
space; a child that crosses a cap is replaced, and its input ends as InvalidInput.
"""

from __future__ import annotations

import atexit
import ctypes
import fcntl
import json
import logging
import os
import resource
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from pipeline.decode import OUT_OF_MEMORY, DecodedImage, DecodeLimits, Reserve, decode_in_process
from pipeline.errors import InvalidInput

log = logging.getLogger(__name__)

CPU_LIMIT = "decode_cpu_limit"
TIMEOUT = "decode_timeout"
MEMORY_LIMIT = "decode_memory_limit"
CRASHED = "decoder_crashed"

_EXIT_CPU, _EXIT_WALL = 86, 87
_GRACE_S = 2.0  # the parent's deadline trails the child's own, which normally fires first
_START_S = 120.0  # a child's imports on a loaded machine
_PIPE_BYTES = 1 << 20
_ROOT = Path(__file__).resolve().parent.parent
# One BLAS thread. And a heap that keeps what a decode freed for the next one: with glibc's sliding thresholds
# every frame's image and result would be mapped afresh, page fault by page fault. After a decode that peaked above _TRIM_AFTER_BYTES the child trims its heap instead.
_CHILD_ENV = {
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "MALLOC_ARENA_MAX": "1",
    "MALLOC_MMAP_THRESHOLD_": str(64 << 20),
    "MALLOC_TRIM_THRESHOLD_": str(256 << 20),
}
_TRIM_AFTER_BYTES = 192 << 20


@dataclass(frozen=True)
class DecodeCost:
    """What one input cost its child process."""

    cpu_seconds: float
    wall_seconds: float
    peak_bytes: int | None  # the child's peak resident memory during the decode; None when it was killed
    warnings: int = 0


class _Breach(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


class _Child:
    """One decode process and the parent's ends of its pipes."""

    def __init__(self, limits: DecodeLimits) -> None:
        env = {
            **os.environ,
            **_CHILD_ENV,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(_ROOT), os.environ.get("PYTHONPATH")])),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-m", "pipeline.isolation", json.dumps(asdict(limits))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            close_fds=True,
        )
        assert self.process.stdin and self.process.stdout and self.process.stderr
        self.send, self.output = self.process.stdin, self.process.stdout
        self.receive = self.output.fileno()
        try:
            fcntl.fcntl(self.receive, fcntl.F_SETPIPE_SZ, _PIPE_BYTES)
        except OSError:
            pass  # the default pipe size only costs more wake-ups
        self.cpu_total = 0.0
        try:
            header = _read_header(self.receive, time.monotonic() + _START_S)
        except (_Breach, OSError, ValueError, EOFError):
            error = (
                self.process.stderr.read().decode(errors="replace")[-2000:]
                if self.process.poll() is not None
                else ""
            )
            self.kill()
            raise RuntimeError(f"the decode process did not start: {error or 'no answer'}") from None
        self.process.stderr.close()
        self.cpu_total = float(header["cpu_total"])

    def kill(self) -> resource.struct_rusage | None:
        """Kill and reap; the rusage of the whole life of the child, when it could be had."""
        if self.process.returncode is None:
            try:  # not Popen.kill: it would reap an exited child first, and its usage with it
                os.kill(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return self.reap()

    def reap(self) -> resource.struct_rusage | None:
        if self.process.returncode is not None:
            self._close()
            return None
        try:
            _, status, usage = os.wait4(self.process.pid, 0)
        except ChildProcessError:
            self.process.returncode = -1
            self._close()
            return None
        self.process.returncode = os.waitstatus_to_exitcode(status)
        self._close()
        return usage

    def close(self) -> None:
        """Closing its input ends the child's loop; it exits on its own."""
        self._close()
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            self.kill()

    def abandon(self) -> None:
        """In a forked copy of the parent: let go of the pipes without touching the parent's child."""
        self._close()

    def _close(self) -> None:
        for handle in (self.send, self.output):
            try:
                handle.close()
            except OSError:
                pass


class IsolatedDecoder:
    """`decode_image` with a bounded cost: each call borrows an idle child process (or starts one). At most
    `processes` decode at once (default: one per CPU), so a burst of callers (the API's request threads) waits
    for a process instead of starting one each: memory stays within `processes` x the decode budget."""

    def __init__(self, limits: DecodeLimits, processes: int | None = None) -> None:
        self.limits = replace(limits, isolated=False)
        self._idle: list[_Child] = []
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(max(1, processes or os.cpu_count() or 2))
        self._pid = os.getpid()

    def decode(self, data: bytes, reserve: Reserve | None = None) -> DecodedImage:
        result, _ = self.decode_with_cost(data, reserve)
        if isinstance(result, InvalidInput):
            raise result
        return result

    def decode_with_cost(
        self, data: bytes, reserve: Reserve | None = None
    ) -> tuple[DecodedImage | InvalidInput, DecodeCost]:
        if not data:
            return InvalidInput("empty", "zero bytes"), DecodeCost(0.0, 0.0, None)
        if len(data) > self.limits.max_bytes:  # not worth a trip through the pipe
            return InvalidInput("too_many_bytes", f"{len(data)} > {self.limits.max_bytes}"), DecodeCost(
                0.0, 0.0, None
            )
        with self._slots:
            child = self._borrow()
            started = time.monotonic()
            try:
                result, cost, healthy = self._run(child, data, started, reserve)
            except BaseException:
                child.kill()  # a caller interrupted mid-exchange (a task's soft time limit): the pipe is out of step
                raise
            if healthy:
                self._give_back(child)
        return result, cost

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for child in idle:
            child.close()

    def _borrow(self) -> _Child:
        with self._lock:
            if self._pid != os.getpid():  # forked: the idle children belong to the parent process
                for child in self._idle:
                    child.abandon()
                self._idle, self._pid = [], os.getpid()
            while self._idle:
                child = self._idle.pop()
                if child.process.poll() is None:
                    return child
                child.reap()  # died while idle (the OOM killer): not this input's doing
        return _Child(self.limits)

    def _give_back(self, child: _Child) -> None:
        with self._lock:
            if self._pid == os.getpid():
                self._idle.append(child)
                return
        child.abandon()

    def _run(
        self, child: _Child, data: bytes, started: float, reserve: Reserve | None = None
    ) -> tuple[DecodedImage | InvalidInput, DecodeCost, bool]:
        deadline = started + self.limits.wall_seconds + _GRACE_S
        try:
            child.send.write(struct.pack("<Q", len(data)))
            child.send.write(data)
            child.send.flush()
            header = _read_header(child.receive, deadline)
            pixels = None
            if header["ok"]:
                if reserve is not None:  # the child has decoded and waits to send: its clock is stopped
                    reserve(int(header["width"]) * int(header["height"]))
                    deadline = max(deadline, time.monotonic() + _GRACE_S)
                pixels = np.empty((header["height"], header["width"], 3), np.uint8)
                _read_into(child.receive, pixels.data.cast("B"), deadline)
        except (_Breach, OSError, ValueError, EOFError) as exc:
            return self._breached(child, exc, started)
        cpu_total = float(header["cpu_total"])
        cost = DecodeCost(
            cpu_total - child.cpu_total,
            time.monotonic() - started,
            int(header["peak_bytes"]),
            int(header["warnings"]),
        )
        child.cpu_total = cpu_total
        if cost.warnings:
            log.info(
                "decoder warnings count=%d first=%s", cost.warnings, str(header.get("first_warning"))[:160]
            )
        if pixels is None:
            error = InvalidInput(str(header["reason"]), str(header["detail"]))
            if header.get("retire"):
                child.close()
            return error, cost, not header.get("retire")
        return (
            DecodedImage(pixels=pixels, format=str(header["format"]), original_mode=str(header["mode"])),
            cost,
            True,
        )

    def _breached(
        self, child: _Child, exc: Exception, started: float
    ) -> tuple[InvalidInput, DecodeCost, bool]:
        timed_out = isinstance(exc, _Breach) and exc.reason == TIMEOUT
        usage = child.kill()
        code = child.process.returncode
        spent = (usage.ru_utime + usage.ru_stime - child.cpu_total) if usage is not None else 0.0
        # (ru_maxrss is no use here: it starts from the forking parent's high-water mark)
        cost = DecodeCost(max(0.0, spent), time.monotonic() - started, None)
        reason, detail = _death(code, timed_out, self.limits)
        log.warning("decode process ended reason=%s exit=%s cpu_s=%.2f", reason, code, cost.cpu_seconds)
        return InvalidInput(reason, detail), cost, False


def _death(code: int | None, timed_out: bool, limits: DecodeLimits) -> tuple[str, str]:
    """Why a child ended, from its exit: its own watchdog's codes, our kill, or a signal."""
    if code == _EXIT_CPU:
        return CPU_LIMIT, f"more than {limits.cpu_seconds:g} s of CPU"
    if code == _EXIT_WALL or timed_out:
        return TIMEOUT, f"more than {limits.wall_seconds:g} s"
    if code == -signal.SIGKILL:
        # not ours: the kernel's OOM killer. The machine's state, not the image's, so it is retried.
        return OUT_OF_MEMORY, "the decode process was killed"
    if code is not None and code < 0:
        return CRASHED, f"signal {signal.Signals(-code).name}" if -code in signal.valid_signals() else str(
            code
        )
    return CRASHED, f"exit {code}"


def _read_header(fd: int, deadline: float) -> dict:
    (size,) = struct.unpack("<I", _read_exact(fd, 4, deadline))
    header = json.loads(_read_exact(fd, size, deadline))
    if not isinstance(header, dict):
        raise ValueError("bad header")
    return header


def _read_exact(fd: int, size: int, deadline: float) -> bytes:
    buffer = bytearray(size)
    _read_into(fd, memoryview(buffer), deadline)
    return bytes(buffer)


def _read_into(fd: int, view: memoryview, deadline: float) -> None:
    """Fill `view` from the pipe; _Breach(TIMEOUT) past the deadline, EOFError if the child went away."""
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP)
    done = 0
    while done < len(view):
        left = deadline - time.monotonic()
        if left <= 0:
            raise _Breach(TIMEOUT, "no answer from the decode process")
        if not poller.poll(min(left, 1.0) * 1000):
            continue
        count = os.readv(fd, [view[done:]])
        if count == 0:
            raise EOFError("the decode process closed its output")
        done += count


_decoders: dict[DecodeLimits, IsolatedDecoder] = {}
_decoders_lock = threading.Lock()


def shared_decoder(limits: DecodeLimits) -> IsolatedDecoder:
    """The process's decoder for these limits (every Screener and canary of a process shares its children)."""
    with _decoders_lock:
        decoder = _decoders.get(limits)
        if decoder is None:
            decoder = _decoders[limits] = IsolatedDecoder(limits)
        return decoder


@atexit.register
def _close_all() -> None:
    for decoder in list(_decoders.values()):
        decoder.close()


# -- the child -----------------------------------------------------------------------------------------------
class _Watchdog(threading.Thread):
    """Ends the process when the decode in progress passes its CPU or wall-clock allowance. Pillow's decoders
    release the GIL, and Python code yields it every few milliseconds, so this thread gets to run."""

    def __init__(self, cpu_s: float, wall_s: float) -> None:
        super().__init__(daemon=True, name="decode-watchdog")
        self.cpu_s, self.wall_s = cpu_s, wall_s
        self._armed_at: tuple[float, float] | None = None
        self._wake = threading.Condition()

    def arm(self) -> None:
        with self._wake:
            self._armed_at = (time.process_time(), time.monotonic())
            self._wake.notify()

    def disarm(self) -> None:
        with self._wake:
            self._armed_at = None

    def run(self) -> None:
        with self._wake:
            while True:
                self._wake.wait(0.05 if self._armed_at else None)
                if self._armed_at is None:
                    continue
                cpu, wall = self._armed_at
                if time.process_time() - cpu > self.cpu_s:
                    os._exit(_EXIT_CPU)
                if time.monotonic() - wall > self.wall_s:
                    os._exit(_EXIT_WALL)


def _trim_heap() -> None:
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc


def _status_kb(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def _serve(limits: DecodeLimits) -> None:
    """The child's loop: a length-prefixed input in, a JSON header (and the RGB bytes) out."""
    import warnings

    requests = sys.stdin.buffer
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a C library's stray print must not land in the reply stream
    watchdog = _Watchdog(limits.cpu_seconds, limits.wall_seconds)
    watchdog.start()
    # the address space: what the idle process maps, the input and its copy in Pillow's reader, and the budget
    cap = _status_kb("VmSize") * 1024 + 2 * limits.max_bytes + limits.max_decode_bytes + (16 << 20)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    def reply(header: dict, payload: memoryview | None = None) -> None:
        header["cpu_total"] = time.process_time()
        body = json.dumps(header).encode()
        replies.write(struct.pack("<I", len(body)) + body)
        if payload is not None:
            replies.write(payload)
        replies.flush()

    reply({"ready": True})
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)  # C libraries' warnings for crafted files: counted in Python where they can be
    os.dup2(devnull, 1)
    while True:
        head = requests.read(8)
        if len(head) < 8:
            return  # the parent closed the pipe, or died
        data = requests.read(struct.unpack("<Q", head)[0])
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # the peak reported is this decode's
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            watchdog.arm()
            try:
                image: DecodedImage | InvalidInput = decode_in_process(data, limits)
            except InvalidInput as exc:
                image = exc
            except MemoryError:
                image = InvalidInput(OUT_OF_MEMORY, "")
            finally:
                watchdog.disarm()
        del data
        header: dict = {
            "warnings": len(caught),
            "peak_bytes": _status_kb("VmHWM") * 1024,
            "first_warning": str(caught[0].message) if caught else None,
        }
        if isinstance(image, InvalidInput):
            memory = image.reason == OUT_OF_MEMORY  # under RLIMIT_AS: this image needs more than the cap
            header.update(
                ok=False,
                reason=MEMORY_LIMIT if memory else image.reason,
                detail=f"more than {limits.max_decode_bytes >> 20} MB" if memory else image.detail,
                retire=memory,
            )
            reply(header)
            if memory:
                return
            continue
        header.update(
            ok=True, width=image.width, height=image.height, format=image.format, mode=image.original_mode
        )
        reply(header, image.pixels.data.cast("B"))
        del image  # not held through the next decode
        if header["peak_bytes"] > _TRIM_AFTER_BYTES:
            _trim_heap()


if __name__ == "__main__":
    _serve(DecodeLimits(**json.loads(sys.argv[1])))
