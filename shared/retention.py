"""Personal data retention: the daily purge, and erasing one person's rows.

UPNs and message bodies are in the requests (idempotency results), notifications (content),
deliveries (recipients) and failures (kept message bodies) tables, and the recipient cache
(accounts) holds each user's Teams identity. ``purge`` (the ``retention`` timer function, daily)
deletes rows not written for longer than their table's setting, measured on Table Storage's own
``Timestamp`` (the time of the row's last write), and cache entries not used for that long (their
``UpdatedAt``, which a warm send refreshes at most daily):

| table | setting | default |
| --- | --- | --- |
| requests | RetentionDaysRequests | 30 |
| notifications | RetentionDaysNotifications | 30 |
| deliveries | RetentionDaysDeliveries | 30 |
| failures | RetentionDaysFailures | 30 |
| accounts (recipient cache) | RecipientCacheUnusedDays | 30 |

0 keeps a table's rows forever. A purged idempotency record means a request repeated with the same
key after that many days is sent again; a purged cache entry means that user's next send resolves
them again (three Graph requests). Opt-outs (shared.storage.optout) are not purged: they last until the user
installs the app again.

``erase_person`` deletes every row naming one person (by UPN or object id, and the other name the
recipient cache knows for them): cache entries, delivery rows (and the header of a notification sent
to them alone), idempotency results naming them, kept failures whose body names them, and, only
when asked, their opt-out record. Messages already in Teams, and Service Bus messages not yet
processed, are outside the app's storage and are not touched.
"""

from __future__ import annotations

import datetime
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from shared.storage.references import recipient_key
from shared.storage.tables import escape_key, translate_storage_errors

if TYPE_CHECKING:
    from azure.data.tables.aio import TableClient

    from shared.bootstrap import Services

logger = logging.getLogger(__name__)

_BATCH = 100  # Table Storage's limit of operations per transaction (one partition)


def _retention_plan(services: Services) -> dict[str, int]:
    settings = services.settings
    return {
        "requests": settings.retention_days_requests,
        "notifications": settings.retention_days_notifications,
        "deliveries": settings.retention_days_deliveries,
        "failures": settings.retention_days_failures,
        "accounts": settings.recipient_cache_unused_days,
    }


async def purge(services: Services, now: datetime.datetime) -> dict[str, int]:
    """Delete rows older than their table's retention, as of ``now`` (the clock is injected so tests
    can run it 'days later'). Returns the number of rows deleted per table."""
    deleted: dict[str, int] = {}
    for suffix, days in _retention_plan(services).items():
        if days <= 0:
            continue
        cutoff = now - datetime.timedelta(days=days)
        # The cache's own UpdatedAt is refreshed by use (shared.pipeline); the others' last write is Timestamp.
        column = "UpdatedAt" if suffix == "accounts" else "Timestamp"
        table = services.table(suffix)
        try:
            deleted[suffix] = await _delete_where(table, f"{column} lt @cutoff", {"cutoff": cutoff})
        finally:
            await table.close()
    logger.info("retention purge: %s", ", ".join(f"{k} {v}" for k, v in deleted.items()) or "nothing configured")
    return deleted


async def run_retention(now: datetime.datetime | None = None) -> dict[str, int]:
    """The timer function's work, with the process's services."""
    from shared.bootstrap import get_services

    return await purge(get_services(), now or datetime.datetime.now(datetime.UTC))


async def _delete_where(table: TableClient, query: str, parameters: dict[str, Any]) -> int:
    from azure.core.exceptions import ResourceNotFoundError

    keys: list[tuple[str, str]] = []
    try:
        with translate_storage_errors():
            async for entity in table.query_entities(query, parameters=parameters, select=["PartitionKey", "RowKey"]):
                keys.append((str(entity["PartitionKey"]), str(entity["RowKey"])))
    except ResourceNotFoundError:
        return 0  # the table was never created: nothing to purge
    return await _delete_keys(table, keys)


