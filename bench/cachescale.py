"""Row 6, cache scale: warm-send cost with 100 vs 100,000 cached recipients in Table Storage (Azurite).

Two paths: the in-process LRU hit (the usual warm send in a warm instance) and the Table lookup
(a fresh instance: every lookup goes to Table Storage, as with an empty LRU). The table is filled
directly with batch transactions; the synthetic entries point at real conversations of the fake so
every send is delivered. The sends rotate over ``Sizes.warm_recipients`` probed entries, each on its
own conversation, so Teams' per-conversation limits (enforced by shared.throttle) never make a send
wait; that is why the small cache holds 1,000 entries: 100 recipients cannot take ~1,000 sends/s.
"""

from __future__ import annotations

import asyncio
import datetime
import time
from typing import Any

from bench.measure import Timing, measure
from bench.report import Line
from bench.rows import Sizes
from bench.world import World
from shared.bootstrap import build_services
from shared.message_content import MessageContent
from shared.settings import load_settings
from shared.storage.references import (
    CachedRecipientStore,
    ConversationReference,
    TableRecipientStore,
    recipient_key,
)
from shared.storage.tables import escape_key

BATCH = 100  # Table Storage's limit per transaction


def synthetic_upn(i: int) -> str:
    return f"cached{i}@contoso.com"


