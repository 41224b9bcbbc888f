"""One behaviour suite for the kept queue failures, run against both implementations: Azure Table
Storage on Azurite and the in-memory store. The semantics are what the queue trigger (keep) and the
operator's commands (list, show, replay, drop) rely on."""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import AsyncIterator

import pytest

from shared.storage.failures import MAX_KEPT_BODY, FailureRecord, FailureStore, MemoryFailureStore, TableFailureStore
from tests.azurite import Azurite
from tests.tables import BACKENDS, backend

ENQUEUED = datetime.datetime(2026, 11, 30, 8, 15, 0, tzinfo=datetime.UTC)
ERROR = {"code": "recipient_not_found", "message": "No user bob@contoso.com in the tenant.", "target": "recipient"}
BODY = b'{"recipient": "bob@contoso.com", "text": "Build 42 passed"}'


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, azurite: Azurite) -> AsyncIterator[FailureStore]:
    async with backend(
        request.param, azurite, MemoryFailureStore, lambda tables: TableFailureStore(tables("failures"))
    ) as built:
        yield built


async def keep(store: FailureStore, message_id: str = "m-1", body: bytes = BODY, **error: str) -> FailureRecord:
    return await store.keep(
        message_id=message_id,
        error=error or ERROR,
        http_status=404,
        body=body,
        delivery_count=1,
        enqueued_time=ENQUEUED,
        correlation_id="corr-1",
    )


def same_time(a: datetime.datetime, b: datetime.datetime) -> bool:
    return abs(a - b) < datetime.timedelta(milliseconds=1)


async def test_a_kept_failure_reads_back_whole(store: FailureStore) -> None:
    kept = await keep(store)
    found = await store.get("m-1")
    assert found is not None
    assert (found.message_id, found.code, found.message, found.target, found.http_status) == (
        "m-1",
        "recipient_not_found",
        "No user bob@contoso.com in the tenant.",
        "recipient",
        404,
    )
    assert (found.body, found.body_truncated, found.delivery_count, found.correlation_id) == (BODY, False, 1, "corr-1")
    assert found.enqueued_time == ENQUEUED
    assert (found.failures, found.replays) == (1, 0)
    assert same_time(found.first_failed_at, kept.first_failed_at) and same_time(
        found.last_failed_at, kept.last_failed_at
    )
    assert found.first_failed_at == found.last_failed_at


async def test_an_unknown_failure_is_none(store: FailureStore) -> None:
    assert await store.get("never-failed") is None


async def test_an_error_without_code_or_target(store: FailureStore) -> None:
    await store.keep(
        message_id="m-1",
        error={},
        http_status=400,
        body=BODY,
        delivery_count=None,
        enqueued_time=None,
        correlation_id=None,
    )
    found = await store.get("m-1")
    assert found is not None
    assert (found.code, found.message, found.target, found.delivery_count, found.enqueued_time) == (
        "notify_error",
        "",
        None,
        None,
        None,
    )
    assert found.correlation_id is None


@pytest.mark.parametrize("size", [0, 1, 63_000, 63_001, 63 * 1024 + 1, 200_000])
async def test_a_body_is_kept_byte_for_byte(store: FailureStore, size: int) -> None:
    body = bytes((i * 7 + 3) % 256 for i in range(size))  # not UTF-8
    await keep(store, body=body)
    found = await store.get("m-1")
    assert found is not None and found.body == body and not found.body_truncated


async def test_a_body_larger_than_a_record_holds_is_cut_and_flagged(
    store: FailureStore, caplog: pytest.LogCaptureFixture
) -> None:
    body = b"x" * (MAX_KEPT_BODY + 10)
    with caplog.at_level(logging.ERROR):
        kept = await keep(store, body=body)
    assert kept.body_truncated and len(kept.body) == MAX_KEPT_BODY
    found = await store.get("m-1")
    assert found is not None and found.body_truncated and found.body == body[:MAX_KEPT_BODY]
    assert any("larger than a failure record holds" in r.getMessage() for r in caplog.records)


async def test_a_message_failing_again_counts_its_failures(store: FailureStore) -> None:
    first = await keep(store)
    await asyncio.sleep(0.01)
    again = await keep(store, code="recipient_blocked_bot", message="blocked")
    assert (again.failures, again.code) == (2, "recipient_blocked_bot")
    found = await store.get("m-1")
    assert found is not None and (found.failures, found.code, found.message) == (2, "recipient_blocked_bot", "blocked")
    assert same_time(found.first_failed_at, first.first_failed_at)
    assert found.last_failed_at > found.first_failed_at


async def test_a_failed_replay_is_counted_and_its_error_kept(store: FailureStore) -> None:
    kept = await keep(store)
    updated = await store.note_replay_failed(kept, {"code": "bot_not_installed", "message": "not installed"}, 403)
    assert (updated.replays, updated.failures, updated.code, updated.http_status, updated.target) == (
        1,
        1,
        "bot_not_installed",
        403,
        None,
    )
    found = await store.get("m-1")
    assert found is not None
    assert (found.replays, found.code, found.message, found.http_status) == (
        1,
        "bot_not_installed",
        "not installed",
        403,
    )
    assert found.body == BODY
    again = await keep(store)  # the message fails once more later: the replays stay counted
    assert (again.failures, again.replays) == (2, 1)


async def test_failures_are_listed_oldest_first(store: FailureStore) -> None:
    for message_id in ("z-first", "a-second", "m-third"):
        await keep(store, message_id=message_id)
        await asyncio.sleep(0.01)
    assert [r.message_id for r in await store.list()] == ["z-first", "a-second", "m-third"]
    assert [r.message_id for r in await store.list(2)] == ["z-first", "a-second"]


async def test_a_dropped_failure_is_gone(store: FailureStore) -> None:
    await keep(store, message_id="m-1")
    await keep(store, message_id="m-2")
    assert await store.delete("m-1")
    assert not await store.delete("m-1")
    assert await store.get("m-1") is None
    assert [r.message_id for r in await store.list()] == ["m-2"]


@pytest.mark.parametrize("message_id", ["a/b\\c#d?e%f", "ключ-😀", "x" * 128])
async def test_any_message_id_is_kept(store: FailureStore, message_id: str) -> None:
    await keep(store, message_id=message_id)
    found = await store.get(message_id)
    assert found is not None and found.message_id == message_id
    assert [r.message_id for r in await store.list()] == [message_id]
    assert await store.delete(message_id)
