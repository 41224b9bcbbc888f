"""A loopback HTTP proxy in front of Azurite that can take Table Storage "down" for a while: the
storage outage of a fault test, injected at the wire (the product talks to it as to any Table
endpoint). Outside the product: Table Storage answers 503 ServerBusy when it is unavailable
(https://learn.microsoft.com/rest/api/storageservices/table-service-error-codes).
"""

from __future__ import annotations

import asyncio
import re

from aiohttp import ClientSession, web
from yarl import URL

_HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "content-encoding"}


class StorageProxy:
    def __init__(self, upstream: str) -> None:
        self._upstream = upstream.rstrip("/")
        self._runner: web.AppRunner | None = None
        self._session: ClientSession | None = None
        self.port = 0
        self._down_until = 0.0
        self._trigger: tuple[str, float] | None = None
        self._conditional_only = True
        self.refused = 0
        self.tripped_at: float | None = None
        self.outage_ended_at: float | None = None

    async def start(self) -> StorageProxy:
        app = web.Application(client_max_size=8 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        self._session = ClientSession(auto_decompress=False)
        return self

    async def stop(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def connection_string(self, original: str) -> str:
        return re.sub(
            r"TableEndpoint=http://127\.0\.0\.1:\d+/", f"TableEndpoint=http://127.0.0.1:{self.port}/", original
        )

    def down_after_first_conditional_write(self, table_suffix: str, seconds: float) -> None:
        """Storage goes down for ``seconds`` starting with the first conditional update (If-Match) of
        a table whose name ends with ``table_suffix``: for the idempotency table that is the record
        of a send's result, the first write after Teams confirmed it."""
        self._trigger = (table_suffix, seconds)
        self._conditional_only = True

    def down_after_first_write(self, table_suffix: str, seconds: float) -> None:
        """Storage goes down for ``seconds`` starting with the first write (insert or update) of a table
        whose name ends with ``table_suffix`` (e.g. the deliveries table: a recipient's row)."""
        self._trigger = (table_suffix, seconds)
        self._conditional_only = False

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if (
            self._trigger is not None
            and request.method in ("POST", "PUT", "MERGE", "PATCH")
            and (not self._conditional_only or "if-match" in {k.lower() for k in request.headers})
            and (f"{self._trigger[0]}(" in request.raw_path or request.raw_path.endswith(self._trigger[0]))
        ):
            self.tripped_at = now
            self._down_until = now + self._trigger[1]
            self.outage_ended_at = self._down_until
            self._trigger = None
        body = await request.read()
        if now < self._down_until:
            self.refused += 1
            return web.json_response(
                {"odata.error": {"code": "ServerBusy", "message": {"value": "The server is busy."}}}, status=503
            )
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        async with self._session.request(
            request.method,
            URL(self._upstream + request.raw_path, encoded=True),  # as sent: the signature covers it
            headers=headers,
            data=body or None,
            skip_auto_headers=("Content-Type",),  # none added: the signature covers Content-Type
            allow_redirects=False,
        ) as upstream:
            payload = await upstream.read()
            out_headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS}
            return web.Response(status=upstream.status, headers=out_headers, body=payload)
