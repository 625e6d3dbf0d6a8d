"""Length-prefixed JSON framing shared by the worker loop and its tests.

The host and the worker exchange frames of a 4-byte big-endian length followed by that many
bytes of UTF-8 JSON. Everything that touches bytes on the protocol streams lives here, so the
worker loop deals only in decoded requests and response dictionaries.
"""

from __future__ import annotations

import json
import re
import struct
import time
from typing import Any, BinaryIO, Dict, Optional

#: Frame limit used when ``DSPEX_MAX_FRAME_BYTES`` is unset (64 MiB), matching the host default.
DEFAULT_MAX_FRAME_BYTES = 64 * 1024 * 1024

_HEADER = struct.Struct(">I")


class ProtocolError(Exception):
    """The peer broke the framing contract; the worker cannot continue on this stream."""


class FrameTooLarge(ProtocolError):
    """A frame's length exceeds the configured maximum."""

    def __init__(self, length: int, limit: int, direction: str) -> None:
        super().__init__(
            f"{direction} frame of {length} bytes exceeds the maximum of {limit} bytes "
            "(python.max_frame_bytes / DSPEX_MAX_FRAME_BYTES)"
        )
        self.length = length
        self.limit = limit


class TruncatedFrame(ProtocolError):
    """The stream ended part-way through a frame."""


