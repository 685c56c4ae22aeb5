"""How the router talks HTTP to regions: one small interface, two thin adapters.

`AiohttpUpstream` is what the router runs with: aiohttp's client parses HTTP in C,
where httpx's stack (httpcore, anyio, h11) is pure Python, so each proxied request and
chunk costs the router's event loop less CPU. `HttpxUpstream` wraps an
`httpx.AsyncClient`, which lets tests stand in fake regions with `httpx.MockTransport`.
Both, and the health polls, trust the same CAs for regions reached over TLS
(`region_tls`).
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiohttp
import httpx

CONNECT_TIMEOUT_S = 2.0


def region_tls(ca_file: Path | None) -> ssl.SSLContext:
    """What verifies a region's TLS certificate: the CAs in `ca_file` (the spec's
    `router.region_ca_file`), or the system's trust store."""
    return ssl.create_default_context(cafile=ca_file)


class UpstreamError(Exception):
    """The region could not be reached, or the connection broke. Its message is the
    error's type alone: the client library's own message names the region's address."""


@dataclass
class UpstreamResponse:
    status: int
    headers: Mapping[str, str]
    chunks: AsyncIterator[bytes]  # raw body bytes as they arrive; raises UpstreamError if the connection breaks
    close: Callable[[], Awaitable[None]]

    async def read(self, limit: int = 4096) -> bytes:
        body = b""
        async for chunk in self.chunks:
            body += chunk
            if len(body) >= limit:
                break
        return body[:limit]


class Upstream(Protocol):
    async def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> UpstreamResponse: ...

    async def aclose(self) -> None: ...


class AiohttpUpstream:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._tls = tls

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:  # created in the serving event loop, on first use
            connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, ssl=self._tls or True)
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        return self._session

    async def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> UpstreamResponse:
        timeout = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT_S, sock_read=timeout_s)
        try:
            # A region's redirect is its failure, never a new place to send the prompt.
            response = await self._client().post(
                url, data=body, headers=dict(headers), timeout=timeout, allow_redirects=False
            )
        except (TimeoutError, aiohttp.ClientError) as error:
            raise UpstreamError(type(error).__name__) from None

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in response.content.iter_any():
                    yield chunk
            except (TimeoutError, aiohttp.ClientError) as error:
                raise UpstreamError(type(error).__name__) from None

        async def close() -> None:
            response.release()

        return UpstreamResponse(response.status, response.headers, chunks(), close)

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()


class HttpxUpstream:
    def __init__(self, client: httpx.AsyncClient):
        self._client = client

    async def post(self, url: str, body: bytes, headers: Mapping[str, str], timeout_s: float) -> UpstreamResponse:
        request = self._client.build_request(
            "POST",
            url,
            content=body,
            headers=dict(headers),
            timeout=httpx.Timeout(timeout_s, connect=CONNECT_TIMEOUT_S),
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as error:
            raise UpstreamError(type(error).__name__) from None

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async for chunk in response.aiter_raw():
                    yield chunk
            except httpx.HTTPError as error:
                raise UpstreamError(type(error).__name__) from None

        return UpstreamResponse(response.status_code, response.headers, chunks(), response.aclose)

    async def aclose(self) -> None:
        await self._client.aclose()
