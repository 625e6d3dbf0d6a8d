"""Stopping a worker: what is answered, and how soon the process is gone.

The host's stop ladder gives a worker ``shutdown.graceful_timeout`` (5 s) before SIGTERM; a
worker must be gone within a second of its last answer, whatever threads an LM client left
behind, so a run's reported time does not include that wait.
"""

from __future__ import annotations

import time
from typing import Callable

from gate import Gate, runtime_env
from lm_fixture import LMServer

from bridge_client import BridgeProcess

SpawnFn = Callable[..., BridgeProcess]


def test_shutdown_stops_reading_answers_then_finishes_what_runs(spawn: SpawnFn, gate: Gate) -> None:
    worker = spawn("fds", env=runtime_env(DSPEX_WORKER_CONCURRENCY="2"))
    running = worker.send("hold", gate.args("in flight"))
    (held,) = gate.entered()
    shutdown = worker.send("shutdown")
    worker.send("echo", {"sent after": "shutdown"})  # never read
    answer = worker.recv()
    assert answer["id"] == shutdown and answer["result"] == {"status": "shutting_down"}
    held.release()
    response = worker.recv()
    assert response["id"] == running and response["result"]["tag"] == "in flight"
    assert worker.wait() == 0
    assert worker.recv() is None


def test_end_of_stream_finishes_what_runs_then_exits(spawn: SpawnFn, gate: Gate) -> None:
    worker = spawn("fds", env=runtime_env())
    running = worker.send("hold", gate.args("in flight"))
    queued = worker.send("echo", {"queued": True})
    (held,) = gate.entered()
    worker.close_requests()
    held.release()
    assert [worker.recv()["id"], worker.recv()["id"]] == [running, queued]
    assert worker.wait() == 0


def test_sigterm_taken_by_a_request_thread_still_ends_the_worker_at_once(spawn: SpawnFn) -> None:
    # Linux may deliver the host's SIGTERM to any thread; Python runs the handler on the main
    # thread, which must wake up from its read of the request pipe to do so.
    worker = spawn("fds", env=runtime_env(DSPEX_WORKER_CONCURRENCY="2"))
    worker.send("sigterm_on_this_thread")
    assert worker.wait(timeout=10) == 0, worker.logs()
    assert worker.read_remaining() == b""
    assert "terminated by signal" in worker.stderr_log()


def test_shutdown_does_not_wait_for_lingering_threads(spawn: SpawnFn) -> None:
    worker = spawn("fds", env=runtime_env())
    assert worker.call("linger")["threads"] >= 2
    assert worker.call("shutdown") == {"status": "shutting_down"}
    answered = time.monotonic()
    # The lingering thread never ends: only an exit that does not join threads gets here.
    assert worker.wait(timeout=1.0) == 0
    assert time.monotonic() - answered < 1.0


def test_a_worker_that_used_litellm_exits_within_a_second(spawn: SpawnFn, lm_server: LMServer) -> None:
    worker = spawn("fds", env=runtime_env())
    result = worker.call("litellm_call", {"api_base": lm_server.api_base})
    assert result["content"]
    assert lm_server.stats()["ok"] == 1
    worker.close_requests()
    assert worker.recv() is None
    assert worker.wait(timeout=1.0) == 0


def test_sigterm_exits_at_once_without_answering_requests_in_flight(spawn: SpawnFn, gate: Gate) -> None:
    worker = spawn("fds", env=runtime_env(DSPEX_WORKER_CONCURRENCY="2"))
    worker.send("hold", gate.args("never released"))
    (held,) = gate.entered()
    worker.terminate()
    assert worker.wait() == 0
    assert worker.read_remaining() == b""
    # Kept referenced until here: dropping it would close the socket and release the request.
    assert held.tag == "never released"
