"""The tenant's request budget is shared by instances: two processes on one Azurite get one budget
between them, paced, never the same token twice (shared.storage.budget)."""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from tests.azurite import Azurite

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
