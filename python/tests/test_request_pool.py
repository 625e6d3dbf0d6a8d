"""How many requests a worker runs at once, and how it sends their responses.

:class:`Admission` is checked on given numbers; :class:`RequestPool` with real threads that
compute (a busy loop on the thread's CPU clock) or wait (a sleep, an event); the
:class:`ResponseWriter`'s holding back on a real pipe.
"""

from __future__ import annotations

import os
import random
import select
import threading
import time
from typing import Callable, List

import pytest

from dspex_bridge import protocol
from dspex_bridge.request_pool import MIN_PATIENCE, WARM_UP, Admission, RequestPool, ThreadClock
from dspex_bridge.worker import FLUSH_DELAY, ResponseWriter


def compute(seconds: float) -> None:
    """Keep this thread on the CPU for ``seconds`` of its own CPU time."""
    started = time.thread_time()
    while time.thread_time() - started < seconds:
        pass


class Recorder:
    """A pool's ``run``: records how many requests were running when each one started."""

    def __init__(self, work) -> None:
        self._work = work
        self._lock = threading.Lock()
        self._running = 0
        self.company: List[int] = []

    def __call__(self, item) -> None:
        with self._lock:
            self._running += 1
            self.company.append(self._running)
        try:
            self._work(item)
        finally:
            with self._lock:
                self._running -= 1


def until(condition: Callable[[], bool], seconds: float = 30.0) -> bool:
    """Poll ``condition`` until it holds or ``seconds`` pass; whether it holds."""
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)
    return condition()


def blocks_on(released: threading.Event, finished: List[str]) -> Callable[[str], None]:
    """A pool's ``run``: "blocks" waits for ``released``, anything else computes for 2 ms;
    each item is recorded in ``finished`` when it is done."""

    def work(item: str) -> None:
        if item == "blocks":
            assert released.wait(30)
        else:
            compute(0.002)
        finished.append(item)

    return work


# -- Admission -------------------------------------------------------------------------------


def observed(admission: Admission, times: int, **request: float) -> Admission:
    """``admission`` after ``times`` finished requests that each cost ``request``."""
    for _ in range(times):
        admission.observe(**request)
    return admission


def test_requests_that_only_compute_are_admitted_one_at_a_time() -> None:
    admission = Admission(8)
    assert admission.limit == 8
    # Eight at once, each 1 ms of CPU in 8 ms: taking turns, not waiting on anything.
    taking_turns = {"cpu": 0.001, "wall": 0.008, "running": 8.0}
    assert observed(admission, WARM_UP - 1, **taking_turns).limit == 8
    assert observed(admission, 1, **taking_turns).limit == 1


def test_requests_that_wait_on_an_lm_use_every_slot() -> None:
    assert observed(Admission(8), 10, cpu=0.002, wall=0.3, running=8.0).limit == 8


def test_requests_that_wait_as_long_as_they_compute_run_two_at_once() -> None:
    assert observed(Admission(8), 10, cpu=0.010, wall=0.020, running=1.0).limit == 2


def test_time_lost_to_other_processes_is_not_taken_for_waiting() -> None:
    # Alone, 1 ms of CPU took 3 ms because the machine's other processes had the CPU.
    assert observed(Admission(8), 10, cpu=0.001, wall=0.003, running=1.0, queued=0.002).limit == 1
    assert observed(Admission(8), 10, cpu=0.001, wall=0.003, running=1.0).limit == 3


def test_requests_taking_turns_on_a_busy_machine_are_not_taken_for_waiting() -> None:
    # Two at once, each 1 ms of CPU and 1 ms waiting for a CPU: the other one, holding the
    # GIL, was preempted as often, so 4 ms of wall is all turn-taking.
    busy = {"cpu": 0.001, "wall": 0.004, "running": 2.0, "queued": 0.001}
    assert observed(Admission(8), 10, **busy).limit == 1


def test_a_request_that_lost_the_gil_for_a_while_does_not_open_admission() -> None:
    computing = {"cpu": 0.002, "wall": 0.002, "running": 1.0}
    admission = observed(Admission(8), 20, **computing)
    # Once in a while a request waits 17 times its CPU time for a preempted thread.
    for _ in range(3):
        assert observed(admission, 1, cpu=0.002, wall=0.036, running=1.0).limit == 1
        assert observed(admission, 4, **computing).limit == 1
    # When most recent requests wait, that is their character: admission opens.
    assert observed(admission, 5, cpu=0.002, wall=0.036, running=1.0).limit == 8


def test_a_closed_admission_opens_when_nothing_finishes_for_its_patience() -> None:
    now = [100.0]
    computing = {"cpu": 0.001, "wall": 0.001, "running": 1.0}
    admission = observed(Admission(8, clock=lambda: now[0]), WARM_UP, **computing)
    assert admission.limit == 1
    assert admission.patience == MIN_PATIENCE
    now[0] += MIN_PATIENCE / 2
    assert not admission.stalled()
    assert admission.limit == 1
    now[0] += MIN_PATIENCE
    assert admission.stalled()
    assert admission.limit == 8
    # The averages start over, with a new warm-up.
    assert observed(admission, WARM_UP - 1, **computing).limit == 8


