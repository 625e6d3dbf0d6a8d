"""A worker running real DSPy programs against the test LM server, several calls at once.

The server holds every call until the test releases it, so "N calls in flight at once" is
read off the server's own counters, not inferred from time.
"""

from __future__ import annotations

from typing import Callable

from gate import runtime_env
from lm_fixture import LMServer

from bridge_client import BridgeProcess

SpawnFn = Callable[..., BridgeProcess]


def test_one_worker_keeps_its_concurrency_of_lm_calls_in_flight(spawn: SpawnFn, lm_server: LMServer) -> None:
    worker = spawn("fds", env=runtime_env(DSPEX_WORKER_CONCURRENCY="8"))
    lm_server.control(hold=True)
    ids = [worker.send("predict", {"api_base": lm_server.api_base, "question": f"q{index}"}) for index in range(10)]
    stats = lm_server.wait_in_flight(8)
    # Eight arrived one after another into 0..7 calls in flight; the other two wait in the worker.
    assert stats["arrivals_by_in_flight"] == {str(k): 1 for k in range(8)}
    assert worker.call("get_stats")["in_flight"] == 10
    lm_server.control(hold=False)
    answers = [worker.response(request_id)["result"]["answer"] for request_id in ids]
    # Each answer is about its own question (the server's answers name the question).
    assert [answer.rsplit(" about ", 1)[1] for answer in answers] == [f"q{index}." for index in range(10)]
    final = lm_server.stats()
    assert (final["calls"], final["ok"], final["peak_concurrency"]) == (10, 10, 8)
