"""The Table clients' transport (shared.tablehttp) against Azurite, through a loopback TCP relay that
counts connections and can misbehave as networks and servers do: keep-alive reuse, a connection the
server closed while idle, a connection refused, a server that hangs up or never answers. What an
error must be is azure-core's contract for transports (azure.core.exceptions: ServiceRequestError when
the request never reached the service, ServiceResponseError when it may have), which its retry policy
relies on. And the choice of transport: aiohttp's, with the environment's settings, only where the
environment names a proxy."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import uuid
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from azure.core.exceptions import ServiceRequestError, ServiceResponseError
from azure.data.tables.aio import TableClient

from shared.bootstrap import quiet_url_loggers, table_service
from shared.errors import TransientError
from shared.settings import load_settings
from shared.storage.references import TableRecipientStore
from shared.tablehttp import TableHttpTransport
from tests.azurite import Azurite

TENANT = "0b6f3c2e-3a53-4f7c-9d1e-1f4a9d0c2b11"


class Relay:
    """Forwards loopback TCP connections to Azurite's table port. ``mode``: ``forward``; ``close_idle``
    (the server side closes each connection right after its first answer, as a server closes an idle
    keep-alive connection); ``hang_up`` (reads the request, closes without answering); ``silent``
    (reads the request, never answers); ``proxy`` (a forward proxy that wants credentials: records the
    request line in ``requests`` and answers 407)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.mode = "forward"
        self.connections = 0
        self.requests: list[str] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self._handlers: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Relay:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._handlers:
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        for writer in self._writers:  # every socket closed before the test's event loop ends
            writer.close()
        await asyncio.gather(*(w.wait_closed() for w in self._writers), return_exceptions=True)
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        self._handlers.append(task)
        if self.mode == "proxy":
            self.requests.append((await reader.readline()).decode("latin-1").strip())
            while (await reader.readline()) not in (b"\r\n", b""):
                pass
            writer.write(
                b"HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            await writer.drain()
            writer.close()
            return
        if self.mode in ("hang_up", "silent"):
            await reader.read(65536)
            if self.mode == "silent":
                await asyncio.Event().wait()  # until the relay stops
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        self._writers.append(up_writer)

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, once: bool) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
                    if once:
                        await asyncio.sleep(0.05)  # the rest of the answer, then hang up
                        while more := await asyncio.wait_for(src.read(65536), 0.05):
                            dst.write(more)
                        break
            except (ConnectionError, TimeoutError):
                pass
            finally:
                dst.close()

        await asyncio.gather(
            pump(reader, up_writer, False), pump(up_reader, writer, self.mode == "close_idle"), return_exceptions=True
        )


def _table(azurite: Azurite, port: int, transport: TableHttpTransport) -> TableClient:
    connection = azurite.connection_string.replace(f":{azurite.table_port}/", f":{port}/")
    return TableClient.from_connection_string(connection, "t" + uuid.uuid4().hex[:16], transport=transport)


@pytest.fixture
async def relay(azurite: Azurite) -> AsyncIterator[Relay]:
    quiet_url_loggers()
    async with Relay(azurite.table_port) as running:
        yield running


async def test_requests_reuse_one_keep_alive_connection(azurite: Azurite, relay: Relay) -> None:
    transport = TableHttpTransport()
    async with _table(azurite, relay.port, transport) as table:
        await table.create_table()
        for i in range(10):
            await table.upsert_entity({"PartitionKey": "p", "RowKey": f"r{i}", "Text": "x" * i})
        assert (await table.get_entity("p", "r9"))["Text"] == "x" * 9
    assert relay.connections == 1


