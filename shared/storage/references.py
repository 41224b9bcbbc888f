"""The conversation reference store: what a warm send needs about a recipient, memoised in Table Storage.

``RecipientStore`` is the small protocol; ``MemoryRecipientStore`` and ``TableRecipientStore`` (Azure
Table Storage through azure-data-tables' async client) implement it and pass one behaviour suite;
``CachedRecipientStore`` puts a bounded in-process LRU in front of either, so a warm send in a warm
process touches no storage at all.

Entries are keyed by (tenant, recipient) where recipient is the lower-cased UPN or object id. One
resolution is stored under every alias it is known by (the name the caller gave, the object id, the
UPN), so a later send by either name is warm; eviction removes all aliases.
"""

from __future__ import annotations

import datetime
import logging
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, Protocol

import msgspec

from shared.storage.tables import TableBacked, escape_key, translate_storage_errors

logger = logging.getLogger(__name__)


def recipient_key(recipient: str) -> str:
    """The normalised name of a recipient: UPNs and object ids are case-insensitive."""
    return recipient.strip().lower()


class ConversationReference(msgspec.Struct, frozen=True):
    """The memoised conversation reference of one recipient: the user's ChannelAccount id
    (``account_id``), aadObjectId, userPrincipalName, the 1:1 conversation id, its service URL and tenant.
    ``account_id`` (``29:...``) is None when the entry came from the installation's chat id alone (the
    chat id is the 1:1 conversation id); it is known when the entry came from an inbound install
    activity or the members fallback."""

    tenant_id: str
    account_id: str | None
    conversation_id: str
    service_url: str
    object_id: str | None = None
    upn: str | None = None
    updated_at: datetime.datetime | None = None

    def aliases(self, *extra: str | None) -> set[str]:
        return {recipient_key(a) for a in (self.object_id, self.upn, *extra) if a}


