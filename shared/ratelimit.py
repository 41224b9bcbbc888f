"""Tenant-wide pacing of Bot Connector requests (Teams: about 30 requests per second per app per tenant).

``TenantRateLimiter`` hands out evenly spaced send slots per tenant: ``acquire`` waits for the
tenant's next slot, so a fan-out runs at the allowed rate instead of provoking 429s and then
retrying in bursts. A 429's Retry-After is honoured tenant-wide (``throttled``): every request to
that tenant waits, not only the one that was refused. One limiter per process, shared by all
concurrent sends; with several instances each paces itself and 429s correct the overlap.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

# Teams' documented per-app-per-tenant limit is 30-50 requests per second: pace at the low end.
DEFAULT_CONNECTOR_RATE_PER_TENANT = 30.0


class TenantRateLimiter:
    def __init__(
        self,
        rate_per_second: float = DEFAULT_CONNECTOR_RATE_PER_TENANT,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if rate_per_second <= 0:
            raise ValueError("rate_per_second must be positive")
        self._interval = 1.0 / rate_per_second
        self._clock = clock
        self._sleep = sleep
        self._next_slot: dict[str, float] = {}
        self.throttled_count = 0

    async def acquire(self, tenant_id: str) -> None:
        """Wait for the tenant's next request slot. The slot is reserved before waiting (no lock is
        needed on one event loop), so concurrent callers queue up in order."""
        key = tenant_id.lower()
        now = self._clock()
        slot = max(now, self._next_slot.get(key, now))
        self._next_slot[key] = slot + self._interval
        if slot > now:
            await self._sleep(slot - now)

    def throttled(self, tenant_id: str, retry_after: float) -> None:
        """The service answered 429: no request to this tenant before ``retry_after`` seconds."""
        self.throttled_count += 1
        key = tenant_id.lower()
        resume = self._clock() + max(0.0, retry_after)
        if self._next_slot.get(key, 0.0) < resume:
            self._next_slot[key] = resume

    def pacer(self, tenant_id: str) -> TenantPacer:
        return TenantPacer(self, tenant_id)


class TenantPacer:
    """The limiter bound to one tenant: what ``request_with_retry`` calls around each attempt."""

    def __init__(self, limiter: TenantRateLimiter, tenant_id: str) -> None:
        self._limiter = limiter
        self._tenant_id = tenant_id

    async def acquire(self) -> None:
        await self._limiter.acquire(self._tenant_id)

    def throttled(self, retry_after: float) -> None:
        self._limiter.throttled(self._tenant_id, retry_after)
