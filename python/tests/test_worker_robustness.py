"""One request can fail, never the worker: whatever goes wrong with a request that has an id
is that request's error response, and the next request is served.
"""

from __future__ import annotations

import json
import resource
import struct
from typing import Any, Callable, Dict

import pytest
from gate import runtime_env

from bridge_client import BridgeProcess

SpawnFn = Callable[..., BridgeProcess]

GIB = 1024**3


def frame(message_text: str) -> bytes:
    body = message_text.encode("utf-8")
    return struct.pack(">I", len(body)) + body


def assert_still_serving(worker: BridgeProcess) -> None:
    assert worker.call("echo", {"alive": True}) == {"echo": {"alive": True}}


def error_of(response: Dict[str, Any]) -> Dict[str, Any]:
    assert response["success"] is False, response
    return response["error"]


@pytest.mark.parametrize("depth", [5000, 200_000])
def test_args_nested_too_deep_to_decode_fail_that_request_only(spawn: SpawnFn, depth: int) -> None:
    worker = spawn("fds")
    worker.send_raw(frame('{"id": 41, "command": "echo", "args": {"deep": ' + "[" * depth + "]" * depth + "}}"))
    response = worker.response(41)
    error = error_of(response)
    assert error["type"] == "InvalidRequest"
    assert "request 41 (echo) is nested too deeply to decode" in error["message"]
    assert_still_serving(worker)
    assert worker.call("get_stats")["errors"] == 1


def test_the_id_is_found_after_deeply_nested_args(spawn: SpawnFn) -> None:
    worker = spawn("fds")
    # Brackets inside a string must not count: the string is  ]}["{
    nested = '{"a": ' + "[" * 3000 + '"]}[\\"{"' + "]" * 3000 + "}"
    worker.send_raw(frame('{"command": "echo", "args": ' + nested + ', "id": 7}'))
    assert error_of(worker.response(7))["type"] == "InvalidRequest"
    assert_still_serving(worker)


def test_a_frame_too_deep_to_decode_without_an_id_is_a_protocol_violation(spawn: SpawnFn) -> None:
    worker = spawn("fds")
    worker.send_raw(frame('{"command": "echo", "args": ' + "[" * 5000 + "]" * 5000 + "}"))
    assert worker.wait() == 3
    assert worker.read_remaining() == b""
    assert "has no readable id" in worker.stderr_log()


def test_deep_recursion_in_a_handler_fails_that_request_only(spawn: SpawnFn) -> None:
    worker = spawn("fds", env=runtime_env())
    assert error_of(worker.request("recurse"))["type"] == "RecursionError"
    assert_still_serving(worker)


def limit_address_space() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (GIB, GIB))


def test_running_out_of_memory_answers_memory_error_naming_the_limit(spawn: SpawnFn) -> None:
    worker = spawn(
        "fds",
        env=runtime_env(DSPEX_MEMORY_LIMIT=str(GIB), DSPEX_WORKER_CONCURRENCY="2"),
        in_child=limit_address_space,
    )
    error = error_of(worker.request("out_of_memory", {"bytes": 2 * GIB}))
    assert error["type"] == "MemoryError"
    assert "pool.worker_memory_limit" in error["message"]
    assert "1 GiB" in error["message"]
    assert "'out_of_memory'" in error["message"]
    assert_still_serving(worker)
    assert worker.call("out_of_memory", {"bytes": 1000}) == 1000


def test_a_memory_error_without_a_known_limit_still_names_the_setting(spawn: SpawnFn) -> None:
    worker = spawn("fds", env=runtime_env(), remove_env=["DSPEX_MEMORY_LIMIT"])
    error = error_of(worker.request("raise_memory_error"))
    assert error["type"] == "MemoryError"
    assert "pool.worker_memory_limit" in error["message"]


@pytest.mark.parametrize(
    "message, expected",
    [
        ({"id": 3, "command": 12, "args": {}}, "request 3 has no command name (got 12)"),
        ({"id": 3, "args": {}}, "request 3 has no command name (got None)"),
        ({"id": 3, "command": "echo", "args": [1, 2]}, "args of 'echo' must be a JSON object, got an array"),
        ({"id": 3, "command": "echo", "args": "text"}, "args of 'echo' must be a JSON object, got a string"),
        ({"id": 3, "command": ["ping"], "args": {}}, "request 3 has no command name"),
    ],
)
def test_requests_of_the_wrong_shape_are_invalid_requests(
    spawn: SpawnFn, message: Dict[str, Any], expected: str
) -> None:
    worker = spawn("fds")
    worker.send_raw(frame(json.dumps(message)))
    error = error_of(worker.response(3))
    assert error["type"] == "InvalidRequest"
    assert expected in error["message"]
    assert_still_serving(worker)


def test_a_session_id_that_is_not_a_string_is_an_invalid_request(spawn: SpawnFn) -> None:
    worker = spawn("fds")
    error = error_of(worker.request("cleanup_session", {"session_id": 5}))
    assert error["type"] == "InvalidRequest"
    assert "session_id must be a string" in error["message"]


def test_unknown_command_lists_the_commands_without_a_traceback(spawn: SpawnFn) -> None:
    worker = spawn("fds", env=runtime_env())
    error = error_of(worker.request("frobnicate"))
    assert error["type"] == "UnknownCommand"
    assert "traceback" not in error
    assert error["message"].startswith("unknown command 'frobnicate'; available commands: ")
    for name in ("ping", "shutdown", "execute_program", "hold", "whoami"):
        assert name in error["message"]


def test_rate_limited_carries_retry_after(spawn: SpawnFn) -> None:
    worker = spawn("fds", env=runtime_env())
    error = error_of(worker.request("rate_limited", {"retry_after": 2.5}))
    assert error["type"] == "RateLimited"
    assert error["retry_after"] == 2.5
    assert error["message"] == "provider said slow down"
    without = error_of(worker.request("rate_limited"))
    assert "retry_after" not in without


def test_keyboard_interrupt_raised_by_user_code_fails_only_that_request(spawn: SpawnFn) -> None:
    worker = spawn("fds", env=runtime_env())
    assert error_of(worker.request("interrupt"))["type"] == "KeyboardInterrupt"
    assert_still_serving(worker)


def test_an_error_that_cannot_be_described_is_still_answered(spawn: SpawnFn) -> None:
    worker = spawn("fds", env=runtime_env())
    error = error_of(worker.request("unprintable"))
    assert error["type"] == "_Unprintable"
    assert "describing it failed" in error["message"]
    assert_still_serving(worker)
