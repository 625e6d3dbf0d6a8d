"""The worker process: claims the protocol streams, loads user handlers, serves requests.

One worker is one Python process owned by one host-side ``Worker`` actor. It reads request
frames, handles them one at a time in order, and writes one response frame per request. The
process contract (argv, environment, exit codes) is fixed by the host:

* exit 0 on end of the request stream, on ``shutdown``, and on SIGTERM;
* exit 2 on a usage or environment error (bad flags, bad ``DSPEX_*`` values);
* exit 3 on a protocol violation (oversized, truncated or undecodable request frame), after
  which the host replaces the worker.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import platform
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from . import protocol
from .dspy_commands import DspyCommands
from .errors import InvalidRequest, ResponseTooLarge, UnknownCommand
from .programs import ProgramStore, scope_of
from .registry import user_command, user_command_names

log = logging.getLogger("dspex_bridge")

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_PROTOCOL = 3

#: File descriptors the host passes in ``fds`` mode: requests in, responses out.
REQUEST_FD = 3
RESPONSE_FD = 4


class TransportError(Exception):
    """The protocol streams the host promised are not there."""


@dataclass
class Streams:
    """The protocol's binary streams, separate from whatever user code prints to."""

    requests: BinaryIO
    responses: BinaryIO


def claim_transport(transport: str) -> Streams:
    """Take the protocol streams for ``transport`` (``fds`` or ``stdio``).

    In ``stdio`` mode the real stdin/stdout become private descriptors and fds 0/1 are
    re-pointed (stdin at /dev/null, stdout at stderr), so neither ``print()`` nor
    ``os.write(1, ...)`` nor a child process can touch a frame. This must run before any
    user code does.
    """
    if transport == "stdio":
        requests_fd = os.dup(0)
        responses_fd = os.dup(1)
        os.dup2(2, 1)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        sys.stdout = sys.stderr
        _line_buffer_logs()
        return Streams(os.fdopen(requests_fd, "rb"), os.fdopen(responses_fd, "wb"))
    if transport == "fds":
        for fd in (REQUEST_FD, RESPONSE_FD):
            try:
                os.fstat(fd)
            except OSError:
                raise TransportError(
                    f"DSPEX_TRANSPORT=fds but file descriptor {fd} is not open; "
                    "the host must pass requests on fd 3 and responses on fd 4"
                ) from None
            # Grandchildren must not inherit the pipes: one holding fd 4 open would keep
            # the host from ever seeing this worker's end of stream.
            os.set_inheritable(fd, False)
        _line_buffer_logs()
        return Streams(os.fdopen(REQUEST_FD, "rb"), os.fdopen(RESPONSE_FD, "wb"))
    raise TransportError(f"DSPEX_TRANSPORT must be 'fds' or 'stdio', got {transport!r}")


def _line_buffer_logs() -> None:
    # The host logs stdout/stderr line by line; block buffering would delay them until exit.
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(line_buffering=True)


def load_handlers(env: Mapping[str, str]) -> List[Tuple[str, BaseException]]:
    """Import the modules in ``DSPEX_HANDLERS`` after prepending ``DSPEX_PYTHON_PATH``.

    Returns the modules that failed with their exceptions instead of raising: the worker
    still starts, and ``ping`` reports the failure so the host sees it at start-up.
    """
    search_path = [entry for entry in env.get("DSPEX_PYTHON_PATH", "").split(os.pathsep) if entry]
    sys.path[0:0] = search_path
    failures: List[Tuple[str, BaseException]] = []
    for name in (part.strip() for part in env.get("DSPEX_HANDLERS", "").split(",")):
        if not name:
            continue
        try:
            importlib.import_module(name)
            log.info("loaded handler module %r", name)
        except (Exception, SystemExit) as exc:
            log.error("handler module %r failed to import", name, exc_info=True)
            failures.append((name, exc))
    return failures


class _Terminated(BaseException):
    """Raised by the SIGTERM handler; a BaseException so ``except Exception`` cannot eat it."""


