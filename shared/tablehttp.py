"""The Table Storage clients' HTTP transport: an azure-core ``AsyncHttpTransport`` that speaks HTTP/1.1
with h11 (the protocol library httpx is built on) over asyncio streams, with keep-alive connections.

Why not a library's transport, measured (bench/results/2026-12-01.md):
- azure-core's default, aiohttp: about 0.2 s of imports (plus a TLS context built at import), which
  the first send after every cold start paid (bench row 4b: the first send's imports took 1.36x
  ``import botbuilder.core``'s time with it, 1.15x-1.53x over three noisy runs without).
- an httpx-backed transport (the same client as Graph and the Bot Connector): about 3x aiohttp's CPU
  per Table request (httpcore's connection pool checks every pooled connection through anyio on each
  request), which a broadcast pays five times per recipient (bench row 7).
This one costs a few milliseconds of imports (h11 and ssl are already loaded by httpx) and about
aiohttp's CPU per request (0.77-1.00 ms against 0.84-0.98 ms, interleaved). Everything above the
transport stays azure-core's: retries (the Tables retry policy), authentication, redirects, logging.

Behaviour, as azure-core's transports behave:
- A request that never reached the service (connect failed or timed out) is ``ServiceRequestError``
  (azure-core retries it for every method); one that may have been received (the connection broke or
  timed out after it was written) is ``ServiceResponseError`` (retried only for idempotent methods, so
  a create is never replayed blind).
- TLS: the default context (the system's CAs, or SSL_CERT_FILE). Proxies: none; the app uses
  azure-core's aiohttp transport instead when the environment names one (shared.bootstrap).
- A connection is reused only if it has been idle for less than ``IDLE_SECONDS`` and the server has
  not closed it: inside the shortest keep-alive time servers commonly give (Node.js's default, which
  Azurite has, is 5 s; httpx also expires idle connections after 5 s), so a reused connection is not
  one the server is closing at that moment.
"""

from __future__ import annotations

import asyncio
import ssl
import time
import urllib.parse
import zlib
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import h11
from azure.core.configuration import ConnectionConfiguration
from azure.core.exceptions import (
    ServiceRequestError,
    ServiceRequestTimeoutError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)
from azure.core.pipeline.transport import AsyncHttpTransport
from azure.core.rest import HttpRequest
from azure.core.rest._http_response_impl_async import AsyncHttpResponseImpl
from azure.core.utils import CaseInsensitiveDict

#: A pooled connection idle longer than this is closed rather than reused.
IDLE_SECONDS = 4.0
#: Idle connections kept per host.
MAX_IDLE = 32
_READ_SIZE = 65536


def as_signed(url: str) -> str:
    """The URL as the Tables SDK signed it. With an async transport its shared-key signature covers the
    path as yarl normalizes it (azure-data-tables ``_authentication.SharedKeyCredentialPolicy``, written
    for aiohttp, which sends that form: ``%40`` in a row key goes out as ``@``), so that form is sent.
    Without yarl the SDK signs the path as given, and so it is sent as given."""
    try:
        from yarl import URL  # imported by azure-data-tables itself when present
    except ImportError:
        return url
    return str(URL(url))


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.protocol = h11.Connection(h11.CLIENT)
        self.idle_since = 0.0
        self.loop = asyncio.get_running_loop()

    def reusable(self, now: float) -> bool:
        return (
            self.loop is asyncio.get_running_loop()  # a connection belongs to the event loop that opened it
            and now - self.idle_since < IDLE_SECONDS
            and not self.reader.at_eof()
            and not self.writer.is_closing()
        )

    def close(self) -> None:
        if not self.loop.is_closed():
            self.writer.close()


async def _download(
    response: TableHttpResponse, pipeline: Any = None, *, decompress: bool = True, **kwargs: Any
) -> AsyncIterator[bytes]:
    """The body, already read by ``send``: nothing is streamed, even when asked (Table answers are at
    most a page of 1,000 entities). A gzip or deflate Content-Encoding is undone unless
    ``decompress=False``, as azure-core's own transports do."""
    body: bytes = response.internal_response
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if decompress and encoding in ("gzip", "deflate"):
        # wbits 47: zlib or gzip header, detected; a raw deflate stream (what some servers send as
        # "deflate") needs -15.
        try:
            body = zlib.decompress(body, 47)
        except zlib.error:
            body = zlib.decompress(body, -15)
    yield body


class TableHttpResponse(AsyncHttpResponseImpl):
    """An ``azure.core.rest.AsyncHttpResponse`` whose body is already read."""

    def __init__(
        self, *, request: HttpRequest, status: int, reason: str, headers: CaseInsensitiveDict, body: bytes
    ) -> None:
        super().__init__(
            request=request,
            internal_response=body,
            block_size=max(1, len(body)),
            status_code=status,
            reason=reason,
            content_type=headers.get("content-type"),
            headers=headers,
            stream_download_generator=_download,
        )

    def body(self) -> bytes:
        """The body (azure-core's sync accessor, which it uses to split a batch answer into parts)."""
        content: bytes = self.content
        return content

    async def close(self) -> None:
        self._is_closed = True


