"""The grandchild reaper (``dspex_bridge/reaper.py``) with real processes.

The test plays the host: it starts the worker in its own process group with the read end of
a lifeline pipe on fd 5 and keeps the write end; closing that end is what the host's death
looks like to the reaper. Process ends are observed through pidfds, which become readable
the moment a process exits (a zombie counts: the container's init may never reap orphans).
"""

from __future__ import annotations

import os
import select
import signal
from typing import Callable, Dict, List

import pytest
from gate import runtime_env

from bridge_client import DEFAULT_TIMEOUT, BridgeProcess

SpawnFn = Callable[..., BridgeProcess]


def stat_fields(pid: int) -> List[str]:
    """``/proc/<pid>/stat`` after the command name: state, ppid, pgrp, ..."""
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
        text = stat.read()
    return text[text.rindex(")") + 2 :].split()


def children_of(pid: int) -> List[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if int(stat_fields(int(entry))[1]) == pid:
                    found.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return found


def group_members(pgid: int) -> List[int]:
    """Live (non-zombie) processes in a process group."""
    members = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = stat_fields(int(entry))
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(entry))
    return members


def the_reaper(worker: BridgeProcess) -> int:
    """The worker's only child right after start-up."""
    worker.call("ping")
    (reaper,) = children_of(worker.process.pid)
    return reaper


class Watch:
    """Pidfds of processes whose end a test waits for."""

    def __init__(self, *pids: int) -> None:
        self.fds: Dict[int, int] = {pid: os.pidfd_open(pid) for pid in pids}

    def ended(self, pid: int, timeout: float = DEFAULT_TIMEOUT) -> bool:
        ready, _, _ = select.select([self.fds[pid]], [], [], timeout)
        return bool(ready)

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)


@pytest.fixture
def watches() -> List[Watch]:
    started: List[Watch] = []
    yield started
    for watch in started:
        watch.close()


def test_the_host_dying_takes_the_worker_and_its_grandchildren(spawn: SpawnFn, watches: List[Watch]) -> None:
    worker = spawn("fds", env=runtime_env(), lifeline=True)
    reaper = the_reaper(worker)
    sleeper = worker.call("spawn_sleeper")["pid"]
    watch = Watch(reaper, sleeper)
    watches.append(watch)
    assert int(stat_fields(sleeper)[2]) == worker.process.pid
    # The host is SIGKILLed: its PR_SET_PDEATHSIG kills the worker, the kernel closes the
    # lifeline's write end.
    os.kill(worker.process.pid, signal.SIGKILL)
    assert worker.wait() == -signal.SIGKILL
    assert not watch.ended(sleeper, timeout=0), "the grandchild died with the worker, not by the reaper"
    worker.close_lifeline()
    assert watch.ended(sleeper)
    assert watch.ended(reaper)
    assert group_members(worker.process.pid) == []


def test_the_host_dying_takes_a_worker_that_still_runs(spawn: SpawnFn, watches: List[Watch]) -> None:
    worker = spawn("fds", env=runtime_env(), lifeline=True)
    reaper = the_reaper(worker)
    sleeper = worker.call("spawn_sleeper")["pid"]
    watches.append(Watch(reaper, sleeper))
    worker.close_lifeline()
    assert worker.wait() == -signal.SIGKILL
    assert watches[0].ended(sleeper) and watches[0].ended(reaper)


def test_the_reaper_holds_nothing_but_the_lifeline(spawn: SpawnFn) -> None:
    worker = spawn("fds", env=runtime_env(), lifeline=True)
    reaper = the_reaper(worker)
    descriptors = {int(fd): os.readlink(f"/proc/{reaper}/fd/{fd}") for fd in os.listdir(f"/proc/{reaper}/fd")}
    assert sorted(descriptors) == [0, 1, 2, 5]
    assert {descriptors[fd] for fd in (0, 1, 2)} == {"/dev/null"}
    assert descriptors[5] == os.readlink(f"/proc/self/fd/{worker.lifeline_write}")


def test_a_killed_worker_closes_the_response_stream_although_its_reaper_lives(
    spawn: SpawnFn, watches: List[Watch]
) -> None:
    worker = spawn("fds", env=runtime_env(), lifeline=True)
    reaper = the_reaper(worker)
    watches.append(Watch(reaper))
    os.kill(worker.process.pid, signal.SIGKILL)
    # End of stream, not a timeout: nobody else holds the response pipe's write end.
    assert worker.read_remaining() == b""
    assert not watches[0].ended(reaper, timeout=0)


def test_after_a_normal_stop_killing_the_group_leaves_nothing(spawn: SpawnFn, watches: List[Watch]) -> None:
    worker = spawn("fds", env=runtime_env(), lifeline=True)
    reaper = the_reaper(worker)
    watches.append(Watch(reaper))
    worker.close_requests()
    assert worker.wait() == 0
    # The reaper waits for the host; the host's stop ladder ends with SIGKILL to the group.
    assert group_members(worker.process.pid) == [reaper]
    os.killpg(worker.process.pid, signal.SIGKILL)
    assert watches[0].ended(reaper)
    assert group_members(worker.process.pid) == []


def test_user_subprocesses_do_not_inherit_the_lifeline(spawn: SpawnFn) -> None:
    worker = spawn("fds", env=runtime_env(), lifeline=True)
    assert worker.call("fd_open_in_child", {"fd": 5}) == "closed"


def test_without_a_lifeline_there_is_no_reaper(spawn: SpawnFn) -> None:
    worker = spawn("fds", env=runtime_env())
    worker.call("ping")
    assert children_of(worker.process.pid) == []


@pytest.mark.parametrize(
    "value, message",
    [
        ("five", "DSPEX_LIFELINE_FD must be a file descriptor number, got 'five'"),
        ("4", "DSPEX_LIFELINE_FD=4 collides with stdio or the protocol pipes"),
        ("9", "DSPEX_LIFELINE_FD=9 but that file descriptor is not open"),
    ],
)
def test_a_bad_lifeline_is_an_environment_error(spawn: SpawnFn, value: str, message: str) -> None:
    worker = spawn("fds", env={"DSPEX_LIFELINE_FD": value})
    assert worker.wait() == 2
    assert message in worker.stderr_log()
