"""The SPOP agent the data-plane probe (benchmarks/dataplane_probe.py) answers HAProxy with."""

from __future__ import annotations

import asyncio
import struct

import pytest

from benchmarks import spop


@pytest.mark.parametrize("value", [0, 1, 239, 240, 2287, 2288, 264431, 264432, 2**32 - 1, 2**40 + 7])
def test_a_varint_decodes_to_what_was_encoded_and_says_where_the_next_field_starts(value: int) -> None:
    encoded = spop.encode_varint(value) + b"\xaa"
    assert spop.decode_varint(encoded, 0) == (value, len(encoded) - 1)


def test_varints_take_the_widths_the_protocol_gives_them() -> None:
    # doc/SPOE.txt: 0..239 in one byte, 240..2287 in two, 2288..264431 in three.
    assert [len(spop.encode_varint(v)) for v in (239, 240, 2287, 2288, 264431, 264432)] == [1, 2, 2, 3, 3, 4]
    assert spop.encode_varint(240) == b"\xf0\x00"


def test_a_truncated_varint_is_a_protocol_error() -> None:
    with pytest.raises(spop.ProtocolError):
        spop.decode_varint(b"\xf0\x80", 0)


def typed_string(text: bytes) -> bytes:
    return bytes([spop.STRING]) + spop.encode_varint(len(text)) + text


def pair(name: str, typed: bytes) -> bytes:
    return spop.encode_string(name) + typed


def test_typed_values_decode_to_python_values() -> None:
    data = (
        pair("path", typed_string(b"/v1/chat/completions"))
        + pair("src", bytes([spop.IPV4]) + bytes([10, 0, 0, 7]))
        + pair("missing", bytes([spop.NULL]))
        + pair("yes", bytes([spop.BOOL | 0x10]))
        + pair("body", bytes([spop.BINARY]) + spop.encode_varint(3) + b"{}\n")
    )
    pairs, end = spop.decode_pairs(data, 0, len(data))
    assert pairs == {"path": "/v1/chat/completions", "src": "10.0.0.7", "missing": None, "yes": True, "body": b"{}\n"}
    assert end == len(data)


class Transport:
    def __init__(self) -> None:
        self.written = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def frames(data: bytes) -> list[tuple[int, int, int, bytes]]:
    """(type, stream id, frame id, payload) of every frame in `data`."""
    out = []
    while data:
        (length,) = struct.unpack_from(">I", data)
        body, data = data[4 : 4 + length], data[4 + length :]
        stream_id, at = spop.decode_varint(body, 5)
        frame_id, at = spop.decode_varint(body, at)
        out.append((body[0], stream_id, frame_id, body[at:]))
    return out


def notify(stream_id: int, frame_id: int, args: bytes, count: int) -> bytes:
    payload = spop.encode_string("decide") + bytes([count]) + args
    return spop.frame(spop.NOTIFY, stream_id, frame_id, payload)


def test_the_agent_says_hello_then_answers_each_notify_with_the_variable_its_decision_sets() -> None:
    async def scenario() -> None:
        seen: list[dict] = []

        async def decide(args: dict) -> str:
            seen.append(args)
            return "region_1" if args["path"] == "/v1/chat/completions" else ""

        errors: list[Exception] = []
        agent, transport = spop.Agent(decide, "backend", errors.append), Transport()
        agent.connection_made(transport)
        hello = pair("supported-versions", typed_string(b"2.0")) + pair("max-frame-size", spop.encode_typed(16380))
        chat = pair("path", typed_string(b"/v1/chat/completions"))
        other = pair("path", typed_string(b"/v1/models"))
        wire = spop.frame(spop.HAPROXY_HELLO, 0, 0, hello) + notify(5, 1, chat, 1) + notify(6, 1, other, 1)
        agent.data_received(wire[:7])  # frames arrive cut anywhere
        agent.data_received(wire[7:])
        await asyncio.sleep(0)

        agent_hello, placed, left = frames(bytes(transport.written))
        assert agent_hello[0] == spop.AGENT_HELLO
        hello_pairs, _ = spop.decode_pairs(agent_hello[3], 0, len(agent_hello[3]))
        assert hello_pairs == {"version": "2.0", "max-frame-size": 16380, "capabilities": "pipelining"}
        assert placed == (spop.ACK, 5, 1, spop.set_transaction_var("backend", "region_1"))
        assert left == (spop.ACK, 6, 1, b"")  # no action: HAProxy's default backend
        assert [args["path"] for args in seen] == ["/v1/chat/completions", "/v1/models"]
        assert errors == [] and not transport.closed

    asyncio.run(scenario())


def test_a_failing_decision_is_counted_and_answered_with_no_action() -> None:
    async def scenario() -> None:
        async def decide(_: dict) -> str:
            raise RuntimeError("scorer broke")

        errors: list[Exception] = []
        agent, transport = spop.Agent(decide, "backend", errors.append), Transport()
        agent.connection_made(transport)
        agent.data_received(notify(9, 2, pair("path", typed_string(b"/v1/completions")), 1))
        await asyncio.sleep(0)
        assert frames(bytes(transport.written)) == [(spop.ACK, 9, 2, b"")]
        assert [str(e) for e in errors] == ["scorer broke"]

    asyncio.run(scenario())


def test_an_oversized_or_malformed_frame_closes_the_connection_and_is_counted() -> None:
    async def decide(_: dict) -> str:
        return ""

    for wire in (struct.pack(">I", spop.MAX_FRAME_BYTES + 1), spop.frame(42, 0, 0, b"")):
        errors: list[Exception] = []
        agent, transport = spop.Agent(decide, "backend", errors.append), Transport()
        agent.connection_made(transport)
        agent.data_received(wire)
        assert transport.closed and len(errors) == 1


def test_the_set_var_action_is_laid_out_as_haproxy_reads_it() -> None:
    # action SET-VAR (1), 3 arguments, scope TRANSACTION (2), name, typed STRING value
    assert spop.set_transaction_var("backend", "region_1") == b"\x01\x03\x02\x07backend\x08\x08region_1"
