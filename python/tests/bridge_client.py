"""Test helper: drive a real worker process over either transport, as the host would.

The worker is started the way the host starts it: in its own process group, in the bridge
root with ``PYTHONSAFEPATH=1`` and ``PYTHONPATH`` set to it, optionally with a lifeline pipe on
fd 5. Requests can be pipelined: send several, then read each response (and the event frames
before it) by id, in whatever order the worker answers.

Every read has a deadline (``select`` on the response pipe), so a broken worker fails a test
instead of hanging the run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import signal
import struct
import subprocess
import sys
import tempfile
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(PYTHON_DIR, "tests", "fixtures")

#: Generous: a loaded CI machine must never turn a slow import into a failure.
DEFAULT_TIMEOUT = 60.0


class BridgeProcess:
    """A worker subprocess plus a client for its protocol streams."""

    def __init__(
        self,
        transport: str = "fds",
        env: Optional[Mapping[str, str]] = None,
        argv: Optional[Sequence[str]] = None,
        worker_id: str = "test-worker",
        remove_env: Sequence[str] = (),
        cwd: str = PYTHON_DIR,
        lifeline: bool = False,
        in_child: Optional[Callable[[], None]] = None,
    ) -> None:
        """Start the worker.

        ``lifeline`` passes the read end of a pipe as fd 5 (``DSPEX_LIFELINE_FD``) and keeps
        the write end here, as the host does; :meth:`close_lifeline` plays the host's death.
        ``in_child`` runs in the child before exec (e.g. to set a resource limit).
        """
        self.transport = transport
        full_env = dict(os.environ)
        for name in remove_env:
            full_env.pop(name, None)
        full_env.update(
            {
                "PYTHONPATH": PYTHON_DIR,
                "PYTHONSAFEPATH": "1",
                "DSPEX_TRANSPORT": transport,
                "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                "PYTHONDONTWRITEBYTECODE": "1",
            }
        )
        self.lifeline_write = -1
        lifeline_read = -1
        if lifeline:
            lifeline_read, self.lifeline_write = os.pipe()
            lifeline_read = _moved_up(lifeline_read)
            full_env["DSPEX_LIFELINE_FD"] = "5"
        full_env.update(env or {})
        if argv is None:
            argv = [sys.executable, "-m", "dspex_bridge", "--mode", "pool-worker", "--worker-id", worker_id]
        # Closed in close(): the logs outlive the process so tests can read them afterwards.
        self._log_out = tempfile.TemporaryFile()  # noqa: SIM115
        self._log_err = tempfile.TemporaryFile()  # noqa: SIM115
        self._next_id = 1
        self._stash: List[Dict[str, Any]] = []
        #: Event frames received so far, by request id.
        self.events: Dict[int, List[Dict[str, Any]]] = {}
        keep = [5] if lifeline else []

        def in_own_group() -> None:
            # As the host does: signals for the group (the reaper's SIGKILL) never reach us.
            os.setpgid(0, 0)
            if lifeline:
                os.dup2(lifeline_read, 5)
                os.close(lifeline_read)
            if in_child is not None:
                in_child()

        if transport == "fds":
            request_read, self._request_write = os.pipe()
            self._response_read, response_write = os.pipe()
            # Move the child's ends above 5 so placing one on fd 3 cannot clobber the other.
            request_read = _moved_up(request_read)
            response_write = _moved_up(response_write)

            def place_pipes() -> None:
                # The contract puts requests on fd 3 and responses on fd 4, and nothing else.
                os.dup2(request_read, 3)
                os.dup2(response_write, 4)
                os.close(request_read)
                os.close(response_write)
                in_own_group()

            self.process = subprocess.Popen(
                list(argv),
                env=full_env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=self._log_out,
                stderr=self._log_err,
                pass_fds=(request_read, response_write, 3, 4, *keep),
                preexec_fn=place_pipes,
            )
            os.close(request_read)
            os.close(response_write)
        else:
            self.process = subprocess.Popen(
                list(argv),
                env=full_env,
                cwd=cwd,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._log_err,
                pass_fds=tuple(keep),
                preexec_fn=in_own_group,
            )
            self._request_write = self.process.stdin.fileno()
            self._response_read = self.process.stdout.fileno()
        if lifeline:
            os.close(lifeline_read)

    # -- protocol -------------------------------------------------------------------------------

    def send_raw(self, data: bytes) -> None:
        """Write bytes to the request stream as they are."""
        view = memoryview(data)
        while view:
            written = os.write(self._request_write, view)
            view = view[written:]

    def send(self, command: str, args: Any = None, request_id: Optional[int] = None) -> int:
        """Send one request frame; returns its id."""
        if request_id is None:
            request_id = self._next_id
            self._next_id += 1
        message = {
            "id": request_id,
            "command": command,
            "args": {} if args is None else args,
            "timestamp": "2024-01-01T00:00:00Z",
        }
        body = json.dumps(message).encode("utf-8")
        self.send_raw(struct.pack(">I", len(body)) + body)
        return request_id

    def recv(self, timeout: float = DEFAULT_TIMEOUT) -> Optional[Dict[str, Any]]:
        """The next frame not yet consumed (response or event, in arrival order); ``None`` if
        the worker closed the stream cleanly."""
        if self._stash:
            return self._stash.pop(0)
        return self._read_frame(timeout)

    def response(self, request_id: int, timeout: float = DEFAULT_TIMEOUT) -> Dict[str, Any]:
        """The final response to ``request_id``, reading past other requests' frames (kept
        for later) and recording this request's event frames in :attr:`events`."""
        for index, frame in enumerate(self._stash):
            if frame["id"] == request_id and "event" not in frame:
                del self._stash[index]
                return frame
        while True:
            frame = self._read_frame(timeout)
            assert frame is not None, f"worker closed the stream before answering request {request_id}\n{self.logs()}"
            if frame["id"] == request_id and "event" not in frame:
                return frame
            if "event" not in frame or frame["id"] != request_id:
                self._stash.append(frame)

    def unclaimed(self) -> List[Dict[str, Any]]:
        """Frames already read from the stream but not yet returned by recv/response."""
        return list(self._stash)

    def _read_frame(self, timeout: float) -> Optional[Dict[str, Any]]:
        header = self._read_exact(4, timeout)
        if not header:
            return None
        (length,) = struct.unpack(">I", header)
        body = self._read_exact(length, timeout)
        assert len(body) == length, f"response truncated: {len(body)} of {length} bytes\n{self.logs()}"
        frame = json.loads(body.decode("utf-8"))
        if "event" in frame:
            self.events.setdefault(frame["id"], []).append(frame["event"])
        return frame

    def request(self, command: str, args: Any = None, timeout: float = DEFAULT_TIMEOUT) -> Dict[str, Any]:
        """Send a request and return its response."""
        return self.response(self.send(command, args), timeout)

    def call(self, command: str, args: Any = None) -> Any:
        """Request that must succeed; returns its result."""
        response = self.request(command, args)
        assert response["success"] is True, f"{command} failed: {response}\n{self.logs()}"
        return response["result"]

    def read_remaining(self, timeout: float = DEFAULT_TIMEOUT) -> bytes:
        """Everything left on the response stream until the worker closes it."""
        chunks = []
        while True:
            chunk = self._read_some(65536, timeout)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)

    def _read_exact(self, count: int, timeout: float) -> bytes:
        chunks = []
        remaining = count
        while remaining:
            chunk = self._read_some(remaining, timeout)
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def _read_some(self, count: int, timeout: float) -> bytes:
        ready, _, _ = select.select([self._response_read], [], [], timeout)
        if not ready:
            raise TimeoutError(f"no response within {timeout}s\n{self.logs()}")
        return os.read(self._response_read, count)

    # -- lifecycle ------------------------------------------------------------------------------

    def close_requests(self) -> None:
        """Close the request stream (the worker sees end of stream)."""
        if self.transport == "fds":
            os.close(self._request_write)
        else:
            self.process.stdin.close()
        self._request_write = -1

    def terminate(self) -> None:
        """Send SIGTERM."""
        self.process.send_signal(signal.SIGTERM)

    def wait(self, timeout: float = DEFAULT_TIMEOUT) -> int:
        """Wait for the worker to exit; returns its exit code."""
        return self.process.wait(timeout)

    def stdout_log(self) -> str:
        """What the worker wrote to its stdout (fds mode only: in stdio mode it is the protocol)."""
        self._log_out.seek(0)
        return self._log_out.read().decode("utf-8", "replace")

    def stderr_log(self) -> str:
        """What the worker wrote to its stderr."""
        self._log_err.seek(0)
        return self._log_err.read().decode("utf-8", "replace")

    def logs(self) -> str:
        """Both log streams, for assertion messages."""
        return f"--- stdout ---\n{self.stdout_log()}\n--- stderr ---\n{self.stderr_log()}"

    def close_lifeline(self) -> None:
        """Close the host's end of the lifeline: what the host's death looks like."""
        if self.lifeline_write >= 0:
            os.close(self.lifeline_write)
            self.lifeline_write = -1

    def close(self) -> None:
        """Kill the worker's process group if the worker still runs, release every descriptor.

        The group is only signalled while the worker is unreaped (so its id cannot have been
        reused); a reaper left in it goes when the lifeline closes.
        """
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(DEFAULT_TIMEOUT)
        self.close_lifeline()
        if self.transport == "fds":
            for fd in (self._request_write, self._response_read):
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
        else:
            for stream in (self.process.stdin, self.process.stdout):
                if stream is not None and not stream.closed:
                    stream.close()
        self._log_out.close()
        self._log_err.close()

    def __enter__(self) -> BridgeProcess:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _moved_up(fd: int) -> int:
    """A close-on-exec duplicate of ``fd`` numbered 6 or higher (above the lifeline's 5);
    closes ``fd``."""
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 6)
    os.close(fd)
    return moved
