"""The benchmark rows of issue #8 (1-3 and 6 here; cold start in bench.coldstart, fan-out in bench.fanout)."""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any

from bench.contenders import AdapterSender, FloorSender, FunctionSender, LibrarySender, SeedSender
from bench.measure import Timing, measure_interleaved, measure_sync
from bench.report import Line
from bench.world import WARM_RECIPIENTS, World
from shared.bootstrap import build_services, reset_services
from shared.message_content import MessageContent
from shared.settings import load_settings
from shared.throttle import Throttle

TOKEN_ROUTES = frozenset({"token", "openid", "instance_discovery", "msi"})


@dataclass(frozen=True)
class Sizes:
    n: int  # sends per batch
    repeats: int  # batches
    seed_n: int  # sends per batch for the (slow) resolve-every-time flow
    amortise: int  # sends over which token requests are amortised
    fanout_cold: int
    fanout_warm: int
    cache_large: int
    cache_small: int
    cache_probe: int  # sends per batch on the Table lookup path
    warm_recipients: int  # distinct conversations the warm-send loops rotate over (bench.world)

    @classmethod
    def full(cls) -> Sizes:
        return cls(200, 7, 40, 100, 200, 800, 100_000, 1_000, 100, WARM_RECIPIENTS)

    @classmethod
    def quick(cls) -> Sizes:
        return cls(5, 2, 2, 100, 5, 20, 300, 20, 10, 8)  # 25 fan-out recipients: > 20 are queued


def host_like_logging() -> None:
    """Like the Functions host at Information: records are formatted and shipped (here: to devnull)."""
    handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the process
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def _split(log: list[dict[str, Any]]) -> tuple[list[str], int]:
    upstream = [e["route"] for e in log if e["route"] not in TOKEN_ROUTES]
    tokens = sum(1 for e in log if e["route"] in TOKEN_ROUTES)
    return upstream, tokens


