"""HAProxy's Stream Processing Offload Protocol (SPOP 2.0), the agent side, as far as the
data-plane probe needs it: HAProxy sends a NOTIFY frame with a request's facts, the agent
answers with an ACK that sets a transaction variable (here: the backend to use).

Frames are a 4-byte big-endian length, then: type (1 byte), flags (4 bytes), stream id
and frame id (varints), payload. Names and strings are a varint length and the bytes;
typed data is one type byte (low 4 bits the type, bit 4 a boolean's value) and its value.
See HAProxy's doc/SPOE.txt.
"""

from __future__ import annotations

import asyncio
import ipaddress
import struct
from collections.abc import Awaitable, Callable

HAPROXY_HELLO, HAPROXY_DISCONNECT, NOTIFY = 1, 2, 3
AGENT_HELLO, AGENT_DISCONNECT, ACK = 101, 102, 103
FIN = 1
NULL, BOOL, INT32, UINT32, INT64, UINT64, IPV4, IPV6, STRING, BINARY = range(10)
SET_VAR = 1
SCOPE_TRANSACTION = 2
# A frame larger than this is refused (HAProxy's default is tune.bufsize, 16 KiB).
MAX_FRAME_BYTES = 64 * 1024

Value = None | bool | int | str | bytes
Handler = Callable[[dict[str, Value]], Awaitable[str]]


class ProtocolError(Exception):
    pass


def encode_varint(value: int) -> bytes:
    if value < 240:
        return bytes([value])
    out = bytearray([(value | 240) & 0xFF])
    value = (value - 240) >> 4
    while value >= 128:
        out.append((value | 128) & 0xFF)
        value = (value - 128) >> 7
    out.append(value)
    return bytes(out)


def decode_varint(data: bytes, at: int) -> tuple[int, int]:
    """The varint at `at`, and where the next field starts."""
    value = data[at]
    at += 1
    if value < 240:
        return value, at
    shift = 4
    while True:
        if at >= len(data) or shift > 63:
            raise ProtocolError("truncated or oversized varint")
        byte = data[at]
        at += 1
        value += byte << shift
        shift += 7
        if byte < 128:
            return value, at


def encode_string(text: str) -> bytes:
    raw = text.encode()
    return encode_varint(len(raw)) + raw


def encode_typed(value: str | int | bool) -> bytes:
    if isinstance(value, bool):
        return bytes([BOOL | (0x10 if value else 0)])
    if isinstance(value, int):
        return bytes([UINT32]) + encode_varint(value)
    return bytes([STRING]) + encode_string(value)


def decode_typed(data: bytes, at: int) -> tuple[Value, int]:
    kind = data[at] & 0x0F
    flags = data[at] >> 4
    at += 1
    if kind == NULL:
        return None, at
    if kind == BOOL:
        return bool(flags & 1), at
    if kind in (INT32, UINT32, INT64, UINT64):
        return decode_varint(data, at)
    if kind == IPV4:
        return str(ipaddress.IPv4Address(data[at : at + 4])), at + 4
    if kind == IPV6:
        return str(ipaddress.IPv6Address(data[at : at + 16])), at + 16
    if kind not in (STRING, BINARY):
        raise ProtocolError(f"unknown data type {kind}")
    length, at = decode_varint(data, at)
    if at + length > len(data):
        raise ProtocolError("truncated string")
    raw = data[at : at + length]
    return (raw.decode(errors="replace") if kind == STRING else raw), at + length


def decode_pairs(data: bytes, at: int, end: int, count: int | None = None) -> tuple[dict[str, Value], int]:
    """`count` name/value pairs from `at` (all of them up to `end` if None)."""
    pairs: dict[str, Value] = {}
    while at < end and (count is None or len(pairs) < count):
        length, at = decode_varint(data, at)
        name = data[at : at + length].decode()
        pairs[name], at = decode_typed(data, at + length)
    return pairs, at


def frame(kind: int, stream_id: int, frame_id: int, payload: bytes) -> bytes:
    body = bytes([kind]) + struct.pack(">I", FIN) + encode_varint(stream_id) + encode_varint(frame_id) + payload
    return struct.pack(">I", len(body)) + body


def set_transaction_var(name: str, value: str) -> bytes:
    """An ACK action: set `txn.<var-prefix>.<name>` to `value`."""
    return bytes([SET_VAR, 3, SCOPE_TRANSACTION]) + encode_string(name) + encode_typed(value)


class Agent(asyncio.Protocol):
    """One HAProxy connection. Each NOTIFY's first message goes to `decide`, whose answer
    is set as the transaction variable `variable`; NOTIFYs are answered as they finish
    (HAProxy pipelines them)."""

    def __init__(self, decide: Handler, variable: str, on_error: Callable[[Exception], None]):
        self._decide = decide
        self._variable = variable
        self._on_error = on_error
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None
        self._pending: set[asyncio.Task] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        for task in self._pending:
            task.cancel()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while len(self._buffer) >= 4:
            (length,) = struct.unpack_from(">I", self._buffer)
            if length > MAX_FRAME_BYTES:
                self._on_error(ProtocolError(f"frame of {length} bytes"))
                self._transport.close()
                return
            if len(self._buffer) < 4 + length:
                return
            body = bytes(self._buffer[4 : 4 + length])
            del self._buffer[: 4 + length]
            try:
                self._frame(body)
            except (ProtocolError, IndexError, KeyError, UnicodeDecodeError) as error:
                self._on_error(error)
                self._transport.close()
                return

    def _frame(self, body: bytes) -> None:
        kind = body[0]
        stream_id, at = decode_varint(body, 5)
        frame_id, at = decode_varint(body, at)
        if kind == HAPROXY_HELLO:
            hello, _ = decode_pairs(body, at, len(body))
            payload = (
                encode_string("version") + encode_typed("2.0")
                + encode_string("max-frame-size") + encode_typed(min(int(hello["max-frame-size"]), MAX_FRAME_BYTES))
                + encode_string("capabilities") + encode_typed("pipelining")
            )  # fmt: skip
            self._transport.write(frame(AGENT_HELLO, 0, 0, payload))
        elif kind == HAPROXY_DISCONNECT:
            payload = encode_string("status-code") + encode_typed(0) + encode_string("message") + encode_typed("")
            self._transport.write(frame(AGENT_DISCONNECT, 0, 0, payload))
            self._transport.close()
        elif kind == NOTIFY:
            length, at = decode_varint(body, at)  # the message's name
            count = body[at + length]
            args, _ = decode_pairs(body, at + length + 1, len(body), count)
            task = asyncio.ensure_future(self._answer(stream_id, frame_id, args))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        else:
            raise ProtocolError(f"unexpected frame type {kind}")

    async def _answer(self, stream_id: int, frame_id: int, args: dict[str, Value]) -> None:
        try:
            value = await self._decide(args)
        except Exception as error:  # the request goes to HAProxy's default backend
            self._on_error(error)
            value = ""
        action = set_transaction_var(self._variable, value) if value else b""
        if not self._transport.is_closing():
            self._transport.write(frame(ACK, stream_id, frame_id, action))
