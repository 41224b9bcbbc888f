"""The tenant's request budget, shared by every instance: a paced token bucket in Table Storage.

Teams allows an app a fixed number of requests per second per tenant (about 50:
https://learn.microsoft.com/microsoftteams/platform/bots/how-to/rate-limit), and Graph likewise
(https://learn.microsoft.com/graph/throttling-limits#microsoft-teams-service-limits). That budget
belongs to the deployment, not to an instance: on Flex Consumption the HTTP functions and the Service
Bus function scale as separate groups, so a static per-instance rate either overshoots (more instances
than planned: 429s) or leaves budget unused (fewer instances).

Design: time is cut into 1-second slices. Slice ``s`` of (service, tenant) owns ``capacity`` numbered
tokens; token ``j`` may be used at ``s + j / rate``, so the tokens are paced evenly, never burst, and
any one-second window holds at most ``capacity`` (+1) requests whichever instances use them.
``capacity`` is ``rate`` less the tokens of the last ``JITTER_RESERVE`` seconds of the slice, rounded up
(1 of 30, 2 of 50): a request reaches Teams a few milliseconds after its token's time, by a delay that
varies, and Teams counts arrivals in a sliding window, so a budget used to its last token draws a 429
whenever a request is late and the one a second later is not (bench row 7: 1.2-2% of requests at
exactly 50/s, 0.2-0.5% with the reserve). An instance
leases a few consecutive tokens at a time (``chunk``) from the slice's row in Table Storage
(PartitionKey ``{service}|{tenant}``, one of 16 rows reused round-robin, ``Slice`` and ``Used`` = tokens
handed out), with an
insert-if-absent or an ETag-matched update, so two instances never get the same token. A lease never
hands out tokens whose time has passed (``Used`` is raised to "now" first): time not used is not
saved up for a burst later. When the current slice is spent, an instance leases from the next one
(never further), so each slice's first tokens are in hand at its start. A send then waits for its
token's time. Unused leased tokens lapse with their slice: the waste is at most ``chunk`` per
instance per second, and only when demand stops.

Cost: one Table Storage request per lease (an insert for the first lease of a slice, else a read
and a conditional update), i.e. about 2 requests per ``chunk`` sends. Instances' clocks are NTP-synced
(milliseconds), which is what the slice numbers rely on.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

import msgspec

from shared.errors import TransientError
from shared.storage.tables import TableBacked, translate_storage_errors, update_if_unchanged

if TYPE_CHECKING:
    from azure.data.tables.aio import TableClient

logger = logging.getLogger(__name__)

Service = Literal["connector", "graph"]

#: Rows per (service, tenant): slices reuse them round-robin.
_RING = 16
#: Seconds at the end of each slice left unused, as a margin for the varying delay between a token's
#: time and the request's arrival (see the module docstring).
JITTER_RESERVE = 0.03
#: Conditional writes that lose a race are retried this many times before giving up (transient).
_MAX_RACES = 20


class _Lease(msgspec.Struct):
    slice: int = -1
    next: int = 0  # next token index to use
    end: int = 0  # one past the last leased token
    lock: asyncio.Lock = msgspec.field(default_factory=asyncio.Lock)


def slice_capacity(rate: float) -> int:
    """Tokens per 1-second slice: the rate less the jitter reserve (at least 1)."""
    return max(1, int(rate) - math.ceil(rate * JITTER_RESERVE))


class TenantBudget(TableBacked):
    """``take(service, tenant)`` reserves one request of the tenant's shared budget and returns the
    seconds to wait before using it."""

    def __init__(
        self,
        table: TableClient,
        rates: dict[Service, float],
        *,
        chunk: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(table)
        self._rates = rates
        self._chunk = chunk
        self._clock = clock
        self._leases: dict[tuple[Service, str], _Lease] = {}
        self.leases = 0  # storage leases taken by this process (bench and tests read it)

    def chunk(self, service: Service) -> int:
        """Tokens per lease: about a tenth of a second's budget (at least 1)."""
        return self._chunk or max(1, math.ceil(self._rates[service] / 10))

    async def take(self, service: Service, tenant_id: str) -> float:
        key = (service, tenant_id.lower())
        lease = self._leases.get(key)
        if lease is None:
            lease = self._leases[key] = _Lease()
        rate = self._rates[service]
        while True:
            now = self._clock()
            current = int(now)
            if lease.slice >= current and lease.next < lease.end:
                token = lease.next
                lease.next += 1
                return max(0.0, lease.slice + token / rate - now)
            async with lease.lock:
                now = self._clock()
                if lease.slice >= int(now) and lease.next < lease.end:
                    continue  # another task leased meanwhile
                granted = await self._lease(service, tenant_id.lower(), now)
                if granted is None:
                    # This slice is spent: lease from the next one now, so its first tokens are used at
                    # their time rather than after a wake-up at the slice's start (by then token 0's time
                    # has passed, and a token whose time has passed is not handed out).
                    granted = await self._lease(service, tenant_id.lower(), now, ahead=True)
                if granted is None:
                    # The next slice is spent too (leased ahead by others): wait for it to begin.
                    await asyncio.sleep(max(0.0, int(now) + 1 - self._clock()))
                    continue
                lease.slice, lease.next, lease.end = granted
                # Nor a token whose time passed during the lease's round trip (after an idle spell the
                # first tokens leased are due at once): used late, it would crowd the next second's.
                passed = math.ceil((self._clock() - lease.slice) * rate)
                lease.next = max(lease.next, min(lease.end, passed))

    async def _lease(
        self, service: Service, tenant: str, now: float, *, ahead: bool = False
    ) -> tuple[int, int, int] | None:
        """Lease up to ``chunk`` tokens of the current slice (``ahead``: of the next one): (slice,
        first, end), or None when the slice has none left."""
        from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

        await self._ensure_table()
        rate = self._rates[service]
        capacity = slice_capacity(rate)
        current = int(now) + (1 if ahead else 0)
        # Tokens whose time has passed are not handed out (no bursts from unused time, and no token
        # used late, closer to the next one than the pacing allows). None of the next slice's has.
        due = 0 if ahead else min(capacity, math.ceil((now - current) * rate))
        chunk = self.chunk(service)
        # A ring of rows: a row of an earlier slice is taken over (ETag-matched), so the table holds at
        # most _RING rows per (service, tenant).
        partition, row = f"{service}|{tenant}", str(current % _RING)
        for _ in range(_MAX_RACES):
            with translate_storage_errors():
                try:
                    entity = await self._table.get_entity(partition, row)
                except ResourceNotFoundError:
                    entity = None
                if entity is None:
                    first = due
                    end = min(capacity, first + chunk)
                    if first >= end:
                        return None
                    try:
                        await self._table.create_entity(
                            {"PartitionKey": partition, "RowKey": row, "Slice": current, "Used": end}
                        )
                    except ResourceExistsError:
                        continue
                else:
                    used = int(entity.get("Used", 0)) if int(entity.get("Slice", -1)) == current else 0
                    first = max(used, due)
                    end = min(capacity, first + chunk)
                    if first >= end:
                        return None
                    entity["Slice"], entity["Used"] = current, end
                    if await update_if_unchanged(self._table, entity, entity.metadata["etag"], merge=True) is None:
                        continue
            self.leases += 1
            return current, first, end
        raise TransientError(
            f"The tenant's shared {service} budget is contended; try again later.",
            code="upstream_unavailable",
            target=service,
            retry_after=1.0,
        )
