"""What a running request knows about itself, and the way it talks back before it ends.

A worker runs several requests at once, so "the current request" is no longer a worker-wide
fact. Built-in handlers receive their :class:`RequestContext` as an argument
(``handler(args, ctx)``); code further down (a DSPy callback, a logging handler, a user
``@command`` function, which keeps the ``fn(args)`` signature) finds it with
:func:`current_context`, which reads a context variable the worker sets for each request.
Threads that copy the context (``contextvars.copy_context``, DSPy's parallel executor) see it
too; plain new threads do not.
"""

from __future__ import annotations

import contextvars
import threading
from typing import Any, Callable, Dict, Optional

#: Writes one event frame for a request; provided by the worker (thread-safe).
EventSink = Callable[[int, Dict[str, Any]], None]


class RequestContext:
    """One request as its handler sees it.

    Attributes:
        request_id: the request's ``id`` on the wire.
        worker_id: the id the host knows this worker by.
        concurrency: how many user requests this worker runs at once
            (``DSPEX_WORKER_CONCURRENCY``); optimizers use it as their thread count.
    """

    __slots__ = ("_closed", "_lock", "_sink", "concurrency", "request_id", "worker_id")

    def __init__(self, request_id: int, worker_id: str, concurrency: int, sink: EventSink) -> None:
        self.request_id = request_id
        self.worker_id = worker_id
        self.concurrency = concurrency
        self._sink = sink
        self._lock = threading.Lock()
        self._closed = False

    def emit(self, event: Dict[str, Any]) -> None:
        """Send an event frame ``{"id": request_id, "event": event}`` to the host now.

        Thread-safe: helper threads of one request may report progress at once. ``event``
        must be a JSON object (by convention ``{"kind": "progress", "message": ...}``). Once
        the request has been answered its events are dropped: the host has stopped listening.

        Raises ``TypeError`` if ``event`` is not a dict or not JSON-serialisable, and
        ``ValueError`` if it does not fit in one frame.
        """
        if not isinstance(event, dict):
            raise TypeError(f"an event must be a dict, got {type(event).__name__}")
        with self._lock:
            if self._closed:
                return
            self._sink(self.request_id, event)

    def close(self) -> None:
        """Stop sending events; called by the worker before it writes the final response, so
        no event can follow it even from a helper thread that outlives the handler."""
        with self._lock:
            self._closed = True

    def __repr__(self) -> str:
        return f"RequestContext(request_id={self.request_id}, worker_id={self.worker_id!r})"


_CURRENT: contextvars.ContextVar[Optional[RequestContext]] = contextvars.ContextVar(
    "dspex_request_context", default=None
)


def current_context() -> Optional[RequestContext]:
    """The context of the request this code runs for, or ``None`` outside a request."""
    return _CURRENT.get()


def activate(context: RequestContext) -> contextvars.Token:
    """Make ``context`` current in this (copied) context; for the worker."""
    return _CURRENT.set(context)
