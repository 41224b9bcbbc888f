"""The failure store: Service Bus messages that failed permanently, kept in Table Storage.

A queued request that cannot succeed without someone changing something (the caller's fault: bad
body, unknown user, a user who blocked the bot; or ours: configuration, permissions) is not retried
and not lost: it is written to table ``{TableNamePrefix}failures`` with its reason code, message,
the original body, delivery count, message id and times, and only then is the message completed.

PartitionKey = ``queue``, RowKey = the escaped message id. The body is kept byte for byte as binary
properties of up to 63,000 bytes each (Table Storage caps a binary property at "64 KiB" and an entity's
property data at 1 MiB: https://learn.microsoft.com/rest/api/storageservices/understanding-the-table-service-data-model;
the real service answers PropertyValueTooLarge for 65,536 bytes and accepts 64,000:
https://github.com/Azure/Azurite/issues/2510);
a body larger than ``MAX_KEPT_BODY`` is cut and flagged ``body_truncated`` (and logged).

``FailureStore`` is the protocol the use cases call; ``TableFailureStore`` (the app's) and
``MemoryFailureStore`` (tests) implement it and pass one behaviour suite.
"""

from __future__ import annotations

import datetime
import logging
from typing import Any, Protocol

import msgspec

from shared.storage.tables import TableBacked, escape_key, translate_storage_errors

logger = logging.getLogger(__name__)

PARTITION = "queue"
_CHUNK = 63_000
# 11 chunks (693,000 bytes) keep the whole entity under 1 MiB even where the limit is measured on the JSON
# request, in which binary travels as base64 (4/3 larger): Azurite answers 400 EntityTooLarge for 14
# chunks (about 1.2 MB of JSON), and a record that cannot be written would leave the message to be
# redelivered instead of kept. Service Bus Standard caps a message at 256 KiB, so only Premium
# namespaces send bodies this large. Records written earlier with more chunks are still read whole.
_MAX_CHUNKS = 11
MAX_KEPT_BODY = _CHUNK * _MAX_CHUNKS


class FailureRecord(msgspec.Struct, frozen=True):
    message_id: str
    code: str
    message: str
    target: str | None
    http_status: int
    body: bytes
    body_truncated: bool
    delivery_count: int | None
    enqueued_time: datetime.datetime | None
    first_failed_at: datetime.datetime
    last_failed_at: datetime.datetime
    failures: int = 1
    replays: int = 0
    correlation_id: str | None = None

    def body_text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class FailureStore(Protocol):
    """Permanent failures of queue messages (see the module docstring)."""

    async def keep(
        self,
        *,
        message_id: str,
        error: dict[str, Any],
        http_status: int,
        body: bytes,
        delivery_count: int | None,
        enqueued_time: datetime.datetime | None,
        correlation_id: str | None,
    ) -> FailureRecord:
        """Record (or update) the failure of one message. Raises when the record cannot be written, so
        the trigger lets the message be redelivered rather than losing it."""
        ...

    async def get(self, message_id: str) -> FailureRecord | None: ...

    async def list(self, limit: int | None = None) -> list[FailureRecord]:
        """The oldest failures first."""
        ...

    async def delete(self, message_id: str) -> bool:
        """False when there was no such record."""
        ...

    async def note_replay_failed(
        self, record: FailureRecord, error: dict[str, Any], http_status: int
    ) -> FailureRecord: ...

    async def close(self) -> None: ...


class _FailureRecords:
    """What both stores do on top of reading and writing one record."""

    async def get(self, message_id: str) -> FailureRecord | None:
        raise NotImplementedError

    async def _put(self, record: FailureRecord) -> None:
        raise NotImplementedError

    async def keep(
        self,
        *,
        message_id: str,
        error: dict[str, Any],
        http_status: int,
        body: bytes,
        delivery_count: int | None,
        enqueued_time: datetime.datetime | None,
        correlation_id: str | None,
    ) -> FailureRecord:
        now = _now()
        previous = await self.get(message_id)
        truncated = len(body) > MAX_KEPT_BODY
        if truncated:
            logger.error("message body of %d bytes is larger than a failure record holds; keeping the start", len(body))
        record = FailureRecord(
            message_id=message_id,
            code=str(error.get("code", "notify_error")),
            message=str(error.get("message", "")),
            target=str(error["target"]) if error.get("target") else None,
            http_status=http_status,
            body=body[:MAX_KEPT_BODY],
            body_truncated=truncated,
            delivery_count=delivery_count,
            enqueued_time=enqueued_time,
            first_failed_at=previous.first_failed_at if previous else now,
            last_failed_at=now,
            failures=previous.failures + 1 if previous else 1,
            replays=previous.replays if previous else 0,
            correlation_id=correlation_id,
        )
        await self._put(record)
        return record

    async def note_replay_failed(self, record: FailureRecord, error: dict[str, Any], http_status: int) -> FailureRecord:
        updated = msgspec.structs.replace(
            record,
            code=str(error.get("code", record.code)),
            message=str(error.get("message", record.message)),
            target=str(error["target"]) if error.get("target") else None,
            http_status=http_status,
            last_failed_at=_now(),
            replays=record.replays + 1,
        )
        await self._put(updated)
        return updated


