"""Row 5, fan-out: many recipients (a fifth cold, the rest warm) through the pipeline while the fake
enforces Teams' rate limits (per conversation, and per app per tenant: ``app_rate_per_second``).

The theoretical minimum is the number of rate-limited connector requests (warm: the send; cold:
members + create + send; Graph is not limited by the fake) divided by the per-tenant rate.
Sends are driven through ``Notifier.send`` with bounded concurrency (issue 9's fan-out API is not on
main yet); the library paces connector requests per tenant (shared.ratelimit).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from bench.report import Line
from bench.rows import Sizes
from bench.world import World
from shared.bootstrap import build_services
from shared.errors import NotifyError
from shared.notify import Message
from shared.settings import load_settings

CONCURRENCY = 32
APP_RATE = 30


async def _bounded(items: list[str], concurrency: int, send: object) -> list[BaseException | None]:
    gate = asyncio.Semaphore(concurrency)

    async def one(recipient: str) -> BaseException | None:
        async with gate:
            try:
                await send(recipient)  # type: ignore[operator]
            except NotifyError as err:
                return err
            return None

    return list(await asyncio.gather(*(one(r) for r in items)))


async def fan_out(world: World, sizes: Sizes) -> tuple[list[Line], list[str]]:
    world.fresh_table_prefix()
    world.fake.settings(rate_limits=False)
    warm = world.new_users("fan-w", sizes.fanout_warm, installed=True)
    cold = world.new_users("fan-c", sizes.fanout_cold, installed=False)
    services = build_services(load_settings({**world.env, "ConnectorRatePerSecond": str(APP_RATE)}))
    try:
        # Warm recipients: resolved (memoised in Table Storage and the process cache) beforehand.
        await _bounded(warm, 16, services.notifier.resolve)
        world.fake.settings(rate_limits=True, app_rate_per_second=APP_RATE)
        await asyncio.sleep(1.1)  # let the fake's one-second windows drain
        world.fake.clear_log()
        # Cold and warm interleaved, as a line-of-business batch would arrive.
        recipients = [*warm]
        for i, upn in enumerate(cold):
            recipients.insert(i * 5, upn)
        message = Message(text="fan-out")
        started = time.perf_counter()
        cpu0 = time.process_time()
        errors = await _bounded(recipients, CONCURRENCY, lambda r: services.notifier.send(r, message))
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu0
    finally:
        world.fake.settings(rate_limits=False)
        await services.aclose()

    log = world.fake.log()
    routes = Counter(e["route"] for e in log if e["status"] < 400)
    throttled = sum(1 for e in log if e["status"] == 429)
    failed = [e for e in errors if e is not None]
    limited = routes["connector.send"] + routes["connector.members"] + routes["connector.create"]
    minimum = limited / APP_RATE
    ratio = wall / minimum
    n = len(recipients)
    lines = [
        Line(
            "5",
            f"fan-out {n} recipients ({len(cold)} cold, {len(warm)} warm), {APP_RATE}/s per tenant: wall",
            f"{wall:.1f} s (CPU {cpu:.1f} s, {cpu / n * 1e3:.2f} ms/recipient)",
            "",
        ),
        Line(
            "5",
            "theoretical minimum (rate-limited connector requests / rate)",
            f"{minimum:.1f} s ({limited} requests)",
            "",
        ),
        Line("5", "wall / minimum", f"{ratio:.3f}x", "<= 1.1x", ratio <= 1.1),
        Line("5", "429s provoked / failed sends", f"{throttled} / {len(failed)}", "failed = 0", not failed),
    ]
    notes = [
        f"Row 5: driven through Notifier.send with {CONCURRENCY} concurrent sends (issue 9's fan-out not on main);"
        f" connector pacing by shared.ratelimit.TenantRateLimiter (ConnectorRatePerSecond={APP_RATE}).",
    ]
    if failed:
        notes.append(
            "Row 5 failures: "
            + ", ".join(f"{k} x{v}" for k, v in Counter(getattr(e, "code", type(e).__name__) for e in failed).items())
        )
    return lines, notes
