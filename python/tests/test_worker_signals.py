"""SIGTERM never leaves half a frame: a response being written is finished first.

The moment a signal lands cannot be steered from outside a process, so these tests run a
worker loop in a child interpreter whose response stream raises SIGTERM from inside
``write()``, i.e. exactly while a frame is being written.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from bridge_client import DEFAULT_TIMEOUT, PYTHON_DIR

DRIVER = textwrap.dedent(
    """
    import io, json, os, signal, struct, sys
    from dspex_bridge.worker import Streams, Worker

    def frame(message):
        body = json.dumps(message).encode()
        return struct.pack(">I", len(body)) + body

    class SignalOnWrite(io.BytesIO):
        def write(self, data):
            if sys.argv[1] == "during-write":
                os.kill(os.getpid(), signal.SIGTERM)
            return super().write(data)

    requests = io.BytesIO(frame({"id": 1, "command": "echo", "args": {"n": 1}})
                          + frame({"id": 2, "command": "echo", "args": {"n": 2}}))
    responses = SignalOnWrite()
    code = Worker("w", Streams(requests, responses)).serve()
    data = responses.getvalue()
    frames = []
    while data:
        (length,) = struct.unpack(">I", data[:4])
        frames.append(json.loads(data[4:4 + length]))
        data = data[4 + length:]
    sys.__stdout__.write(json.dumps({"code": code, "frames": frames}))
    """
)


def run_driver(mode: str) -> dict:
    completed = subprocess.run(
        [sys.executable, "-c", DRIVER, mode],
        cwd=PYTHON_DIR,
        capture_output=True,
        timeout=DEFAULT_TIMEOUT,
        check=True,
    )
    return json.loads(completed.stdout)


def test_sigterm_during_a_write_finishes_that_frame_then_exits_zero() -> None:
    outcome = run_driver("during-write")
    assert outcome["code"] == 0
    # The first response is complete; the second request is never served.
    assert [frame["id"] for frame in outcome["frames"]] == [1]
    assert outcome["frames"][0]["result"] == {"echo": {"n": 1}}


def test_without_a_signal_both_requests_are_served() -> None:
    outcome = run_driver("no-signal")
    assert outcome["code"] == 0
    assert [frame["id"] for frame in outcome["frames"]] == [1, 2]
