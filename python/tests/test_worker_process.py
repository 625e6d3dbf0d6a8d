"""The worker as the host sees it: a real subprocess on either transport, no DSPy involved."""

from __future__ import annotations

import os
import struct
import sys
import textwrap
from pathlib import Path
from typing import Callable, Dict

import pytest

from bridge_client import FIXTURES, BridgeProcess

TRANSPORTS = ["fds", "stdio"]

HANDLERS = textwrap.dedent(
    """
    import os
    import signal
    import subprocess
    import sys
    import threading

    from dspex_bridge import command

    @command
    def noisy(args):
        print("noisy: print() from user code")
        sys.stdout.flush()
        os.write(1, b"noisy: os.write to fd 1\\n")
        subprocess.run([sys.executable, "-c", "print('noisy: child process stdout')"], check=True)
        return {"value": args["value"] * 2}

    @command("math.lookup")
    def lookup(args):
        return {}[args["key"]]

    @command
    def not_json(args):
        return {"thing": object()}

    @command
    def not_a_number(args):
        return float("nan")

    @command
    def read_stdin(args):
        return {"stdin": sys.stdin.read()}

    @command
    def big(args):
        return "x" * args["size"]

    @command
    def protocol_fds_in_child(args):
        probe = (
            "import os\\n"
            "for fd in (3, 4):\\n"
            "    try:\\n"
            "        os.fstat(fd)\\n"
            "        print('open')\\n"
            "    except OSError:\\n"
            "        print('closed')\\n"
        )
        child = subprocess.run([sys.executable, "-c", probe], close_fds=False, capture_output=True, text=True)
        return child.stdout.split()

    @command
    def quit(args):
        sys.exit(5)

    @command
    def terminate_self(args):
        os.kill(os.getpid(), signal.SIGTERM)
        # SIGTERM means "exit at once": the worker must not wait for this to return.
        threading.Event().wait(600)
        return "the response must never be sent"
    """
)

SpawnFn = Callable[..., BridgeProcess]


@pytest.fixture
def handler_env(tmp_path: Path) -> Dict[str, str]:
    (tmp_path / "test_handlers.py").write_text(HANDLERS)
    return {"DSPEX_HANDLERS": "test_handlers", "DSPEX_PYTHON_PATH": str(tmp_path)}


def user_output(worker: BridgeProcess) -> str:
    """Where user code's stdout ends up: stdout in fds mode, stderr in stdio mode."""
    return worker.stdout_log() if worker.transport == "fds" else worker.stderr_log()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_ping_reports_the_worker_without_loading_dspy(spawn: SpawnFn, transport: str) -> None:
    worker = spawn(transport, worker_id="w-7")
    result = worker.call("ping", {"initialization": True, "worker_id": "w-7"})
    assert result["status"] == "ok"
    assert result["worker_id"] == "w-7"
    assert result["pid"] == worker.process.pid
    assert result["python_version"] == ".".join(map(str, sys.version_info[:3]))
    assert result["dspy_loaded"] is False
    assert isinstance(result["uptime"], float) and result["uptime"] >= 0


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_echo_returns_the_args_verbatim(spawn: SpawnFn, transport: str) -> None:
    worker = spawn(transport)
    args = {"text": "h\u00e9llo \u4e16\u754c", "nested": {"list": [1, 2.5, None, True]}, "empty": {}}
    response = worker.request("echo", args)
    assert response["success"] is True
    assert response["result"] == {"echo": args}
    assert isinstance(response["timestamp"], float)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_user_code_printing_never_reaches_the_protocol_stream(
    spawn: SpawnFn, transport: str, handler_env: Dict[str, str]
) -> None:
    worker = spawn(transport, env=handler_env)
    assert worker.call("noisy", {"value": 21}) == {"value": 42}
    # The stream is still in step: the next response is the next request's.
    assert worker.call("echo", {"after": "noisy"}) == {"echo": {"after": "noisy"}}
    worker.close_requests()
    assert worker.wait() == 0
    output = user_output(worker)
    for line in ("noisy: print() from user code", "noisy: os.write to fd 1", "noisy: child process stdout"):
        assert line in output


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_user_code_reading_stdin_sees_no_request_frames(
    spawn: SpawnFn, transport: str, handler_env: Dict[str, str]
) -> None:
    worker = spawn(transport, env=handler_env)
    assert worker.call("read_stdin") == {"stdin": ""}
    assert worker.call("echo", {"still": "in step"}) == {"echo": {"still": "in step"}}


def test_child_processes_do_not_inherit_the_protocol_pipes(spawn: SpawnFn, handler_env: Dict[str, str]) -> None:
    # A grandchild holding fd 4 open would hide this worker's exit from the host.
    worker = spawn("fds", env=handler_env)
    assert worker.call("protocol_fds_in_child") == ["closed", "closed"]


