"""Framing: what goes on the wire and how malformed input is refused."""

from __future__ import annotations

import io
import json
import struct
from typing import Any

import pytest

from dspex_bridge import protocol


def frames(*payloads: bytes) -> io.BytesIO:
    return io.BytesIO(b"".join(struct.pack(">I", len(p)) + p for p in payloads))


def test_frames_round_trip_through_a_stream() -> None:
    stream = io.BytesIO()
    payloads = [b"{}", '{"text":"h\u00e9llo \u4e16\u754c"}'.encode("utf-8"), b""]
    for payload in payloads:
        protocol.write_frame(stream, payload)
    stream.seek(0)
    assert [protocol.read_frame(stream) for _ in payloads] == payloads
    assert protocol.read_frame(stream) is None


def test_header_is_four_byte_big_endian_length() -> None:
    assert protocol.encode_frame(b"abc") == b"\x00\x00\x00\x03abc"


def test_end_of_stream_between_frames_is_clean() -> None:
    assert protocol.read_frame(io.BytesIO(b"")) is None


def test_end_of_stream_inside_header_is_truncation() -> None:
    with pytest.raises(protocol.TruncatedFrame):
        protocol.read_frame(io.BytesIO(b"\x00\x00"))


def test_end_of_stream_inside_payload_is_truncation() -> None:
    with pytest.raises(protocol.TruncatedFrame, match="expected 10 bytes, got 3"):
        protocol.read_frame(io.BytesIO(struct.pack(">I", 10) + b"abc"))


def test_oversized_incoming_frame_is_refused_before_reading_its_payload() -> None:
    stream = frames(b"x" * 100)
    with pytest.raises(protocol.FrameTooLarge) as raised:
        protocol.read_frame(stream, max_bytes=99)
    assert raised.value.length == 100 and raised.value.limit == 99
    assert stream.tell() == 4


def test_frame_at_the_limit_is_accepted() -> None:
    assert protocol.read_frame(frames(b"x" * 99), max_bytes=99) == b"x" * 99


def test_oversized_outgoing_frame_is_refused() -> None:
    with pytest.raises(protocol.FrameTooLarge, match="outgoing frame of 5 bytes"):
        protocol.encode_frame(b"12345", max_bytes=4)


@pytest.mark.parametrize(
    "payload, reason",
    [
        (b"{not json", "not UTF-8 JSON"),
        (b"\xff\xfe", "not UTF-8 JSON"),
        (b"[1, 2]", "JSON list"),
        (b'{"command": "ping"}', "no valid id"),
        (b'{"id": "7", "command": "ping"}', "no valid id"),
        (b'{"id": true, "command": "ping"}', "no valid id"),
    ],
)
def test_request_without_a_usable_id_is_a_protocol_error(payload: bytes, reason: str) -> None:
    with pytest.raises(protocol.ProtocolError, match=reason):
        protocol.decode_request(payload)


def test_decoded_request_keeps_its_fields() -> None:
    request = protocol.decode_request(b'{"id": 7, "command": "echo", "args": {"a": 1}, "timestamp": "t"}')
    assert request == {"id": 7, "command": "echo", "args": {"a": 1}, "timestamp": "t"}


def test_success_and_failure_shapes() -> None:
    ok = json.loads(protocol.dumps(protocol.success(3, {"x": 1})))
    assert ok["id"] == 3 and ok["success"] is True and ok["result"] == {"x": 1}
    assert isinstance(ok["timestamp"], float)
    failed = json.loads(protocol.dumps(protocol.failure(4, "ValueError", "bad", "tb")))
    assert failed == {"id": 4, "success": False, "error": {"type": "ValueError", "message": "bad", "traceback": "tb"}}


def test_nan_is_not_serialised_because_it_is_not_json() -> None:
    with pytest.raises(ValueError):
        protocol.dumps({"value": float("nan")})


def test_failure_carries_extra_fields_and_leaves_out_none() -> None:
    failed = protocol.failure(5, "RateLimited", "slow down", None, retry_after=2.5, hint=None)
    assert failed == {
        "id": 5,
        "success": False,
        "error": {"type": "RateLimited", "message": "slow down", "retry_after": 2.5},
    }


def test_event_frames_have_an_id_and_an_event_but_no_success() -> None:
    assert protocol.event(9, {"kind": "progress"}) == {"id": 9, "event": {"kind": "progress"}}


def test_json_too_deep_to_decode_keeps_the_request_id() -> None:
    payload = b'{"id": 12, "command": "echo", "args": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    with pytest.raises(protocol.UndecodableRequest) as raised:
        protocol.decode_request(payload)
    assert raised.value.request_id == 12
    assert raised.value.command == "echo"
    assert isinstance(raised.value.cause, RecursionError)


def test_running_out_of_memory_while_decoding_keeps_the_request_id(monkeypatch: pytest.MonkeyPatch) -> None:
    real_loads = json.loads

    def exhausted_on_big_documents(text: Any, **kwargs: Any) -> Any:
        if len(text) > 100:
            raise MemoryError()
        return real_loads(text, **kwargs)

    monkeypatch.setattr(protocol.json, "loads", exhausted_on_big_documents)
    with pytest.raises(protocol.UndecodableRequest) as raised:
        protocol.decode_request(b'{"args": {"text": "' + b"x" * 1000 + b'"}, "command": "big", "id": 3}')
    assert (raised.value.request_id, raised.value.command) == (3, "big")
    assert isinstance(raised.value.cause, MemoryError)


@pytest.mark.parametrize(
    "payload",
    [
        b'{"command": "echo", "args": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"id": "7", "args": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"id": -1, "args": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b"[" * 5000 + b"]" * 5000,
    ],
)
def test_json_too_deep_to_decode_without_a_usable_id_is_a_protocol_error(payload: bytes) -> None:
    with pytest.raises(protocol.ProtocolError, match="has no readable id"):
        protocol.decode_request(payload)


def test_only_top_level_members_count_when_looking_for_the_id() -> None:
    # A nested "id" (even inside a string with brackets) must not be taken for the request's.
    payload = (
        b'{"args": {"id": 99, "text": "]]}}[[{\\"id\\": 98"}, "deep": ' + b"[" * 3000 + b"]" * 3000 + b', "id": 4}'
    )
    with pytest.raises(protocol.UndecodableRequest) as raised:
        protocol.decode_request(payload)
    assert raised.value.request_id == 4