async def _delete_keys(table: TableClient, keys: Iterable[tuple[str, str]]) -> int:
    by_partition: dict[str, list[str]] = {}
    for partition, row in keys:
        by_partition.setdefault(partition, []).append(row)
    count = 0
    with translate_storage_errors():
        for partition, rows in by_partition.items():
            for start in range(0, len(rows), _BATCH):
                chunk = rows[start : start + _BATCH]
                operations: list[Any] = [("delete", {"PartitionKey": partition, "RowKey": r}) for r in chunk]
                await table.submit_transaction(operations)
                count += len(chunk)
    return count


# --- erasure ------------------------------------------------------------------------------------


@dataclass
class ErasureReport:
    names: list[str]
    deleted: dict[str, int] = field(default_factory=dict)


async def erase_person(
    services: Services, tenant_id: str, name: str, *, include_opt_out: bool = False
) -> ErasureReport:
    """Delete every row naming this person (module docstring)."""
    names = {recipient_key(name)}
    cached = await services.store.get(tenant_id, name)
    if cached is not None:
        names |= cached.aliases()
    report = ErasureReport(sorted(names))

    evicted = 0
    for alias in sorted(names):
        if await services.store.evict(tenant_id, alias) is not None:
            evicted += 1
    report.deleted["accounts"] = evicted

    deliveries, headers = services.table("deliveries"), services.table("notifications")
    requests, failures = services.table("requests"), services.table("failures")
    try:
        partitions: set[str] = set()
        rows: list[tuple[str, str]] = []
        for alias in names:
            for partition, row, _ in await _scan(deliveries, "RowKey eq @rk", {"rk": escape_key(alias)}):
                partitions.add(partition)
                rows.append((partition, row))
        report.deleted["deliveries"] = await _delete_keys(deliveries, rows)
        # A notification's header holds its content: it is this person's when it was sent to them alone.
        alone = []
        for partition in partitions:
            remaining = await _scan(deliveries, "PartitionKey eq @pk", {"pk": partition})
            header = await _scan(headers, "PartitionKey eq @pk", {"pk": partition})
            if not remaining:
                alone += [(p, r) for p, r, _ in header]
        report.deleted["notifications"] = await _delete_keys(headers, alone)

        def names_them(entity: Any) -> bool:
            return _mentions(entity.get("Response"), names)

        found = await _scan(requests, "PartitionKey eq @pk", {"pk": tenant_id.lower()}, names_them)
        report.deleted["requests"] = await _delete_keys(requests, [(p, r) for p, r, _ in found])

        kept = [r for r in await services.failures.list() if _mentions(r.body, names)]
        for record in kept:
            await services.failures.delete(record.message_id)
        report.deleted["failures"] = len(kept)
    finally:
        for table in (deliveries, headers, requests, failures):
            await table.close()

    if include_opt_out and services.optouts is not None:
        await services.optouts.clear(tenant_id, names)
        report.deleted["optouts"] = len(names)
    logger.info("erased one person's rows: %s", report.deleted)
    return report


async def _scan(table: TableClient, query: str, parameters: dict[str, Any], keep: Any = None) -> list[Any]:
    from azure.core.exceptions import ResourceNotFoundError

    found: list[Any] = []
    try:
        with translate_storage_errors():
            async for entity in table.query_entities(query, parameters=parameters):
                if keep is None or keep(entity):
                    found.append((str(entity["PartitionKey"]), str(entity["RowKey"]), entity))
    except ResourceNotFoundError:
        return []
    return found


def _mentions(payload: Any, names: set[str]) -> bool:
    """Whether a stored JSON document (a send's result, a queue message body) names one of ``names``
    as its recipient or among its recipients."""
    if isinstance(payload, bytes | bytearray):
        payload = bytes(payload).decode("utf-8", errors="replace")
    if not isinstance(payload, str) or not payload:
        return False
    try:
        document = json.loads(payload)
    except ValueError:
        return False
    if not isinstance(document, dict):
        return False
    candidates: list[Any] = [document.get("recipient")]
    listed = document.get("recipients")
    if isinstance(listed, list):
        candidates += listed
    return any(isinstance(c, str) and recipient_key(c) in names for c in candidates)
