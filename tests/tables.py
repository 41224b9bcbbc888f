"""Table clients on the session's Azurite for the storage behaviour suites, through the app's own
transport (shared.tablehttp): a fresh table-name prefix per test, and the URL loggers quieted as the
app quiets them (Table Storage URLs carry the keys)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

from azure.data.tables.aio import TableServiceClient

from shared.bootstrap import quiet_url_loggers
from shared.tablehttp import TableHttpTransport
from tests.azurite import Azurite


@asynccontextmanager
async def azurite_tables(azurite: Azurite) -> AsyncIterator[Callable[[str], Any]]:
    """Yields ``table(suffix)``: a TableClient for table ``{fresh prefix}{suffix}``."""
    quiet_url_loggers()
    service = TableServiceClient.from_connection_string(azurite.connection_string, transport=TableHttpTransport())
    prefix = "s" + uuid.uuid4().hex[:12]
    try:
        yield lambda suffix: service.get_table_client(prefix + suffix)
    finally:
        await service.close()


BACKENDS = ["memory", "table"]


class _Closable(Protocol):
    async def close(self) -> None: ...


StoreT = TypeVar("StoreT", bound=_Closable)


@asynccontextmanager
async def backend(
    kind: str, azurite: Azurite, memory: Callable[[], StoreT], table: Callable[[Callable[[str], Any]], StoreT]
) -> AsyncIterator[StoreT]:
    """The store under test: ``memory()``, or ``table(tables)`` over fresh Azurite tables; closed after."""
    if kind == "memory":
        built = memory()
        yield built
        await built.close()
        return
    async with azurite_tables(azurite) as tables:
        built = table(tables)
        yield built
        await built.close()
