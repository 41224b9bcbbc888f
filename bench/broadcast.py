"""Row 7, one broadcast delivered by several instances sharing the tenant's budget (shared.storage.budget).

A notification to many recipients (a quarter cold: the app installed but never resolved by us; the
rest warm: resolved beforehand and memoised in Table Storage) is created through ``POST /api/notify``
(202, one Service Bus message per recipient on its output binding). The messages are dealt round-robin
to N worker processes (standing for Function App instances: competing consumers of the queue), each
its own interpreter with its own services, all sharing one Azurite and one fake. The fake enforces a
tenant limit of 50 requests per second plus Teams' per-conversation limits; the app's
TenantSendRatePerSecond is that whole budget (50), the same setting whatever N is.

The theoretical minimum is the rate-limited (Bot Connector) requests that succeeded / 50. Lost and
duplicated recipients are counted from what the fake delivered.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter

from bench.report import Line
from bench.world import ROOT, World

TENANT_LIMIT = 50
SETTINGS = {
    "TenantSendRatePerSecond": str(TENANT_LIMIT),
    "TenantGraphRatePerSecond": str(TENANT_LIMIT),
    "MaxConcurrentSends": "16",
}
WORKER_CONCURRENCY = 16  # queue messages in flight per worker
MAX_DELIVERIES = 10

_WORKER = r"""
import asyncio, json, sys, time, uuid
from azure.functions.servicebus import ServiceBusMessage
from shared.bootstrap import get_services, reset_services
from shared.errors import NotifyError
from tests.functions import OutputMessages, user_function

bodies = [b.encode() for b in json.load(open(sys.argv[1]))]
concurrency = int(sys.argv[2])

async def main():
    queue = user_function("notify_queue")
    services = get_services()
    await services.store.get("warm-up", "nobody")  # opens the storage connection and the tables
    print("ready", flush=True)
    start_at = float(sys.stdin.readline())
    await asyncio.sleep(max(0.0, start_at - time.time()))
    cpu0 = time.process_time()
    gate = asyncio.Semaphore(concurrency)
    redeliveries, failed = 0, []

    async def one(body):
        nonlocal redeliveries
        message_id, code = str(uuid.uuid4()), "unknown"
        for count in range(1, MAX_DELIVERIES + 1):
            message = ServiceBusMessage(body=body, message_id=message_id, delivery_count=count,
                                        application_properties={}, user_properties={})
            async with gate:
                try:
                    await queue(message, OutputMessages())
                    return
                except NotifyError as err:
                    code = err.code
                    redeliveries += 1
        failed.append(code)

    await asyncio.gather(*(one(b) for b in bodies))
    finished = time.time()
    print(json.dumps({"finished": finished, "cpu": time.process_time() - cpu0, "redeliveries": redeliveries,
                      "failed": failed, "throttled": services.throttle.throttled if services.throttle else 0,
                      "leases": services.budget.leases if services.budget else 0}), flush=True)
    await reset_services()

asyncio.run(main())
""".replace("MAX_DELIVERIES", str(MAX_DELIVERIES))


async def _prepare(world: World, total: int) -> tuple[list[str], list[str], list[bytes]]:
    """Users, warm resolutions, and the notification's queue messages (created in this process)."""
    import asyncio

    from shared.bootstrap import build_services, reset_services
    from shared.settings import load_settings
    from tests.functions import OutputMessages, notify_request, user_function

    cold_n = total // 4
    warm = world.new_users("bc-w", total - cold_n, installed=True)
    cold = world.new_users("bc-c", cold_n, installed=True)
    resolver = build_services(load_settings({**world.env, "TenantGraphRatePerSecond": "1000"}))
    try:
        gate = asyncio.Semaphore(16)

        async def resolve(upn: str) -> None:
            async with gate:
                await resolver.notifier.resolve(upn)

        await asyncio.gather(*(resolve(u) for u in warm))
    finally:
        await resolver.aclose()
    recipients = [*warm]
    for i, upn in enumerate(cold):
        recipients.insert(i * 4, upn)
    await reset_services()
    out = OutputMessages()
    response = await user_function("notify")(notify_request({"recipients": recipients, "text": "broadcast"}), out)
    await reset_services()
    if response.status_code != 202:
        raise RuntimeError(f"notify answered {response.status_code}: {response.get_body()[:300]!r}")
    return recipients, cold, list(out.messages)