def probe_stride(count: int, probes: int) -> int:
    """Probed entries are every ``stride``-th; entry i points at conversation ``i // stride``, so the
    probed ones (the ones sent to) each have their own conversation."""
    return max(1, count // probes)


def target(real: list[ConversationReference], i: int, stride: int) -> ConversationReference:
    return real[(i // stride) % len(real)]


async def populate(world: World, table_name: str, count: int, real: list[ConversationReference], stride: int) -> float:
    from azure.data.tables.aio import TableServiceClient

    started = time.perf_counter()
    partition = world.tenant_id.lower()
    now = datetime.datetime.now(datetime.UTC)
    async with TableServiceClient.from_connection_string(world.env["AzureWebJobsStorage"]) as service:
        table = service.get_table_client(table_name)
        await service.create_table_if_not_exists(table_name)
        gate = asyncio.Semaphore(8)

        async def batch(start: int) -> None:
            operations: list[Any] = []
            for i in range(start, min(start + BATCH, count)):
                entry = target(real, i, stride)
                alias = recipient_key(synthetic_upn(i))
                entity = {
                    "PartitionKey": partition,
                    "RowKey": escape_key(alias),
                    "TenantId": entry.tenant_id,
                    "AccountId": entry.account_id,
                    "ConversationId": entry.conversation_id,
                    "ServiceUrl": entry.service_url,
                    "UpdatedAt": now,
                    "Upn": synthetic_upn(i),
                    "Aliases": alias,
                }
                operations.append(("upsert", entity))
            async with gate:
                await table.submit_transaction(operations)

        await asyncio.gather(*(batch(s) for s in range(0, count, BATCH)))
        await table.close()
    return time.perf_counter() - started


async def _real_entries(world: World, count: int) -> list[ConversationReference]:
    """Resolve ``count`` real recipients once (their conversations exist in the fake)."""
    world.fresh_table_prefix()
    services = build_services(load_settings(world.env))
    gate = asyncio.Semaphore(16)

    async def one(upn: str) -> ConversationReference:
        async with gate:
            return await services.notifier.resolve(upn)

    try:
        return list(await asyncio.gather(*(one(u) for u in world.new_users("scale", count, installed=True))))
    finally:
        await services.aclose()


async def _measure_size(
    world: World, sizes: Sizes, count: int, real: list[ConversationReference]
) -> tuple[Timing, Timing, float]:
    prefix = world.fresh_table_prefix()
    stride = probe_stride(count, len(real))
    fill = await populate(world, prefix + "accounts", count, real, stride)
    probe = [synthetic_upn(i) for i in range(0, count, stride)][: len(real)]
    message = MessageContent(text="scale")

    # Hit path: the process LRU holds the entries (primed without 100k round trips; it keeps at most
    # its max_entries, 50,000 by default, so the most recent ones: the probed entries are remembered
    # last, as for recipients this instance sends to).
    services = build_services(load_settings(world.env))
    probed = {i * stride for i in range(len(probe))}
    try:
        store = services.store
        assert isinstance(store, CachedRecipientStore)
        for i in [*(i for i in range(count) if i not in probed), *sorted(probed)]:
            real_entry = target(real, i, stride)
            entry = ConversationReference(
                real_entry.tenant_id,
                real_entry.account_id,
                real_entry.conversation_id,
                real_entry.service_url,
                upn=synthetic_upn(i),
            )
            store._remember((world.tenant_id.lower(), recipient_key(synthetic_upn(i))), entry)
        world.fake.clear_log()
        hit = await measure(
            lambda i: services.notifier.send(probe[i % len(probe)], message), n=sizes.n, repeats=sizes.repeats
        )
        _check_one_request_per_send(world, sizes.n * (sizes.repeats + 1), "LRU hit")
    finally:
        await services.aclose()

    # Table path: no process cache in front of Table Storage (a fresh instance's first lookups).
    settings = load_settings(world.env)
    services = build_services(settings, store=TableRecipientStore(_table_client(world, prefix + "accounts")))
    try:
        world.fake.clear_log()
        table = await measure(
            lambda i: services.notifier.send(probe[i % len(probe)], message), n=sizes.cache_probe, repeats=sizes.repeats
        )
        _check_one_request_per_send(world, sizes.cache_probe * (sizes.repeats + 1), "Table lookup")
    finally:
        await services.aclose()
    return hit, table, fill


def _check_one_request_per_send(world: World, sends: int, what: str) -> None:
    """The fake saw exactly one upstream request per send (the send itself), tokens aside."""
    upstream = [e["route"] for e in world.fake.log() if e["route"].startswith(("graph.", "connector."))]
    if upstream != ["connector.send"] * sends:
        raise RuntimeError(f"{what}: {len(upstream)} upstream requests for {sends} sends")


def _table_client(world: World, name: str) -> Any:
    from azure.data.tables.aio import TableClient

    return TableClient.from_connection_string(world.env["AzureWebJobsStorage"], table_name=name)


async def cache_scale(world: World, sizes: Sizes) -> tuple[list[Line], list[str]]:
    real = await _real_entries(world, sizes.warm_recipients)
    small_hit, small_table, _ = await _measure_size(world, sizes, sizes.cache_small, real)
    large_hit, large_table, fill = await _measure_size(world, sizes, sizes.cache_large, real)
    big, small = f"{sizes.cache_large:,}", f"{sizes.cache_small:,}"
    hit_cpu = large_hit.cpu.median / small_hit.cpu.median
    hit_wall = large_hit.wall.median / small_hit.wall.median
    table_cpu = large_table.cpu.median / small_table.cpu.median
    table_wall = large_table.wall.median / small_table.wall.median
    lines = [
        Line("6", f"LRU hit, {small} cached: CPU / wall per send", f"{small_hit.cpu.us()} / {small_hit.wall.ms()}", ""),
        Line("6", f"LRU hit, {big} cached: CPU / wall per send", f"{large_hit.cpu.us()} / {large_hit.wall.ms()}", ""),
        Line(
            "6",
            f"LRU hit {big} / {small}",
            f"CPU {hit_cpu:.2f}x, wall {hit_wall:.2f}x",
            "<= 1.2x",
            hit_cpu <= 1.2 and hit_wall <= 1.2,
        ),
        Line(
            "6",
            f"Table lookup, {small} cached: CPU / wall per send",
            f"{small_table.cpu.us()} / {small_table.wall.ms()}",
            "",
        ),
        Line(
            "6",
            f"Table lookup, {big} cached: CPU / wall per send",
            f"{large_table.cpu.us()} / {large_table.wall.ms()}",
            "",
        ),
        Line(
            "6",
            f"Table lookup {big} / {small}",
            f"CPU {table_cpu:.2f}x, wall {table_wall:.2f}x",
            "<= 1.2x",
            table_cpu <= 1.2 and table_wall <= 1.2,
        ),
    ]
    notes = [f"Row 6: {big} entries written to Azurite with batch transactions in {fill:.1f} s."]
    return lines, notes
