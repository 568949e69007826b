"""workers.memory.HeapTrimmer: the heap is handed back when a worker goes idle, and now and then under load."""

from __future__ import annotations

import time

from workers.memory import HeapTrimmer, release_free_memory


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _trimmer(interval_s: float, idle_s: float = 1.0) -> tuple[HeapTrimmer, _Clock, list[float]]:
    clock, trims = _Clock(), []
    trimmer = HeapTrimmer(interval_s, idle_s=idle_s, trim=lambda: trims.append(clock.now), clock=clock)
    trimmer._ensure_watcher = lambda: None  # type: ignore[method-assign]
    return trimmer, clock, trims


def test_interval_zero_trims_after_every_batch() -> None:
    trimmer, clock, trims = _trimmer(0.0)
    for _ in range(3):
        trimmer.batch_started()
        clock.now += 0.5
        trimmer.batch_finished()
    assert len(trims) == 3


def test_under_load_trims_at_most_once_an_interval() -> None:
    trimmer, clock, trims = _trimmer(30.0)
    for _ in range(100):  # back-to-back batches of 1 s: never idle
        trimmer.batch_started()
        clock.now += 1.0
        trimmer.batch_finished()
        assert not trimmer.trim_if_idle()
    assert trims == [1030.0, 1060.0, 1090.0]


def test_an_idle_process_is_trimmed_once() -> None:
    trimmer, clock, trims = _trimmer(30.0)
    assert not trimmer.trim_if_idle()  # nothing ran yet: nothing to hand back
    trimmer.batch_started()
    clock.now += 2.0
    trimmer.batch_finished()
    clock.now += 0.5
    assert not trimmer.trim_if_idle()  # not idle long enough: the next batch may be on its way
    clock.now += 0.6
    assert trimmer.trim_if_idle()
    clock.now += 60.0
    assert not trimmer.trim_if_idle()  # no batch since: nothing new to hand back
    assert trims == [1003.1]


def test_no_idle_trim_while_a_batch_runs() -> None:
    trimmer, clock, trims = _trimmer(30.0)
    trimmer.batch_started()
    clock.now += 1.0
    trimmer.batch_finished()
    trimmer.batch_started()  # the next batch is running
    clock.now += 5.0
    assert not trimmer.trim_if_idle()
    assert trims == []


def test_the_watcher_thread_trims_an_idle_process() -> None:
    trims: list[float] = []
    trimmer = HeapTrimmer(3600.0, idle_s=0.05, trim=lambda: trims.append(time.monotonic()))
    try:
        trimmer.batch_started()
        ended = time.monotonic()  # before the batch's recorded end, so the idle wait is measured from no later
        trimmer.batch_finished()
        deadline = ended + 5.0
        while not trims and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(trims) == 1 and trims[0] - ended >= 0.05
        time.sleep(0.2)
        assert len(trims) == 1  # once per idle spell
    finally:
        trimmer.stop()


def test_release_free_memory_runs_here() -> None:
    release_free_memory()  # glibc's malloc_trim on this machine; a no-op where there is none


def test_batch_context_brackets_a_batch_even_when_it_raises() -> None:
    trimmer, clock, trims = _trimmer(30.0)
    try:
        with trimmer.batch():
            clock.now += 5.0
            assert not trimmer.trim_if_idle()  # running: never trimmed from under it
            raise RuntimeError("the batch failed")
    except RuntimeError:
        pass
    clock.now += 1.0
    assert trimmer.trim_if_idle()  # the batch's end was recorded: idle, and there is memory to hand back
    assert trims == [1006.0]
