"""Personal data retention (issue 17 part 3), on Azurite: the daily purge with an injected clock, and
erasing one person's rows from the command line.

The rows are the ones the app writes in normal use (sends with and without a key, a notification
to several recipients, a queue message kept as a failure, the recipient cache); the purge is run as
of "days later" by passing its clock.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from azure.functions.servicebus import ServiceBusMessage

from shared.bootstrap import Services, build_services, get_services, reset_services
from shared.retention import purge
from shared.storage.tables import escape_key
from tests.conftest import World
from tests.functions import OutputMessages, bindings, user_function
from tests.test_cli import Cli, write_settings
from tests.test_trigger_http import post

TABLES = ("requests", "notifications", "deliveries", "failures", "accounts")


@pytest.fixture(autouse=True)
def _quiet_azure(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="azure")


async def queue(body: dict[str, Any], message_id: str) -> None:
    msg = ServiceBusMessage(
        body=json.dumps(body).encode(),
        message_id=message_id,
        delivery_count=1,
        application_properties={},
        user_properties={},
    )
    await user_function("notify_queue")(msg, OutputMessages())


async def use_the_app(world: World) -> None:
    """Rows in every table, naming alice and bob."""
    alice, bob = world.user("alice"), world.user("bob")
    assert (await post({"recipient": alice.upn, "text": "Keyed"}, {"Idempotency-Key": "k-alice"})).status_code == 200
    assert (await post({"recipient": bob.upn, "text": "Keyed"}, {"Idempotency-Key": "k-bob"})).status_code == 200
    both = {"recipients": [alice.upn, bob.upn], "text": "To both"}
    assert (await post(both, {"Idempotency-Key": "k-both"})).status_code == 200
    world.tenant.block_bot(alice)
    await queue({"recipient": alice.upn, "text": "Blocked"}, "m-alice")  # kept as a failure
    world.tenant.unblock_bot(alice)
    assert (await post({"recipient": alice.upn, "text": "Again"}, {"Idempotency-Key": "k-alice-2"})).status_code == 200
    await queue({"recipient": "ghost@contoso.com", "text": "Nobody"}, "m-ghost")


async def row_counts(services: Services) -> dict[str, int]:
    counts: dict[str, int] = {}
    for suffix in TABLES:
        table = services.table(suffix)
        try:
            counts[suffix] = len([e async for e in table.list_entities(select=["RowKey"])])
        finally:
            await table.close()
    return counts


def _later(days: float) -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=days)


async def test_the_purge_deletes_rows_older_than_each_tables_retention(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RetentionDaysDeliveries", "60")
    monkeypatch.setenv("RetentionDaysFailures", "0")  # kept forever
    await use_the_app(world)
    services = get_services()
    before = await row_counts(services)
    assert all(before[t] > 0 for t in TABLES), before

    kept = dict.fromkeys(("requests", "notifications", "deliveries", "accounts"), 0)
    assert await purge(services, _later(29)) == kept
    assert await row_counts(services) == before

    deleted = await purge(services, _later(31))
    after = await row_counts(services)
    assert deleted == {
        "requests": before["requests"],
        "notifications": before["notifications"],
        "deliveries": 0,
        "accounts": before["accounts"],
    }
    assert after == {**dict.fromkeys(TABLES, 0), "deliveries": before["deliveries"], "failures": before["failures"]}

    assert (await purge(services, _later(61)))["deliveries"] == before["deliveries"]
    assert (await row_counts(services))["failures"] == before["failures"]


async def test_after_the_purge_the_app_still_works_and_ids_still_verify(world: World) -> None:
    """The purge leaves the signing key and opt-outs alone; a purged cache entry is resolved again."""
    alice = world.user("alice")
    await post({"recipient": alice.upn, "text": "Warm-up"})
    sent = json.loads((await post({"recipient": alice.upn, "text": "Unkeyed"})).get_body())
    await purge(get_services(), _later(365))
    await reset_services()  # a new process must read the same key from storage

    from tests.test_fanout import status

    assert (await status(sent["notificationId"])).counts.sent == 1
    lookups = world.tenant.calls("graph.installed_apps")
    assert (await post({"recipient": alice.upn, "text": "After"})).status_code == 200
    assert world.tenant.calls("graph.installed_apps") == lookups + 1  # the cache entry was purged


async def test_cache_entries_unused_for_the_setting_are_dropped_and_used_ones_kept(world: World) -> None:
    from shared.storage.references import ConversationReference

    alice, bob = world.user("alice"), world.user("bob")
    services = get_services()
    long_ago = _later(-40)
    for user in (alice, bob):
        world.tenant.install_app(user)
        conversation = world.tenant.open_conversation(user)
        entry = ConversationReference(
            world.tenant.tenant_id, user.account_id, conversation, world.env["ServiceUrl"], user.oid, user.upn, long_ago
        )
        await services.store.put(entry, [user.upn])

    sends = world.tenant.calls("connector.send")
    assert (await post({"recipient": alice.upn, "text": "Still here"})).status_code == 200
    assert world.tenant.calls("connector.send") == sends + 1 and world.tenant.calls("graph.installed_apps") == 0

    deleted = await purge(services, _later(0))
    assert deleted["accounts"] == 2  # bob's two aliases
    await reset_services()
    fresh = get_services()
    assert await fresh.store.get(world.tenant.tenant_id, bob.upn) is None
    used = await fresh.store.get(world.tenant.tenant_id, alice.oid)
    assert used is not None and used.updated_at is not None and used.updated_at > _later(-1)


async def test_the_timer_function_runs_the_purge_daily(world: World) -> None:
    from azure.functions.timer import TimerRequest

    trigger = bindings("retention")["timerTrigger"]
    assert trigger["schedule"] == "0 30 2 * * *"
    await use_the_app(world)
    services = get_services()
    before = await row_counts(services)
    await user_function("retention")(TimerRequest(past_due=False))
    assert await row_counts(services) == before  # nothing is 30 days old yet


@pytest.mark.parametrize("value", ["-1", "3.5", "forever", "4000"])
def test_retention_settings_are_validated(value: str) -> None:
    from shared.errors import ConfigurationError
    from shared.settings import load_settings
    from tests.test_settings import GOOD

    assert load_settings(GOOD).retention_days_requests == 30
    assert load_settings({**GOOD, "RecipientCacheUnusedDays": "7"}).recipient_cache_unused_days == 7
    with pytest.raises(ConfigurationError) as caught:
        load_settings({**GOOD, "RetentionDaysRequests": value})
    assert caught.value.target == "RetentionDaysRequests"


def test_erase_deletes_every_row_naming_one_person_and_nobody_elses(world: World, tmp_path: Path) -> None:
    alice, bob = world.user("alice"), world.user("bob")

    async def setup() -> dict[str, int]:
        try:
            await use_the_app(world)
            return await row_counts(get_services())
        finally:
            await reset_services()

    before = asyncio.run(setup())
    cli = Cli(write_settings(world, tmp_path / "local.settings.json"))

    code, report = cli.json("erase", alice.upn)  # by UPN: the cache knows her object id too

    assert code == 0, report
    assert set(report["names"]) == {alice.upn, alice.oid}
    # accounts: her cache entry (stored under her UPN and object id); deliveries: k-alice, k-alice-2,
    # m-alice and her row of k-both; notifications: the headers of the three sent to her alone;
    # requests: k-alice, k-alice-2 and her k-both delivery's key (the queue send that failed released
    # its key); failures: m-alice.
    assert report["deleted"] == {"accounts": 1, "deliveries": 4, "notifications": 3, "requests": 3, "failures": 1}

    async def remaining() -> tuple[dict[str, int], list[str]]:
        services = build_services(world.settings)
        try:
            counts = await row_counts(services)
            text: list[str] = []
            for suffix in TABLES:
                table = services.table(suffix)
                try:
                    text += [json.dumps(dict(e), default=str).lower() async for e in table.list_entities()]
                finally:
                    await table.close()
            assert await services.store.get(world.tenant.tenant_id, bob.upn) is not None
            assert await services.notifications.get("k-both", bob.upn) is not None
            assert await services.notifications.get_header("k-both") is not None  # bob's too
            assert await services.failures.get("m-ghost") is not None
            return counts, text
        finally:
            await services.aclose()

    counts, rows = asyncio.run(remaining())
    assert not [r for r in rows if alice.upn in r or alice.oid in r or escape_key(alice.upn) in r]
    assert counts == {**{t: before[t] - report["deleted"][t] for t in TABLES}, "accounts": counts["accounts"]}
    assert counts["accounts"] == before["accounts"] - 2  # both of her aliases
    assert counts["deliveries"] == 3  # bob's two and the ghost's