async def test_a_connection_the_server_closed_is_not_reused(azurite: Azurite, relay: Relay) -> None:
    relay.mode = "close_idle"
    transport = TableHttpTransport()
    async with _table(azurite, relay.port, transport) as table:
        await table.create_table()
        await asyncio.sleep(0.2)  # the server's FIN has arrived
        # No retries: a request written to the closed connection would fail rather than be retried.
        await table.upsert_entity({"PartitionKey": "p", "RowKey": "r", "N": 1}, retry_total=0)
        await asyncio.sleep(0.2)
        assert (await table.get_entity("p", "r", retry_total=0))["N"] == 1
    assert relay.connections == 3  # one per request, none failed on a closed connection


async def test_a_refused_connection_never_reached_the_service(azurite: Azurite) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]
    transport = TableHttpTransport()
    async with _table(azurite, closed_port, transport) as table:
        with pytest.raises(ServiceRequestError):
            await table.get_entity("p", "r", retry_total=0)


@pytest.mark.parametrize("mode", ["hang_up", "silent"])
async def test_a_request_written_but_not_answered_may_have_been_received(
    azurite: Azurite, relay: Relay, mode: str
) -> None:
    relay.mode = mode
    transport = TableHttpTransport(read_timeout=1)
    async with _table(azurite, relay.port, transport) as table:
        with pytest.raises(ServiceResponseError) as raised:
            await table.get_entity("p", "r", retry_total=0)
    assert not isinstance(raised.value, ServiceRequestError)


@pytest.mark.parametrize("proxied", [True, False])
async def test_table_requests_use_the_environment_proxy_only_when_one_is_set(
    azurite: Azurite, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, proxied: bool
) -> None:
    """The app's Table client honours HTTP_PROXY (aiohttp's trust_env) when the environment names a
    proxy, and otherwise goes straight to the endpoint without trust_env's per-request proxy and
    ~/.netrc lookups: a netrc entry for the storage host must not matter (with trust_env aiohttp
    would add its Basic credentials beside the request's own Authorization header)."""
    quiet_url_loggers()  # as the app does: Table Storage URLs carry the keys
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    if not proxied:
        netrc = tmp_path / "netrc"
        netrc.write_text("machine 127.0.0.1 login someone password not-for-storage\n")
        monkeypatch.setenv("NETRC", str(netrc))
    async with Relay(azurite.table_port) as proxy:
        proxy.mode = "proxy"
        if proxied:
            monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{proxy.port}")
        settings = load_settings(
            {
                "MicrosoftAppId": "5e1f2a3b-1111-4222-8333-944455556666",
                "MicrosoftAppPassword": "not-used-here",
                "MicrosoftAppTenantId": TENANT,
                "TeamsAppId": "0f0e0d0c-1111-4222-8333-944455556666",
                "AzureWebJobsStorage": azurite.connection_string,
            }
        )
        async with httpx.AsyncClient() as http:
            service, _ = table_service(settings, http)
            store = TableRecipientStore(service.get_table_client("s" + uuid.uuid4().hex[:12] + "accounts"))
            try:
                if proxied:
                    with pytest.raises(TransientError):
                        await store.get(TENANT, "alice@contoso.com")
                    assert proxy.requests and proxy.requests[0].startswith("POST http://127.0.0.1:")
                else:
                    assert await store.get(TENANT, "alice@contoso.com") is None
                    assert proxy.requests == []
            finally:
                await store.close()
                await service.close()


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_a_compressed_answer_is_decoded(azurite: Azurite, encoding: str) -> None:
    """azure-core's transports undo a gzip or deflate Content-Encoding before the SDK parses the body;
    this one must too."""
    entity = {"PartitionKey": "p", "RowKey": "r", "Text": "zipped"}
    raw = json.dumps(entity).encode()
    body = gzip.compress(raw) if encoding == "gzip" else zlib.compress(raw)
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json;odata=minimalmetadata\r\n"
        + f"Content-Encoding: {encoding}\r\nContent-Length: {len(body)}\r\n\r\n".encode()
        + body
    )

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with _table(azurite, port, TableHttpTransport()) as table:
            got = await table.get_entity("p", "r", retry_total=0)
    finally:
        server.close()
        await server.wait_closed()
    assert got["Text"] == "zipped"
