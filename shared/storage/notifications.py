"""The notification and delivery store: what was sent to whom, in Table Storage.

Two tables:

- ``{TableNamePrefix}notifications``: one row per notification that names several recipients, or
  one keyed by an Idempotency-Key / message id (PartitionKey = escaped id, RowKey = ``notification``):
  tenant, recipient count, the content (so a queued per-recipient send carries only ids), the request
  fingerprint, the source (http or queue), the Entra ID client that created it (Owner) and when the
  whole notification was recalled (RecalledAt); a key reused for another request, tenant or source is
  refused, so one id is one notification.
- ``{TableNamePrefix}deliveries``: one row per recipient of every notification (PartitionKey =
  escaped notification id, RowKey = escaped lower-cased recipient): state (pending, sent, failed,
  recalled), conversation id, service URL, activity id, error code and message, times.

Rows are inserted if absent and rewritten under an ETag match, so concurrent attempts never move one back.

``NotificationStore`` is the protocol the use cases call; ``TableNotificationStore`` (the app's) and
``MemoryNotificationStore`` (tests) implement it and pass one behaviour suite.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from shared.errors import TransientError
from shared.message_content import MessageContent
from shared.response_models import DeliveryCounts
from shared.storage.notification_rows import (
    HEADER_ROW,
    Delivery,
    Header,
    content_json,
    content_of,
    content_properties,
    decode_token,
    delivery_of,
    encode_token,
    entity_of,
    joined_content,
    recipient_row,
    utc_now,
)
from shared.storage.tables import TableBacked, escape_key, translate_storage_errors, update_if_unchanged

if TYPE_CHECKING:
    from azure.data.tables.aio import TableClient

# The records are the store's vocabulary: callers import them from here.
__all__ = [
    "Delivery",
    "Header",
    "MemoryNotificationStore",
    "NotificationStore",
    "TableNotificationStore",
    "note",
    "recipient_row",
    "settle",
]

_TRANSACTION = 100  # Table Storage's limit of operations per batch


class NotificationStore(Protocol):
    """Notification headers and per-recipient delivery rows (see the module docstring)."""

    async def create_header(self, header: Header) -> Header: ...

    async def get_header(self, notification_id: str) -> Header | None: ...

    async def mark_recalled(self, notification_id: str) -> None: ...

    async def set_content(self, notification_id: str, content: MessageContent) -> None: ...

    async def add_pending(self, notification_id: str, tenant_id: str, recipients: list[str]) -> list[Delivery]: ...

    async def get(self, notification_id: str, recipient: str) -> Delivery | None: ...

    async def record(self, delivery: Delivery, *, if_match: str | None = None) -> bool: ...

    async def create(self, delivery: Delivery) -> bool: ...

    async def settle(self, delivery: Delivery, *, likely_new: bool = False) -> Delivery: ...

    async def all(self, notification_id: str) -> list[Delivery]: ...

    async def counts(self, notification_id: str) -> DeliveryCounts: ...

    async def page(self, notification_id: str, top: int, token: str | None) -> tuple[list[Delivery], str | None]: ...

    async def close(self) -> None: ...


class TableNotificationStore(TableBacked):
    """Notification headers and per-recipient delivery rows in Table Storage (module docstring)."""

    def __init__(self, headers: TableClient, deliveries: TableClient) -> None:
        super().__init__(headers, deliveries)
        self._headers = headers
        self._deliveries = deliveries

    async def create_header(self, header: Header) -> Header:
        """Insert the header, or return the one already there (a retried request)."""
        from azure.core.exceptions import ResourceExistsError

        await self._ensure_table()
        entity = {
            "PartitionKey": escape_key(header.notification_id),
            "RowKey": HEADER_ROW,
            "NotificationId": header.notification_id,
            "TenantId": header.tenant_id,
            "Total": header.total,
            "Fingerprint": header.fingerprint,
            "Source": header.source,
            "Owner": header.owner,
            **content_properties(content_json(header.content)),
            "CreatedAt": utc_now(),
        }
        try:
            with translate_storage_errors():
                await self._headers.create_entity(entity)
            return header
        except ResourceExistsError:
            existing = await self.get_header(header.notification_id)
            if existing is None:  # deleted in between: vanishingly rare, let the caller retry
                raise TransientError(
                    "The notification record is contended.", target="storage", retry_after=1.0
                ) from None
            return existing

    async def get_header(self, notification_id: str) -> Header | None:
        from azure.core.exceptions import ResourceNotFoundError

        await self._ensure_table()
        try:
            with translate_storage_errors():
                entity = await self._headers.get_entity(escape_key(notification_id), HEADER_ROW)
        except ResourceNotFoundError:
            return None
        return Header(
            notification_id=str(entity["NotificationId"]),
            tenant_id=str(entity["TenantId"]),
            total=int(entity["Total"]),
            fingerprint=str(entity["Fingerprint"]),
            content=content_of(joined_content(entity)),
            source=str(entity.get("Source") or ""),
            recalled=bool(entity.get("RecalledAt")),
            owner=str(entity.get("Owner") or ""),
        )

    async def mark_recalled(self, notification_id: str) -> None:
        """Record on the header that the whole notification was recalled (queued items check it)."""
        from azure.core.exceptions import ResourceNotFoundError
        from azure.data.tables import UpdateMode

        try:
            with translate_storage_errors():
                await self._headers.update_entity(
                    {"PartitionKey": escape_key(notification_id), "RowKey": HEADER_ROW, "RecalledAt": utc_now()},
                    mode=UpdateMode.MERGE,
                )
        except ResourceNotFoundError:
            pass  # no header: a single send's rows say it all

    async def set_content(self, notification_id: str, content: MessageContent) -> None:
        """Later sends of a notification still fanning out use the updated content."""
        from azure.core.exceptions import ResourceNotFoundError
        from azure.data.tables import UpdateMode

        properties = content_properties(content_json(content))
        try:
            with translate_storage_errors():
                await self._headers.update_entity(
                    {"PartitionKey": escape_key(notification_id), "RowKey": HEADER_ROW, **properties},
                    mode=UpdateMode.MERGE,
                )
        except ResourceNotFoundError:
            pass  # a single-recipient notification has no header

    async def add_pending(self, notification_id: str, tenant_id: str, recipients: list[str]) -> list[Delivery]:
        """Make sure every recipient has a row (new ones pending); returns all rows, in request order."""
        from azure.core.exceptions import ResourceExistsError
        from azure.data.tables import TableTransactionError

        await self._ensure_table()
        existing = {recipient_row(d.recipient): d for d in await self.all(notification_id)}
        missing = [r for r in recipients if recipient_row(r) not in existing]
        partition = escape_key(notification_id)
        now = utc_now()
        with translate_storage_errors():
            for start in range(0, len(missing), _TRANSACTION):
                chunk = missing[start : start + _TRANSACTION]
                operations: list[Any] = [
                    (
                        "create",
                        {
                            "PartitionKey": partition,
                            "RowKey": recipient_row(r),
                            "NotificationId": notification_id,
                            "Recipient": r,
                            "TenantId": tenant_id,
                            "State": "pending",
                            "CreatedAt": now,
                            "UpdatedAt": now,
                        },
                    )
                    for r in chunk
                ]
                try:
                    await self._deliveries.submit_transaction(operations)
                except TableTransactionError:
                    # A concurrent repeat of the request inserted some of them (and they may have been
                    # sent since): insert the others one by one, never overwriting a row.
                    for _kind, entity in operations:
                        with contextlib.suppress(ResourceExistsError):
                            await self._deliveries.create_entity(entity)
        for r in missing:
            existing[recipient_row(r)] = Delivery(notification_id, r, tenant_id, "pending")
        return [existing[recipient_row(r)] for r in recipients]

    async def get(self, notification_id: str, recipient: str) -> Delivery | None:
        from azure.core.exceptions import ResourceNotFoundError

        await self._ensure_table()
        try:
            with translate_storage_errors():
                entity = await self._deliveries.get_entity(escape_key(notification_id), recipient_row(recipient))
        except ResourceNotFoundError:
            return None
        return delivery_of(entity)

    async def record(self, delivery: Delivery, *, if_match: str | None = None) -> bool:
        """Write a recipient's row. With ``if_match`` the write happens only if the row is unchanged
        since it was read (False when it changed: another attempt or a recall got there first)."""
        from azure.data.tables import UpdateMode

        await self._ensure_table()
        entity = entity_of(delivery)
        if if_match is not None:
            return await update_if_unchanged(self._deliveries, entity, if_match, merge=True) is not None
        with translate_storage_errors():
            await self._deliveries.upsert_entity(entity, mode=UpdateMode.MERGE)
        return True

    async def create(self, delivery: Delivery) -> bool:
        """Insert a recipient's row if it has none (False when another attempt wrote one first)."""
        from azure.core.exceptions import ResourceExistsError

        await self._ensure_table()
        try:
            with translate_storage_errors():
                await self._deliveries.create_entity(entity_of(delivery))
        except ResourceExistsError:
            return False
        return True

    async def settle(self, delivery: Delivery, *, likely_new: bool = False) -> Delivery:
        return await settle(self, delivery, likely_new=likely_new)

    async def all(self, notification_id: str) -> list[Delivery]:
        await self._ensure_table()
        rows: list[Delivery] = []
        with translate_storage_errors():
            async for entity in self._deliveries.query_entities(
                "PartitionKey eq @pk", parameters={"pk": escape_key(notification_id)}
            ):
                rows.append(delivery_of(entity))
        return rows

    async def counts(self, notification_id: str) -> DeliveryCounts:
        await self._ensure_table()
        counts: dict[str, int] = {}
        with translate_storage_errors():
            async for entity in self._deliveries.query_entities(
                "PartitionKey eq @pk", parameters={"pk": escape_key(notification_id)}, select=["State"]
            ):
                state = str(entity["State"])
                counts[state] = counts.get(state, 0) + 1
        return DeliveryCounts(**counts)

    async def page(self, notification_id: str, top: int, token: str | None) -> tuple[list[Delivery], str | None]:
        await self._ensure_table()
        continuation = decode_token(token) if token else None
        rows: list[Delivery] = []
        next_token: str | None = None
        with translate_storage_errors():
            pages = self._deliveries.query_entities(
                "PartitionKey eq @pk", parameters={"pk": escape_key(notification_id)}, results_per_page=top
            ).by_page(continuation_token=continuation)
            async for page in pages:
                async for entity in page:
                    rows.append(delivery_of(entity))
                raw = getattr(pages, "continuation_token", None)
                next_token = encode_token(raw) if raw else None
                break
        return rows, next_token