def test_patience_follows_how_long_requests_take() -> None:
    admission = observed(Admission(4), 20, cpu=0.1, wall=0.1, running=1.0)
    assert admission.patience == pytest.approx(0.4, rel=0.01)


def test_the_thread_clock_counts_this_threads_cpu_time() -> None:
    clock = ThreadClock()
    cpu, queued = clock.read()
    compute(0.02)
    later_cpu, later_queued = clock.read()
    assert later_cpu - cpu >= 0.015
    assert later_queued >= queued
    time.sleep(0.02)
    assert clock.read()[0] - later_cpu < 0.01


# -- RequestPool -----------------------------------------------------------------------------


def test_a_backlog_of_requests_that_compute_runs_one_at_a_time() -> None:
    recorder = Recorder(lambda item: compute(0.002))
    pool = RequestPool(8, recorder)
    for item in range(80):
        pool.submit(item)
    pool.drain()
    assert pool.admission.limit == 1
    # Once their cost is known they run alone, one after the other (all eight slots were
    # open at first: see the test below for requests that wait).
    alone = sum(1 for company in recorder.company[40:] if company == 1)
    assert alone >= 36, recorder.company
    # Of the seven idle threads, one kept time while the backlog waited.
    assert pool.peak_watching == 1


def test_a_request_that_blocks_inside_a_backlog_read_at_once_does_not_hold_it() -> None:
    # Everything is queued before the pool has run anything, so the thread keeping time
    # changes as threads leave for work; one must still be keeping time when "blocks" runs.
    released = threading.Event()
    finished: List[str] = []
    pool = RequestPool(4, blocks_on(released, finished))
    items = [f"warm-{index}" for index in range(30)] + ["blocks"] + [f"after-{index}" for index in range(3)]
    for item in items:
        pool.submit(item)
    until(lambda: len(finished) >= 33)
    assert "blocks" not in finished
    assert sorted(finished[-3:]) == ["after-0", "after-1", "after-2"], finished
    released.set()
    pool.drain()
    assert finished[-1] == "blocks"
    assert pool.peak_watching == 1


def test_requests_that_wait_run_on_every_slot() -> None:
    recorder = Recorder(lambda item: time.sleep(0.02))
    pool = RequestPool(8, recorder)
    for item in range(64):
        pool.submit(item)
    pool.drain()
    assert pool.admission.limit == 8
    assert pool.peak_running == 8
    assert recorder.company[-16:].count(8) >= 1, recorder.company


def test_a_request_that_blocks_behind_a_closed_admission_does_not_hold_the_queue() -> None:
    released = threading.Event()
    finished: List[str] = []
    pool = RequestPool(4, blocks_on(released, finished))
    for index in range(20):
        pool.submit(f"warm-{index}")
    until(lambda: len(finished) >= 20)
    assert pool.admission.limit == 1
    pool.submit("blocks")
    for index in range(3):
        pool.submit(f"after-{index}")
    # The three behind the blocked one finish while it still blocks: the pool opened.
    until(lambda: len(finished) >= 23)
    assert sorted(finished[20:]) == ["after-0", "after-1", "after-2"]
    released.set()
    pool.drain()
    assert finished[-1] == "blocks"


