"""The grandchild reaper: processes a worker starts die with the host, even a SIGKILLed one.

The host starts each worker in its own process group and asks the kernel to kill the worker
when the host dies (``PR_SET_PDEATHSIG``). That covers the worker, not what user code forked
from it: a ``subprocess.Popen("sleep 1000")`` in a handler would be re-parented to init and
outlive everything. Nothing in the host can act after a SIGKILL, so the cleanup must be done
by a process that outlives the host and notices its death.

That is the reaper: a tiny child forked by the worker at start-up, before any thread exists
(forking a threaded process would copy locks held by other threads). It stays in the worker's
process group and blocks reading the "lifeline", a pipe whose only write end the host holds
(``DSPEX_LIFELINE_FD``, fd 5). The host never writes to it; the kernel closes it when the host
exits for any reason, and the reaper's read returns end-of-file. The reaper then sends
SIGKILL to its own process group: the worker, every grandchild still in the group, and the
reaper itself.

The reaper holds no descriptor but the lifeline. Its stdin/stdout/stderr point at /dev/null
and the protocol pipes (fds 3 and 4) are closed, so it can never keep a pipe open that the
host waits to see closed (the response stream's EOF is how the host learns a worker died).
The worker closes its own copy of the lifeline right after the fork, so user subprocesses do
not inherit it.

A normal stop needs nothing from the reaper: the host's stop ladder ends by SIGKILLing the
worker's process group (reaper included) after reaping the worker, and a host that stops
cleanly closes the lifeline anyway. The group id stays reserved while the reaper lives, so
that final ``killpg`` cannot reach an unrelated process.

Limits:

* A grandchild that leaves the process group (``setsid``, ``setpgid``, a daemonising
  double fork, ``start_new_session=True``) escapes. A cgroup would catch it; dspex does not
  require one.
* The host passes a lifeline only with the ``fds`` transport: the ``stdio`` transport is for
  legacy bridge scripts, which know nothing of it and get no reaper.
* If the reaper itself is killed on its own (``kill -9`` of its pid), nothing is reaped when
  the host later dies; the worker carries on without it.
* POSIX only (``fork``, process groups).
"""

from __future__ import annotations

import os
import signal
from typing import Mapping, Optional

#: The descriptors the worker's protocol and logs use; never a valid lifeline.
_RESERVED_FDS = range(0, 5)


class LifelineError(Exception):
    """``DSPEX_LIFELINE_FD`` is set but does not name a usable descriptor."""


def lifeline_fd(env: Mapping[str, str]) -> Optional[int]:
    """The lifeline descriptor named by ``DSPEX_LIFELINE_FD``, or ``None`` when unset.

    Raises :class:`LifelineError` when the value is not a descriptor number above 4 that is
    open in this process.
    """
    text = env.get("DSPEX_LIFELINE_FD")
    if not text:
        return None
    try:
        fd = int(text)
    except ValueError:
        raise LifelineError(f"DSPEX_LIFELINE_FD must be a file descriptor number, got {text!r}") from None
    if fd in _RESERVED_FDS or fd < 0:
        raise LifelineError(f"DSPEX_LIFELINE_FD={fd} collides with stdio or the protocol pipes (fds 0-4)")
    try:
        os.fstat(fd)
    except OSError:
        raise LifelineError(f"DSPEX_LIFELINE_FD={fd} but that file descriptor is not open") from None
    return fd


def start_reaper(lifeline: int) -> int:
    """Fork the reaper; returns its pid in the worker, never returns in the reaper.

    Must be called while the worker has a single thread. Closes the worker's copy of the
    lifeline, so only the reaper (and the host's write end) keep the pipe alive.
    """
    pid = os.fork()
    if pid == 0:
        _reaper_main(lifeline)  # never returns
    os.close(lifeline)
    return pid


def _reaper_main(lifeline: int) -> None:
    code = 1
    try:
        # The host's stop ladder signals the whole group; the reaper goes quietly with it.
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        _detach_descriptors(lifeline)
        while True:
            try:
                if not os.read(lifeline, 4096):
                    break
            except InterruptedError:
                continue
        # The host is gone: take the whole group, this process included.
        os.killpg(0, signal.SIGKILL)
        code = 0
    finally:
        # Never fall back into the worker's code, whatever happened above.
        os._exit(code)


def _detach_descriptors(lifeline: int) -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    try:
        highest = os.sysconf("SC_OPEN_MAX")
    except (OSError, ValueError):
        highest = 65536
    os.closerange(3, lifeline)
    os.closerange(lifeline + 1, max(highest, lifeline + 2))