async def note(store: NotificationStore, row: Delivery) -> bool:
    """Write a row read as ``row.etag`` only if unchanged since (insert-if-absent when it had none)."""
    if row.etag is None:
        return await store.create(row)
    return await store.record(row, if_match=row.etag)


async def settle(store: NotificationStore, delivery: Delivery, *, likely_new: bool = False) -> Delivery:
    """Write ``delivery`` over a row that is absent (insert-if-absent) or still pending (ETag match),
    never over one that became final meanwhile (sent, failed, recalled by another attempt or a
    recall). Returns the row as it is afterwards. ``likely_new`` (a single send's own row) tries
    the insert first: one storage request instead of a read and a write in the common case."""
    if likely_new and await store.create(delivery):
        return delivery
    for _ in range(5):
        current = await store.get(delivery.notification_id, delivery.recipient)
        if current is None:
            if await store.create(delivery):
                return delivery
        elif current.state != "pending":
            return current
        elif await store.record(delivery, if_match=current.etag):
            return delivery
    raise TransientError("The delivery record is contended; try again.", target="storage", retry_after=1.0)


class MemoryNotificationStore:
    """The same headers and rows in process memory, with the same conditions: inserts only if absent,
    conditional writes only against the ETag read, rows listed in key order (tests)."""

    def __init__(self) -> None:
        self._headers: dict[str, tuple[Header, str]] = {}  # the header and its content as stored (JSON)
        self._rows: dict[str, dict[str, Delivery]] = {}  # notification id -> row key -> row (with its etag)

    async def create_header(self, header: Header) -> Header:
        if header.notification_id not in self._headers:
            stored = msgspec.structs.replace(header, recalled=False)
            self._headers[header.notification_id] = (
                stored,
                content_json(header.content),
            )
            return header
        existing = await self.get_header(header.notification_id)
        assert existing is not None
        return existing

    async def get_header(self, notification_id: str) -> Header | None:
        found = self._headers.get(notification_id)
        if found is None:
            return None
        header, content = found
        return msgspec.structs.replace(header, content=content_of(content))

    async def mark_recalled(self, notification_id: str) -> None:
        if notification_id in self._headers:
            header, content = self._headers[notification_id]
            self._headers[notification_id] = (msgspec.structs.replace(header, recalled=True), content)

    async def set_content(self, notification_id: str, content: MessageContent) -> None:
        if notification_id in self._headers:
            header, _ = self._headers[notification_id]
            self._headers[notification_id] = (header, content_json(content))

    async def add_pending(self, notification_id: str, tenant_id: str, recipients: list[str]) -> list[Delivery]:
        existing = {recipient_row(d.recipient): d for d in await self.all(notification_id)}
        for recipient in recipients:
            if recipient_row(recipient) not in existing:
                fresh = Delivery(notification_id, recipient, tenant_id, "pending")
                await self.create(fresh)
                existing[recipient_row(recipient)] = fresh
        return [existing[recipient_row(r)] for r in recipients]

    async def get(self, notification_id: str, recipient: str) -> Delivery | None:
        return self._rows.get(notification_id, {}).get(recipient_row(recipient))

    async def record(self, delivery: Delivery, *, if_match: str | None = None) -> bool:
        rows = self._rows.setdefault(delivery.notification_id, {})
        key = recipient_row(delivery.recipient)
        if if_match is not None and (key not in rows or rows[key].etag != if_match):
            return False
        rows[key] = _stored(delivery)
        return True

    async def create(self, delivery: Delivery) -> bool:
        rows = self._rows.setdefault(delivery.notification_id, {})
        key = recipient_row(delivery.recipient)
        if key in rows:
            return False
        rows[key] = _stored(delivery)
        return True

    async def settle(self, delivery: Delivery, *, likely_new: bool = False) -> Delivery:
        return await settle(self, delivery, likely_new=likely_new)

    async def all(self, notification_id: str) -> list[Delivery]:
        return _in_key_order(self._rows.get(notification_id, {}).items())

    async def counts(self, notification_id: str) -> DeliveryCounts:
        counts: dict[str, int] = {}
        for row in self._rows.get(notification_id, {}).values():
            counts[row.state] = counts.get(row.state, 0) + 1
        return DeliveryCounts(**counts)

    async def page(self, notification_id: str, top: int, token: str | None) -> tuple[list[Delivery], str | None]:
        start = str(decode_token(token).get("RowKey", "")) if token else ""
        keys = sorted(k for k in self._rows.get(notification_id, {}) if k >= start)
        rows = [self._rows[notification_id][k] for k in keys[:top]]
        more = keys[top:]
        next_token = encode_token({"PartitionKey": escape_key(notification_id), "RowKey": more[0]}) if more else None
        return rows, next_token

    async def close(self) -> None:
        return None


def _stored(delivery: Delivery) -> Delivery:
    """A row as Table Storage gives it back: empty texts and a 0 status read as None, a fresh ETag."""
    return delivery_of(entity_of(delivery), etag=str(uuid.uuid4()))


def _in_key_order(rows: Iterable[tuple[str, Delivery]]) -> list[Delivery]:
    return [row for _key, row in sorted(rows, key=lambda item: item[0])]
