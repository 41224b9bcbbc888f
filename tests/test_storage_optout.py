"""One behaviour suite for the opt-out records, run against both implementations: Azure Table
Storage on Azurite and the in-memory store. The semantics are what the install activities (record,
clear) and the cold send's ReinstallAfterUninstall check (is_opted_out) rely on."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from shared.storage.optout import MemoryOptOutStore, OptOutStore, TableOptOutStore
from tests.azurite import Azurite
from tests.tables import BACKENDS, backend

TENANT = "0b6f3c2e-3a53-4f7c-9d1e-1f4a9d0c2b11"
OTHER_TENANT = "6a1f0e44-92b2-4a43-b7a4-6c3f5d2e8f00"
OID = "11111111-2222-3333-4444-555555555555"


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, azurite: Azurite) -> AsyncIterator[OptOutStore]:
    async with backend(
        request.param, azurite, MemoryOptOutStore, lambda tables: TableOptOutStore(tables("optouts"))
    ) as built:
        yield built


async def test_nobody_has_opted_out_at_first(store: OptOutStore) -> None:
    assert not await store.is_opted_out(TENANT, "alice@contoso.com")


async def test_an_opt_out_is_known_by_every_name_given_case_insensitively(store: OptOutStore) -> None:
    await store.record(TENANT, [OID, "Alice@Contoso.com", ""])
    assert await store.is_opted_out(TENANT, "alice@contoso.com")
    assert await store.is_opted_out(TENANT.upper(), " ALICE@contoso.com ")
    assert await store.is_opted_out(TENANT, OID.upper())
    assert not await store.is_opted_out(TENANT, "bob@contoso.com")


async def test_opt_outs_are_per_tenant(store: OptOutStore) -> None:
    await store.record(TENANT, ["alice@contoso.com"])
    assert not await store.is_opted_out(OTHER_TENANT, "alice@contoso.com")


async def test_recording_twice_is_one_opt_out(store: OptOutStore) -> None:
    await store.record(TENANT, ["alice@contoso.com"])
    await store.record(TENANT, ["alice@contoso.com", "ALICE@contoso.com"])
    await store.clear(TENANT, ["alice@contoso.com"])
    assert not await store.is_opted_out(TENANT, "alice@contoso.com")


async def test_an_install_clears_the_names_it_gives_only(store: OptOutStore) -> None:
    await store.record(TENANT, [OID, "alice@contoso.com"])
    await store.clear(TENANT, ["Alice@Contoso.com"])
    assert not await store.is_opted_out(TENANT, "alice@contoso.com")
    assert await store.is_opted_out(TENANT, OID)


async def test_clearing_names_without_an_opt_out_is_harmless(store: OptOutStore) -> None:
    await store.clear(TENANT, ["nobody@contoso.com", ""])
    assert not await store.is_opted_out(TENANT, "nobody@contoso.com")


@pytest.mark.parametrize("name", ["guest_fabrikam.com#EXT#@contoso.onmicrosoft.com", "odd/slash\\back?q%@contoso.com"])
async def test_names_table_storage_forbids_in_keys_work(store: OptOutStore, name: str) -> None:
    await store.record(TENANT, [name])
    assert await store.is_opted_out(TENANT, name)
    await store.clear(TENANT, [name])
    assert not await store.is_opted_out(TENANT, name)
