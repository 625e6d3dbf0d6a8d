"""Many requests in flight per worker: slots, out-of-order answers, control commands, events.

Every test pins the running requests with the gate (a request is provably running when it
has checked in, and finishes only when released), so none of them depends on timing.
"""

from __future__ import annotations

from typing import Callable, List

import pytest
from gate import Gate, runtime_env

from bridge_client import BridgeProcess

SpawnFn = Callable[..., BridgeProcess]


def frame_ids(worker: BridgeProcess, count: int) -> List[int]:
    """Ids of the next ``count`` frames, in the order the worker wrote them."""
    ids = []
    for _ in range(count):
        frame = worker.recv()
        assert frame is not None, worker.logs()
        ids.append(frame["id"])
    return ids


def test_concurrency_defaults_to_one_and_is_reported(spawn: SpawnFn) -> None:
    default = spawn("fds", remove_env=["DSPEX_WORKER_CONCURRENCY"])
    assert default.call("ping")["concurrency"] == 1
    configured = spawn("fds", env={"DSPEX_WORKER_CONCURRENCY": "6"})
    assert configured.call("ping")["concurrency"] == 6
    assert configured.call("get_stats")["concurrency"] == 6


@pytest.mark.parametrize("value", ["0", "-2", "many", "1.5"])
def test_a_bad_concurrency_is_an_environment_error(spawn: SpawnFn, value: str) -> None:
    worker = spawn("fds", env={"DSPEX_WORKER_CONCURRENCY": value})
    assert worker.wait() == 2
    assert "DSPEX_WORKER_CONCURRENCY must be a positive integer" in worker.stderr_log()


def test_with_one_slot_a_request_waits_for_the_one_running(spawn: SpawnFn, gate: Gate) -> None:
    worker = spawn("fds", env=runtime_env())
    held = worker.send("hold", gate.args("first"))
    queued = worker.send("echo", {"n": 2})
    (first,) = gate.entered()
    # The reader is free although the only slot is taken.
    assert worker.call("ping")["status"] == "ok"
    assert worker.call("get_stats")["in_flight"] == 2
    assert worker.unclaimed() == []
    first.release()
    assert frame_ids(worker, 2) == [held, queued]


def test_slots_run_at_once_and_answer_in_the_order_they_finish(spawn: SpawnFn, gate: Gate) -> None:
    worker = spawn("fds", env=runtime_env(DSPEX_WORKER_CONCURRENCY="3"))
    ids = {tag: worker.send("hold", gate.args(tag)) for tag in ("a", "b", "c")}
    running = {held.tag: held for held in gate.entered(3)}
    assert sorted(running) == ["a", "b", "c"]
    for tag in ("c", "a", "b"):
        running[tag].release(f"released {tag}")
        response = worker.response(ids[tag])
        assert response["result"] == {"tag": tag, "released": f"released {tag}"}


def test_a_burst_after_a_quiet_spell_runs_at_once_on_every_slot(spawn: SpawnFn, gate: Gate) -> None:
    # A thread that served a request and went idle must not end up serving the whole next
    # burst alone: the burst gets as many threads as there are slots.
    worker = spawn("fds", env=runtime_env(DSPEX_WORKER_CONCURRENCY="4"))
    assert worker.call("echo", {"warm": True}) == {"echo": {"warm": True}}
    ids = [worker.send("hold", gate.args(str(index))) for index in range(4)]
    running = gate.entered(4)
    assert sorted(held.tag for held in running) == ["0", "1", "2", "3"]
    for held in running:
        held.release()
    assert sorted(frame_ids(worker, 4)) == ids


def test_never_more_requests_at_once_than_the_concurrency(spawn: SpawnFn, gate: Gate) -> None:
    worker = spawn("fds", env=runtime_env(DSPEX_WORKER_CONCURRENCY="2"))
    ids = [worker.send("hold", gate.args(str(index))) for index in range(5)]
    # Both slots busy at once (so the peak reaches 2); each release lets the next in.
    running = list(gate.entered(2))
    finished = []
    while running:
        running.pop(0).release()
        finished.append(worker.recv()["id"])
        if len(finished) + len(running) < len(ids):
            running.extend(gate.entered())
    assert sorted(finished) == ids
    assert worker.call("peak") == {"peak": 2}


def test_control_commands_are_answered_while_every_slot_is_busy(spawn: SpawnFn, gate: Gate) -> None:
    worker = spawn("fds", env=runtime_env(DSPEX_WORKER_CONCURRENCY="2"))
    holds = [worker.send("hold", gate.args(tag)) for tag in ("x", "y")]
    waiting_user_request = worker.send("echo", {"waits": True})
    running = gate.entered(2)
    assert worker.call("ping")["concurrency"] == 2
    stats = worker.call("get_stats")
    assert stats["in_flight"] == 3
    assert worker.call("cleanup_session", {"session_id": "s"}) == {"session_id": "s", "programs_removed": 0}
    assert worker.call("reset_state") == {"programs_removed": 0}
    # The user request queued behind the busy slots has not run.
    assert worker.unclaimed() == []
    for held in running:
        held.release()
    assert sorted(frame_ids(worker, 3)) == sorted([*holds, waiting_user_request])
    # A request leaves the count just after its answer is written: ask until it has.
    assert any(worker.call("get_stats")["in_flight"] == 0 for _ in range(1000))