def test_unset_transport_means_stdio(spawn: SpawnFn) -> None:
    worker = spawn("stdio", env={"DSPEX_TRANSPORT": ""})
    assert worker.call("echo", {"via": "stdio"}) == {"echo": {"via": "stdio"}}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_end_of_the_request_stream_exits_zero(spawn: SpawnFn, transport: str) -> None:
    worker = spawn(transport)
    worker.call("ping")
    worker.close_requests()
    assert worker.wait() == 0
    assert worker.read_remaining() == b""


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_sigterm_while_idle_exits_zero(spawn: SpawnFn, transport: str) -> None:
    worker = spawn(transport)
    worker.call("ping")  # answered, so the worker is now waiting for the next frame
    worker.terminate()
    assert worker.wait() == 0
    assert worker.read_remaining() == b""


def test_sigterm_during_a_command_exits_zero_at_once_without_answering(
    spawn: SpawnFn, handler_env: Dict[str, str]
) -> None:
    worker = spawn("fds", env=handler_env)
    worker.send("terminate_self")
    assert worker.wait() == 0
    assert worker.read_remaining() == b""


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_shutdown_answers_then_exits_zero(spawn: SpawnFn, transport: str) -> None:
    worker = spawn(transport)
    assert worker.call("shutdown") == {"status": "shutting_down"}
    assert worker.wait() == 0
    assert worker.recv() is None


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_oversized_request_frame_exits_3_without_answering(spawn: SpawnFn, transport: str) -> None:
    worker = spawn(transport, env={"DSPEX_MAX_FRAME_BYTES": "1024"})
    worker.call("ping")
    worker.send_raw(struct.pack(">I", 1025))
    assert worker.wait() == 3
    assert worker.read_remaining() == b""
    assert "exceeds the maximum of 1024 bytes" in worker.stderr_log()


def test_invalid_json_request_exits_3(spawn: SpawnFn) -> None:
    worker = spawn("fds")
    worker.send_raw(struct.pack(">I", 9) + b"{not json")
    assert worker.wait() == 3
    assert worker.read_remaining() == b""
    assert "protocol violation" in worker.stderr_log()


def test_oversized_response_becomes_an_error_and_the_worker_keeps_serving(
    spawn: SpawnFn, handler_env: Dict[str, str]
) -> None:
    worker = spawn("fds", env={**handler_env, "DSPEX_MAX_FRAME_BYTES": "1024"})
    response = worker.request("big", {"size": 2000})
    assert response["success"] is False
    assert response["error"]["type"] == "ResponseTooLarge"
    assert "1024-byte frame limit" in response["error"]["message"]
    assert worker.call("big", {"size": 10}) == "x" * 10


def test_user_command_exception_is_a_structured_error(spawn: SpawnFn, handler_env: Dict[str, str]) -> None:
    worker = spawn("fds", env=handler_env)
    response = worker.request("math.lookup", {"key": "missing"})
    assert response["success"] is False
    error = response["error"]
    assert error["type"] == "KeyError"
    assert error["message"] == "'missing'"
    assert "in lookup" in error["traceback"]


@pytest.mark.parametrize("command", ["not_json", "not_a_number"])
def test_results_that_are_not_json_are_reported_as_errors(
    spawn: SpawnFn, handler_env: Dict[str, str], command: str
) -> None:
    worker = spawn("fds", env=handler_env)
    response = worker.request(command)
    assert response["success"] is False
    assert response["error"]["type"] == "TypeError"
    assert f"result of {command!r} is not JSON-serialisable" in response["error"]["message"]


def test_sys_exit_in_a_command_fails_the_request_not_the_worker(spawn: SpawnFn, handler_env: Dict[str, str]) -> None:
    worker = spawn("fds", env=handler_env)
    response = worker.request("quit")
    assert response["success"] is False
    assert response["error"]["type"] == "SystemExit"
    assert worker.call("get_stats")["errors"] == 1


def test_unknown_command_lists_the_available_ones(spawn: SpawnFn, handler_env: Dict[str, str]) -> None:
    worker = spawn("fds", env=handler_env)
    response = worker.request("no_such_command")
    assert response["success"] is False
    assert response["error"]["type"] == "UnknownCommand"
    message = response["error"]["message"]
    assert "'no_such_command'" in message
    for name in ("ping", "execute_program", "math.lookup", "noisy"):
        assert name in message


def test_args_that_are_not_an_object_are_an_invalid_request(spawn: SpawnFn) -> None:
    worker = spawn("fds")
    response = worker.request("echo", [1, 2])
    assert response["success"] is False
    assert response["error"]["type"] == "InvalidRequest"