class Worker:
    """The request loop and the built-in commands of one worker process."""

    def __init__(
        self,
        worker_id: str,
        streams: Streams,
        max_frame_bytes: int = protocol.DEFAULT_MAX_FRAME_BYTES,
        handler_failures: Sequence[Tuple[str, BaseException]] = (),
        env: Optional[Mapping[str, str]] = None,
    ) -> None:
        self.worker_id = worker_id
        self._streams = streams
        self._max_frame = max_frame_bytes
        self._handler_failures = list(handler_failures)
        self._started = time.monotonic()
        self._requests = 0
        self._errors = 0
        self._store = ProgramStore()
        self._dspy = DspyCommands(self._store, env)
        self._shutdown = False
        self._writing = False
        self._stop_requested = False
        self._builtins: Dict[str, Callable[[Dict[str, Any]], Any]] = {
            "ping": self._ping,
            "echo": self._echo,
            "get_stats": self._get_stats,
            "cleanup_session": self._cleanup_session,
            "reset_state": self._reset_state,
            "shutdown": self._shutdown_command,
            "configure_lm": self._dspy.configure_lm,
            "create_program": self._dspy.create_program,
            "execute_program": self._dspy.execute_program,
            "list_programs": self._dspy.list_programs,
            "delete_program": self._dspy.delete_program,
            "get_program_info": self._dspy.get_program_info,
        }

    # -- loop -----------------------------------------------------------------------------------

    def serve(self) -> int:
        """Serve until end of stream, ``shutdown``, SIGTERM or a protocol violation."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            return self._loop()
        except _Terminated:
            log.info("worker %s terminated by signal; exiting", self.worker_id)
            return EXIT_OK
        except BrokenPipeError:
            log.info("worker %s: the host closed the response stream; exiting", self.worker_id)
            return EXIT_OK
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _loop(self) -> int:
        while True:
            try:
                payload = protocol.read_frame(self._streams.requests, self._max_frame)
                if payload is None:
                    log.info("worker %s: request stream closed; exiting", self.worker_id)
                    return EXIT_OK
                request = protocol.decode_request(payload)
            except protocol.ProtocolError as exc:
                log.error("worker %s: protocol violation, exiting: %s", self.worker_id, exc)
                return EXIT_PROTOCOL
            self._send(self.handle(request))
            if self._shutdown or self._stop_requested:
                log.info("worker %s shutting down", self.worker_id)
                return EXIT_OK

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._stop_requested = True
        if not self._writing:
            # Not mid-frame: leave now. Mid-frame, the loop exits once the frame is whole.
            raise _Terminated()

    def _send(self, payload: bytes) -> None:
        self._writing = True
        try:
            protocol.write_frame(self._streams.responses, payload, self._max_frame)
        finally:
            self._writing = False

    # -- one request ----------------------------------------------------------------------------

    def handle(self, request: Dict[str, Any]) -> bytes:
        """Run one decoded request and return the encoded response payload."""
        request_id = request["id"]
        self._requests += 1
        command = request.get("command")
        args = request.get("args")
        args = {} if args is None else args
        failed = False
        try:
            if not isinstance(command, str):
                raise InvalidRequest(f"request {request_id} has no command name (got {command!r})")
            if not isinstance(args, dict):
                raise InvalidRequest(f"args of {command!r} must be an object, got {type(args).__name__}")
            result = self._dispatch(command, args)
            try:
                payload = protocol.dumps(protocol.success(request_id, result))
            except (TypeError, ValueError) as exc:
                raise TypeError(f"result of {command!r} is not JSON-serialisable: {exc}") from exc
        except (Exception, SystemExit) as exc:
            # SystemExit too: a command calling sys.exit() fails that request, not the worker.
            failed = True
            log.debug("request %s (%r) failed", request_id, command, exc_info=True)
            payload = protocol.dumps(
                protocol.failure(request_id, type(exc).__name__, str(exc) or type(exc).__name__, traceback.format_exc())
            )
        if len(payload) > self._max_frame:
            # Killing the worker over one oversized result would hide the cause; the caller
            # gets an error naming the size instead, and the worker keeps serving.
            failed = True
            message = (
                f"the response to {command!r} is {len(payload)} bytes, over the "
                f"{self._max_frame}-byte frame limit (python.max_frame_bytes); return less data"
            )
            log.error("request %s: %s", request_id, message)
            payload = protocol.dumps(protocol.failure(request_id, ResponseTooLarge.__name__, message))
        if failed:
            self._errors += 1
        return payload

    def builtin_names(self) -> List[str]:
        """Names of the commands this worker implements itself, sorted."""
        return sorted(self._builtins)

    def _dispatch(self, command: str, args: Dict[str, Any]) -> Any:
        handler = self._builtins.get(command) or user_command(command)
        if handler is None:
            available = ", ".join(sorted(set(self._builtins) | set(user_command_names())))
            raise UnknownCommand(f"unknown command {command!r}; available commands: {available}")
        return handler(args)

    # -- built-in commands -------------------------------------------------------------------

    def _ping(self, args: Dict[str, Any]) -> Dict[str, Any]:
        if self._handler_failures:
            details = "; ".join(f"{name!r}: {type(exc).__name__}: {exc}" for name, exc in self._handler_failures)
            raise ImportError(
                f"handler module(s) failed to import: {details} (check python.handlers and python.path)"
            ) from self._handler_failures[0][1]
        if args.get("initialization") and os.environ.get("DSPEX_PRELOAD_DSPY") == "1":
            # A DSPy worker is ready only once DSPy is: an import failure fails start-up
            # with its cause instead of failing the first row.
            self._dspy.preload()
        return {
            "status": "ok",
            "worker_id": self.worker_id,
            "uptime": self._uptime(),
            "pid": os.getpid(),
            "python_version": platform.python_version(),
            "dspy_loaded": "dspy" in sys.modules,
        }

    def _echo(self, args: Dict[str, Any]) -> Dict[str, Any]:
        return {"echo": args}

    def _get_stats(self, args: Dict[str, Any]) -> Dict[str, Any]:
        # `requests` includes this get_stats request: it counts every request received.
        return {
            "requests": self._requests,
            "errors": self._errors,
            "uptime": self._uptime(),
            "rss_bytes": rss_bytes(),
            "programs": len(self._store),
            "pid": os.getpid(),
            "worker_id": self.worker_id,
        }

    def _cleanup_session(self, args: Dict[str, Any]) -> Dict[str, Any]:
        scope = scope_of(args)
        removed = self._store.drop_scope(scope)
        log.info("dropped %d program(s) of session %r", removed, scope)
        return {"session_id": scope, "programs_removed": removed}

    def _reset_state(self, args: Dict[str, Any]) -> Dict[str, Any]:
        return {"programs_removed": self._store.clear()}

    def _shutdown_command(self, args: Dict[str, Any]) -> Dict[str, Any]:
        self._shutdown = True
        return {"status": "shutting_down"}

    def _uptime(self) -> float:
        return time.monotonic() - self._started


def rss_bytes() -> int:
    """Resident set size of this process in bytes (peak RSS where /proc is missing)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            resident_pages = int(statm.read().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # Linux reports KiB, macOS bytes.
        return peak if sys.platform == "darwin" else peak * 1024


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m dspex_bridge", description="dspex worker: serves DSPy programs over a framed JSON protocol"
    )
    parser.add_argument("--mode", choices=["pool-worker"], default="pool-worker", help="worker mode")
    parser.add_argument("--worker-id", default=None, help="id the host knows this worker by")
    return parser.parse_args(argv)


