"""Exceptions whose class names are part of the wire contract.

The worker reports a failed command with ``error.type`` set to the exception's class name, so
the host can map it to a stable error kind. These classes exist so the names the host relies on
(``UnknownCommand``, ``ProgramNotFound`` ...) are defined once and cannot drift.
"""

from __future__ import annotations


class BridgeError(Exception):
    """Base class for errors the bridge raises on purpose (as opposed to bugs)."""


class UnknownCommand(BridgeError):
    """The request named a command this worker does not have."""


class InvalidRequest(BridgeError):
    """The request frame was JSON with an id but its ``command`` or ``args`` had the wrong shape."""


class ProgramExists(BridgeError):
    """``create_program`` named a program id already taken in that session's scope."""


class ProgramNotFound(BridgeError):
    """The program id is unknown in that session's scope and no definition was sent."""


class LMError(BridgeError):
    """The language model could not be built or called (missing key, auth, network, provider)."""


class ResponseTooLarge(BridgeError):
    """A command's result does not fit in one frame; sent in place of that result."""