def test_handlers_load_from_every_python_path_entry(spawn: SpawnFn, tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir()
    second.mkdir()
    (first / "handlers_one.py").write_text("from dspex_bridge import command\n@command\ndef one(args):\n    return 1\n")
    (second / "handlers_two.py").write_text(
        "from dspex_bridge import command\n@command('two.named')\ndef whatever(args):\n    return 2\n"
    )
    worker = spawn(
        "fds",
        env={
            "DSPEX_HANDLERS": "handlers_one, handlers_two",
            "DSPEX_PYTHON_PATH": os.pathsep.join([str(first), str(second)]),
        },
    )
    assert worker.call("ping")["status"] == "ok"
    assert worker.call("one") == 1
    assert worker.call("two.named") == 2


def test_failed_handler_import_fails_ping_with_the_module_and_cause(spawn: SpawnFn, tmp_path: Path) -> None:
    (tmp_path / "broken_handlers.py").write_text("import definitely_not_a_module_xyz\n")
    worker = spawn("fds", env={"DSPEX_HANDLERS": "broken_handlers", "DSPEX_PYTHON_PATH": str(tmp_path)})
    response = worker.request("ping", {"initialization": True})
    assert response["success"] is False
    error = response["error"]
    assert error["type"] == "ImportError"
    assert "'broken_handlers'" in error["message"]
    assert "definitely_not_a_module_xyz" in error["message"]
    # The worker stays up, so the host can report the cause instead of a crash.
    assert worker.call("echo", {"a": 1}) == {"echo": {"a": 1}}


def test_handler_redefining_a_builtin_fails_ping(spawn: SpawnFn, tmp_path: Path) -> None:
    (tmp_path / "shadowing_handlers.py").write_text(
        "from dspex_bridge import command\n@command\ndef ping(args):\n    return 'mine'\n"
    )
    worker = spawn("fds", env={"DSPEX_HANDLERS": "shadowing_handlers", "DSPEX_PYTHON_PATH": str(tmp_path)})
    response = worker.request("ping")
    assert response["success"] is False
    assert response["error"]["type"] == "ImportError"
    assert "'ping' is built into dspex_bridge" in response["error"]["message"]


def test_get_stats_counts_every_request_including_itself(spawn: SpawnFn) -> None:
    worker = spawn("fds", worker_id="stats-worker")
    worker.call("ping")
    worker.request("no_such_command")
    stats = worker.call("get_stats")
    assert stats["requests"] == 3
    assert stats["errors"] == 1
    assert stats["programs"] == 0
    assert stats["pid"] == worker.process.pid
    assert stats["worker_id"] == "stats-worker"
    assert stats["rss_bytes"] > 0
    assert worker.call("get_stats")["requests"] == 4


def test_session_cleanup_and_reset_work_without_loading_dspy(spawn: SpawnFn) -> None:
    worker = spawn("fds")
    assert worker.call("cleanup_session", {"session_id": "s1"}) == {"session_id": "s1", "programs_removed": 0}
    assert worker.call("reset_state") == {"programs_removed": 0}
    assert worker.call("list_programs", {"session_id": "s1"}) == {"programs": []}
    assert worker.call("ping")["dspy_loaded"] is False


def test_unknown_flags_are_rejected(spawn: SpawnFn) -> None:
    worker = spawn(
        "fds", argv=[sys.executable, "-m", "dspex_bridge", "--mode", "pool-worker", "--worker-id", "w", "--bogus"]
    )
    assert worker.wait() == 2
    assert "unrecognized arguments: --bogus" in worker.stderr_log()


def test_unknown_transport_is_an_environment_error(spawn: SpawnFn) -> None:
    worker = spawn("fds", env={"DSPEX_TRANSPORT": "carrier-pigeon"})
    assert worker.wait() == 2
    assert "DSPEX_TRANSPORT must be 'fds' or 'stdio'" in worker.stderr_log()


def test_legacy_stdio_bridge_fixture_speaks_the_protocol(spawn: SpawnFn) -> None:
    script = os.path.join(FIXTURES, "legacy_stdio_bridge.py")
    worker = spawn("stdio", argv=[sys.executable, script, "--mode", "pool-worker", "--worker-id", "legacy-1"])
    ping = worker.call("ping", {"initialization": True, "worker_id": "legacy-1"})
    assert ping["status"] == "ok" and ping["worker_id"] == "legacy-1"
    assert worker.call("echo", {"x": [1, 2]}) == {"echo": {"x": [1, 2]}}
    unknown = worker.request("create_program")
    assert unknown["success"] is False and unknown["error"] == "Unknown command: create_program"
    assert worker.call("shutdown") == {"status": "shutting_down"}
    assert worker.wait() == 0
    assert "legacy bridge legacy-1 started" in worker.stderr_log()


def test_sigterm_during_handler_import_exits_zero(spawn: SpawnFn, tmp_path: Path) -> None:
    # The handler module signals its own process while it is being imported.
    (tmp_path / "self_terminating_handlers.py").write_text("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n")
    worker = spawn("fds", env={"DSPEX_HANDLERS": "self_terminating_handlers", "DSPEX_PYTHON_PATH": str(tmp_path)})
    assert worker.wait() == 0
    assert "terminated by signal during start-up" in worker.stderr_log()