class TableHttpTransport(AsyncHttpTransport[HttpRequest, TableHttpResponse]):
    """Keyword arguments are azure-core's connection configuration (``connection_timeout``,
    ``read_timeout``), with its defaults; per-call ``connection_timeout`` / ``read_timeout`` override
    them. A per-call ``connection_verify``, ``connection_cert`` or ``proxies`` asking for something
    this transport does not do is refused rather than ignored."""

    def __init__(self, **kwargs: Any) -> None:
        self.connection_config = ConnectionConfiguration(**kwargs)
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._tls: ssl.SSLContext | None = None

    async def __aenter__(self) -> TableHttpTransport:
        return self

    async def __aexit__(self, *args: Any) -> None:
        await self.close()

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        for connections in self._idle.values():
            for connection in connections:
                connection.close()
        self._idle.clear()

    async def sleep(self, duration: float) -> None:
        await asyncio.sleep(duration)

    async def send(
        self,
        request: HttpRequest,
        *,
        stream: bool = False,
        proxies: MutableMapping[str, str] | None = None,
        **config: Any,
    ) -> TableHttpResponse:
        if not isinstance(request, HttpRequest):
            raise TypeError("TableHttpTransport sends azure.core.rest.HttpRequest only (the Tables SDK's requests)")
        if proxies:
            raise ValueError("TableHttpTransport does not use proxies (the app picks aiohttp's transport for them)")
        if config.pop("connection_verify", True) is not True or config.pop("connection_cert", None) is not None:
            raise ValueError("TableHttpTransport verifies TLS with the default context (SSL_CERT_FILE)")
        connect_timeout = config.pop("connection_timeout", self.connection_config.timeout)
        read_timeout = config.pop("read_timeout", self.connection_config.read_timeout)
        body = request.content
        if isinstance(body, str):
            body = body.encode()
        if body is not None and not isinstance(body, bytes):
            raise ValueError("TableHttpTransport sends bytes or str bodies (what the Tables SDK builds)")
        url = urllib.parse.urlsplit(as_signed(request.url))
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ServiceRequestError(f"Unsupported URL scheme: {url.scheme!r}")
        port = url.port or (443 if url.scheme == "https" else 80)
        key = (url.scheme, url.hostname, port)
        headers = [(name, value) for name, value in request.headers.items() if name.lower() != "host"]
        default_port = port == (443 if url.scheme == "https" else 80)
        headers.insert(0, ("Host", url.hostname if default_port else f"{url.hostname}:{port}"))
        if body is not None or request.method in ("POST", "PUT", "PATCH", "MERGE"):
            headers = [(n, v) for n, v in headers if n.lower() != "content-length"]
            headers.append(("Content-Length", str(len(body or b""))))
        target = (url.path or "/") + (f"?{url.query}" if url.query else "")
        message = h11.Request(method=request.method, target=target, headers=headers)

        connection = await self._checkout(key, connect_timeout)
        try:
            protocol = connection.protocol
            data = protocol.send(message) or b""
            if body:
                data += protocol.send(h11.Data(data=body)) or b""
            data += protocol.send(h11.EndOfMessage()) or b""
            connection.writer.write(data)
            async with asyncio.timeout(read_timeout):
                status, reason, raw_headers, content = await self._exchange(connection)
        except TimeoutError as err:
            connection.close()
            raise ServiceResponseTimeoutError("Table Storage did not answer in time", error=err) from err
        except (OSError, h11.ProtocolError) as err:
            connection.close()
            raise ServiceResponseError(f"The connection to Table Storage broke: {err}", error=err) from err
        except BaseException:
            connection.close()  # cancelled mid-exchange: the connection's state is unknown
            raise
        self._checkin(key, connection)
        response_headers = CaseInsensitiveDict()
        for raw_name, raw_value in raw_headers:
            name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
            # A repeated header is one comma-separated list (RFC 9110, 5.3).
            response_headers[name] = f"{response_headers[name]}, {value}" if name in response_headers else value
        response = TableHttpResponse(
            request=request, status=status, reason=reason, headers=response_headers, body=content
        )
        await response.read()
        return response

    async def _exchange(self, connection: _Connection) -> tuple[int, str, list[tuple[bytes, bytes]], bytes]:
        await connection.writer.drain()
        protocol = connection.protocol
        status, reason, headers, parts = 0, "", [], []
        while True:
            event = protocol.next_event()
            if event is h11.NEED_DATA:
                protocol.receive_data(await connection.reader.read(_READ_SIZE))
            elif isinstance(event, h11.Response):
                status, reason, headers = event.status_code, event.reason.decode("latin-1"), list(event.headers)
            elif isinstance(event, h11.Data):
                parts.append(bytes(event.data))
            elif isinstance(event, h11.EndOfMessage):
                return status, reason, headers, b"".join(parts)
            elif isinstance(event, h11.ConnectionClosed):
                raise ConnectionResetError("Table Storage closed the connection without an answer")
            # h11.InformationalResponse (100 Continue): read on

    async def _checkout(self, key: tuple[str, str, int], connect_seconds: float) -> _Connection:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            connection = idle.pop()
            if connection.reusable(now):
                return connection
            connection.close()
        scheme, host, port = key
        tls = None
        if scheme == "https":
            if self._tls is None:
                self._tls = ssl.create_default_context()
            tls = self._tls
        try:
            async with asyncio.timeout(connect_seconds):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=tls, server_hostname=host if tls else None, limit=_READ_SIZE
                )
        except TimeoutError as err:
            raise ServiceRequestTimeoutError(f"Connecting to {host}:{port} timed out", error=err) from err
        except OSError as err:
            raise ServiceRequestError(f"Could not connect to {host}:{port}: {err}", error=err) from err
        return _Connection(reader, writer)

    def _checkin(self, key: tuple[str, str, int], connection: _Connection) -> None:
        protocol = connection.protocol
        if protocol.our_state is h11.DONE and protocol.their_state is h11.DONE:
            protocol.start_next_cycle()
            connection.idle_since = time.monotonic()
            idle = self._idle.setdefault(key, [])
            if len(idle) < MAX_IDLE:
                idle.append(connection)
                return
        connection.close()
