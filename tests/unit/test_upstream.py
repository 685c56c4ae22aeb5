"""The aiohttp adapter the router runs with, against real servers on loopback."""

from __future__ import annotations

import asyncio
import socket

import pytest

from geo_router.live.upstream import AiohttpUpstream, UpstreamError

STREAM = [b'data: {"n": %d}\n\n' % i for i in range(5)] + [b"data: [DONE]\n\n"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def raw_server(handler) -> tuple[asyncio.base_events.Server, int]:  # type: ignore[no-untyped-def]
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def chunked(parts: list[bytes]) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts)


async def serve_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, break_after: int | None) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
    for index, part in enumerate(STREAM):
        if break_after is not None and index == break_after:
            writer.transport.abort()  # the region dies mid-stream
            return
        writer.write(chunked([part]))
        await writer.drain()
        await asyncio.sleep(0.01)
    writer.write(b"0\r\n\r\n")
    await writer.drain()
    writer.close()


def test_streams_chunks_as_they_arrive():
    """The first chunk reaches the caller while the server is still waiting to send the
    rest: the server sends its last chunks only once the caller has the first one."""

    async def scenario() -> tuple[int, str, bytes, bytes, bool]:
        first_received = asyncio.Event()
        released: list[bool] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            writer.write(chunked([STREAM[0]]))
            await writer.drain()
            try:  # an adapter that buffers never hands over the first chunk: give up after a while
                await asyncio.wait_for(first_received.wait(), 5)
                released.append(True)
            except TimeoutError:
                released.append(False)
            writer.write(chunked(STREAM[1:]) + b"0\r\n\r\n")
            await writer.drain()
            writer.close()

        server, port = await raw_server(serve)
        upstream = AiohttpUpstream()
        try:
            async with asyncio.timeout(15):
                response = await upstream.post(f"http://127.0.0.1:{port}/v1/chat/completions", b"{}", {}, 10)
                first = await anext(response.chunks)
                first_received.set()
                body = first + b"".join([chunk async for chunk in response.chunks])
            await response.close()
            return response.status, response.headers["content-type"], first, body, released == [True]
        finally:
            await upstream.aclose()
            server.close()

    status, content_type, first, body, released_by_first_chunk = asyncio.run(scenario())
    assert (status, content_type) == (200, "text/event-stream")
    assert first == STREAM[0]
    assert released_by_first_chunk, "the first chunk arrived only after the server had given up waiting"
    assert body == b"".join(STREAM)


def test_refused_connection_is_an_upstream_error():
    async def scenario() -> None:
        upstream = AiohttpUpstream()
        try:
            await upstream.post(f"http://127.0.0.1:{free_port()}/v1/chat/completions", b"{}", {}, 5)
        finally:
            await upstream.aclose()

    with pytest.raises(UpstreamError):
        asyncio.run(scenario())


def test_a_stream_that_breaks_raises_upstream_error_after_its_first_chunks():
    async def scenario() -> list[bytes]:
        server, port = await raw_server(lambda r, w: serve_stream(r, w, break_after=2))
        upstream = AiohttpUpstream()
        received: list[bytes] = []
        try:
            response = await upstream.post(f"http://127.0.0.1:{port}/v1/chat/completions", b"{}", {}, 5)
            with pytest.raises(UpstreamError):
                async for chunk in response.chunks:
                    received.append(chunk)
            await response.close()
            return received
        finally:
            await upstream.aclose()
            server.close()

    assert b"".join(asyncio.run(scenario())) == b"".join(STREAM[:2])