def read_frame(stream: BinaryIO, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> Optional[bytes]:
    """Read one frame's payload, or return ``None`` on a clean end of stream.

    A clean end is EOF before the first header byte. EOF anywhere else raises
    :class:`TruncatedFrame`; a length over ``max_bytes`` raises :class:`FrameTooLarge`
    without reading the payload, because the stream can no longer be trusted.
    """
    header = _read_exact(stream, _HEADER.size)
    if header is None:
        return None
    if len(header) < _HEADER.size:
        raise TruncatedFrame(f"stream ended inside a frame header ({len(header)} of 4 bytes)")
    (length,) = _HEADER.unpack(header)
    if length > max_bytes:
        raise FrameTooLarge(length, max_bytes, "incoming")
    payload = _read_exact(stream, length) if length else b""
    if payload is None or len(payload) < length:
        got = 0 if payload is None else len(payload)
        raise TruncatedFrame(f"stream ended inside a frame: expected {length} bytes, got {got}")
    return payload


def _read_exact(stream: BinaryIO, count: int) -> Optional[bytes]:
    """Read up to ``count`` bytes, looping over short reads; ``None`` if nothing came."""
    chunks = []
    remaining = count
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    if not chunks:
        return None
    return b"".join(chunks)


def encode_frame(payload: bytes, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> bytes:
    """Prefix ``payload`` with its length, refusing payloads over ``max_bytes``."""
    if len(payload) > max_bytes:
        raise FrameTooLarge(len(payload), max_bytes, "outgoing")
    return _HEADER.pack(len(payload)) + payload


def write_frame(stream: BinaryIO, payload: bytes, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> None:
    """Write one whole frame and flush it.

    The header and payload go out in one buffer so a reader never sees a header whose
    payload is still being assembled.
    """
    stream.write(encode_frame(payload, max_bytes))
    stream.flush()


def dumps(message: Dict[str, Any]) -> bytes:
    """Serialise a message as compact UTF-8 JSON.

    NaN and infinities are refused: they are not JSON and the host's parser rejects them.
    """
    return json.dumps(message, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


class UndecodableRequest(Exception):
    """A request frame whose id is valid but whose whole body could not be decoded.

    JSON nested deeper than Python's recursion limit, or a body too large for the memory
    left, is the request's problem, not the stream's: the frame boundary is intact, so the
    worker answers this one request with an error and goes on.
    """

    def __init__(self, request_id: int, command: Any, cause: BaseException) -> None:
        super().__init__(f"request {request_id} could not be decoded: {type(cause).__name__}")
        self.request_id = request_id
        self.command = command if isinstance(command, str) else None
        self.cause = cause


def decode_request(payload: bytes) -> Dict[str, Any]:
    """Decode a request frame's payload into a dictionary.

    Raises :class:`ProtocolError` when the payload is not UTF-8 JSON holding an object with
    an integer ``id``: without an id there is nobody to address an error response to. Raises
    :class:`UndecodableRequest` when the JSON is too deep or too big to decode but its
    top-level ``id`` can still be read.
    """
    try:
        message = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"request frame is not UTF-8 JSON: {exc}") from exc
    except (RecursionError, MemoryError) as exc:
        fields = _top_level_scalars(payload)
        request_id = fields.get("id")
        if not _valid_id(request_id):
            raise ProtocolError(
                f"request frame could not be decoded ({type(exc).__name__}) and has no readable id"
            ) from exc
        raise UndecodableRequest(request_id, fields.get("command"), exc) from exc
    if not isinstance(message, dict):
        raise ProtocolError(f"request frame holds a JSON {type(message).__name__}, not an object")
    request_id = message.get("id")
    if not _valid_id(request_id):
        raise ProtocolError(f"request frame has no valid id (got {request_id!r})")
    return message


def _valid_id(request_id: Any) -> bool:
    return isinstance(request_id, int) and not isinstance(request_id, bool) and request_id >= 0


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_STRUCTURE = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
_SCALAR = re.compile(rb"[^,}\]\s]+")
_SPACE = re.compile(rb"\s*")


def _top_level_scalars(payload: bytes) -> Dict[str, Any]:
    """The scalar members of a JSON object's top level, read without recursion.

    Nested values are skipped by counting brackets (strings matched whole, so brackets in
    them do not count); it is the fallback for frames ``json.loads`` cannot take, so it
    needs neither deep recursion nor a decoded copy of the payload. Returns what it could
    read before anything unexpected.
    """
    found: Dict[str, Any] = {}
    try:
        position = _SPACE.match(payload, 0).end()
        if payload[position : position + 1] != b"{":
            return found
        position += 1
        while True:
            position = _SPACE.match(payload, position).end()
            key = _JSON_STRING.match(payload, position)
            if key is None:
                return found
            position = _SPACE.match(payload, key.end()).end()
            if payload[position : position + 1] != b":":
                return found
            position = _SPACE.match(payload, position + 1).end()
            first = payload[position : position + 1]
            if first in (b"{", b"["):
                position = _skip_nested(payload, position)
            else:
                scalar = (_JSON_STRING if first == b'"' else _SCALAR).match(payload, position)
                if scalar is None:
                    return found
                found.setdefault(json.loads(key.group()), json.loads(scalar.group()))
                position = scalar.end()
            position = _SPACE.match(payload, position).end()
            if payload[position : position + 1] != b",":
                return found
            position += 1
    except (ValueError, UnicodeDecodeError, MemoryError):
        return found


def _skip_nested(payload: bytes, start: int) -> int:
    depth = 0
    for token in _STRUCTURE.finditer(payload, start):
        mark = token.group()
        if mark in (b"{", b"["):
            depth += 1
        elif mark in (b"}", b"]"):
            depth -= 1
            if depth == 0:
                return token.end()
    raise ValueError("unbalanced brackets")


def success(request_id: int, result: Any) -> Dict[str, Any]:
    """Build a success response."""
    return {"id": request_id, "success": True, "result": result, "timestamp": time.time()}


def failure(
    request_id: int, error_type: str, message: str, traceback: Optional[str] = None, **extra: Any
) -> Dict[str, Any]:
    """Build a failure response carrying a structured error.

    ``extra`` adds fields to the error object (``retry_after`` of a ``RateLimited``); those
    that are ``None`` are left out, like ``traceback``.
    """
    error: Dict[str, Any] = {"type": error_type, "message": message}
    if traceback is not None:
        error["traceback"] = traceback
    error.update((key, value) for key, value in extra.items() if value is not None)
    return {"id": request_id, "success": False, "error": error}


def event(request_id: int, payload: Dict[str, Any]) -> Dict[str, Any]:
    """Build an event frame: progress of a request still running, before its response."""
    return {"id": request_id, "event": payload}
