"""One behaviour suite for the notification and delivery store, run against both implementations:
Azure Table Storage on Azurite and the in-memory store. The semantics are what the fan-out and the
lifecycle (status, update, recall) rely on; the conditions are Table Storage's own: an Insert of an
existing entity fails (409 EntityAlreadyExists), an Update with a stale ETag fails (412
UpdateConditionNotMet) and an Update of a missing entity fails (404 ResourceNotFound), see
https://learn.microsoft.com/rest/api/storageservices/table-service-error-codes; a query returns a
partition's entities in RowKey order (https://learn.microsoft.com/rest/api/storageservices/query-entities)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import msgspec
import pytest

from shared.errors import InvalidRequestError
from shared.message_content import MessageContent
from shared.response_models import DeliveryCounts
from shared.storage.notification_rows import content_json
from shared.storage.notifications import (
    Delivery,
    Header,
    MemoryNotificationStore,
    NotificationStore,
    TableNotificationStore,
    note,
)
from tests.azurite import Azurite
from tests.tables import BACKENDS, azurite_tables, backend

TENANT = "0b6f3c2e-3a53-4f7c-9d1e-1f4a9d0c2b11"
CARD = {"type": "AdaptiveCard", "version": "1.5", "body": [{"type": "TextBlock", "text": "Build 42"}]}


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, azurite: Azurite) -> AsyncIterator[NotificationStore]:
    async with backend(
        request.param,
        azurite,
        MemoryNotificationStore,
        lambda tables: TableNotificationStore(tables("notifications"), tables("deliveries")),
    ) as built:
        yield built


def header(notification_id: str = "order-42", **changes: object) -> Header:
    content = MessageContent(text="Build **42** passed", card=CARD, summary="Build 42")
    made = Header(notification_id, TENANT, 3, "fp-1", content, "http", owner="client-a")
    return msgspec.structs.replace(made, **changes)


def sent(recipient: str, notification_id: str = "order-42", **changes: object) -> Delivery:
    row = Delivery(
        notification_id,
        recipient,
        TENANT,
        "sent",
        activity_id="1700000000001",
        conversation_id="a:conv-1",
        service_url="https://smba.trafficmanager.net/emea/",
    )
    return msgspec.structs.replace(row, **changes)


async def test_a_header_reads_back_as_written(store: NotificationStore) -> None:
    assert await store.create_header(header()) == header()
    found = await store.get_header("order-42")
    assert found is not None
    assert (found.notification_id, found.tenant_id, found.total, found.fingerprint) == ("order-42", TENANT, 3, "fp-1")
    assert (found.source, found.owner, found.recalled) == ("http", "client-a", False)
    assert (found.content.text, found.content.card, found.content.summary) == ("Build **42** passed", CARD, "Build 42")


async def test_an_unknown_header_is_none(store: NotificationStore) -> None:
    assert await store.get_header("nobody-made-this") is None


@pytest.mark.parametrize(
    "written",
    [
        # As the app writes a header (content split over "Content", "Content1", ... and counted).
        {"Source": "http", "Owner": "client-a", "ContentParts": 1},
        # As rows written before the source, the owner and the content's parts were recorded.
        {},
    ],
)
async def test_a_header_row_in_the_stored_entity_format_loads(azurite: Azurite, written: dict[str, object]) -> None:
    stored = (
        '{"text":"Build **42** passed",'
        '"card":{"type":"AdaptiveCard","version":"1.5","body":[{"type":"TextBlock","text":"Build 42"}]},'
        '"summary":"Build 42"}'
    )
    async with azurite_tables(azurite) as tables:
        store = TableNotificationStore(tables("notifications"), tables("deliveries"))
        assert await store.get_header("order-42") is None  # (makes the tables)
        entity = {"PartitionKey": "order-42", "RowKey": "notification", "NotificationId": "order-42"}
        entity |= {"TenantId": TENANT, "Total": 3, "Fingerprint": "fp-1", "Content": stored, **written}
        await tables("notifications").create_entity(entity)
        found = await store.get_header("order-42")
        await store.close()
    assert found is not None and (found.total, found.fingerprint) == (3, "fp-1")
    assert (found.content.text, found.content.card, found.content.summary) == ("Build **42** passed", CARD, "Build 42")
    assert content_json(found.content) == stored  # and written back the same way


async def test_the_first_header_of_an_id_is_kept(store: NotificationStore) -> None:
    await store.create_header(header())
    again = await store.create_header(header(fingerprint="fp-2", total=9, owner="client-b"))
    assert (again.fingerprint, again.total, again.owner) == ("fp-1", 3, "client-a")
    stored = await store.get_header("order-42")
    assert stored is not None and stored.fingerprint == "fp-1"


async def test_content_larger_than_one_property_reads_back_whole(store: NotificationStore) -> None:
    text = "".join(f"line {i}: ü€😀\n" for i in range(6000))  # ~100 K UTF-16 units: several properties
    big = header(content=MessageContent(text=text, card=None, summary=None))
    await store.create_header(big)
    found = await store.get_header("order-42")
    assert found is not None and found.content.text == text and found.content.card is None


async def test_a_recall_is_recorded_on_the_header(store: NotificationStore) -> None:
    await store.create_header(header())
    await store.mark_recalled("order-42")
    found = await store.get_header("order-42")
    assert found is not None and found.recalled and found.fingerprint == "fp-1"


async def test_an_update_replaces_the_content_only(store: NotificationStore) -> None:
    await store.create_header(header())
    await store.set_content("order-42", MessageContent(text="Build **42** was rolled back"))
    found = await store.get_header("order-42")
    assert found is not None
    assert (found.content.text, found.content.card, found.content.summary) == (
        "Build **42** was rolled back",
        None,
        None,
    )
    assert (found.fingerprint, found.total, found.owner, found.recalled) == ("fp-1", 3, "client-a", False)


async def test_recall_and_update_of_a_notification_without_header_write_nothing(store: NotificationStore) -> None:
    await store.mark_recalled("single-send")
    await store.set_content("single-send", MessageContent(text="new"))
    assert await store.get_header("single-send") is None


async def test_add_pending_gives_every_recipient_a_row_in_request_order(store: NotificationStore) -> None:
    rows = await store.add_pending("order-42", TENANT, ["carol@contoso.com", "alice@contoso.com", "bob@contoso.com"])
    assert [(r.recipient, r.state) for r in rows] == [
        ("carol@contoso.com", "pending"),
        ("alice@contoso.com", "pending"),
        ("bob@contoso.com", "pending"),
    ]
    assert [r.recipient for r in await store.all("order-42")] == [
        "alice@contoso.com",
        "bob@contoso.com",
        "carol@contoso.com",
    ]


async def test_add_pending_never_overwrites_a_row(store: NotificationStore) -> None:
    assert await store.create(sent("alice@contoso.com"))
    rows = await store.add_pending("order-42", TENANT, ["alice@contoso.com", "bob@contoso.com"])
    assert [(r.recipient, r.state) for r in rows] == [("alice@contoso.com", "sent"), ("bob@contoso.com", "pending")]
    again = await store.add_pending("order-42", TENANT, ["bob@contoso.com", "alice@contoso.com"])
    assert [r.state for r in again] == ["pending", "sent"]
    assert await store.counts("order-42") == DeliveryCounts(pending=1, sent=1)


async def test_concurrent_add_pending_makes_one_row_per_recipient(store: NotificationStore) -> None:
    recipients = [f"user{i:03}@contoso.com" for i in range(150)]  # more than one batch of 100
    await asyncio.gather(*(store.add_pending("order-42", TENANT, recipients) for _ in range(3)))
    assert len(await store.all("order-42")) == 150
    assert await store.counts("order-42") == DeliveryCounts(pending=150)


async def test_a_row_reads_back_as_written_whatever_the_recipients_case(store: NotificationStore) -> None:
    row = sent(
        "Alice@Contoso.com",
        state="failed",
        activity_id=None,
        error_code="recipient_blocked_bot",
        error_message="The user blocked the bot.",
        error_status=403,
        content_fingerprint="cf-1",
    )
    assert await store.create(row)
    found = await store.get("order-42", "alice@CONTOSO.com")
    assert found is not None and found.etag
    assert msgspec.structs.replace(found, etag=None) == row


async def test_empty_texts_and_a_zero_status_read_as_absent(store: NotificationStore) -> None:
    await store.create(sent("alice@contoso.com", activity_id="", error_code="", error_status=0))
    found = await store.get("order-42", "alice@contoso.com")
    assert found is not None and (found.activity_id, found.error_code, found.error_status) == (None, None, None)


async def test_an_unknown_row_is_none(store: NotificationStore) -> None:
    assert await store.get("order-42", "nobody@contoso.com") is None


async def test_create_inserts_only_if_absent(store: NotificationStore) -> None:
    assert await store.create(sent("alice@contoso.com"))
    assert not await store.create(sent("alice@contoso.com", state="failed"))
    found = await store.get("order-42", "alice@contoso.com")
    assert found is not None and found.state == "sent"


async def test_record_with_the_etag_read_writes_and_changes_the_etag(store: NotificationStore) -> None:
    await store.add_pending("order-42", TENANT, ["alice@contoso.com"])
    read = await store.get("order-42", "alice@contoso.com")
    assert read is not None and read.etag
    assert await store.record(sent("alice@contoso.com"), if_match=read.etag)
    after = await store.get("order-42", "alice@contoso.com")
    assert after is not None and after.state == "sent" and after.etag != read.etag


async def test_record_with_a_stale_etag_writes_nothing(store: NotificationStore) -> None:
    await store.add_pending("order-42", TENANT, ["alice@contoso.com"])
    read = await store.get("order-42", "alice@contoso.com")
    assert read is not None
    assert await store.record(sent("alice@contoso.com"), if_match=read.etag)
    assert not await store.record(sent("alice@contoso.com", state="recalled"), if_match=read.etag)
    after = await store.get("order-42", "alice@contoso.com")
    assert after is not None and after.state == "sent"


async def test_a_conditional_record_of_a_missing_row_writes_nothing(store: NotificationStore) -> None:
    assert not await store.record(sent("alice@contoso.com"), if_match="W/\"datetime'2026-01-01T00%3A00%3A00Z'\"")
    assert await store.get("order-42", "alice@contoso.com") is None


async def test_an_unconditional_record_inserts_or_overwrites(store: NotificationStore) -> None:
    assert await store.record(sent("alice@contoso.com", state="pending"))
    assert await store.record(sent("alice@contoso.com", state="recalled"))
    found = await store.get("order-42", "alice@contoso.com")
    assert found is not None and found.state == "recalled"


async def test_note_inserts_a_new_row_and_rewrites_a_read_one_only_if_unchanged(store: NotificationStore) -> None:
    assert await note(store, sent("alice@contoso.com", state="pending"))
    assert not await note(store, sent("alice@contoso.com"))  # no etag: insert-if-absent, and it exists
    read = await store.get("order-42", "alice@contoso.com")
    assert read is not None
    assert await note(store, msgspec.structs.replace(read, state="sent"))
    assert not await note(store, msgspec.structs.replace(read, state="recalled"))


async def test_settle_inserts_a_missing_row(store: NotificationStore) -> None:
    for likely_new in (False, True):
        recipient = f"new{likely_new}@contoso.com"
        assert (await store.settle(sent(recipient), likely_new=likely_new)).state == "sent"
        found = await store.get("order-42", recipient)
        assert found is not None and found.state == "sent"


@pytest.mark.parametrize("likely_new", [False, True])
async def test_settle_overwrites_a_pending_row_only(store: NotificationStore, likely_new: bool) -> None:
    await store.add_pending("order-42", TENANT, ["alice@contoso.com", "bob@contoso.com"])
    assert (await store.settle(sent("alice@contoso.com"), likely_new=likely_new)).state == "sent"
    await store.record(sent("bob@contoso.com", state="recalled"))
    kept = await store.settle(sent("bob@contoso.com"), likely_new=likely_new)
    assert kept.state == "recalled"
    assert await store.counts("order-42") == DeliveryCounts(sent=1, recalled=1)


async def test_concurrent_settles_agree_on_one_final_row(store: NotificationStore) -> None:
    await store.add_pending("order-42", TENANT, ["alice@contoso.com"])
    outcomes = [sent("alice@contoso.com", activity_id=f"17000000000{i:02}") for i in range(4)]
    settled = await asyncio.gather(*(store.settle(o) for o in outcomes))
    final = await store.get("order-42", "alice@contoso.com")
    assert final is not None and final.activity_id in {o.activity_id for o in outcomes}
    assert {s.activity_id for s in settled} == {final.activity_id}


async def test_counts_count_each_state(store: NotificationStore) -> None:
    await store.add_pending("order-42", TENANT, [f"u{i}@contoso.com" for i in range(6)])
    await store.record(sent("u0@contoso.com"))
    await store.record(sent("u1@contoso.com"))
    await store.record(sent("u2@contoso.com", state="failed", error_code="recipient_not_found"))
    await store.record(sent("u3@contoso.com", state="recalled"))
    assert await store.counts("order-42") == DeliveryCounts(pending=2, sent=2, failed=1, recalled=1)
    assert await store.counts("another") == DeliveryCounts()


async def test_notifications_are_separate(store: NotificationStore) -> None:
    await store.add_pending("order-42", TENANT, ["alice@contoso.com"])
    await store.add_pending("order-43", TENANT, ["bob@contoso.com", "carol@contoso.com"])
    assert [r.recipient for r in await store.all("order-42")] == ["alice@contoso.com"]
    assert await store.get("order-43", "alice@contoso.com") is None


async def test_pages_list_every_row_once_in_key_order(store: NotificationStore) -> None:
    recipients = [f"user{i}@contoso.com" for i in (4, 0, 3, 1, 2)]
    await store.add_pending("order-42", TENANT, recipients)
    seen: list[str] = []
    token: str | None = None
    for _ in range(10):
        rows, token = await store.page("order-42", 2, token)
        assert len(rows) <= 2
        seen += [r.recipient for r in rows]
        if token is None:
            break
    assert seen == sorted(recipients)


@pytest.mark.parametrize("token", ["not base64 at all!", "e30", "WzEsMl0", "eyJQYXJ0aXRpb25LZXkiOjF9"])
async def test_a_page_token_we_did_not_hand_out_is_refused(store: NotificationStore, token: str) -> None:
    with pytest.raises(InvalidRequestError) as raised:
        await store.page("order-42", 2, token)
    assert (raised.value.code, raised.value.target) == ("invalid_continuation_token", "continuationToken")