# --------------------------------------------------------------------------------------- row 1
async def calls_per_send(world: World, sizes: Sizes) -> list[Line]:
    world.fresh_table_prefix()
    installed, uninstalled = (
        world.new_users("calls-i", 1, installed=True)[0],
        world.new_users("calls-u", 1, installed=False)[0],
    )
    services = build_services(load_settings(world.env))
    message = MessageContent(text="calls")
    try:
        world.fake.clear_log()
        await services.notifier.send(installed, message)
        cold_installed, cold_installed_tokens = _split(world.fake.log())
        world.fake.clear_log()
        await services.notifier.send(installed, message)
        warm, warm_tokens = _split(world.fake.log())
        world.fake.clear_log()
        await services.notifier.send(uninstalled, message)
        cold_install, cold_install_tokens = _split(world.fake.log())
    finally:
        await services.aclose()

    # A fresh process's first N sends: a tenth cold (installed), the rest warm.
    world.fresh_table_prefix()
    recipients = world.new_users("calls-a", max(1, sizes.amortise // 10), installed=True)
    services = build_services(load_settings(world.env))
    try:
        world.fake.clear_log()
        for i in range(sizes.amortise):
            await services.notifier.send(recipients[i % len(recipients)], message)
        upstream, tokens = _split(world.fake.log())
    finally:
        await services.aclose()

    def fmt(calls: list[str], tokens: int) -> str:
        routes = ", ".join(f"{k} x{v}" if v > 1 else k for k, v in Counter(calls).items())
        return f"{len(calls)} + {tokens} token ({routes})"

    return [
        Line("1", "calls: warm send", fmt(warm, warm_tokens), "1", len(warm) == 1 and warm_tokens == 0),
        Line(
            "1",
            "calls: cold send, app installed",
            fmt(cold_installed, cold_installed_tokens),
            "3 + tokens (installed apps, chat, send)",
            cold_installed == ["graph.installed_apps", "graph.chat", "connector.send"],
        ),
        Line(
            "1",
            "calls: cold send that installs (first in the process: with the catalog lookup)",
            fmt(cold_install, cold_install_tokens),
            "<= 6 + tokens",
            len(cold_install) <= 6 and cold_install[-1] == "connector.send",
        ),
        Line(
            "1",
            f"token requests per send over {sizes.amortise} sends (fresh process)",
            f"{tokens / sizes.amortise:.3f} ({tokens} total, {len(upstream)} upstream calls)",
            "~0",
            tokens / sizes.amortise <= 0.05,
        ),
    ]


# --------------------------------------------------------------------------------------- rows 2-3
@dataclass(frozen=True)
class WarmRecipient:
    upn: str
    conversation_id: str
    account_id: str | None  # None: resolved from the installation's chat id (no members call)


async def warm_recipients(world: World, count: int) -> list[WarmRecipient]:
    """Users whose entries are memoised in Table Storage and in the process cache of get_services(),
    each with its own 1:1 conversation (the warm loops rotate over them: Teams' per-conversation
    limits, which shared.throttle enforces, never make a send wait). Resolved one after the other, so
    the process's HTTP client keeps one connection to the fake, like the floor's (httpcore checks
    every pooled connection on each request)."""
    from shared.bootstrap import get_services

    notifier = get_services().notifier
    recipients = []
    for upn in world.new_users("warm", count, installed=True):
        entry = await notifier.resolve(upn)
        recipients.append(WarmRecipient(upn, entry.conversation_id, entry.account_id))
    return recipients


@dataclass
class WarmResults:
    floor: Timing
    ours: Timing
    library: Timing
    adapter: Timing
    seed: Timing
    via: str


async def _warm_async(world: World, sizes: Sizes) -> tuple[Timing, Timing, Timing, Timing, str]:
    await reset_services()
    world.fresh_table_prefix()
    recipients = await warm_recipients(world, sizes.warm_recipients)
    floor = FloorSender(world, [r.conversation_id for r in recipients])
    ours = FunctionSender([r.upn for r in recipients])
    library = LibrarySender([r.upn for r in recipients])
    adapter = AdapterSender(world, [(r.conversation_id, r.account_id) for r in recipients])

    def check(name: str, n: int) -> None:
        """Every batch of every contender: exactly one upstream request per send (the send)."""
        upstream, _ = _split(world.fake.log())
        if upstream != ["connector.send"] * n:
            raise RuntimeError(f"{name}: {len(upstream)} upstream requests for {n} sends: {Counter(upstream)}")

    try:
        # Interleave contenders batch by batch (rotating order) so machine noise hits them alike.
        timings = await measure_interleaved(
            {"floor": floor.send, "ours": ours.send, "library": library.send, "adapter": adapter.send},
            n=sizes.n,
            repeats=sizes.repeats,
            before_batch=world.fake.clear_log,
            after_batch=check,
        )
        t_floor, t_ours, t_library, t_adapter = (timings[k] for k in ("floor", "ours", "library", "adapter"))
    finally:
        await floor.aclose()
        await reset_services()
    return t_floor, t_ours, t_library, t_adapter, ours.via


def throttle_cpu_per_send(sends: int, conversations: int) -> float:
    """CPU seconds shared.throttle adds to one warm send (its concurrency slot, the tenant's connector
    window and the conversation's windows), at the warm loops' cadence: a simulated clock advances
    ~1 ms per send (just under the 1000/s tenant rate) over ``conversations`` conversations, so it
    never waits, as in rows 2 and 6."""
    import time

    now = 0.0
    # Real time is added so that a wait, should one happen, ends (and shows in the figure).
    throttle = Throttle(max_concurrent=8, send_rate=1000, graph_rate=1000, clock=lambda: time.monotonic() + now)
    ids = [f"a:conversation-{i}" for i in range(conversations)]

    async def loop() -> float:
        nonlocal now
        cpu0 = time.process_time()
        for i in range(sends):
            now += 0.00105
            async with throttle.slot():
                await throttle.before("connector", "tenant", ids[i % conversations])
        return time.process_time() - cpu0

    return asyncio.run(loop()) / sends


def warm_sends(world: World, sizes: Sizes) -> tuple[list[Line], WarmResults]:
    host_like_logging()
    t_floor, t_ours, t_library, t_adapter, via = asyncio.run(_warm_async(world, sizes))
    throttle_cpu = throttle_cpu_per_send(20_000 if sizes.n >= 100 else 2_000, WARM_RECIPIENTS)
    seed_recipients = world.new_users("seed", 5, installed=True)
    seed = SeedSender(world)
    try:
        world.fake.clear_log()
        t_seed = measure_sync(
            lambda i: seed.send(seed_recipients[i % len(seed_recipients)]),
            n=sizes.seed_n,
            repeats=sizes.repeats,
            warmup=len(seed_recipients),
        )
        seed_calls, _ = _split(world.fake.log())
        seed_sends = sizes.seed_n * sizes.repeats + len(seed_recipients)
        if len(seed_calls) != 5 * seed_sends or seed_calls.count("connector.send") != seed_sends:
            raise RuntimeError(f"seed flow: {len(seed_calls)} upstream requests for {seed_sends} sends")
    finally:
        seed.close()
    res = WarmResults(t_floor, t_ours, t_library, t_adapter, t_seed, via)
    ratio_floor = t_ours.cpu.median / t_floor.cpu.median
    vs_adapter = t_adapter.cpu.median / t_ours.cpu.median
    vs_seed = t_seed.cpu.median / t_ours.cpu.median
    lines = [
        Line("2", "floor: raw httpx POST, fixed token (CPU/send)", t_floor.cpu.us(), ""),
        Line(
            "2",
            "floor: wall/send (fake latency check)",
            t_floor.wall.ms(),
            "a few ms at most",
            t_floor.wall.median < 0.005,
        ),
        Line("2", f"ours warm, {via} (CPU/send)", t_ours.cpu.us(), ""),
        Line("2", "ours warm: wall/send", t_ours.wall.ms(), ""),
        Line(
            "2",
            "of which shared.throttle (slot + tenant + conversation windows, CPU/send)",
            f"{throttle_cpu * 1e6:.0f} us ({throttle_cpu / t_ours.cpu.median:.1%} of ours)",
            "info",
        ),
        Line("2", "ours / floor (CPU)", f"{ratio_floor:.2f}x", "<= 1.5x", ratio_floor <= 1.5),
        Line(
            "2",
            "library alone, Notifier.send (CPU/send; no request parsing, no notification record)",
            f"{t_library.cpu.us()}, {t_library.cpu.median / t_floor.cpu.median:.2f}x floor",
            "info",
        ),
        Line(
            "2",
            "library alone: wall/send (Throttle never made a send wait)",
            t_library.wall.ms(),
            "<= 2x floor wall",
            t_library.wall.median <= 2 * t_floor.wall.median,
        ),
        Line("3a", "botbuilder adapter continue_conversation+send_activity (CPU/send)", t_adapter.cpu.us(), ""),
        Line("3a", "botbuilder adapter: wall/send", t_adapter.wall.ms(), ""),
        Line("3a", "adapter / ours (CPU): ours is faster by", f"{vs_adapter:.2f}x", ">= 1.3x", vs_adapter >= 1.3),
        Line("3a", "adapter / floor (CPU)", f"{t_adapter.cpu.median / t_floor.cpu.median:.2f}x", "info (~2x)"),
        Line("3b", "seed flow, resolve on every send (CPU/send)", t_seed.cpu.us(), ""),
        Line("3b", "seed flow: wall/send", t_seed.wall.ms(), ""),
        Line("3b", "seed / ours (CPU): ours is faster by", f"{vs_seed:.1f}x", ">= 4x", vs_seed >= 4),
    ]
    return lines, res
