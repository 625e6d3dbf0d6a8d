"""The worker process: claims the protocol streams, loads user handlers, serves requests.

One worker is one Python process owned by one host-side ``Worker`` actor. Real LM calls are
waits of 0.3-3 s, so a worker runs several requests at once instead of one process per call
in flight: the main thread reads request frames continuously and hands user requests to a
pool of at most ``DSPEX_WORKER_CONCURRENCY`` threads, which answer in whatever order they
finish. Control commands (``ping``, ``shutdown``, ``get_stats``, ``cleanup_session``,
``reset_state``) are answered on the reading thread at once, so a health ping never waits
behind a slow LM. Every frame (response or event) is written whole under one lock. Requests
that never wait run one at a time within those threads, and their responses go out a few
per write (:mod:`.request_pool`, :class:`ResponseWriter`).

Threads rather than asyncio: DSPy programs are synchronous code that blocks in its LM client,
user modules often define only ``forward``, and user ``@command`` functions are plain
functions; a thread runs all of them unchanged. ``benches/bridge_concurrency.py`` measures
both designs against a local LM server (the numbers are in its docstring).

Process contract (argv, environment, exit codes) as the host relies on it:

* exit 0 on end of the request stream or ``shutdown`` (after answering every request already
  read, then at once: ``os._exit``, so threads an LM client left behind cannot hold the
  process), and on SIGTERM (at once; requests in flight are not answered, but a frame being
  written is finished first);
* exit 2 on a usage or environment error (bad flags, bad ``DSPEX_*`` values);
* exit 3 on a protocol violation (oversized, truncated or undecodable request frame without
  a usable id), after answering the requests already read; the host replaces the worker.

A request that has a valid id never kills the worker: whatever goes wrong while decoding or
handling it (deep nesting, ``MemoryError``, bad argument shapes, ``sys.exit``) becomes that
request's error response.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import importlib
import logging
import os
import platform
import select
import signal
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Any, BinaryIO, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from . import protocol
from .context import RequestContext, activate
from .dspy_commands import DspyCommands
from .errors import BridgeError, InvalidRequest, ResponseTooLarge, UnknownCommand
from .programs import ProgramStore, scope_of
from .reaper import LifelineError, lifeline_fd, start_reaper
from .registry import user_command, user_command_names
from .request_pool import RequestPool

log = logging.getLogger("dspex_bridge")

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_PROTOCOL = 3

#: File descriptors the host passes in ``fds`` mode: requests in, responses out.
REQUEST_FD = 3
RESPONSE_FD = 4

#: Answered on the reading thread, never queued behind busy slots.
CONTROL_COMMANDS = frozenset({"ping", "shutdown", "get_stats", "cleanup_session", "reset_state"})

#: How long SIGTERM waits for another thread to finish the frame it is writing. The host
#: is not reading when this runs out (a full pipe), so a torn frame then harms nobody.
_TERMINATE_WRITE_WAIT = 2.0
#: Longest a response may be held back (ResponseWriter), once the reader knows of it.
FLUSH_DELAY = 0.005
#: How often the reader looks for held-back responses while requests run.
FLUSH_RECHECK = 0.05

#: A built-in command: ``handler(args, ctx)``. User commands are ``fn(args)``.
BuiltinHandler = Callable[[Dict[str, Any], RequestContext], Any]


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
        return Streams(os.fdopen(requests_fd, "rb", buffering=0), os.fdopen(responses_fd, "wb"))
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
        return Streams(os.fdopen(REQUEST_FD, "rb", buffering=0), os.fdopen(RESPONSE_FD, "wb"))
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


class SignalAwareReader:
    """The request stream, read so that a signal taken by any thread wakes the reader.

    Linux delivers a process-directed signal (the host's SIGTERM) to any thread that does not
    block it, and request threads must not block it (a mask would be inherited by the
    processes user code starts). When a request thread takes it, CPython only marks it
    pending for the main thread, which, blocked in ``read`` on the request pipe, would never
    run the handler: the worker would ignore SIGTERM until the next request came in. With
    :func:`signal.set_wakeup_fd` the C-level handler also writes to a pipe on whichever thread
    it runs, and this reader waits on the request descriptor and that pipe together, so the
    main thread wakes up and runs the handler.

    Before each wait it calls ``tick``, which returns how long it may wait (``None``: until
    something arrives); the worker uses it to send frames its writer held back.
    """

    def __init__(self, stream: BinaryIO, wakeup: int, tick: Callable[[], Optional[float]] = lambda: None) -> None:
        # The stream itself is kept (not only its descriptor) so it is not closed under us.
        self._stream = stream
        self._fd = stream.fileno()
        self._wakeup = wakeup
        self._tick = tick
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN)
        self._poll.register(wakeup, select.POLLIN)
        self._buffer = bytearray()

    def read(self, count: int) -> bytes:
        """Up to ``count`` bytes; ``b""`` at end of stream."""
        while not self._buffer:
            wait = self._tick()
            ready = {fd for fd, _ in self._poll.poll(None if wait is None else max(1, int(wait * 1000) + 1))}
            if self._wakeup in ready:
                # A signal came in; its handler runs as soon as this thread runs Python.
                _drain(self._wakeup)
            if self._fd in ready:
                chunk = os.read(self._fd, max(count, 1 << 16))
                if not chunk:
                    return b""
                self._buffer += chunk
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


class ResponseWriter:
    """Writes whole frames to the response stream, one thread at a time.

    It also knows whether the calling thread is in the middle of a frame, which the SIGTERM
    handler (always run on the main thread) needs: if the main thread is mid-frame the frame
    is finished before the worker leaves; if another thread is, the handler waits for it.

    Holding back: a thread that goes straight on to another queued request may ask to leave
    its response in the stream's buffer (``defer``), so a worker working through a backlog
    of fast requests sends their responses a few at a time: one write and one wake-up of the
    host per group instead of per row. At most ``max_deferred`` frames wait, and whatever
    the requests being run do, the request reader sends them (``flush_due``,
    ``flush_late``): :data:`FLUSH_DELAY` after the first was held back, or, if that frame
    was held back while the reader was already waiting, at its next look
    (:data:`FLUSH_RECHECK`).
    """

    def __init__(self, stream: BinaryIO, max_frame_bytes: int, max_deferred: int = 0) -> None:
        self._stream = stream
        self._max_frame = max_frame_bytes
        self.max_deferred = max_deferred
        self._lock = threading.Lock()
        self._writer: Optional[int] = None
        self._closed = False
        self._deferred = 0
        self._deferred_since = 0.0
        #: Frames held back so far (``get_stats``).
        self.held_back = 0
        self._main = threading.main_thread().ident
        #: Set by the signal handler when it lands mid-frame on the main thread.
        self.exit_after_frame = False

    def write(self, payload: bytes, defer: bool = False) -> bool:
        """Write one frame; ``False`` if the writer is closed (the worker is leaving).

        With ``defer``, the frame may stay in the stream's buffer for a while (see the class
        doc); otherwise it goes out at once, with every frame held back before it.

        Raises ``FrameTooLarge`` for a payload over the limit (nothing is written) and the
        stream's ``OSError`` (``BrokenPipeError`` once the host closed it).
        """
        frame = protocol.encode_frame(payload, self._max_frame)
        with self._writing() as open_:
            if not open_:
                return False
            self._stream.write(frame)
            if defer and self._deferred < self.max_deferred:
                if not self._deferred:
                    self._deferred_since = time.monotonic()
                self._deferred += 1
                self.held_back += 1
            else:
                self._flush()
        return True

    def flush_due(self) -> Optional[float]:
        """Seconds until the frames held back must go out; ``None`` if there are none."""
        if not self._deferred:
            return None
        return max(0.0, self._deferred_since + FLUSH_DELAY - time.monotonic())

    def flush_late(self) -> None:
        """Send the frames held back if they are due."""
        self._flush_held(due_only=True)

    def flush(self) -> None:
        """Send the frames held back now."""
        self._flush_held(due_only=False)

    def _flush_held(self, due_only: bool) -> None:
        # Held-back frames are whole frames still to be written, like write()'s.
        with self._writing() as open_:
            if open_ and self._deferred and not (due_only and time.monotonic() < self._deferred_since + FLUSH_DELAY):
                self._flush()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[bool]:
        """Hold the lock as the thread writing frames (yields ``False`` once closed); then,
        on the main thread, leave if a SIGTERM came in meanwhile."""
        with self._lock:
            self._writer = threading.get_ident()
            try:
                yield not self._closed
            finally:
                self._writer = None
        if self.exit_after_frame and threading.get_ident() == self._main:
            raise _Terminated()

    def _flush(self) -> None:
        self._deferred = 0
        self._stream.flush()

    def mid_frame_here(self) -> bool:
        """Whether the calling thread is writing a frame right now."""
        return self._writer == threading.get_ident()

    def close(self, timeout: float) -> None:
        """Let a frame being written finish (up to ``timeout``), then refuse every later one."""
        acquired = self._lock.acquire(timeout=timeout)
        self._closed = True
        if acquired:
            self._lock.release()


class Worker:
    """The request loop and the built-in commands of one worker process."""

    def __init__(
        self,
        worker_id: str,
        streams: Streams,
        max_frame_bytes: int = protocol.DEFAULT_MAX_FRAME_BYTES,
        handler_failures: Sequence[Tuple[str, BaseException]] = (),
        env: Optional[Mapping[str, str]] = None,
        concurrency: int = 1,
    ) -> None:
        self.worker_id = worker_id
        self.concurrency = concurrency
        self._env: Mapping[str, str] = os.environ if env is None else env
        self._streams = streams
        self._max_frame = max_frame_bytes
        self._writer = ResponseWriter(streams.responses, max_frame_bytes)
        self._pool = RequestPool(concurrency, self._run_pooled)
        self._handler_failures = list(handler_failures)
        self._started = time.monotonic()
        self._counts_lock = threading.Lock()
        self._requests = 0
        self._errors = 0
        self._store = ProgramStore()
        self._dspy = DspyCommands(self._store, env)
        own: Dict[str, BuiltinHandler] = {
            "ping": self._ping,
            "echo": self._echo,
            "get_stats": self._get_stats,
            "cleanup_session": self._cleanup_session,
            "reset_state": self._reset_state,
            "shutdown": self._shutdown_command,
        }
        self._builtins: Dict[str, BuiltinHandler] = {**self._dspy.handlers(), **own}

    # -- loop -----------------------------------------------------------------------------------

    def serve(self) -> int:
        """Serve until end of stream, ``shutdown``, SIGTERM or a protocol violation.

        Returns the exit code once every request read before the stop has been answered
        (SIGTERM: at once). The caller should then leave with ``os._exit``: request threads
        and threads left by LM clients are not joined.
        """
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        wake_read, wake_write = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        previous_wakeup = signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
        requests = self._streams.requests
        if _has_fileno(requests):
            # The reader can wake up for held-back frames (see ResponseWriter), so the
            # writer may hold some back.
            requests = SignalAwareReader(requests, wake_read, self._flush_tick)
            self._writer.max_deferred = self.concurrency // 2
        try:
            code = self._read_loop(requests)
            self._pool.drain()
            self._writer.flush()
            return code
        except _Terminated:
            log.info("worker %s terminated by signal; exiting", self.worker_id)
            self._writer.close(_TERMINATE_WRITE_WAIT)
            return EXIT_OK
        except BrokenPipeError:
            log.info("worker %s: the host closed the response stream; exiting", self.worker_id)
            return EXIT_OK
        finally:
            signal.set_wakeup_fd(previous_wakeup)
            os.close(wake_read)
            os.close(wake_write)
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _read_loop(self, requests: BinaryIO) -> int:
        while True:
            try:
                payload = protocol.read_frame(requests, self._max_frame)
            except protocol.ProtocolError as exc:
                log.error("worker %s: protocol violation, exiting: %s", self.worker_id, exc)
                return EXIT_PROTOCOL
            except MemoryError:
                # Where the stream stands after a failed allocation is unknown.
                log.error("worker %s: out of memory reading a request frame; exiting", self.worker_id)
                return EXIT_PROTOCOL
            if payload is None:
                log.info("worker %s: request stream closed; exiting", self.worker_id)
                return EXIT_OK
            try:
                request = protocol.decode_request(payload)
            except protocol.UndecodableRequest as exc:
                self._count(received=True)
                self._answer_undecodable(exc)
                continue
            except protocol.ProtocolError as exc:
                log.error("worker %s: protocol violation, exiting: %s", self.worker_id, exc)
                return EXIT_PROTOCOL
            del payload
            self._count(received=True)
            command = request.get("command")
            if isinstance(command, str) and command in CONTROL_COMMANDS:
                contextvars.copy_context().run(self._run, request)
                if command == "shutdown":
                    log.info("worker %s shutting down", self.worker_id)
                    return EXIT_OK
            else:
                # Each request starts from the reader's context, not from whatever the
                # previous request on that pool thread left in its context variables.
                self._pool.submit((contextvars.copy_context(), request))

    def _on_signal(self, signum: int, frame: Any) -> None:
        # Python runs this on the main thread, whichever thread took the signal; the
        # request reader wakes up for it (SignalAwareReader).
        if self._writer.mid_frame_here():
            # Mid-frame on this thread: leave once the frame is whole.
            self._writer.exit_after_frame = True
            return
        raise _Terminated()

    def _flush_tick(self) -> Optional[float]:
        """The reader's ``tick``: send held-back frames that are due; return how long the
        reader may wait for the next request before it must look again."""
        self._writer.flush_late()
        due = self._writer.flush_due()
        if due is None and self._pool.outstanding():
            # A request finishing after this look may hold its response back; look again
            # now and then (not every FLUSH_DELAY: each look takes the GIL from the
            # request threads).
            return FLUSH_RECHECK
        return due

    def _run_pooled(self, item: Tuple[contextvars.Context, Dict[str, Any]]) -> None:
        context, request = item
        try:
            context.run(self._run, request, True)
        except BrokenPipeError:
            log.info("worker %s: the host closed the response stream; exiting", self.worker_id)
            _hard_exit(EXIT_OK)
        except BaseException:
            # Only a failing response stream gets here (_run answers everything else);
            # without it no request can be answered, so the worker must go.
            log.critical("worker %s: cannot write responses; exiting", self.worker_id, exc_info=True)
            _hard_exit(EXIT_PROTOCOL)

    # -- one request ----------------------------------------------------------------------------

    def _run(self, request: Dict[str, Any], pooled: bool = False) -> None:
        """Handle one decoded request and write its response (held back a little if this
        pool thread goes straight on to another request, see ResponseWriter)."""
        ctx = RequestContext(request["id"], self.worker_id, self.concurrency, self._emit)
        activate(ctx)
        payload = self.handle(request, ctx)
        ctx.close()
        self._writer.write(payload, defer=pooled and self._pool.continues())

    def handle(self, request: Dict[str, Any], ctx: RequestContext) -> bytes:
        """Run one decoded request and return the encoded response payload; never raises
        (except the worker's own termination)."""
        request_id = request["id"]
        command = request.get("command")
        try:
            payload = self._attempt(request_id, command, request.get("args"), ctx)
            failed = False
        except _Terminated:
            raise
        except BaseException as exc:
            # SystemExit too: a command calling sys.exit() fails that request, not the worker.
            log.debug("request %s (%r) failed", request_id, command, exc_info=True)
            payload = self._failure(request_id, command, exc)
            failed = True
        if len(payload) > self._max_frame:
            # Killing the worker over one oversized result would hide the cause; the caller
            # gets an error naming the size instead, and the worker keeps serving.
            message = (
                f"the response to {command!r} is {len(payload)} bytes, over the "
                f"{self._max_frame}-byte frame limit (python.max_frame_bytes); return less data"
            )
            log.error("request %s: %s", request_id, message)
            payload = protocol.dumps(protocol.failure(request_id, ResponseTooLarge.__name__, message))
            failed = True
        if failed:
            self._count(failed=True)
        return payload

    def _attempt(self, request_id: int, command: Any, args: Any, ctx: RequestContext) -> bytes:
        if not isinstance(command, str):
            raise InvalidRequest(f"request {request_id} has no command name (got {command!r})")
        args = {} if args is None else args
        if not isinstance(args, dict):
            raise InvalidRequest(f"args of {command!r} must be a JSON object, got {_json_kind(args)}")
        builtin = self._builtins.get(command)
        if builtin is not None:
            result = builtin(args, ctx)
        else:
            user = user_command(command)
            if user is None:
                available = ", ".join(sorted(set(self._builtins) | set(user_command_names())))
                raise UnknownCommand(f"unknown command {command!r}; available commands: {available}")
            result = user(args)
        try:
            return protocol.dumps(protocol.success(request_id, result))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"result of {command!r} is not JSON-serialisable: {exc}") from exc

    def _failure(self, request_id: int, command: Any, exc: BaseException) -> bytes:
        try:
            if isinstance(exc, MemoryError):
                message = memory_message(command, self._env)
            else:
                message = str(exc) or type(exc).__name__
            report_traceback = not isinstance(exc, BridgeError) or exc.report_traceback
            trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)) if report_traceback else None
            extra = exc.error_fields() if isinstance(exc, BridgeError) else {}
            return protocol.dumps(protocol.failure(request_id, type(exc).__name__, message, trace, **extra))
        except _Terminated:
            raise
        except BaseException:
            # Describing the error failed too (out of memory, an exception whose __str__
            # raises): the caller still gets an answer naming the type.
            return protocol.dumps(
                protocol.failure(
                    request_id, type(exc).__name__, f"{type(exc).__name__} (no details: describing it failed)"
                )
            )

    def _answer_undecodable(self, exc: protocol.UndecodableRequest) -> None:
        cause = exc.cause
        if isinstance(cause, MemoryError):
            failure = protocol.failure(exc.request_id, "MemoryError", memory_message(exc.command, self._env))
        else:
            failure = protocol.failure(
                exc.request_id,
                InvalidRequest.__name__,
                f"request {exc.request_id} ({exc.command or 'no command'}) is nested too deeply to decode "
                f"({type(cause).__name__}: {cause}); send flatter data",
            )
        log.error("request %s could not be decoded: %s: %s", exc.request_id, type(cause).__name__, cause)
        self._count(failed=True)
        self._writer.write(protocol.dumps(failure))

    def _emit(self, request_id: int, event: Dict[str, Any]) -> None:
        try:
            payload = protocol.dumps(protocol.event(request_id, event))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"event is not JSON-serialisable: {exc}") from exc
        if len(payload) > self._max_frame:
            raise ValueError(f"event of {len(payload)} bytes exceeds the {self._max_frame}-byte frame limit")
        self._writer.write(payload)

    def _count(self, received: bool = False, failed: bool = False) -> None:
        with self._counts_lock:
            self._requests += received
            self._errors += failed

    def builtin_names(self) -> List[str]:
        """Names of the commands this worker implements itself, sorted."""
        return sorted(self._builtins)

    # -- built-in commands -------------------------------------------------------------------

    def _ping(self, args: Dict[str, Any], ctx: RequestContext) -> Dict[str, Any]:
        if self._handler_failures:
            details = "; ".join(f"{name!r}: {type(exc).__name__}: {exc}" for name, exc in self._handler_failures)
            raise ImportError(
                f"handler module(s) failed to import: {details} (check python.handlers and python.path)"
            ) from self._handler_failures[0][1]
        if args.get("initialization") and self._env.get("DSPEX_PRELOAD_DSPY") == "1":
            # A DSPy worker is ready only once DSPy and its LM client are: an import
            # failure fails start-up with its cause instead of failing the first row.
            self._dspy.preload()
        return {
            "status": "ok",
            "worker_id": self.worker_id,
            "uptime": self._uptime(),
            "pid": os.getpid(),
            "python_version": platform.python_version(),
            "dspy_loaded": "dspy" in sys.modules,
            "concurrency": self.concurrency,
            "lm": self._dspy.preloaded_lm(),
        }

    def _echo(self, args: Dict[str, Any], ctx: RequestContext) -> Dict[str, Any]:
        return {"echo": args}

    def _get_stats(self, args: Dict[str, Any], ctx: RequestContext) -> Dict[str, Any]:
        # `requests` includes this get_stats request: it counts every request received.
        with self._counts_lock:
            requests, errors = self._requests, self._errors
        return {
            "requests": requests,
            "errors": errors,
            "in_flight": self._pool.outstanding(),
            "concurrency": self.concurrency,
            # How many may run at once now (RequestPool), and how many responses were sent
            # a few at a time (ResponseWriter).
            "running_limit": self._pool.admission.limit,
            "held_back": self._writer.held_back,
            "uptime": self._uptime(),
            "rss_bytes": rss_bytes(),
            "programs": len(self._store),
            "pid": os.getpid(),
            "worker_id": self.worker_id,
        }

    def _cleanup_session(self, args: Dict[str, Any], ctx: RequestContext) -> Dict[str, Any]:
        scope = _scope(args)
        removed = self._store.drop_scope(scope)
        log.info("dropped %d program(s) of session %r", removed, scope)
        return {"session_id": scope, "programs_removed": removed}

    def _reset_state(self, args: Dict[str, Any], ctx: RequestContext) -> Dict[str, Any]:
        return {"programs_removed": self._store.clear()}

    def _shutdown_command(self, args: Dict[str, Any], ctx: RequestContext) -> Dict[str, Any]:
        # The read loop stops after answering this; requests already read still finish.
        return {"status": "shutting_down"}

    def _uptime(self) -> float:
        return time.monotonic() - self._started


