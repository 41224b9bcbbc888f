"""The tenant's request budget is shared by instances: two processes on one Azurite get one budget
between them, paced, never the same token twice (shared.storage.budget)."""

from __future__ import annotations

import collections
import json
import math
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tests.azurite import Azurite

if TYPE_CHECKING:
    from shared.storage.budget import TenantBudget

ROOT = Path(__file__).resolve().parent.parent
RATE = 10  # tokens per second for the tenant
PER_PROCESS = 15

_INSTANCE = r"""
import asyncio, json, sys, time
from azure.data.tables.aio import TableClient
from shared.storage.budget import TenantBudget

async def main():
    connection, table = sys.argv[1], sys.argv[2]
    count, rate, start_at = int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
    client = TableClient.from_connection_string(connection, table)
    read = [0.0]

    def clock():  # real time; remembers the reading the budget computed its last wait from
        read[0] = time.time()
        return read[0]

    budget = TenantBudget(client, {"connector": rate, "graph": rate}, chunk=2, clock=clock)
    await budget.take("graph", "warm-up")  # creates the table and opens the connection before the start
    await asyncio.sleep(max(0.0, start_at - time.time()))
    times = []
    for _ in range(count):
        wait = await budget.take("connector", "Tenant-A")
        # The token's time as the budget granted it (its second + its place in it; a token taken late
        # by a stalled process: the moment it was taken), not when a busy machine woke this task up.
        times.append(read[0] + wait)
        await asyncio.sleep(wait)
    await budget.close()
    print(json.dumps({"times": times, "leases": budget.leases}))

asyncio.run(main())
"""


def _budget_on(azurite: Azurite, rate: float) -> tuple[TenantBudget, Callable[[float], float]]:
    """A budget on a fresh table of ``azurite`` at ``rate`` per second, and a function that turns the wait
    ``take`` just returned into the token's time as the budget granted it (the clock reading it computed
    the wait from + the wait), not when a busy machine wakes the task up."""
    from azure.data.tables.aio import TableClient

    from shared.storage.budget import TenantBudget

    client = TableClient.from_connection_string(azurite.connection_string, "t" + uuid.uuid4().hex[:16] + "budget")
    read = [0.0]

    def clock() -> float:  # real time; remembers the last reading
        read[0] = time.time()
        return read[0]

    def token_time(wait: float) -> float:
        return read[0] + wait

    return TenantBudget(client, {"connector": rate, "graph": rate}, clock=clock), token_time


def test_two_processes_share_one_tenant_budget(azurite: Azurite) -> None:
    table = "t" + uuid.uuid4().hex[:16] + "budget"
    start_at = time.time() + 4.0  # both processes start taking at the same moment
    args = [azurite.connection_string, table, str(PER_PROCESS), str(RATE), str(start_at)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    processes = [
        subprocess.Popen([sys.executable, "-c", _INSTANCE, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = []
    for process in processes:
        out, _ = process.communicate(timeout=120)
        assert process.returncode == 0
        results.append(json.loads(out.strip().splitlines()[-1]))

    times = sorted(t for r in results for t in r["times"])
    assert len(times) == 2 * PER_PROCESS
    # One budget for both: no second grants more than the tenant's rate; two per-process budgets would
    # grant twice as many.
    busiest = max(collections.Counter(int(t) for t in times).values())
    assert busiest <= RATE
    # So 30 tokens at 10/s take about 3 s, not the 1.5 s of two budgets.
    assert times[-1] - times[0] >= (2 * PER_PROCESS) / RATE - 1.2
    # Both processes sent all along (the budget was shared, not taken by one after the other).
    first, second = (r["times"] for r in results)
    assert first[0] < second[-1] and second[0] < first[-1]
    # Tokens are leased in chunks (2 here), not one storage request per send.
    assert all(r["leases"] <= PER_PROCESS for r in results)


async def test_tokens_leave_room_for_requests_that_arrive_late(azurite: Azurite) -> None:
    """Teams counts an app's requests per tenant in a sliding one-second window
    (https://learn.microsoft.com/microsoftteams/platform/bots/how-to/rate-limit), and a request reaches it
    some milliseconds after its token's time. Even with (nearly) 40 ms of difference between two requests' delays
    (a late one followed by a punctual one a second later), no one-second window of arrivals may
    hold more than the rate: for every token time T, the tokens in (T - 1.039 s, T] are at most the rate."""
    rate = 50
    budget, token_time = _budget_on(azurite, rate)
    try:
        await budget.take("graph", "warm-up")
        times: list[float] = []
        end = time.time() + 3.0
        while time.time() < end:
            times.append(token_time(await budget.take("connector", "tenant-a")))
    finally:
        await budget.close()
    assert len(times) >= 2 * (rate - 2)  # the budget was used (about 48 a second), not starved
    for i, token in enumerate(times):
        in_window = sum(1 for other in times[: i + 1] if other > token - 1.039)
        assert in_window <= rate, f"{in_window} tokens within 1.039 s before {token:.3f}"


async def test_each_second_of_the_budget_is_used_from_its_start(azurite: Azurite) -> None:
    """Under steady demand every one-second slice is used from its first token: none of it lapses while
    the instance waits for the slice to begin (the broadcast's pace is the budget's, bench row 7)."""
    import asyncio

    from shared.storage.budget import slice_capacity

    rate = 50
    budget, token_time = _budget_on(azurite, rate)
    granted: list[float] = []

    async def sender(until: float) -> None:  # one of a worker's concurrent sends, one after another
        while time.time() < until:
            wait = await budget.take("connector", "tenant-a")
            granted.append(token_time(wait))
            await asyncio.sleep(wait)

    try:
        await budget.take("graph", "warm-up")
        until = time.time() + 3.5
        await asyncio.gather(*(sender(until) for _ in range(8)))
    finally:
        await budget.close()
    # A token's time is its second + its place in it, computed in floating point: 1 us settles rounding.
    second_of = [math.floor(t + 1e-6) for t in granted]
    seconds = sorted(set(second_of))[1:-1]  # the whole seconds in between
    assert seconds
    for second in seconds:
        in_second = sorted(t - second for t, s in zip(granted, second_of, strict=True) if s == second)
        # Token 0 (the second's start) was handed out, and the second's whole capacity was used.
        assert in_second[0] < 0.001, f"the second {second} was first used {in_second[0] * 1000:.0f} ms in"
        assert len(in_second) == slice_capacity(rate)
