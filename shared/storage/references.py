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

import asyncio
import datetime
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol

from shared.errors import ConfigurationError, TransientError

if TYPE_CHECKING:
    from azure.data.tables.aio import TableClient

logger = logging.getLogger(__name__)

_FORBIDDEN_KEY_CHARS = frozenset("/\\#?%")


# Table Storage keys are at most 1 KiB of UTF-16 (512 code units; Azurite enforces exactly that). An
# escaped key longer than that is cut to _KEY_PREFIX_UNITS and ends with "%~" + a SHA-256 of the
# whole value: "%~" never occurs in an escaped key ('%' is always followed by two hex digits), so a
# shortened key never equals a plain one, and the digest keeps distinct values apart.
MAX_KEY_UNITS = 512
_KEY_PREFIX_UNITS = 400


def escape_key(value: str) -> str:
    """A Table Storage key for any string: '/', '\\', '#', '?', '%' and control characters are
    percent-encoded (Table Storage forbids them; guest UPNs contain '#EXT#'). Reversible while it fits
    the key limit; a longer one is shortened with a digest (see MAX_KEY_UNITS), so every value has a
    key that Table Storage accepts."""
    out: list[str] = []
    for ch in value:
        code = ord(ch)
        if ch in _FORBIDDEN_KEY_CHARS or code < 0x20 or 0x7F <= code <= 0x9F:
            out.append(f"%{code:02X}")
        else:
            out.append(ch)
    escaped = "".join(out)
    if len(escaped) <= MAX_KEY_UNITS // 2 or _utf16_units(escaped) <= MAX_KEY_UNITS:
        return escaped
    prefix: list[str] = []
    units = 0
    for piece in out:
        units += _utf16_units(piece)
        if units > _KEY_PREFIX_UNITS:
            break
        prefix.append(piece)
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:40]
    return "".join(prefix) + "%~" + digest


def _utf16_units(text: str) -> int:
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def unescape_key(value: str) -> str:
    from urllib.parse import unquote

    return unquote(value, encoding="latin-1")


def recipient_key(recipient: str) -> str:
    """The normalised name of a recipient: UPNs and object ids are case-insensitive."""
    return recipient.strip().lower()


@dataclass(frozen=True)
class ConversationReference:
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
        stamped = replace(entry, updated_at=entry.updated_at or _now())
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


class TableBacked:
    """Base of the app's Table Storage stores: their TableClients (the first is ``_table``), each
    table created on first use."""

    def __init__(self, table: TableClient, *more: TableClient) -> None:
        self._table = table
        self._all_tables = (table, *more)
        self._ready = False
        self._ready_lock = asyncio.Lock()

    async def _ensure_table(self) -> None:
        if self._ready:
            return
        async with self._ready_lock:
            if not self._ready:
                for table in self._all_tables:
                    await create_table_if_missing(table)
                self._ready = True


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
        stamped = replace(entry, updated_at=entry.updated_at or _now())
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

    async def close(self) -> None:
        await self._table.close()


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
        stamped = replace(entry, updated_at=entry.updated_at or _now())
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


# --- Table Storage plumbing shared by every table of the app -----------------------------------


class translate_storage_errors:
    """Turn azure-core transport/service errors into our tree (storage down = transient)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> Literal[False]:
        if exc is None:
            return False
        from azure.core.exceptions import (
            ClientAuthenticationError,
            HttpResponseError,
            ResourceExistsError,
            ResourceModifiedError,
            ResourceNotFoundError,
            ServiceRequestError,
            ServiceResponseError,
        )

        if isinstance(exc, ResourceNotFoundError | ResourceExistsError | ResourceModifiedError):
            return False  # expected answers the caller handles
        if isinstance(exc, ClientAuthenticationError):
            raise ConfigurationError(
                "Table Storage rejected our credentials: check AzureWebJobsStorage / TableStorageConnection "
                "or the identity's Storage Table Data Contributor role.",
                code="storage_unauthorized",
                target="AzureWebJobsStorage",
            ) from exc
        if isinstance(exc, ServiceRequestError | ServiceResponseError):
            raise TransientError("Table Storage could not be reached.", target="storage", retry_after=5.0) from exc
        if isinstance(exc, HttpResponseError):
            status = exc.status_code or 0
            if status in (403,):
                raise ConfigurationError(
                    "Table Storage refused the request: check the storage role assignment.",
                    code="storage_unauthorized",
                    target="AzureWebJobsStorage",
                ) from exc
            raise TransientError(f"Table Storage answered {status}.", target="storage", retry_after=5.0) from exc
        return False


async def create_table_if_missing(table: TableClient) -> None:
    from azure.core.exceptions import ResourceExistsError

    try:
        with translate_storage_errors():
            await table.create_table()
    except ResourceExistsError:
        pass


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