def test_every_user_request_is_answered_when_many_are_pipelined(spawn: SpawnFn) -> None:
    worker = spawn("fds", env={"DSPEX_WORKER_CONCURRENCY": "4"})
    ids = [worker.send("echo", {"n": index}) for index in range(200)]
    for index, request_id in enumerate(ids):
        assert worker.response(request_id)["result"] == {"echo": {"n": index}}


def test_a_backlog_of_requests_that_only_compute_runs_one_at_a_time(spawn: SpawnFn) -> None:
    # Eight threads taking turns over the GIL would do the same work more slowly: once the
    # worker sees the requests never wait, it runs them one after the other, and sends
    # their responses a few at a time.
    worker = spawn("fds", env=runtime_env(DSPEX_WORKER_CONCURRENCY="8"))
    ids = [worker.send("spin", {"seconds": 0.002, "n": index}) for index in range(200)]
    for index, request_id in enumerate(ids):
        assert worker.response(request_id)["result"] == {"n": index}
    stats = worker.call("get_stats")
    assert stats["running_limit"] == 1
    assert stats["held_back"] > 0


def test_held_back_responses_go_out_while_the_next_request_blocks(spawn: SpawnFn, gate: Gate) -> None:
    worker = spawn("fds", env=runtime_env(DSPEX_WORKER_CONCURRENCY="8"))
    # Teach the worker that requests only compute, so the ones below queue behind one thread.
    for request_id in [worker.send("spin", {"seconds": 0.002, "n": index}) for index in range(40)]:
        worker.response(request_id)
    assert worker.call("get_stats")["running_limit"] == 1
    before = worker.call("get_stats")["held_back"]
    spins = [worker.send("spin", {"seconds": 0.002, "n": index}) for index in range(40)]
    held = worker.send("hold", gate.args("last"))
    # The thread that ran the last spin went on to the hold, which now blocks: the spins'
    # responses, some held back, must still arrive, without any further request.
    (running,) = gate.entered()
    for index, request_id in enumerate(spins):
        assert worker.response(request_id)["result"] == {"n": index}
    running.release()
    assert worker.response(held)["result"] == {"tag": "last", "released": "go"}
    assert worker.call("get_stats")["held_back"] > before


def test_a_user_command_finds_its_own_request_context(spawn: SpawnFn) -> None:
    worker = spawn("fds", env=runtime_env(DSPEX_WORKER_CONCURRENCY="5"), worker_id="ctx-worker")
    request_id = worker.send("whoami")
    assert worker.response(request_id)["result"] == {
        "request_id": request_id,
        "worker_id": "ctx-worker",
        "concurrency": 5,
    }


def test_requests_do_not_see_each_others_context_variables(spawn: SpawnFn) -> None:
    # One slot, so both requests run on the same pool thread.
    worker = spawn("fds", env=runtime_env())
    assert worker.call("set_probe", {"value": "from the first request"}) == {"set": "from the first request"}
    assert worker.call("get_probe") == {"probe": None}


def test_events_arrive_before_their_response(spawn: SpawnFn) -> None:
    worker = spawn("fds", env=runtime_env())
    request_id = worker.send("progress", {"count": 3})
    frames = [worker.recv() for _ in range(5)]
    assert [frame["id"] for frame in frames] == [request_id] * 5
    assert ["event" in frame for frame in frames] == [True, True, True, True, False]
    assert [frame["event"] for frame in frames[:3]] == [
        {"kind": "progress", "message": f"step {index}", "done": index + 1} for index in range(3)
    ]
    assert frames[3]["event"] == {"kind": "helper"}
    assert "success" not in frames[0]
    assert frames[4]["result"] == {"emitted": 4}


def test_events_of_an_answered_request_are_dropped(spawn: SpawnFn) -> None:
    worker = spawn("fds", env=runtime_env())
    finished = worker.send("progress", {"count": 1, "keep": "old"})
    worker.response(finished)
    late = worker.send("emit_late", {"key": "old"})
    # The very next frame is the late request's answer: no event for the finished one.
    frame = worker.recv()
    assert frame["id"] == late and frame["result"] == {"late": True}


def test_an_event_that_is_not_an_object_fails_the_request(spawn: SpawnFn) -> None:
    worker = spawn("fds", env=runtime_env())
    response = worker.request("emit_bad")
    assert response["success"] is False
    assert response["error"]["type"] == "TypeError"
    assert "an event must be a dict" in response["error"]["message"]


def test_an_event_over_the_frame_limit_is_refused_to_the_handler(spawn: SpawnFn) -> None:
    worker = spawn("fds", env=runtime_env(DSPEX_MAX_FRAME_BYTES="1024"))
    request_id = worker.send("emit_big", {"size": 2000})
    result = worker.response(request_id)["result"]
    assert "exceeds the 1024-byte frame limit" in result["refused"]
    assert request_id not in worker.events
    assert worker.call("emit_big", {"size": 10}) == {"refused": None}
