"""Exceptions whose class names are part of the wire contract.

The worker reports a failed command with ``error.type`` set to the exception's class name, so
the host can map it to a stable error kind (see the contract's error table: caller mistakes
never count against a worker's health, a ``MemoryError`` recycles it). These classes exist so
the names the host relies on (``UnknownCommand``, ``RateLimited`` ...) are defined once and
cannot drift.
"""

from __future__ import annotations

from typing import Any, Dict, Optional


class BridgeError(Exception):
    """Base class for errors the bridge raises on purpose (as opposed to bugs)."""

    #: Whether the error object carries a traceback. A caller's mistake is fully described
    #: by its message; a traceback of the bridge's own frames would only bury it.
    report_traceback = True

    def error_fields(self) -> Dict[str, Any]:
        """Extra fields for the wire error object, beside ``type``, ``message``, ``traceback``."""
        return {}


class UnknownCommand(BridgeError):
    """The request named a command this worker does not have; the message lists those it has."""

    report_traceback = False


class InvalidRequest(BridgeError):
    """The caller's mistake: a request whose ``command`` or ``args`` have the wrong shape, a
    missing or invalid program id, a bad definition. Never counts against the worker."""


class ProgramExists(BridgeError):
    """``create_program`` named a program id already taken in that session's scope."""


class ProgramNotFound(BridgeError):
    """The program id is unknown in that session's scope and no definition was sent."""


class LMError(BridgeError):
    """The language model could not be built or called (missing key, auth, network, provider),
    after the worker's own retries."""


class RateLimited(BridgeError):
    """The provider answered 429 / ``RateLimitError``. Not retried in the worker: the host's
    pool lowers its concurrency and retries the request, after ``retry_after`` seconds when
    the provider said how long to wait."""

    def __init__(self, message: str, retry_after: Optional[float] = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    def error_fields(self) -> Dict[str, Any]:
        return {} if self.retry_after is None else {"retry_after": float(self.retry_after)}


class ResponseTooLarge(BridgeError):
    """A command's result does not fit in one frame; sent in place of that result."""
