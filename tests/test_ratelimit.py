"""The tenant-wide connector pacing: evenly spaced slots per tenant, 429 Retry-After honoured by every
send to the tenant, and a fan-out under the fake's Teams rate limits that loses no message."""

from __future__ import annotations

import asyncio

import pytest

from shared.bootstrap import Services
from shared.notify import Message
from shared.ratelimit import TenantRateLimiter
from tests.conftest import World


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(round(seconds, 6))


async def test_slots_are_evenly_spaced_per_tenant() -> None:
    clock = FakeClock()
    limiter = TenantRateLimiter(10, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        await limiter.acquire("Contoso")
    await limiter.acquire("fabrikam")  # another tenant has its own budget
    assert clock.slept == [0.1, 0.2]


async def test_a_429_pauses_every_send_to_that_tenant() -> None:
    clock = FakeClock()
    limiter = TenantRateLimiter(10, clock=clock, sleep=clock.sleep)
    await limiter.acquire("contoso")
    limiter.throttled("CONTOSO", 2.0)
    await limiter.acquire("contoso")
    await limiter.acquire("fabrikam")
    assert clock.slept == [2.0]
    assert limiter.throttled_count == 1


def test_rate_must_be_positive() -> None:
    with pytest.raises(ValueError):
        TenantRateLimiter(0)


async def test_fan_out_under_teams_rate_limits_delivers_every_message(world: World, services: Services) -> None:
    world.tenant.rate_limits = True
    world.tenant.app_rate_per_second = 30
    recipients = [world.tenant.add_user(f"fan{i}@contoso.com", installed=i % 2 == 0) for i in range(12)]
    results = await asyncio.gather(*(services.notifier.send(u.upn, Message(text="hi")) for u in recipients))
    assert all(r.activity_id for r in results)
    assert all(len(world.tenant.messages_for(u)) == 1 for u in recipients)
