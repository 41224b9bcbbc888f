"""One behaviour suite for the idempotency records, run against both implementations: Azure Table
Storage on Azurite and the in-memory store. The semantics are what shared.delivery relies on; the
conditions are Table Storage's own: an Insert of an existing entity fails (409 EntityAlreadyExists) and
an Update or Delete with a stale ETag fails (412 UpdateConditionNotMet), see
https://learn.microsoft.com/rest/api/storageservices/table-service-error-codes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from shared.errors import InvalidRequestError
from shared.storage.idempotency import (
    DEFAULT_LEASE_SECONDS,
    Claimed,
    IdempotencyStore,
    InFlight,
    MemoryIdempotencyStore,
    Recorded,
    TableIdempotencyStore,
)
from tests.azurite import Azurite
from tests.tables import azurite_tables

TENANT = "0b6f3c2e-3a53-4f7c-9d1e-1f4a9d0c2b11"
OTHER_TENANT = "6a1f0e44-92b2-4a43-b7a4-6c3f5d2e8f00"
SHORT_LEASE = 0.5
# The lease of whoever takes a marker over: long enough that a loaded machine does not see it end too
# (a marker whose lease ended is fair game again, so a short one would let a second takeover win).
TAKER_LEASE = 60.0

StoreFactory = Callable[[float], IdempotencyStore]


@pytest.fixture(params=["memory", "table"])
async def make_store(request: pytest.FixtureRequest, azurite: Azurite) -> AsyncIterator[StoreFactory]:
    """``make_store(lease_seconds)``: a store; with Table Storage, every store of one test shares the
    table, as the app's instances do."""
    built: list[IdempotencyStore] = []
    memory = MemoryIdempotencyStore()
    async with azurite_tables(azurite) as table:

        def make(lease_seconds: float = DEFAULT_LEASE_SECONDS) -> IdempotencyStore:
            store: IdempotencyStore
            if request.param == "memory":
                store = memory.instance(lease_seconds=lease_seconds)
            else:
                store = TableIdempotencyStore(table("requests"), lease_seconds=lease_seconds)
            built.append(store)
            return store

        yield make
        for store in built:
            await store.close()


@pytest.fixture
def store(make_store: StoreFactory) -> IdempotencyStore:
    return make_store(DEFAULT_LEASE_SECONDS)


async def test_a_new_key_is_claimed(store: IdempotencyStore) -> None:
    assert isinstance(await store.claim("http", TENANT, "order-1", "fp"), Claimed)


async def test_a_key_in_flight_is_not_claimed_twice(store: IdempotencyStore) -> None:
    await store.claim("http", TENANT, "order-1", "fp")
    again = await store.claim("http", TENANT, "order-1", "fp")
    assert isinstance(again, InFlight)
    assert 0 < again.retry_after <= DEFAULT_LEASE_SECONDS


async def test_a_completed_key_returns_its_result_and_is_not_claimed(store: IdempotencyStore) -> None:
    claim = await store.claim("http", TENANT, "order-1", "fp")
    assert isinstance(claim, Claimed)
    body = {"status": "sent", "activityId": "1700000000001", "nested": {"n": [1, 2]}}
    await store.complete(claim, 200, body, "fp")
    assert await store.claim("http", TENANT, "order-1", "fp") == Recorded(200, body)
    assert await store.claim("http", TENANT, "order-1", "fp") == Recorded(200, body)


@pytest.mark.parametrize(("source", "target"), [("http", "Idempotency-Key"), ("queue", "messageId")])
@pytest.mark.parametrize("completed", [False, True])
async def test_a_key_reused_for_another_request_is_refused(
    store: IdempotencyStore, source: str, target: str, completed: bool
) -> None:
    claim = await store.claim(source, TENANT, "order-1", "fp")  # type: ignore[arg-type]
    assert isinstance(claim, Claimed)
    if completed:
        await store.complete(claim, 200, {"status": "sent"}, "fp")
    with pytest.raises(InvalidRequestError) as raised:
        await store.claim(source, TENANT, "order-1", "another fingerprint")  # type: ignore[arg-type]
    assert (raised.value.code, raised.value.http_status, raised.value.target) == ("idempotency_key_reused", 422, target)


async def test_a_released_key_is_claimed_again(store: IdempotencyStore) -> None:
    claim = await store.claim("queue", TENANT, "m-1", "fp")
    assert isinstance(claim, Claimed)
    await store.release(claim)
    assert isinstance(await store.claim("queue", TENANT, "m-1", "fp"), Claimed)


async def test_sources_and_tenants_are_separate_keys(store: IdempotencyStore) -> None:
    for source, tenant in [("http", TENANT), ("queue", TENANT), ("delivery", TENANT), ("http", OTHER_TENANT)]:
        assert isinstance(await store.claim(source, tenant, "same-key", "fp"), Claimed)  # type: ignore[arg-type]