def _max_frame_bytes(env: Mapping[str, str]) -> int:
    text = env.get("DSPEX_MAX_FRAME_BYTES")
    if not text:
        return protocol.DEFAULT_MAX_FRAME_BYTES
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"DSPEX_MAX_FRAME_BYTES must be a positive integer, got {text!r}")
    return value


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``python -m dspex_bridge``; returns the process exit code."""
    try:
        streams = claim_transport(os.environ.get("DSPEX_TRANSPORT") or "stdio")
    except TransportError as exc:
        sys.stderr.write(f"dspex_bridge: {exc}\n")
        return EXIT_USAGE
    level = os.environ.get("DSPEX_LOG_LEVEL", "INFO").upper()
    if not isinstance(logging.getLevelName(level), int):
        level = "INFO"
    logging.basicConfig(stream=sys.stderr, level=level, format="%(levelname)s %(name)s: %(message)s")
    args = _parse_args(argv)
    worker_id = args.worker_id or f"worker-{os.getpid()}"
    try:
        max_frame = _max_frame_bytes(os.environ)
    except ValueError as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    # Until the loop owns the signals, SIGTERM during a slow handler import still exits 0.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        failures = load_handlers(os.environ)
    except _Terminated:
        log.info("worker %s terminated by signal during start-up; exiting", worker_id)
        return EXIT_OK
    log.info("worker %s ready (pid %d, python %s)", worker_id, os.getpid(), platform.python_version())
    return Worker(worker_id, streams, max_frame, failures).serve()


def _terminate(signum: int, frame: Any) -> None:
    raise _Terminated()
