"""The threads that run a worker's user requests, and how many of them may compute at once.

A worker accepts up to ``DSPEX_WORKER_CONCURRENCY`` requests at a time because a real LM
call is a wait of 0.3-3 s, and a thread that waits leaves the interpreter to the others. A
request that never waits (the offline ``dummy`` LM, a program whose cost is its own Python)
is the opposite case: every extra thread running one only takes turns with the others over
the GIL. Each turn is a lock hand-off with a context switch, so eight such threads do the
same work as one, more slowly, and leave the core idle between turns.

:class:`Admission` therefore decides how many requests may *run* at once from what requests
cost. For each finished request it knows the thread's CPU time ``cpu`` and its wall time
``wall``, and estimates the time it spent waiting on something other than the GIL as
``wait = wall - cpu * running``, where ``running`` is how many requests ran at once on
average meanwhile (taking turns with them, a request that only computes takes about
``cpu * running``). Time lost to the machine's other processes is not waiting: the
thread's own wait for a CPU (``queued``, :class:`ThreadClock`) stretches its CPU time, and
the others it took turns with are taken to have been stretched as much (while a thread that
holds the GIL is preempted, the others wait for it), so ``wait = wall - (cpu + queued) *
running``. Little's law then says how many requests keep one interpreter busy:
``1 + wait / cpu``. A request that waits 300 ms for 2 ms of Python allows all the slots; one
that only computes allows one, and the rest wait in the queue, already read, so the running
thread goes from one straight to the next without a hand-off.

The estimate is the median ``wait / cpu`` of the last :data:`WARM_UP` requests (and waits for
that many), so a request that now and then loses the GIL to a preempted thread on a busy
machine does not open admission. The work can change character: when a run of fast requests
is followed by one that blocks (a cache miss after cache hits), the requests queued behind
it would wait for it. So when requests are queued, admission is closed and nothing has
finished for :attr:`Admission.patience`, every slot opens again and the estimate starts
over.

Threads whose work releases the GIL while it computes (native code such as a local model
on several cores) are counted as computing; such programs are rare in DSPy, where the
cost is Python around LM calls.
"""

from __future__ import annotations

import collections
import os
import statistics
import threading
import time
from typing import Any, Callable, Deque, Optional, Tuple

#: Weight of the newest request in the running averages.
SMOOTHING = 0.25
#: Requests observed before admission may close: one fast request (a program being
#: created) says nothing about the LM calls that follow.
WARM_UP = 8
#: Least time admission stays closed with work queued and nothing finishing.
MIN_PATIENCE = 0.05
#: Patience in units of the average request's wall time.
PATIENCE_REQUESTS = 4.0