def broadcast(world: World, *, total: int, workers: int) -> list[Line]:
    import asyncio

    world.fresh_table_prefix()
    saved = {name: os.environ.get(name) for name in SETTINGS}
    os.environ.update(SETTINGS)
    world.fake.settings(rate_limits=False)
    try:
        recipients, cold, messages = asyncio.run(_prepare(world, total))
        env = {**os.environ, **world.env, **SETTINGS, "PYTHONPATH": ROOT}
        files, procs = [], []
        for w in range(workers):
            share = [m.decode() for m in messages[w::workers]]
            handle = tempfile.NamedTemporaryFile("w", suffix=".json", delete=False)  # noqa: SIM115
            json.dump(share, handle)
            handle.close()
            files.append(handle.name)
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", _WORKER, handle.name, str(WORKER_CONCURRENCY)],
                    cwd=ROOT,
                    env=env,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    text=True,
                )
            )
        for proc in procs:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError("a broadcast worker did not start")
        world.fake.settings(rate_limits=True, app_rate_per_second=TENANT_LIMIT)
        time.sleep(2.1)  # the fake's windows drain
        world.fake.clear_log()
        start_at = time.time() + 0.5
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write(f"{start_at}\n")
            proc.stdin.flush()
        results = []
        for proc in procs:
            out, _ = proc.communicate(timeout=1800)
            if proc.returncode != 0:
                raise RuntimeError("a broadcast worker failed")
            results.append(json.loads(out.strip().splitlines()[-1]))
        for name in files:
            os.unlink(name)
    finally:
        world.fake.settings(rate_limits=False)
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value

    wall = max(r["finished"] for r in results) - start_at
    log = world.fake.log()
    ok = Counter(e["route"] for e in log if e["status"] < 400)
    throttled = sum(1 for e in log if e["status"] == 429)
    upstream = [e for e in log if e["route"].startswith(("graph.", "connector."))]
    limited = ok["connector.send"] + ok["connector.members"] + ok["connector.create"]
    minimum = limited / TENANT_LIMIT
    ratio = wall / minimum
    delivered = world.fake.control("GET", "messages")
    counts: Counter[int] = Counter()
    for upn in recipients:
        counts[len([m for m in delivered.get(upn, []) if m["activity"].get("text") == "broadcast"])] += 1
    lost, twice = counts[0], sum(v for k, v in counts.items() if k > 1)
    share_429 = throttled / max(1, len(upstream))
    failed = [c for r in results for c in r["failed"]]
    label = f"{workers} worker process{'es' if workers > 1 else ''}"
    per_send = ok["connector.send"] / max(1, len(recipients))
    return [
        Line(
            "7",
            f"broadcast {len(recipients)} ({len(cold)} cold, {len(recipients) - len(cold)} warm), {label}, "
            f"tenant limit {TENANT_LIMIT}/s: wall",
            f"{wall:.1f} s (minimum {minimum:.1f} s = {limited} connector requests / {TENANT_LIMIT}; "
            f"CPU {sum(r['cpu'] for r in results):.1f} s; leases {sum(r['leases'] for r in results)})",
            "",
        ),
        Line("7", f"{label}: wall / minimum", f"{ratio:.3f}x", "<= 1.1x", ratio <= 1.1),
        Line(
            "7",
            f"{label}: 429s / upstream requests; redeliveries",
            f"{throttled} / {len(upstream)} ({share_429:.2%}); {sum(r['redeliveries'] for r in results)}",
            "<= 1%",
            share_429 <= 0.01,
        ),
        Line(
            "7",
            f"{label}: recipients lost / sent twice / connector sends per recipient",
            f"{lost} / {twice} / {per_send:.2f}",
            "0 / 0 / 1.00",
            lost == 0 and twice == 0 and not failed and ok["connector.send"] == len(recipients),
        ),
    ]
