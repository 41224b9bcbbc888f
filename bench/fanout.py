"""Row 5, fan-out: one notification to many recipients (a fifth cold, the rest warm) through the
product's real fan-out, while the fake enforces Teams' rate limits at the real rate (30/s per app per
tenant, and per conversation).

Driven as the Functions host would (the approach of scripts/bench_fanout.py, against the bench's fake
in its own process so the client's CPU is the product's alone): ``POST /api/notify`` with
``recipients`` answers 202 and sets one Service Bus message per recipient on its output binding; each
is fed to the ``notify_queue`` function with bounded concurrency, and redelivered when it raises.

Settings: one process stands for the app (row 7 has several worker processes sharing the budget):
TenantSendRatePerSecond = TenantGraphRatePerSecond = 30 (the tenant's whole budget: Teams' 30/s, as infra
deploys; the app paces itself at 29 of them, shared.storage.budget),
MaxConcurrentSends = 4 x 8 = 32, queue concurrency 4 x 4 (host.json maxConcurrentCalls) = 16.

The theoretical minimum is the number of rate-limited connector requests (warm: the send; cold:
members + create + send; Graph is not limited by the fake) divided by Teams' 30/s.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections import Counter
from typing import Any

from bench.report import Line
from bench.rows import Sizes
from bench.world import World
from shared.bootstrap import build_services, get_services, reset_services
from shared.errors import NotifyError
from shared.settings import load_settings

APP_RATE = 30  # Teams: requests per second per app per tenant (the fake enforces it)
INSTANCES = 4  # infra/ maximumInstanceCount: one bench process stands for all of them
SETTINGS = {
    "TenantSendRatePerSecond": str(APP_RATE),
    "TenantGraphRatePerSecond": str(APP_RATE),
    "MaxConcurrentSends": str(INSTANCES * 8),
}
QUEUE_CONCURRENCY = INSTANCES * 4  # host.json maxConcurrentCalls per instance
MAX_DELIVERIES = 10  # the queue's maxDeliveryCount


async def _feed(messages: list[bytes]) -> tuple[list[str], int]:
    """Every message to notify_queue, QUEUE_CONCURRENCY at a time; a raise is a redelivery.
    Returns the error codes of messages that ran out of deliveries, and the number of redeliveries."""
    from azure.functions.servicebus import ServiceBusMessage

    from tests.functions import OutputMessages, user_function

    queue = user_function("notify_queue")
    gate = asyncio.Semaphore(QUEUE_CONCURRENCY)
    redeliveries = 0

    async def one(body: bytes) -> str | None:
        nonlocal redeliveries
        message_id = str(uuid.uuid4())
        code = "unknown"
        for count in range(1, MAX_DELIVERIES + 1):
            message = ServiceBusMessage(
                body=body,
                message_id=message_id,
                delivery_count=count,
                application_properties={},
                user_properties={},
            )
            async with gate:
                try:
                    await queue(message, OutputMessages())
                    return None
                except NotifyError as err:
                    code = err.code
                    redeliveries += 1
        return code

    results = await asyncio.gather(*(one(m) for m in messages))
    return [r for r in results if r is not None], redeliveries


async def fan_out(world: World, sizes: Sizes) -> tuple[list[Line], list[str]]:
    from tests.functions import OutputMessages, notify_request, user_function

    world.fresh_table_prefix()
    world.fake.settings(rate_limits=False)
    warm = world.new_users("fan-w", sizes.fanout_warm, installed=True)
    cold = world.new_users("fan-c", sizes.fanout_cold, installed=False)  # the app is installed by the send
    # Warm recipients: resolved beforehand (memoised in Table Storage) at the per-send rows' rates.
    resolver = build_services(load_settings(world.env))
    try:
        gate = asyncio.Semaphore(16)

        async def resolve(upn: str) -> None:
            async with gate:
                await resolver.notifier.resolve(upn)

        await asyncio.gather(*(resolve(u) for u in warm))
    finally:
        await resolver.aclose()

    saved = {name: os.environ.get(name) for name in SETTINGS}
    os.environ.update(SETTINGS)
    await reset_services()
    try:
        services = get_services()
        # ... and in this instance's process cache, as for recipients it has sent to before.
        for upn in warm:
            await services.store.get(world.tenant_id, upn)
        world.fake.settings(rate_limits=True, app_rate_per_second=APP_RATE)
        await asyncio.sleep(2.1)  # let the fake's windows (1 s, 2 s) drain
        world.fake.clear_log()
        # Cold and warm interleaved, as a line-of-business batch would arrive.
        recipients = [*warm]
        for i, upn in enumerate(cold):
            recipients.insert(i * 5, upn)
        started = time.perf_counter()
        cpu0 = time.process_time()
        out = OutputMessages()
        response = await user_function("notify")(notify_request({"recipients": recipients, "text": "fan-out"}), out)
        accepted = time.perf_counter() - started
        if response.status_code != 202:
            raise RuntimeError(f"notify answered {response.status_code}: {response.get_body()[:300]!r}")
        failed, redeliveries = await _feed(out.messages)
        wall = time.perf_counter() - started
        cpu = time.process_time() - cpu0
        notification_id = json.loads(response.get_body())["notificationId"]
        status_request = _status_request(notification_id)
        status = json.loads((await user_function("notification_status")(status_request)).get_body())
    finally:
        world.fake.settings(rate_limits=False)
        await reset_services()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    log = world.fake.log()
    routes = Counter(e["route"] for e in log if e["status"] < 400)
    throttled = Counter(e["route"] for e in log if e["status"] == 429)
    limited = routes["connector.send"] + routes["connector.members"] + routes["connector.create"]
    minimum = limited / APP_RATE
    ratio = wall / minimum
    n = len(recipients)
    counts = status["counts"]
    not_sent = n - counts["sent"]
    lines = [
        Line(
            "5",
            f"fan-out {n} recipients ({len(cold)} cold, {len(warm)} warm), Teams {APP_RATE}/s per tenant: wall",
            f"{wall:.1f} s (202 after {accepted * 1e3:.0f} ms; CPU {cpu:.1f} s, {cpu / n * 1e3:.2f} ms/recipient)",
            "",
        ),
        Line(
            "5",
            f"theoretical minimum (rate-limited connector requests / {APP_RATE})",
            f"{minimum:.1f} s ({limited} requests)",
            "",
        ),
        Line("5", "wall / minimum", f"{ratio:.3f}x", "<= 1.1x", ratio <= 1.1),
        Line(
            "5",
            "429s provoked / redeliveries / recipients not sent",
            f"{sum(throttled.values())} / {redeliveries} / {not_sent}",
            "not sent = 0",
            not_sent == 0 and not failed,
        ),
    ]
    settings = ", ".join(f"{k}={v}" for k, v in SETTINGS.items())
    notes = [
        f"Row 5: POST /api/notify (202) + {len(out.messages)} output-binding messages fed to notify_queue,"
        f" {QUEUE_CONCURRENCY} at a time; {settings} (the tenant budget and {INSTANCES} instances' concurrency:"
        f" this one instance stands for the whole app's budget); the fake enforces {APP_RATE}/s per tenant"
        " and Teams' per-conversation limits. Upstream requests: "
        + ", ".join(f"{k} x{v}" for k, v in sorted(routes.items()) if not k.startswith(("token", "openid"))),
    ]
    if throttled:
        notes.append("Row 5 429s by route: " + ", ".join(f"{k} x{v}" for k, v in sorted(throttled.items())))
    if failed:
        notes.append("Row 5 messages out of deliveries: " + ", ".join(f"{k} x{v}" for k, v in Counter(failed).items()))
    return lines, notes


def _status_request(notification_id: str) -> Any:
    import azure.functions as func

    return func.HttpRequest(
        "GET",
        f"http://localhost:7071/api/notifications/{notification_id}",
        headers={},
        params={"top": "1"},
        route_params={"id": notification_id},
        body=b"",
    )
