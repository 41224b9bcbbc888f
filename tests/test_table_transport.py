"""The Table clients' transport (shared.azurecore.HttpxTransport) at the wire: azure-core's errors
and retries as with its default (aiohttp) transport, and Content-Encoding undone. The storage
service here is a loopback socket that misbehaves on purpose (outside the process)."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
from collections.abc import AsyncIterator

import pytest
from azure.core.exceptions import ServiceRequestError, ServiceResponseError
from azure.data.tables.aio import TableServiceClient

from shared.azurecore import HttpxTransport
from shared.http import CookielessClient
from tests.azurite import ACCOUNT, KEY


def _connection_string(port: int) -> str:
    return (
        f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};"
        f"TableEndpoint=http://127.0.0.1:{port}/{ACCOUNT};"
    )


class _Server:
    """Answers every request with ``answer`` (raw bytes, or None: read the request and never answer)."""

    def __init__(self, answer: bytes | None) -> None:
        self.answer = answer
        self.requests: list[bytes] = []
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._done = asyncio.Event()
        self._handlers: list[asyncio.Task[None]] = []

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._handlers.append(asyncio.current_task())  # type: ignore[arg-type]
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.lower().split(b"\r\n")
        length = next((int(h.split(b":")[1]) for h in lines if h.startswith(b"content-length")), 0)
        self.requests.append(head + (await reader.readexactly(length) if length else b""))
        if self.answer is None:
            await self._done.wait()
        else:
            writer.write(self.answer)
            await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def __aenter__(self) -> _Server:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *args: object) -> None:
        assert self._server is not None
        self._done.set()
        self._server.close()
        await asyncio.gather(*self._handlers, return_exceptions=True)


@pytest.fixture
async def client() -> AsyncIterator[CookielessClient]:
    http = CookielessClient()
    yield http
    await http.aclose()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_storage_that_cannot_be_reached_is_a_request_error_retried_like_any_method(
    client: CookielessClient,
) -> None:
    service = TableServiceClient.from_connection_string(
        _connection_string(_closed_port()),
        transport=HttpxTransport(client),
        retry_total=1,
        retry_backoff_factor=0.01,
    )
    async with service:
        with pytest.raises(ServiceRequestError):
            await service.create_table("refused")


async def test_a_create_whose_answer_timed_out_is_not_sent_again(client: CookielessClient) -> None:
    """The request was written, the answer never came: it may have taken effect, so azure-core does
    not replay a POST (ServiceResponseError); a GET is retried."""
    async with _Server(None) as server:
        service = TableServiceClient.from_connection_string(
            _connection_string(server.port),
            transport=HttpxTransport(client, read_timeout=0.5),
            retry_total=2,
            retry_backoff_factor=0.01,
        )
        async with service:
            table = service.get_table_client("slow")
            with pytest.raises(ServiceResponseError):
                await table.create_entity({"PartitionKey": "p", "RowKey": "r"})
            assert len(server.requests) == 1
            with pytest.raises(ServiceResponseError):
                await table.get_entity("p", "r")
            assert len(server.requests) == 1 + 3  # the GET and its two retries


async def test_a_gzip_encoded_answer_is_decoded(client: CookielessClient) -> None:
    entity = {"PartitionKey": "p", "RowKey": "r", "Text": "zipped"}
    body = gzip.compress(json.dumps(entity).encode())
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json;odata=minimalmetadata\r\n"
        b"Content-Encoding: gzip\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    async with _Server(answer) as server:
        service = TableServiceClient.from_connection_string(
            _connection_string(server.port), transport=HttpxTransport(client)
        )
        async with service:
            got = await service.get_table_client("zipped").get_entity("p", "r")
    assert got["Text"] == "zipped"