class Admission:
    """How many requests may run at once (see the module doc); not thread-safe, the
    :class:`RequestPool` calls it under its lock."""

    def __init__(self, size: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.size = size
        self._clock = clock
        self.limit = size
        self._observed = 0
        self._wall = 0.0
        #: Recent requests' waits, as multiples of their CPU time.
        self._waits: Deque[float] = collections.deque(maxlen=WARM_UP)
        self._last_finish = clock()

    @property
    def patience(self) -> float:
        """How long queued work waits on a closed admission before every slot opens."""
        return max(MIN_PATIENCE, PATIENCE_REQUESTS * self._wall)

    def observe(self, cpu: float, wall: float, running: float, queued: float = 0.0) -> None:
        """Record a finished request: its thread's CPU seconds, its wall seconds, how many
        requests ran at once on average while it ran (itself included), and how long its
        thread waited for a CPU the machine's other processes had."""
        self._last_finish = self._clock()
        cpu = max(cpu, 0.0)
        queued = max(queued, 0.0)
        # Taking turns, each of the requests running at once stretched by the machine's
        # other processes as much as this one was (a request thread holding the GIL can be
        # preempted too, and the others then wait for it, not for a CPU).
        wait = max(wall - (cpu + queued) * max(running, 1.0), 0.0)
        # The first request sets the average; later ones move it.
        weight = SMOOTHING if self._observed else 1.0
        self._observed += 1
        self._wall += weight * (wall - self._wall)
        self._waits.append(wait / max(cpu, 1e-6))
        if self._observed < WARM_UP:
            self.limit = self.size
        else:
            # The median of the recent requests: one that lost the GIL to a preempted
            # thread once in a while does not open admission.
            self.limit = max(1, min(self.size, int(1.5 + statistics.median(self._waits))))

    def stalled(self) -> bool:
        """Called when queued work found admission closed for a while: opens every slot
        (and forgets the averages) if nothing has finished for :attr:`patience`."""
        if self.limit >= self.size or self._clock() - self._last_finish < self.patience:
            return False
        self.limit = self.size
        self._observed = 0
        self._waits.clear()
        self._last_finish = self._clock()
        return True


class ThreadClock:
    """The calling thread's CPU time, and the time it spent runnable but waiting for a CPU
    (Linux: ``/proc/thread-self/schedstat``; elsewhere none).

    The CPU time comes from the thread's CPU clock, not from ``schedstat``, whose run time
    only moves when the thread is switched out: a thread reading it while it computes would
    see none of its current time slice.
    """

    def __init__(self) -> None:
        try:
            self._fd: Optional[int] = os.open("/proc/thread-self/schedstat", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._fd = None

    def read(self) -> Tuple[float, float]:
        """``(cpu seconds, runqueue seconds)`` of this thread so far."""
        cpu = time.thread_time()
        if self._fd is not None:
            try:
                return cpu, int(os.pread(self._fd, 128, 0).split()[1]) / 1e9
            except (OSError, ValueError, IndexError):
                os.close(self._fd)
                self._fd = None
        return cpu, 0.0


class RequestPool:
    """Runs user requests on at most ``size`` threads, in arrival order, with at most
    ``Admission.limit`` of them running at once.

    Threads start on demand (an idle worker costs no thread stacks against its address-space
    limit) and are daemons: the worker leaves with ``os._exit`` and must never wait for one.
    More requests than threads wait in an unbounded queue: the host sends at most ``size``,
    and one that sends more is served late rather than dropped.
    """

    def __init__(self, size: int, run: Callable[[Any], None], admission: Optional[Admission] = None) -> None:
        self.size = size
        self.admission = admission or Admission(size)
        self._run = run
        self._lock = threading.Lock()
        self._work = threading.Condition(self._lock)
        self._done = threading.Condition(self._lock)
        self._queue: Deque[Any] = collections.deque()
        self._threads = 0
        self._idle = 0
        self._watching = 0
        self._running = 0
        # The integral of _running over time, for each request's average company.
        self._load = 0.0
        self._load_at = time.monotonic()
        self._outstanding = 0
        #: The most requests that ever ran at once, and the most threads that ever kept
        #: time at once (for tests).
        self.peak_running = 0
        self.peak_watching = 0

    def submit(self, item: Any) -> None:
        """Queue ``item``; a thread picks it up as soon as one is free and admitted."""
        with self._lock:
            self._queue.append(item)
            self._outstanding += 1
            if self._running < self.admission.limit:
                # An idle thread that was notified but has not woken yet still counts as
                # idle: compare the queue with the idle threads, not "is any thread idle",
                # or a burst of requests would all be left to the one thread that happened
                # to be idle.
                if len(self._queue) > self._idle:
                    self._start_thread()
                else:
                    self._work.notify()
            elif not self._watching:
                # Admission is closed: the running threads take the queue in turn. One
                # waiting thread keeps time, so a request that blocks cannot hold the
                # queue for ever (Admission.stalled).
                self._offer()

    def outstanding(self) -> int:
        """Requests accepted and not yet finished (queued or running)."""
        with self._lock:
            return self._outstanding

    def drain(self) -> None:
        """Wait until every accepted request has finished."""
        with self._lock:
            while self._outstanding:
                self._done.wait()

    def _start_thread(self) -> None:
        if self._threads < self.size:
            self._threads += 1
            threading.Thread(target=self._serve, name=f"dspex-request-{self._threads}", daemon=True).start()
        else:
            self._work.notify()

    def _account_time(self) -> float:
        """Under the lock: bring the integral of running requests up to now; returns now."""
        now = time.monotonic()
        self._load += self._running * (now - self._load_at)
        self._load_at = now
        return now

    def _offer(self) -> None:
        """Under the lock, with work queued: get one more thread to it (to run it if it is
        admitted, else to keep time), an idle one if there is one."""
        if self._idle:
            self._work.notify()
        else:
            self._start_thread()

    def _admitted(self) -> bool:
        return bool(self._queue) and self._running < self.admission.limit

    def continues(self) -> bool:
        """Called by a pool thread about to finish its request: whether it will go straight
        on to a queued one."""
        with self._lock:
            return bool(self._queue) and self._running - 1 < self.admission.limit

    def _wait_for_work(self) -> None:
        """Under the lock: wait until a request is queued and admitted.

        While work is queued behind a closed admission, one idle thread keeps time (waits
        with a timeout, to open admission if nothing finishes) and the others wait without
        one. A thread in a timed wait is not free: while one exists, the running thread's
        every release of the GIL (a system call, ``uuid4``) costs futex calls and context
        switches; with every idle thread keeping time, a worker working through a backlog
        made about twice as many of both per row (``perf stat``, benches/worker_cpu.py).
        """
        self._idle += 1
        while not self._admitted():
            if not self._queue or self._watching:
                self._work.wait()
                continue
            self._watching += 1
            self.peak_watching = max(self.peak_watching, self._watching)
            try:
                woken = self._work.wait(self.admission.patience)
            finally:
                self._watching -= 1
            if not woken and not self._admitted() and self.admission.stalled():
                self._work.notify_all()
        self._idle -= 1

    def _serve(self) -> None:
        clock = ThreadClock()
        while True:
            with self._lock:
                self._wait_for_work()
                item = self._queue.popleft()
                started = self._account_time()
                load = self._load
                self._running += 1
                self.peak_running = max(self.peak_running, self._running)
                if self._queue and (self._admitted() or not self._watching):
                    # More is queued: another thread runs it, or, behind a closed admission
                    # nobody keeps time for (this thread may have been the time keeper),
                    # takes over keeping time.
                    self._offer()
            started_cpu, started_queued = clock.read()
            try:
                self._run(item)
            finally:
                cpu, queued = clock.read()
                with self._lock:
                    wall = self._account_time() - started
                    running = (self._load - load) / wall if wall > 0 else 1.0
                    self.admission.observe(cpu - started_cpu, wall, running, queued - started_queued)
                    self._running -= 1
                    self._outstanding -= 1
                    if not self._outstanding:
                        self._done.notify_all()
                    elif self._queue and self._running + 1 < self.admission.limit:
                        # This thread takes the next request itself; a wider admission
                        # lets another thread take one more.
                        self._offer()
