"""One behaviour suite for the ChannelAccount store, run against every implementation: in memory,
Azure Table Storage on Azurite, and the in-process LRU in front of Table Storage."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import msgspec
import pytest
from azure.data.tables.aio import TableServiceClient

from shared.bootstrap import quiet_url_loggers
from shared.storage.references import (
    CachedRecipientStore,
    ConversationReference,
    MemoryRecipientStore,
    RecipientStore,
    TableRecipientStore,
)
from shared.storage.tables import escape_key, unescape_key
from shared.tablehttp import TableHttpTransport
from tests.azurite import Azurite

TENANT = "0b6f3c2e-3a53-4f7c-9d1e-1f4a9d0c2b11"
OTHER_TENANT = "6a1f0e44-92b2-4a43-b7a4-6c3f5d2e8f00"


@pytest.fixture(params=["memory", "table", "cached-table"])
async def store(request: pytest.FixtureRequest, azurite: Azurite) -> AsyncIterator[RecipientStore]:
    if request.param == "memory":
        yield MemoryRecipientStore()
        return
    quiet_url_loggers()  # as the app does: Table Storage URLs carry the keys (recipients' names)
    service = TableServiceClient.from_connection_string(azurite.connection_string, transport=TableHttpTransport())
    table = service.get_table_client("s" + uuid.uuid4().hex[:12] + "accounts")
    inner = TableRecipientStore(table)
    built: RecipientStore = inner if request.param == "table" else CachedRecipientStore(inner, max_entries=2)
    yield built
    await built.close()
    await service.close()


def entry(upn: str = "alice@contoso.com", oid: str = "11111111-2222-3333-4444-555555555555") -> ConversationReference:
    return ConversationReference(
        tenant_id=TENANT,
        account_id="29:1abc-" + oid,
        conversation_id="a:conv-" + oid,
        service_url="https://smba.trafficmanager.net/emea/",
        object_id=oid,
        upn=upn,
    )


async def test_missing_entry_is_none(store: RecipientStore) -> None:
    assert await store.get(TENANT, "nobody@contoso.com") is None


async def test_entry_is_found_by_upn_and_object_id_case_insensitively(store: RecipientStore) -> None:
    await store.put(entry(), ["Alice@Contoso.com"])
    by_upn = await store.get(TENANT, "ALICE@contoso.com")
    by_oid = await store.get(TENANT, "11111111-2222-3333-4444-555555555555")
    assert by_upn is not None and by_oid is not None
    assert by_upn.account_id == by_oid.account_id == "29:1abc-11111111-2222-3333-4444-555555555555"
    assert by_upn.conversation_id == "a:conv-11111111-2222-3333-4444-555555555555"
    assert by_upn.service_url == "https://smba.trafficmanager.net/emea/"
    assert by_upn.updated_at is not None


async def test_entries_are_per_tenant(store: RecipientStore) -> None:
    await store.put(entry(), [])
    assert await store.get(OTHER_TENANT, "alice@contoso.com") is None
    assert await store.count(TENANT) == 1
    assert await store.count(OTHER_TENANT) == 0


@pytest.mark.parametrize(
    "upn",
    [
        "guest_fabrikam.com#EXT#@contoso.onmicrosoft.com",
        "o'neil@contoso.com",
        "odd/slash\\back?query%percent@contoso.com",
        "tab\there@contoso.com",
    ],
)
async def test_keys_table_storage_forbids_round_trip(store: RecipientStore, upn: str) -> None:
    await store.put(entry(upn=upn), [upn])
    found = await store.get(TENANT, upn)
    assert found is not None and found.upn == upn


async def test_evict_removes_every_alias(store: RecipientStore) -> None:
    await store.put(entry(), ["alias-given-by-caller@contoso.com"])
    evicted = await store.evict(TENANT, "alice@contoso.com")
    assert evicted is not None and evicted.account_id.startswith("29:")
    for name in ("alice@contoso.com", "11111111-2222-3333-4444-555555555555", "alias-given-by-caller@contoso.com"):
        assert await store.get(TENANT, name) is None
    assert await store.evict(TENANT, "alice@contoso.com") is None


async def test_put_replaces_a_previous_resolution(store: RecipientStore) -> None:
    await store.put(entry(), [])
    newer = msgspec.structs.replace(entry(), conversation_id="a:newer", updated_at=None)
    await store.put(newer, [])
    found = await store.get(TENANT, "alice@contoso.com")
    assert found is not None and found.conversation_id == "a:newer"


async def test_many_recipients_stay_distinct(store: RecipientStore) -> None:
    for i in range(5):
        oid = f"00000000-0000-0000-0000-00000000000{i}"
        await store.put(entry(upn=f"user{i}@contoso.com", oid=oid), [])
    for i in range(5):
        found = await store.get(TENANT, f"user{i}@contoso.com")
        assert found is not None and found.object_id == f"00000000-0000-0000-0000-00000000000{i}"
    assert await store.count(TENANT) == 5


def test_escape_key_is_reversible_and_free_of_forbidden_characters() -> None:
    raw = "a/b\\c#d?e%f\x00g\x7fh\x9fi#EXT#"
    escaped = escape_key(raw)
    assert not any(ch in escaped for ch in "/\\#?") and all(
        ord(c) >= 0x20 and not 0x7F <= ord(c) <= 0x9F for c in escaped
    )
    assert unescape_key(escaped) == raw