async def test_tenant_ids_are_case_insensitive(store: IdempotencyStore) -> None:
    await store.claim("http", TENANT.upper(), "order-1", "fp")
    assert isinstance(await store.claim("http", TENANT, "order-1", "fp"), InFlight)


@pytest.mark.parametrize("key", ["guest#EXT#/a?b%c\\d", "ключ-ü-😀", "x" * 200])
async def test_any_valid_key_is_stored(store: IdempotencyStore, key: str) -> None:
    claim = await store.claim("http", TENANT, key, "fp")
    assert isinstance(claim, Claimed)
    await store.complete(claim, 201, {"key": key}, "fp")
    assert await store.claim("http", TENANT, key, "fp") == Recorded(201, {"key": key})


async def test_concurrent_claims_of_a_new_key_have_one_winner(store: IdempotencyStore) -> None:
    claims = await asyncio.gather(*(store.claim("http", TENANT, "race", "fp") for _ in range(5)))
    assert sum(isinstance(c, Claimed) for c in claims) == 1
    assert sum(isinstance(c, InFlight) for c in claims) == 4


async def test_a_marker_whose_lease_ran_out_is_taken_over(make_store: StoreFactory) -> None:
    dead = await make_store(SHORT_LEASE).claim("queue", TENANT, "m-1", "fp")
    assert isinstance(dead, Claimed)
    await asyncio.sleep(SHORT_LEASE + 0.1)
    store = make_store(TAKER_LEASE)
    taken = await store.claim("queue", TENANT, "m-1", "fp")
    assert isinstance(taken, Claimed) and taken.etag != dead.etag
    # The attempt that outlived its lease can neither record a result nor free the key (stale ETag):
    await store.complete(dead, 200, {"by": "dead"}, "fp")
    await store.release(dead)
    assert isinstance(await store.claim("queue", TENANT, "m-1", "fp"), InFlight)
    await store.complete(taken, 200, {"by": "taker"}, "fp")
    assert await store.claim("queue", TENANT, "m-1", "fp") == Recorded(200, {"by": "taker"})


async def test_concurrent_takeovers_have_one_winner(make_store: StoreFactory) -> None:
    assert isinstance(await make_store(SHORT_LEASE).claim("queue", TENANT, "m-1", "fp"), Claimed)
    instances = [make_store(TAKER_LEASE) for _ in range(4)]
    await asyncio.sleep(SHORT_LEASE + 0.1)
    claims = await asyncio.gather(*(s.claim("queue", TENANT, "m-1", "fp") for s in instances))
    assert sum(isinstance(c, Claimed) for c in claims) == 1


async def test_a_completed_key_is_not_taken_over_after_the_lease(make_store: StoreFactory) -> None:
    store = make_store(SHORT_LEASE)
    claim = await store.claim("http", TENANT, "order-1", "fp")
    assert isinstance(claim, Claimed)
    await store.complete(claim, 400, {"error": {"code": "invalid_card"}}, "fp")
    await asyncio.sleep(SHORT_LEASE + 0.1)
    assert await store.claim("http", TENANT, "order-1", "fp") == Recorded(400, {"error": {"code": "invalid_card"}})


async def test_wait_returns_the_result_recorded_meanwhile(store: IdempotencyStore) -> None:
    claim = await store.claim("http", TENANT, "order-1", "fp")
    assert isinstance(claim, Claimed)

    async def finish() -> None:
        await asyncio.sleep(0.2)
        await store.complete(claim, 200, {"status": "sent"}, "fp")

    waited, _ = await asyncio.gather(store.wait("http", TENANT, "order-1", 5.0), finish())
    assert waited == Recorded(200, {"status": "sent"})


async def test_wait_ends_when_the_key_is_released(store: IdempotencyStore) -> None:
    claim = await store.claim("http", TENANT, "order-1", "fp")
    assert isinstance(claim, Claimed)

    async def give_up() -> None:
        await asyncio.sleep(0.2)
        await store.release(claim)

    loop = asyncio.get_running_loop()
    started = loop.time()
    waited, _ = await asyncio.gather(store.wait("http", TENANT, "order-1", 5.0), give_up())
    assert waited is None and loop.time() - started < 4.0
    assert isinstance(await store.claim("http", TENANT, "order-1", "fp"), Claimed)


async def test_wait_gives_up_after_its_time(store: IdempotencyStore) -> None:
    await store.claim("http", TENANT, "order-1", "fp")
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await store.wait("http", TENANT, "order-1", 0.3) is None
    assert 0.25 <= loop.time() - started < 3.0
    assert isinstance(await store.claim("http", TENANT, "order-1", "fp"), InFlight)
