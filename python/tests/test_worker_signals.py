"""SIGTERM never leaves half a frame: a response being written is finished first.

The moment a signal lands cannot be steered from outside a process, so these tests run the
real worker (``main()``, real pipes, real exit) in a child interpreter whose response stream
sends SIGTERM to its own process half-way through the first frame it writes.
"""

from __future__ import annotations

import json
import struct
import sys
import textwrap
from typing import Callable, List

import pytest

from bridge_client import BridgeProcess

SpawnFn = Callable[..., BridgeProcess]

DRIVER = textwrap.dedent(
    """
    import os, signal, sys, threading
    from dspex_bridge import worker

    # On a request thread, hold the second half back until the main thread is leaving, so a
    # worker that did not wait for the frame would certainly tear it.
    leaving = threading.Event()
    close = worker.ResponseWriter.close

    def close_and_tell(self, timeout):
        leaving.set()
        close(self, timeout)

    worker.ResponseWriter.close = close_and_tell

    class SignalMidFrame:
        # Writes each frame in two halves; on the first frame SIGTERM lands in between.
        def __init__(self, stream):
            self.stream = stream
            self.signalled = sys.argv[1] == "no-signal"

        def write(self, data):
            half = len(data) // 2
            self.stream.write(data[:half])
            self.stream.flush()
            if not self.signalled:
                self.signalled = True
                os.kill(os.getpid(), signal.SIGTERM)
                if threading.current_thread() is not threading.main_thread():
                    leaving.wait(10)
            self.stream.write(data[half:])
            return len(data)

        def flush(self):
            self.stream.flush()

    claim = worker.claim_transport

    def claim_with_signal(transport):
        streams = claim(transport)
        streams.responses = SignalMidFrame(streams.responses)
        return streams

    worker.claim_transport = claim_with_signal
    worker.main(["--worker-id", "signals"])
    """
)


def frames_of(data: bytes) -> List[dict]:
    """Split a response stream into frames, failing on a torn one."""
    frames = []
    while data:
        assert len(data) >= 4, f"torn frame header: {data!r}"
        (length,) = struct.unpack(">I", data[:4])
        assert len(data) >= 4 + length, f"torn frame: {length} bytes announced, {len(data) - 4} written"
        frames.append(json.loads(data[4 : 4 + length]))
        data = data[4 + length :]
    return frames


def start_driver(spawn: SpawnFn, mode: str) -> BridgeProcess:
    return spawn("fds", argv=[sys.executable, "-c", DRIVER, mode])


def test_sigterm_while_the_reader_writes_a_control_answer_finishes_that_frame(spawn: SpawnFn) -> None:
    worker = start_driver(spawn, "signal")
    worker.send("ping", request_id=1)
    worker.send("ping", request_id=2)
    assert worker.wait() == 0
    # The frame being written is whole; the second ping, already sent, is never answered.
    frames = frames_of(worker.read_remaining())
    assert [frame["id"] for frame in frames] == [1]
    assert frames[0]["result"]["status"] == "ok"


def test_sigterm_while_a_request_thread_writes_finishes_that_frame(spawn: SpawnFn) -> None:
    worker = start_driver(spawn, "signal")
    worker.send("echo", {"n": 1}, request_id=1)
    assert worker.wait() == 0
    frames = frames_of(worker.read_remaining())
    assert frames == [{"id": 1, "success": True, "result": {"echo": {"n": 1}}, "timestamp": frames[0]["timestamp"]}]


@pytest.mark.parametrize("command", ["ping", "echo"])
def test_without_a_signal_both_requests_are_served(spawn: SpawnFn, command: str) -> None:
    worker = start_driver(spawn, "no-signal")
    worker.send(command, request_id=1)
    worker.send(command, request_id=2)
    worker.close_requests()
    assert worker.wait() == 0
    assert [frame["id"] for frame in frames_of(worker.read_remaining())] == [1, 2]
