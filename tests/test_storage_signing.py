"""One behaviour suite for the deployment's signing key, run against both implementations: Azure
Table Storage on Azurite and the in-memory store. What the notification ids and queued items rely on:
the configured key when set, else one key generated once that every instance agrees on (Table
Storage's insert-if-absent: an Insert of an existing entity fails with 409 EntityAlreadyExists,
https://learn.microsoft.com/rest/api/storageservices/table-service-error-codes)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable

import pytest

from shared.storage.signing import MemorySigningKeys, Signer, SigningKeys, TableSigningKeys
from tests.azurite import Azurite
from tests.tables import azurite_tables

KeysFactory = Callable[[bytes | None], SigningKeys]


@pytest.fixture(params=["memory", "table"])
async def make_keys(request: pytest.FixtureRequest, azurite: Azurite) -> AsyncIterator[KeysFactory]:
    """``make_keys(configured)``: one instance of the app's keys; all of one test share the storage."""
    built: list[SigningKeys] = []
    memory = MemorySigningKeys()
    async with azurite_tables(azurite) as table:

        def make(configured: bytes | None) -> SigningKeys:
            keys: SigningKeys
            if request.param == "memory":
                keys = memory.instance(configured)
            else:
                keys = TableSigningKeys(configured, table("keys"))
            built.append(keys)
            return keys

        yield make
        for keys in built:
            await keys.close()


async def test_the_configured_key_signs(make_keys: KeysFactory) -> None:
    key = secrets.token_bytes(32)
    signer = await make_keys(key).signer()
    assert Signer(key).verify(signer.tag("s1", "payload"), "s1", "payload")


async def test_without_a_setting_one_generated_key_serves_every_call(make_keys: KeysFactory) -> None:
    keys = make_keys(None)
    first, second = await keys.signer(), await keys.signer()
    assert second.verify(first.tag("s1", "payload"), "s1", "payload")


async def test_instances_starting_at_once_agree_on_one_generated_key(make_keys: KeysFactory) -> None:
    instances = [make_keys(None) for _ in range(4)]
    signers = await asyncio.gather(*(k.signer() for k in instances))
    assert len({s.tag("probe", "x") for s in signers}) == 1


async def test_a_configured_key_and_the_generated_one_do_not_verify_each_other(make_keys: KeysFactory) -> None:
    generated = await make_keys(None).signer()
    configured = await make_keys(secrets.token_bytes(32)).signer()
    assert not configured.verify(generated.tag("s1", "payload"), "s1", "payload")
    assert not generated.verify(configured.tag("s1", "payload"), "s1", "payload")