def _scope(args: Dict[str, Any]) -> Optional[str]:
    try:
        return scope_of(args)
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    return type(value).__name__


def memory_message(command: Any, env: Mapping[str, str]) -> str:
    """What a ``MemoryError`` answer says: what ran out and which setting governs it."""
    what = f"handling {command!r}" if isinstance(command, str) else "decoding a request"
    message = f"Python ran out of memory while {what}"
    limit = _parse_bytes(env.get("DSPEX_MEMORY_LIMIT"))
    if limit is not None:
        return (
            f"{message}; the worker's memory limit is {human_bytes(limit)} "
            "(pool.worker_memory_limit): raise it or send smaller requests"
        )
    return f"{message}; set pool.worker_memory_limit to bound workers, or send smaller requests"


def _parse_bytes(text: Optional[str]) -> Optional[int]:
    try:
        value = int(text) if text else None
    except ValueError:
        return None
    return value if value is not None and value > 0 else None


def human_bytes(count: int) -> str:
    """``4294967296`` → ``"4 GiB"``, ``1610612736`` → ``"1.5 GiB"``."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            text = f"{value:.1f}".rstrip("0").rstrip(".")
            return f"{text} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


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


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name)
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {text!r}")
    return value


def _enter_workdir(env: Mapping[str, str]) -> None:
    """Make the host's working directory ours, without letting it onto the import path.

    The host starts workers in the bridge root with ``PYTHONSAFEPATH=1``, so nothing from the
    user's directory (a stray ``dspy.py``, a ``dspex_bridge/`` folder) can shadow a real
    module. Relative ``sys.path`` entries would follow the ``chdir`` into that directory, so
    they are pinned to where they pointed at start first.
    """
    sys.path[:] = [os.path.abspath(entry) for entry in sys.path]
    workdir = env.get("DSPEX_WORKDIR")
    if workdir:
        try:
            os.chdir(workdir)
        except OSError as exc:
            raise ValueError(
                f"DSPEX_WORKDIR={workdir!r} cannot be entered ({exc.strerror}); "
                "it must be the host's existing working directory"
            ) from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``python -m dspex_bridge``.

    Returns the exit code for failures before serving starts; once the worker has served, it
    leaves with ``os._exit`` (see :meth:`Worker.serve`).
    """
    # SIGTERM anywhere in start-up (a slow handler import, the reaper's fork) exits 0, as it
    # does while serving; the serving loop installs its own handler.
    signal.signal(signal.SIGTERM, _terminate)
    try:
        return _start(argv)
    except _Terminated:
        sys.stderr.write("dspex_bridge: worker terminated by signal during start-up; exiting\n")
        _hard_exit(EXIT_OK)
    return EXIT_OK  # not reached


