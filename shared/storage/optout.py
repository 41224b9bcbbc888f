"""Recipients who uninstalled the bot: kept until they install it again (``ReinstallAfterUninstall``).

Teams sends the bot an ``installationUpdate`` with action ``remove`` when a user uninstalls the app
from their personal scope (shared.inbound). That is recorded here, under every name the user is known
by (object id, and the UPN when the recipient cache knew it), in table ``{TableNamePrefix}optouts``
(PartitionKey = tenant id, lower case; RowKey = escaped lower-cased name). An install (``add``, or the
user added to the personal conversation) removes it.

With ``ReinstallAfterUninstall`` true (the default) the record only informs; the notify pipeline
installs the app again as before. With it false, a send that would have to install the app for a
recipient with a record is refused with ``recipient_opted_out`` (shared.pipeline). The record is read
only on that path (the app is not installed), never on a warm send.

``OptOutStore`` is the protocol the use cases call; ``TableOptOutStore`` (the app's) and
``MemoryOptOutStore`` (tests) implement it and pass one behaviour suite.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from shared.storage.references import recipient_key
from shared.storage.tables import TableBacked, escape_key, translate_storage_errors

if TYPE_CHECKING:
    from azure.data.tables.aio import TableClient


class OptOutStore(Protocol):
    async def record(self, tenant_id: str, names: Iterable[str]) -> None:
        """Record the opt-out under each of these names (the user uninstalled the app)."""
        ...

    async def clear(self, tenant_id: str, names: Iterable[str]) -> None:
        """Forget the opt-out under these names (the user installed the app again)."""
        ...

    async def is_opted_out(self, tenant_id: str, name: str) -> bool: ...

    async def close(self) -> None: ...


class TableOptOutStore(TableBacked):
    def __init__(self, table: TableClient) -> None:
        super().__init__(table)

    async def record(self, tenant_id: str, names: Iterable[str]) -> None:
        from azure.data.tables import UpdateMode

        await self._ensure_table()
        now = datetime.datetime.now(datetime.UTC)
        with translate_storage_errors():
            for name in sorted({recipient_key(n) for n in names if n}):
                await self._table.upsert_entity(
                    {"PartitionKey": tenant_id.lower(), "RowKey": escape_key(name), "Name": name, "OptedOutAt": now},
                    mode=UpdateMode.REPLACE,
                )

    async def clear(self, tenant_id: str, names: Iterable[str]) -> None:
        """Forget the opt-out under these names (the user installed the app again)."""
        from azure.core.exceptions import ResourceNotFoundError

        await self._ensure_table()
        for name in sorted({recipient_key(n) for n in names if n}):
            try:
                with translate_storage_errors():
                    await self._table.delete_entity(tenant_id.lower(), escape_key(name))
            except ResourceNotFoundError:
                pass  # older SDKs raise for an absent entity; 12.x does not

    async def is_opted_out(self, tenant_id: str, name: str) -> bool:
        from azure.core.exceptions import ResourceNotFoundError

        await self._ensure_table()
        try:
            with translate_storage_errors():
                await self._table.get_entity(tenant_id.lower(), escape_key(recipient_key(name)))
        except ResourceNotFoundError:
            return False
        return True


class MemoryOptOutStore:
    """The same records in process memory (tests)."""

    def __init__(self) -> None:
        self._names: set[tuple[str, str]] = set()

    async def record(self, tenant_id: str, names: Iterable[str]) -> None:
        self._names |= {(tenant_id.lower(), recipient_key(n)) for n in names if n}

    async def clear(self, tenant_id: str, names: Iterable[str]) -> None:
        self._names -= {(tenant_id.lower(), recipient_key(n)) for n in names if n}

    async def is_opted_out(self, tenant_id: str, name: str) -> bool:
        return (tenant_id.lower(), recipient_key(name)) in self._names

    async def close(self) -> None:
        return None