class ScriptedAdmission(Admission):
    """An admission whose limit and patience the test sets; finished requests only count
    as finished (for :meth:`Admission.stalled`)."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.wait_for = 10.0

    @property
    def patience(self) -> float:
        return self.wait_for

    def observe(self, cpu: float, wall: float, running: float, queued: float = 0.0) -> None:
        self._last_finish = time.monotonic()


def test_the_thread_keeping_time_hands_over_when_it_leaves_for_work() -> None:
    admission = ScriptedAdmission(3)
    events = {name: threading.Event() for name in ("a", "b", "q1")}
    warm_up = threading.Barrier(3, timeout=10)
    finished: List[str] = []

    def work(item: str) -> None:
        if item in events:
            assert events[item].wait(30)
        elif item.startswith("w"):
            warm_up.wait()  # three threads exist
        finished.append(item)

    pool = RequestPool(3, work, admission)
    for item in ("w1", "w2", "w3"):
        pool.submit(item)
    pool.drain()
    admission.limit = 2
    pool.submit("a")
    pool.submit("b")
    assert until(lambda: pool._running == 2 and pool._idle == 1, seconds=10)
    for item in ("q1", "q2", "q3"):
        pool.submit(item)
    # The idle thread keeps time; "b"'s thread, done, waits behind it without a timeout.
    assert until(lambda: pool._watching == 1, seconds=10)
    admission.limit = 1
    events["b"].set()
    assert until(lambda: pool._idle == 2, seconds=10)
    # One more slot: the time keeper, first in line, leaves for "q1", which blocks too.
    admission.wait_for = 0.05
    admission.limit = 2
    pool.submit("q4")
    # With "a" and "q1" blocking, someone must still keep time: the queue opens.
    assert until(lambda: sorted(finished[-3:]) == ["q2", "q3", "q4"], seconds=10)
    assert "a" not in finished and "q1" not in finished
    events["a"].set()
    events["q1"].set()
    pool.drain()
    assert pool.peak_watching == 1


@pytest.mark.parametrize("seed", range(8))
def test_whatever_the_mix_requests_that_do_not_block_finish_while_others_block(seed: int) -> None:
    # A random mix of requests that compute, sleep or block (fewer blockers than threads),
    # submitted in bursts: every request that does not block finishes while the blockers
    # still block, and one thread at most keeps time.
    rnd = random.Random(seed)
    size = rnd.choice([2, 3, 4, 8])
    blockers = {index: threading.Event() for index in rnd.sample(range(40), size - 1)}
    finished: List[int] = []

    def work(index: int) -> None:
        if index in blockers:
            assert blockers[index].wait(30)
        elif index % 3:
            compute(rnd.choice([0.0005, 0.002]))
        else:
            time.sleep(rnd.choice([0.001, 0.01]))
        finished.append(index)

    pool = RequestPool(size, work)
    submitted = 40 + rnd.randint(0, 60)
    for index in range(submitted):
        pool.submit(index)
        if rnd.random() < 0.2:
            time.sleep(rnd.choice([0.0, 0.002, 0.02]))
    others = set(range(submitted)) - set(blockers)
    until(lambda: len(finished) >= len(others), seconds=20)
    assert sorted(finished) == sorted(others)
    for event in blockers.values():
        event.set()
    pool.drain()
    assert pool.peak_watching <= 1


def test_a_pool_thread_knows_whether_it_goes_on_to_a_queued_request() -> None:
    answers: List[bool] = []
    entered = threading.Event()
    release = threading.Event()

    def work(item: str) -> None:
        if item == "first":
            entered.set()
            assert release.wait(30)
        answers.append(pool.continues())

    pool = RequestPool(1, work)
    pool.submit("first")
    assert entered.wait(30)
    pool.submit("second")
    release.set()
    pool.drain()
    # "first" finished with "second" queued behind it; "second" with nothing left.
    assert answers == [True, False]


# -- ResponseWriter --------------------------------------------------------------------------


def readable(fd: int) -> bool:
    return bool(select.select([fd], [], [], 0)[0])


@pytest.fixture
def pipe():
    read_end, write_end = os.pipe()
    stream = os.fdopen(write_end, "wb")
    yield read_end, stream
    stream.close()
    os.close(read_end)


def frames(fd: int, count: int) -> List[bytes]:
    reader = os.fdopen(os.dup(fd), "rb", buffering=0)
    try:
        return [protocol.read_frame(reader, 1 << 20) for _ in range(count)]
    finally:
        reader.close()


def test_a_held_back_response_waits_until_it_is_due(pipe) -> None:
    read_end, stream = pipe
    writer = ResponseWriter(stream, 1 << 20, max_deferred=4)
    assert writer.flush_due() is None
    writer.write(b'{"id": 1}', defer=True)
    writer.write(b'{"id": 2}', defer=True)
    assert not readable(read_end)
    due = writer.flush_due()
    assert due is not None and 0 <= due <= FLUSH_DELAY
    writer.flush_late()
    if writer.flush_due() is not None:
        assert not readable(read_end)
        time.sleep(writer.flush_due() + 0.001)
        writer.flush_late()
    assert writer.flush_due() is None
    assert frames(read_end, 2) == [b'{"id": 1}', b'{"id": 2}']
    assert writer.held_back == 2


def test_a_response_sent_at_once_takes_the_held_back_ones_with_it(pipe) -> None:
    read_end, stream = pipe
    writer = ResponseWriter(stream, 1 << 20, max_deferred=4)
    writer.write(b'{"id": 1}', defer=True)
    writer.write(b'{"id": 2}')
    assert writer.flush_due() is None
    assert frames(read_end, 2) == [b'{"id": 1}', b'{"id": 2}']


def test_no_more_than_max_deferred_responses_are_held_back(pipe) -> None:
    read_end, stream = pipe
    writer = ResponseWriter(stream, 1 << 20, max_deferred=2)
    for request_id in (1, 2):
        writer.write(b'{"id": %d}' % request_id, defer=True)
    assert not readable(read_end)
    writer.write(b'{"id": 3}', defer=True)
    assert frames(read_end, 3) == [b'{"id": 1}', b'{"id": 2}', b'{"id": 3}']
    assert writer.held_back == 2


def test_without_a_reader_that_wakes_for_them_nothing_is_held_back(pipe) -> None:
    read_end, stream = pipe
    writer = ResponseWriter(stream, 1 << 20)
    writer.write(b'{"id": 1}', defer=True)
    assert frames(read_end, 1) == [b'{"id": 1}']
    assert writer.held_back == 0
