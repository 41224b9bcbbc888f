"""Exactly-once sends: idempotency records in Table Storage (table ``{TableNamePrefix}requests``).

A send with an idempotency key (HTTP ``Idempotency-Key``, a Service Bus message id) first claims the
key with an insert-if-absent *in-flight marker* carrying a lease, then sends, then replaces the marker
with the result under an ETag match. Both writes are conditional, so the guarantee holds across
scaled-out instances, not only inside one process:

- the key is new: this attempt owns it and sends;
- the key holds a result: the result is returned again, nothing is sent;
- the key is in flight and its lease is live: another attempt is sending (``InFlight``);
- the key is in flight and its lease ran out (the instance died mid-send): the marker is taken over
  with an ETag-matched replace (only one contender wins) and this attempt sends.

Transient failures release the key (ETag-matched delete) so a retry can send; whether permanent
failures are recorded is the caller's choice (HTTP records them; the queue keeps them in the failures
table instead, where an operator can replay them).

PartitionKey = tenant id (lower case), RowKey = ``{source}|{key}`` (escaped), so an HTTP key and a
Service Bus message id never collide. Rows are small; nothing expires them yet (an operator purge is
future work).

``IdempotencyStore`` is the protocol the use cases call; ``TableIdempotencyStore`` (the app's) and
``MemoryIdempotencyStore`` (tests) implement it and pass one behaviour suite.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import uuid
from typing import TYPE_CHECKING, Any, Literal, Protocol

import msgspec

from shared.errors import InvalidRequestError, TransientError
from shared.storage.tables import TableBacked, escape_key, translate_storage_errors, update_if_unchanged

if TYPE_CHECKING:
    from azure.data.tables.aio import TableClient

logger = logging.getLogger(__name__)

# "delivery": one recipient of a notification, keyed by its deterministic delivery id.
Source = Literal["http", "queue", "delivery"]
# host.json's functionTimeout (5 min) plus a minute: the host has killed an attempt running past it.
# Kept close to the Service Bus lock duration (5 min) so a redelivery after an instance died does
# not spend the queue's delivery attempts waiting for a lease much longer than the lock.
DEFAULT_LEASE_SECONDS = 360.0
MAX_KEY_LENGTH = 200
_IN_FLIGHT = "in_flight"
_DONE = "done"


class Claimed(msgspec.Struct, frozen=True):
    """This attempt owns the key and must send, then ``complete`` or ``release``."""

    partition: str
    row: str
    etag: str


class Recorded(msgspec.Struct, frozen=True):
    """The key already holds a result: return it, do not send."""

    status: int
    body: dict[str, Any]


class InFlight(msgspec.Struct, frozen=True):
    """Another attempt holds a live lease on the key."""

    retry_after: float


Claim = Claimed | Recorded | InFlight


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def check_key(key: str, target: str = "Idempotency-Key") -> str:
    key = key.strip()
    if not key or len(key) > MAX_KEY_LENGTH or any(ord(c) < 0x20 or ord(c) == 0x7F for c in key):
        raise InvalidRequestError(
            f"{target} must be 1-{MAX_KEY_LENGTH} printable characters.", code="invalid_idempotency_key", target=target
        )
    return key


def _key_reused(source: Source) -> InvalidRequestError:
    return InvalidRequestError(
        "This idempotency key was already used for a different request: use a new key for a new message.",
        code="idempotency_key_reused",
        target="Idempotency-Key" if source == "http" else "messageId",
        http_status=422,
    )


class IdempotencyStore(Protocol):
    """Claim a key before a send, then ``complete`` (record the result) or ``release`` it."""

    async def claim(self, source: Source, tenant_id: str, key: str, fingerprint: str) -> Claim: ...

    async def wait(self, source: Source, tenant_id: str, key: str, within: float) -> Recorded | None: ...

    async def complete(self, claim: Claimed, status: int, body: dict[str, Any], fingerprint: str) -> None: ...

    async def release(self, claim: Claimed) -> None: ...

    async def close(self) -> None: ...


class TableIdempotencyStore(TableBacked):
    def __init__(self, table: TableClient, *, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> None:
        super().__init__(table)
        self._lease = lease_seconds

    @staticmethod
    def row_key(source: Source, key: str) -> str:
        return escape_key(f"{source}|{key}")

    async def claim(self, source: Source, tenant_id: str, key: str, fingerprint: str) -> Claim:
        """Claim ``key`` for one send of the request whose fingerprint is given."""
        from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

        await self._ensure_table()
        partition, row = tenant_id.lower(), self.row_key(source, key)
        for _ in range(5):
            marker = {
                "PartitionKey": partition,
                "RowKey": row,
                "State": _IN_FLIGHT,
                "Fingerprint": fingerprint,
                "Attempt": str(uuid.uuid4()),
                "LeaseUntil": _now() + datetime.timedelta(seconds=self._lease),
                "ClaimedAt": _now(),
            }
            try:
                with translate_storage_errors():
                    meta = await self._table.create_entity(marker)
                return Claimed(partition, row, str(meta["etag"]))
            except ResourceExistsError:
                pass
            try:
                with translate_storage_errors():
                    entity = await self._table.get_entity(partition, row)
            except ResourceNotFoundError:
                continue  # released between our insert and read: try to claim again
            if entity.get("Fingerprint") != fingerprint:
                raise _key_reused(source)
            if entity.get("State") == _DONE:
                return Recorded(int(entity["Status"]), json.loads(str(entity["Response"])))
            lease_until = entity.get("LeaseUntil")
            remaining = (lease_until - _now()).total_seconds() if isinstance(lease_until, datetime.datetime) else 0.0
            if remaining > 0:
                return InFlight(retry_after=remaining)
            # The attempt holding the marker outlived its lease: it died. Take the marker over; the
            # ETag match lets exactly one contender win.
            meta = await update_if_unchanged(self._table, marker, entity.metadata["etag"])
            if meta is None:
                continue
            logger.warning("took over a stale in-flight marker (lease ended %.0fs ago)", -remaining)
            return Claimed(partition, row, str(meta["etag"]))
        raise TransientError("The idempotency record is contended; try again.", target="storage", retry_after=2.0)

    async def wait(self, source: Source, tenant_id: str, key: str, within: float) -> Recorded | None:
        """Poll a key held by another attempt until it holds a result, for at most ``within`` seconds."""
        from azure.core.exceptions import ResourceNotFoundError

        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        delay = 0.05
        partition, row = tenant_id.lower(), self.row_key(source, key)
        while loop.time() < deadline:
            await asyncio.sleep(min(delay, max(0.0, deadline - loop.time())))
            delay = min(delay * 2, 0.5)
            try:
                with translate_storage_errors():
                    entity = await self._table.get_entity(partition, row)
            except ResourceNotFoundError:
                return None  # released (transient failure): the caller may claim it
            if entity.get("State") == _DONE:
                return Recorded(int(entity["Status"]), json.loads(str(entity["Response"])))
        return None

    async def complete(self, claim: Claimed, status: int, body: dict[str, Any], fingerprint: str) -> None:
        """Replace our marker with the result (ETag match: a marker taken over is not ours to write)."""

        record = {
            "PartitionKey": claim.partition,
            "RowKey": claim.row,
            "State": _DONE,
            "Fingerprint": fingerprint,
            "Status": status,
            "Response": json.dumps(body, separators=(",", ":")),
            "CompletedAt": _now(),
        }
        if await update_if_unchanged(self._table, record, claim.etag) is None:
            logger.warning("the in-flight marker was taken over before this attempt finished; result not recorded")

    async def release(self, claim: Claimed) -> None:
        """Remove our marker so a retry can send (ETag match: never remove another attempt's marker)."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError

        try:
            with translate_storage_errors():
                await self._table.delete_entity(
                    claim.partition, claim.row, etag=claim.etag, match_condition=MatchConditions.IfNotModified
                )
        except ResourceModifiedError:
            logger.warning("the in-flight marker was taken over before this attempt released it")


class _Row(msgspec.Struct):
    etag: str
    fingerprint: str
    lease_until: datetime.datetime | None = None  # in flight
    result: Recorded | None = None  # done


class MemoryIdempotencyStore:
    """The same records in process memory, with the same conditions: insert-if-absent claims, takeovers,
    completions and releases only against the ETag they read (tests)."""

    def __init__(self, *, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> None:
        self._lease = lease_seconds
        self._rows: dict[tuple[str, str], _Row] = {}

    def instance(self, *, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> MemoryIdempotencyStore:
        """Another instance of the app over the same records (as two instances share one table)."""
        other = MemoryIdempotencyStore(lease_seconds=lease_seconds)
        other._rows = self._rows
        return other

    async def claim(self, source: Source, tenant_id: str, key: str, fingerprint: str) -> Claim:
        partition, row = tenant_id.lower(), TableIdempotencyStore.row_key(source, key)
        current = self._rows.get((partition, row))
        if current is not None:
            if current.fingerprint != fingerprint:
                raise _key_reused(source)
            if current.result is not None:
                return current.result
            remaining = (current.lease_until - _now()).total_seconds() if current.lease_until else 0.0
            if remaining > 0:
                return InFlight(retry_after=remaining)
            logger.warning("took over a stale in-flight marker (lease ended %.0fs ago)", -remaining)
        marker = _Row(str(uuid.uuid4()), fingerprint, lease_until=_now() + datetime.timedelta(seconds=self._lease))
        self._rows[(partition, row)] = marker
        return Claimed(partition, row, marker.etag)

    async def wait(self, source: Source, tenant_id: str, key: str, within: float) -> Recorded | None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        address = (tenant_id.lower(), TableIdempotencyStore.row_key(source, key))
        while loop.time() < deadline:
            await asyncio.sleep(min(0.05, max(0.0, deadline - loop.time())))
            current = self._rows.get(address)
            if current is None:
                return None
            if current.result is not None:
                return current.result
        return None

    async def complete(self, claim: Claimed, status: int, body: dict[str, Any], fingerprint: str) -> None:
        current = self._rows.get((claim.partition, claim.row))
        if current is None or current.etag != claim.etag:
            logger.warning("the in-flight marker was taken over before this attempt finished; result not recorded")
            return
        # Stored as JSON, as the table stores it: the caller's dict is not shared with later readers.
        recorded = Recorded(status, json.loads(json.dumps(body, separators=(",", ":"))))
        self._rows[(claim.partition, claim.row)] = _Row(str(uuid.uuid4()), fingerprint, result=recorded)

    async def release(self, claim: Claimed) -> None:
        current = self._rows.get((claim.partition, claim.row))
        if current is None:
            return
        if current.etag != claim.etag:
            logger.warning("the in-flight marker was taken over before this attempt released it")
            return
        del self._rows[(claim.partition, claim.row)]

    async def close(self) -> None:
        return None