class TableFailureStore(_FailureRecords, TableBacked):
    """Permanent failures of queue messages in Table Storage (see the module docstring for the row layout)."""

    async def _put(self, record: FailureRecord) -> None:
        from azure.data.tables import UpdateMode

        await self._ensure_table()
        with translate_storage_errors():
            await self._table.upsert_entity(_to_entity(record), mode=UpdateMode.REPLACE)

    async def get(self, message_id: str) -> FailureRecord | None:
        from azure.core.exceptions import ResourceNotFoundError

        await self._ensure_table()
        try:
            with translate_storage_errors():
                entity = await self._table.get_entity(PARTITION, escape_key(message_id))
        except ResourceNotFoundError:
            return None
        return _from_entity(entity)

    async def list(self, limit: int | None = None) -> list[FailureRecord]:
        await self._ensure_table()
        records: list[FailureRecord] = []
        with translate_storage_errors():
            async for entity in self._table.query_entities("PartitionKey eq @pk", parameters={"pk": PARTITION}):
                records.append(_from_entity(entity))
        return _oldest_first(records, limit)

    async def delete(self, message_id: str) -> bool:
        if await self.get(message_id) is None:
            return False
        with translate_storage_errors():
            await self._table.delete_entity(PARTITION, escape_key(message_id))
        return True


class MemoryFailureStore(_FailureRecords):
    """The same records in process memory (tests)."""

    def __init__(self) -> None:
        self._records: dict[str, FailureRecord] = {}

    async def _put(self, record: FailureRecord) -> None:
        self._records[record.message_id] = record

    async def get(self, message_id: str) -> FailureRecord | None:
        return self._records.get(message_id)

    async def list(self, limit: int | None = None) -> list[FailureRecord]:
        return _oldest_first(list(self._records.values()), limit)

    async def delete(self, message_id: str) -> bool:
        return self._records.pop(message_id, None) is not None

    async def close(self) -> None:
        return None


def _oldest_first(records: list[FailureRecord], limit: int | None) -> list[FailureRecord]:
    records.sort(key=lambda r: r.first_failed_at)
    return records if limit is None else records[:limit]


def _to_entity(record: FailureRecord) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "PartitionKey": PARTITION,
        "RowKey": escape_key(record.message_id),
        "MessageId": record.message_id,
        "Code": record.code,
        "Message": record.message,
        "HttpStatus": record.http_status,
        "BodyLength": len(record.body),
        "BodyTruncated": record.body_truncated,
        "FirstFailedAt": record.first_failed_at,
        "LastFailedAt": record.last_failed_at,
        "Failures": record.failures,
        "Replays": record.replays,
    }
    for index in range(0, max(1, len(record.body)), _CHUNK):
        entity[f"Body{index // _CHUNK}"] = record.body[index : index + _CHUNK]
    optional: dict[str, Any] = {
        "Target": record.target,
        "DeliveryCount": record.delivery_count,
        "EnqueuedTime": record.enqueued_time,
        "CorrelationId": record.correlation_id,
    }
    entity.update({k: v for k, v in optional.items() if v is not None})
    return entity


def _from_entity(entity: Any) -> FailureRecord:
    chunks: list[bytes] = []
    for index in range(255):  # Table Storage's property limit bounds the chunks of any record
        chunk = entity.get(f"Body{index}")
        if chunk is None:
            break
        chunks.append(bytes(chunk))
    body = b"".join(chunks)[: int(entity.get("BodyLength", 0))]
    enqueued = entity.get("EnqueuedTime")
    delivery = entity.get("DeliveryCount")
    return FailureRecord(
        message_id=str(entity["MessageId"]),
        code=str(entity["Code"]),
        message=str(entity.get("Message", "")),
        target=entity.get("Target"),
        http_status=int(entity.get("HttpStatus", 400)),
        body=body,
        body_truncated=bool(entity.get("BodyTruncated", False)),
        delivery_count=int(delivery) if delivery is not None else None,
        enqueued_time=enqueued if isinstance(enqueued, datetime.datetime) else None,
        first_failed_at=entity["FirstFailedAt"],
        last_failed_at=entity["LastFailedAt"],
        failures=int(entity.get("Failures", 1)),
        replays=int(entity.get("Replays", 0)),
        correlation_id=entity.get("CorrelationId"),
    )


# --- the operator's functions --------------------------------------------------------------------
