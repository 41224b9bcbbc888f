"""Notification ids and queued per-recipient items cannot be forged (issue 17 part 1).

What a caller or anyone who can write to the queue sees: a hand-built, edited, foreign (another
deployment's) or replayed id answers 404 ``notification_not_found`` and nothing reaches Teams; a
crafted queue item is kept as ``notification_not_found`` and sends nothing; a recalled notification
is not sent by a queue item that arrives later. Through the function app object, against the fake
tenant and Azurite.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
from typing import Any

import msgspec
import pytest
from azure.functions.servicebus import ServiceBusMessage

from shared.bootstrap import build_services, get_services, reset_services
from shared.notification_ids import delivery_id, fan_out_signature, single_send_handle
from shared.storage.signing import Signer, TableSigningKeys
from tests.conftest import World
from tests.functions import OutputMessages, user_function
from tests.test_fanout import add_users, call, post, status

METHODS = {"notification_status": "GET", "notification_update": "PUT", "notification_recall": "DELETE"}


@pytest.fixture(autouse=True)
def _quiet_azure(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="azure")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _payload(handle: str) -> dict[str, Any]:
    encoded = handle[len("s1.") :].partition(".")[0]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    return decoded


def _with_payload(handle: str, fields: dict[str, Any]) -> str:
    """The handle with its content replaced and its original tag kept (an edit)."""
    tag = handle.rpartition(".")[2]
    return "s1." + _b64(json.dumps(fields, separators=(",", ":")).encode()) + "." + tag


async def _sent_handle(world: World, text: str = "Draft") -> tuple[str, dict[str, Any]]:
    await post({"recipient": world.user("alice").upn, "text": "Warm-up"})
    response, _ = await post({"recipient": world.user("alice").upn, "text": text})
    body = json.loads(response.get_body())
    assert response.status_code == 200 and body["notificationId"].startswith("s1."), body
    return str(body["notificationId"]), body


async def _all_methods_refuse(world: World, notification_id: str) -> None:
    sends = world.tenant.calls("connector.send")
    for name, verb in METHODS.items():
        code, answer, _ = await call(name, verb, notification_id, body={"text": "Hijacked"} if verb == "PUT" else None)
        assert code == 404 and answer["error"]["code"] == "notification_not_found", (name, answer)
    assert world.tenant.calls("connector.update") == world.tenant.calls("connector.delete") == 0
    assert world.tenant.calls("connector.send") == sends


async def test_a_genuine_id_still_works_and_carries_a_signature(world: World) -> None:
    handle, body = await _sent_handle(world)
    assert handle.count(".") == 2  # s1.<content>.<tag>
    result = await status(handle)
    assert result.counts.sent == 1 and result.recipients[0].activity_id == body["activityId"]


async def test_a_hand_built_id_for_a_real_message_is_not_found(world: World) -> None:
    """Knowing the conversation and activity ids (they are in every send's answer) is not enough."""
    _, body = await _sent_handle(world)
    fields = {
        "t": world.tenant.tenant_id,
        "r": world.user("alice").upn,
        "c": body["conversationId"],
        "a": body["activityId"],
    }
    raw = _b64(json.dumps(fields, separators=(",", ":")).encode())
    for forged in ("s1." + raw, "s1." + raw + "." + _b64(secrets.token_bytes(16)), "s1." + raw + "."):
        await _all_methods_refuse(world, forged)
    assert [m["activity"]["text"] for m in world.tenant.messages_for(world.user("alice"))] == ["Warm-up", "Draft"]


@pytest.mark.parametrize(
    "edit",
    [
        {"r": "bob@contoso.com"},  # another recipient
        {"a": "1:someone-elses-activity"},  # another message
        {"t": "5d9c3f11-1111-4222-8333-944455556666"},  # another tenant
        {"u": "https://attacker.botframework.com/teams/"},  # send the bot's token elsewhere
    ],
    ids=["recipient", "activity", "tenant", "service-url"],
)
async def test_an_edited_id_is_not_found(world: World, edit: dict[str, str]) -> None:
    handle, _ = await _sent_handle(world)
    await _all_methods_refuse(world, _with_payload(handle, {**_payload(handle), **edit}))
    # Flipping the tag alone is refused too.
    tag = handle.rpartition(".")[2]
    flipped = handle[: -len(tag)] + ("A" if tag[0] != "A" else "B") + tag[1:]
    await _all_methods_refuse(world, flipped)


async def test_an_id_signed_by_another_deployment_is_not_found(world: World) -> None:
    """Another deployment's key (another TableNamePrefix generates its own) does not open this one's ids,
    whether it names this deployment's service URL or one of its own choosing."""
    handle, body = await _sent_handle(world)
    services = get_services()
    sent = await services.notifications.get(handle, world.user("alice").upn)
    assert sent is None  # nothing stored: the id is all there is
    from shared.notification_ids import delivery_from_handle

    genuine = delivery_from_handle(handle, services.settings.service_url, await services.signing.signer())
    assert genuine is not None
    other = Signer(secrets.token_bytes(32))
    foreign = single_send_handle(genuine, services.settings.service_url, other)
    assert foreign is not None and foreign != handle
    await _all_methods_refuse(world, foreign)

    elsewhere = msgspec.structs.replace(genuine, service_url="https://smba.trafficmanager.net/emea/")
    foreign_url = single_send_handle(elsewhere, services.settings.service_url, other)
    assert foreign_url is not None and "u" in _payload(foreign_url)
    await _all_methods_refuse(world, foreign_url)

    # The same id presented to a second deployment (its own storage, its own generated key).
    await reset_services()
    world.env["TableNamePrefix"] = "t" + secrets.token_hex(8)
    import os

    os.environ["TableNamePrefix"] = world.env["TableNamePrefix"]
    await _all_methods_refuse(world, handle)


async def test_a_replayed_id_after_a_recall_changes_nothing(world: World) -> None:
    """The id keeps working for status, but a recalled message is not brought back by an update."""
    handle, _ = await _sent_handle(world)
    code, body, _ = await call("notification_recall", "DELETE", handle)
    assert code == 200 and body["results"][0]["outcome"] == "recalled"
    updates = world.tenant.calls("connector.update")
    code, body, _ = await call("notification_update", "PUT", handle, body={"text": "Back from the dead"})
    assert code == 200 and body["results"][0]["outcome"] == "recalled"
    assert world.tenant.calls("connector.update") == updates
    assert (await status(handle)).counts.recalled == 1


async def test_the_configured_signing_key_signs_the_ids(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    key = secrets.token_bytes(32)
    monkeypatch.setenv("NotificationSigningKey", base64.b64encode(key).decode())
    handle, _ = await _sent_handle(world)
    encoded, _, tag = handle[len("s1.") :].partition(".")
    assert Signer(key).verify(tag, "s1", encoded)


async def test_the_generated_key_is_created_once_for_concurrent_instances(world: World) -> None:
    """First use on several instances at once: insert-if-absent makes them all agree on one key."""
    built = [build_services(world.settings) for _ in range(4)]
    try:
        keys = [TableSigningKeys(None, s.table("keys")) for s in built]
        signers = await asyncio.gather(*(k.signer() for k in keys))
        assert len({s.tag("probe", "x") for s in signers}) == 1
        for k in keys:
            await k.close()
    finally:
        for s in built:
            await s.aclose()


# --- queued per-recipient items -------------------------------------------------------------------


async def deliver(body: dict[str, Any] | bytes, message_id: str) -> None:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    msg = ServiceBusMessage(
        body=raw, message_id=message_id, delivery_count=1, application_properties={}, user_properties={}
    )
    await user_function("notify_queue")(msg, OutputMessages())


async def _queued(world: World, key: str, count: int = 21) -> list[dict[str, Any]]:
    users = add_users(world, count, prefix=key)
    response, messages = await post({"recipients": [u.upn for u in users], "text": "Queued"}, key)
    assert response.status_code == 202
    return [json.loads(m) for m in messages]


async def _kept_code(message_id: str) -> str | None:
    record = await get_services().failures.get(message_id)
    return record.code if record is not None else None


async def test_a_crafted_item_for_someone_outside_the_notification_sends_nothing(world: World) -> None:
    """The per-recipient id is a public hash: computing it for another user must not message them."""
    await _queued(world, "news")
    outsider = world.user("bob").upn
    crafted = {"deliveryId": delivery_id("news", outsider), "notificationId": "news", "recipient": outsider}
    await deliver(crafted, "crafted-1")
    assert await _kept_code("crafted-1") == "notification_not_found"
    assert world.tenant.messages_for(world.user("bob")) == []


async def test_an_edited_or_foreign_item_sends_nothing(world: World) -> None:
    items = await _queued(world, "digest")
    genuine = items[0]
    outsider = world.user("bob").upn
    edited = {**genuine, "recipient": outsider, "deliveryId": delivery_id("digest", outsider)}
    other = Signer(secrets.token_bytes(32))
    foreign = {
        "deliveryId": delivery_id("digest", outsider),
        "notificationId": "digest",
        "recipient": outsider,
        "signature": fan_out_signature(other, "digest", outsider, delivery_id("digest", outsider)),
    }
    wrong_delivery = {**genuine, "deliveryId": delivery_id("other", genuine["recipient"])}
    # A recipient who is part of the notification, but an item the app did not write.
    unsigned = {k: v for k, v in genuine.items() if k != "signature"}
    resigned = {
        **genuine,
        "signature": fan_out_signature(other, "digest", genuine["recipient"], genuine["deliveryId"]),
    }
    for index, item in enumerate((edited, foreign, wrong_delivery, unsigned, resigned)):
        await deliver(item, f"bad-{index}")
        assert await _kept_code(f"bad-{index}") == "notification_not_found"
    assert world.tenant.calls("connector.send") == 0

    await deliver(genuine, "good")  # the genuine one is sent
    assert await _kept_code("good") is None
    assert world.tenant.calls("connector.send") >= 1


async def test_a_genuine_item_replayed_after_a_recall_is_not_sent(world: World) -> None:
    items = await _queued(world, "recall-me")
    await deliver(items[0], "first")  # one recipient got it before the recall
    sends = world.tenant.calls("connector.send")
    code, _, _ = await call("notification_recall", "DELETE", "recall-me")
    assert code == 200
    for index, item in enumerate(items):
        await deliver(item, f"late-{index}")  # the rest arrive after it; the first is replayed
    assert world.tenant.calls("connector.send") == sends
    result = await status("recall-me", top="1000")
    assert result.counts.recalled == len(items) and result.counts.sent == 0


@pytest.mark.parametrize("value", ["c2hvcnQ=", "not base64!"])
def test_a_malformed_signing_key_setting_is_named(value: str) -> None:
    from shared.errors import ConfigurationError
    from shared.settings import load_settings
    from tests.test_settings import GOOD

    with pytest.raises(ConfigurationError) as caught:
        load_settings({**GOOD, "NotificationSigningKey": value})
    assert caught.value.target == "NotificationSigningKey"
    assert value not in caught.value.message  # a secret is never echoed