def _start(argv: Optional[Sequence[str]]) -> int:
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
        max_frame = _positive_int(os.environ, "DSPEX_MAX_FRAME_BYTES", protocol.DEFAULT_MAX_FRAME_BYTES)
        concurrency = _positive_int(os.environ, "DSPEX_WORKER_CONCURRENCY", 1)
        lifeline = lifeline_fd(os.environ)
        _enter_workdir(os.environ)
    except (ValueError, LifelineError) as exc:
        log.error("%s", exc)
        return EXIT_USAGE
    if lifeline is not None:
        # Before anything can start a thread: fork copies only the calling thread.
        start_reaper(lifeline)
    failures = load_handlers(os.environ)
    log.info(
        "worker %s ready (pid %d, python %s, concurrency %d)",
        worker_id,
        os.getpid(),
        platform.python_version(),
        concurrency,
    )
    worker = Worker(worker_id, streams, max_frame, failures, concurrency=concurrency)
    _hard_exit(worker.serve())
    return EXIT_OK  # not reached


def _terminate(signum: int, frame: Any) -> None:
    raise _Terminated()


def _has_fileno(stream: Any) -> bool:
    try:
        stream.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    return True


def _hard_exit(code: int) -> None:
    """Leave now, whatever threads are left (LiteLLM's, stuck requests'): flush the logs, then
    ``os._exit``. Every response is flushed as it is written."""
    try:
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
    except BaseException:
        pass
    os._exit(code)