class RecipientStore(Protocol):
    async def get(self, tenant_id: str, recipient: str) -> ConversationReference | None: ...

    async def put(self, entry: ConversationReference, aliases: Iterable[str]) -> None: ...

    async def evict(self, tenant_id: str, recipient: str) -> ConversationReference | None: ...

    async def count(self, tenant_id: str) -> int: ...

    async def close(self) -> None: ...


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class MemoryRecipientStore:
    """A process-local store (tests, the sandbox, and the CLI without storage)."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, str], ConversationReference] = {}

    async def get(self, tenant_id: str, recipient: str) -> ConversationReference | None:
        return self._rows.get((tenant_id.lower(), recipient_key(recipient)))

    async def put(self, entry: ConversationReference, aliases: Iterable[str]) -> None:
        stamped = msgspec.structs.replace(entry, updated_at=entry.updated_at or _now())
        for alias in set(aliases) | entry.aliases():
            self._rows[(entry.tenant_id.lower(), recipient_key(alias))] = stamped

    async def evict(self, tenant_id: str, recipient: str) -> ConversationReference | None:
        entry = self._rows.pop((tenant_id.lower(), recipient_key(recipient)), None)
        if entry is not None:
            for alias in entry.aliases():
                self._rows.pop((tenant_id.lower(), alias), None)
            # Aliases given at put time that are neither UPN nor oid point at the same account.
            for key in [
                k
                for k, v in self._rows.items()
                if v.conversation_id == entry.conversation_id and k[0] == tenant_id.lower()
            ]:
                del self._rows[key]
        return entry

    async def count(self, tenant_id: str) -> int:
        return len({v.conversation_id for k, v in self._rows.items() if k[0] == tenant_id.lower()})

    async def close(self) -> None:
        return None


class TableRecipientStore(TableBacked):
    """Azure Table Storage: PartitionKey = tenant id, RowKey = escaped recipient alias."""

    async def get(self, tenant_id: str, recipient: str) -> ConversationReference | None:
        from azure.core.exceptions import ResourceNotFoundError

        await self._ensure_table()
        try:
            with translate_storage_errors():
                entity = await self._table.get_entity(tenant_id.lower(), escape_key(recipient_key(recipient)))
        except ResourceNotFoundError:
            return None
        return _from_entity(entity)

    async def put(self, entry: ConversationReference, aliases: Iterable[str]) -> None:
        from azure.data.tables import UpdateMode

        await self._ensure_table()
        stamped = msgspec.structs.replace(entry, updated_at=entry.updated_at or _now())
        row = _to_entity(stamped)
        all_aliases = set(aliases) | entry.aliases()
        row["Aliases"] = "\n".join(sorted(all_aliases))
        with translate_storage_errors():
            for alias in sorted(all_aliases):
                await self._table.upsert_entity(
                    dict(row, PartitionKey=entry.tenant_id.lower(), RowKey=escape_key(alias)), mode=UpdateMode.REPLACE
                )

    async def evict(self, tenant_id: str, recipient: str) -> ConversationReference | None:
        from azure.core.exceptions import ResourceNotFoundError

        await self._ensure_table()
        partition = tenant_id.lower()
        try:
            with translate_storage_errors():
                entity = await self._table.get_entity(partition, escape_key(recipient_key(recipient)))
        except ResourceNotFoundError:
            return None
        aliases = set(str(entity.get("Aliases", "")).split("\n")) | {recipient_key(recipient)}
        with translate_storage_errors():
            for alias in sorted(a for a in aliases if a):
                await self._table.delete_entity(partition, escape_key(alias))
        return _from_entity(entity)

    async def count(self, tenant_id: str) -> int:
        await self._ensure_table()
        accounts: set[str] = set()
        with translate_storage_errors():
            async for entity in self._table.query_entities(
                "PartitionKey eq @pk", parameters={"pk": tenant_id.lower()}, select=["ConversationId"]
            ):
                accounts.add(str(entity["ConversationId"]))
        return len(accounts)


class CachedRecipientStore:
    """A bounded LRU in front of a store. Only a shortcut: other instances may evict or update the
    store behind it, and the pipeline's stale-entry handling corrects a stale hit."""

    def __init__(self, inner: RecipientStore, max_entries: int = 50_000) -> None:
        self._inner = inner
        self._max = max_entries
        self._lru: OrderedDict[tuple[str, str], ConversationReference] = OrderedDict()

    async def get(self, tenant_id: str, recipient: str) -> ConversationReference | None:
        key = (tenant_id.lower(), recipient_key(recipient))
        hit = self._lru.get(key)
        if hit is not None:
            self._lru.move_to_end(key)
            return hit
        entry = await self._inner.get(tenant_id, recipient)
        if entry is not None:
            self._remember(key, entry)
        return entry

    async def put(self, entry: ConversationReference, aliases: Iterable[str]) -> None:
        stamped = msgspec.structs.replace(entry, updated_at=entry.updated_at or _now())
        alias_set = set(aliases) | entry.aliases()
        await self._inner.put(stamped, alias_set)
        for alias in alias_set:
            self._remember((entry.tenant_id.lower(), recipient_key(alias)), stamped)

    async def evict(self, tenant_id: str, recipient: str) -> ConversationReference | None:
        key = (tenant_id.lower(), recipient_key(recipient))
        local = self._lru.pop(key, None)
        entry = await self._inner.evict(tenant_id, recipient)
        for gone in (local, entry):
            if gone is not None:
                for k in [k for k, v in self._lru.items() if v.conversation_id == gone.conversation_id]:
                    del self._lru[k]
        return entry or local

    async def count(self, tenant_id: str) -> int:
        return await self._inner.count(tenant_id)

    async def close(self) -> None:
        await self._inner.close()

    def _remember(self, key: tuple[str, str], entry: ConversationReference) -> None:
        self._lru[key] = entry
        self._lru.move_to_end(key)
        while len(self._lru) > self._max:
            self._lru.popitem(last=False)


def _to_entity(entry: ConversationReference) -> dict[str, Any]:
    row: dict[str, Any] = {
        "TenantId": entry.tenant_id,
        "ConversationId": entry.conversation_id,
        "ServiceUrl": entry.service_url,
        "UpdatedAt": entry.updated_at,
    }
    if entry.account_id:
        row["AccountId"] = entry.account_id
    if entry.object_id:
        row["ObjectId"] = entry.object_id
    if entry.upn:
        row["Upn"] = entry.upn
    return row


def _from_entity(entity: Any) -> ConversationReference:
    updated = entity.get("UpdatedAt")
    return ConversationReference(
        tenant_id=str(entity["TenantId"]),
        account_id=entity.get("AccountId") or None,
        conversation_id=str(entity["ConversationId"]),
        service_url=str(entity["ServiceUrl"]),
        object_id=entity.get("ObjectId"),
        upn=entity.get("Upn"),
        updated_at=updated if isinstance(updated, datetime.datetime) else None,
    )
