"""Timing: client-process CPU time per operation (primary) and wall time per operation (secondary).

Each measurement runs ``repeats`` batches of ``n`` operations after a warm-up batch, and reports the
median and the spread (min-max) of the per-operation figures over the batches.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Stat:
    median: float
    low: float
    high: float

    @classmethod
    def of(cls, values: list[float]) -> Stat:
        return cls(statistics.median(values), min(values), max(values))

    def us(self) -> str:
        """'123 us (110-140)'."""
        return f"{self.median * 1e6:.0f} us ({self.low * 1e6:.0f}-{self.high * 1e6:.0f})"

    def ms(self) -> str:
        return f"{self.median * 1e3:.2f} ms ({self.low * 1e3:.2f}-{self.high * 1e3:.2f})"


@dataclass(frozen=True)
class Timing:
    cpu: Stat  # seconds of client CPU per operation
    wall: Stat  # seconds of wall time per operation
    n: int
    repeats: int


async def measure(op: Callable[[int], Awaitable[object]], *, n: int, repeats: int, warmup: int | None = None) -> Timing:
    """Run ``op(i)`` sequentially; ``i`` counts up across batches so callers can rotate recipients."""
    counter = 0
    for _ in range(n if warmup is None else warmup):
        await op(counter)
        counter += 1
    cpus: list[float] = []
    walls: list[float] = []
    for _ in range(repeats):
        gc.collect()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            await op(counter)
            counter += 1
        cpus.append((time.process_time() - cpu0) / n)
        walls.append((time.perf_counter() - wall0) / n)
    return Timing(Stat.of(cpus), Stat.of(walls), n, repeats)


def measure_sync(op: Callable[[int], object], *, n: int, repeats: int, warmup: int | None = None) -> Timing:
    counter = 0
    for _ in range(n if warmup is None else warmup):
        op(counter)
        counter += 1
    cpus: list[float] = []
    walls: list[float] = []
    for _ in range(repeats):
        gc.collect()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            op(counter)
            counter += 1
        cpus.append((time.process_time() - cpu0) / n)
        walls.append((time.perf_counter() - wall0) / n)
    return Timing(Stat.of(cpus), Stat.of(walls), n, repeats)


async def measure_interleaved(
    ops: dict[str, Callable[[int], Awaitable[object]]],
    *,
    n: int,
    repeats: int,
    before_batch: Callable[[], object] | None = None,
    after_batch: Callable[[str, int], object] | None = None,
) -> dict[str, Timing]:
    """Contenders batch by batch (A B C, B C A, C A B, ...): machine noise hits them alike.
    ``before_batch``/``after_batch(name, n)`` run outside the timed region (e.g. to check the fake's
    request count for every batch of every contender)."""
    names = list(ops)
    counters = dict.fromkeys(names, 0)
    for name in names:  # warm-up batch each
        for _ in range(n):
            await ops[name](counters[name])
            counters[name] += 1
    cpus: dict[str, list[float]] = {name: [] for name in names}
    walls: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            if before_batch is not None:
                before_batch()
            gc.collect()
            op = ops[name]
            cpu0, wall0 = time.process_time(), time.perf_counter()
            for _ in range(n):
                await op(counters[name])
                counters[name] += 1
            cpus[name].append((time.process_time() - cpu0) / n)
            walls[name].append((time.perf_counter() - wall0) / n)
            if after_batch is not None:
                after_batch(name, n)
    return {name: Timing(Stat.of(cpus[name]), Stat.of(walls[name]), n, repeats) for name in names}
