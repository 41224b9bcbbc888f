"""The Service Bus trigger through the function app object, and the operator's failure functions.

Returning from the function completes the message; raising makes Service Bus redeliver it. Each
test states what the line-of-business sender and the operator see: messages delivered to the user,
failures kept with their reason, replays.
"""

from __future__ import annotations

import datetime
import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from azure.functions.servicebus import ServiceBusMessage

from shared.bootstrap import get_services, reset_services
from shared.errors import InvalidRequestError, NotifyError, TransientError
from shared.failures import drop_failure, get_failure, list_failures, replay_failure
from tests.azurite import KEY
from tests.conftest import World
from tests.functions import OutputMessages, user_function

HELLO: dict[str, Any] = {"recipient": "alice@contoso.com", "text": "Invoice 1001 approved"}
ENQUEUED = datetime.datetime(2026, 1, 5, 9, 30, tzinfo=datetime.UTC)


def message(body: bytes | dict[str, Any], message_id: str, delivery_count: int = 1) -> ServiceBusMessage:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return ServiceBusMessage(
        body=raw,
        message_id=message_id,
        delivery_count=delivery_count,
        enqueued_time_utc=ENQUEUED,
        content_type="application/json",
        application_properties={},
        user_properties={},
    )


async def deliver(msg: ServiceBusMessage) -> None:
    await user_function("notify_queue")(msg, OutputMessages())


async def deliver_until_completed(body: bytes | dict[str, Any], message_id: str, max_deliveries: int = 5) -> int:
    """What Service Bus does: redeliver while the function raises. Returns the completing delivery."""
    for count in range(1, max_deliveries + 1):
        try:
            await deliver(message(body, message_id, count))
        except TransientError:
            continue
        return count
    raise AssertionError("the message would have been dead-lettered")


async def test_message_is_sent_and_completed(world: World) -> None:
    await deliver(message(HELLO, "m-1"))

    [delivered] = world.tenant.messages_for(world.user("alice"))
    assert delivered["activity"]["text"] == "Invoice 1001 approved"
    assert await list_failures(get_services()) == []


async def test_same_message_delivered_three_times_sends_once(world: World) -> None:
    for count in (1, 2, 3):
        await deliver(message(HELLO, "m-2", count))

    assert world.tenant.calls("connector.send") == 1
    assert len(world.tenant.messages_for(world.user("alice"))) == 1


@pytest.mark.parametrize(
    ("route", "status", "faults"),
    [
        # More failures than one delivery's retry attempts (RetryMaxAttempts=4): the first gives up.
        ("connector.send", 503, 5),
        ("connector.send", 429, 5),
        ("graph.installed_apps", 503, 5),
        # MSAL makes one token request per delivery.
        ("token", 503, 1),
    ],
)
async def test_transient_failure_raises_then_the_redelivery_sends_once(
    world: World, route: str, status: int, faults: int
) -> None:
    world.tenant.add_fault(route, status, count=faults, retry_after=0)

    completed_on = await deliver_until_completed(HELLO, "m-3")

    assert completed_on == 2
    assert len(world.tenant.messages_for(world.user("alice"))) == 1
    assert await list_failures(get_services()) == []


def _unknown_user(world: World) -> tuple[dict[str, Any] | bytes, str, Callable[[], None]]:
    return (
        {"recipient": "carol@contoso.com", "text": "hi"},
        "recipient_not_found",
        (lambda: world.tenant.add_user("carol@contoso.com") and None),
    )


def _blocked(world: World) -> tuple[dict[str, Any] | bytes, str, Callable[[], None]]:
    world.tenant.install_app(world.user("alice"))
    world.tenant.block_bot(world.user("alice"))
    return HELLO, "recipient_blocked_bot", lambda: world.tenant.unblock_bot(world.user("alice"))


def _no_consent(world: World) -> tuple[dict[str, Any] | bytes, str, Callable[[], None]]:
    roles = set(world.tenant.consented_roles)
    world.tenant.consented_roles.clear()
    return HELLO, "missing_permission", lambda: world.tenant.consented_roles.update(roles)


def _not_in_catalog(world: World) -> tuple[dict[str, Any] | bytes, str, Callable[[], None]]:
    world.tenant.remove_from_catalog()

    def fix() -> None:
        world.tenant.in_catalog = True

    return HELLO, "app_not_in_catalog", fix


@pytest.mark.parametrize("arrange", [_unknown_user, _blocked, _no_consent, _not_in_catalog])
async def test_permanent_failure_is_kept_then_replayed_once_after_the_fix(
    world: World, arrange: Callable[[World], tuple[dict[str, Any], str, Callable[[], None]]]
) -> None:
    body, code, fix = arrange(world)
    services = get_services()
    message_id = f"m-{uuid.uuid4().hex[:8]}"

    await deliver(message(body, message_id, delivery_count=1))  # completes: not retried

    [kept] = await list_failures(services)
    assert kept.message_id == message_id and kept.code == code
    assert json.loads(kept.body) == body
    assert kept.delivery_count == 1 and kept.enqueued_time == ENQUEUED
    assert kept.first_failed_at <= kept.last_failed_at
    assert not world.tenant.activities()

    fix()
    # The operator replays from the command line: a fresh process (fresh tokens, new consent).
    await reset_services()
    services = get_services()
    result = await replay_failure(services, message_id)

    assert result.outcome == "sent" and result.activity_id
    assert len(world.tenant.activities()) == 1
    assert await get_failure(services, message_id) is None
    # A replay of a replayed message: nothing to replay, nothing sent.
    with pytest.raises(InvalidRequestError) as raised:
        await replay_failure(services, message_id)
    assert raised.value.code == "failure_not_found"
    # And a late redelivery of the original message does not send again.
    await deliver(message(body, message_id, delivery_count=2))
    assert len(world.tenant.activities()) == 1


@pytest.mark.parametrize(
    ("body", "code", "target"),
    [
        (b"{not json", "invalid_json", "body"),
        (b"", "invalid_request", "body"),
        (json.dumps({**HELLO, "tenantId": "contoso"}).encode(), "invalid_request", "tenantId"),
        (json.dumps({**HELLO, "colour": "red"}).encode(), "unknown_field", "colour"),
        # Over the 262,144 bytes the connector accepts: refused before Teams is asked.
        (json.dumps({"recipient": "alice@contoso.com", "text": "x" * 262_145}).encode(), "message_too_large", "body"),
    ],
)
async def test_invalid_body_is_kept_byte_for_byte(world: World, body: bytes, code: str, target: str) -> None:
    await deliver(message(body, "bad-1", delivery_count=3))

    kept = await get_failure(get_services(), "bad-1")
    assert kept is not None
    assert (kept.code, kept.target, kept.body, kept.delivery_count) == (code, target, body, 3)
    assert [r.route for r in world.tenant.log] == []


async def test_replay_that_fails_again_keeps_the_record_with_the_new_reason(world: World) -> None:
    services = get_services()
    await deliver(message({"recipient": "carol@contoso.com", "text": "hi"}, "m-4"))

    result = await replay_failure(services, "m-4")  # not fixed yet

    assert result.outcome == "failed" and result.code == "recipient_not_found"
    kept = await get_failure(services, "m-4")
    assert kept is not None and kept.replays == 1
    assert not world.tenant.activities()


async def test_replay_of_a_message_already_sent_is_a_no_op_that_clears_the_record(world: World) -> None:
    services = get_services()
    body = {"recipient": "carol@contoso.com", "text": "hi"}
    await deliver(message(body, "m-5", 1))  # kept: carol unknown
    world.tenant.add_user("carol@contoso.com")
    # The host died before completing: Service Bus redelivers and this time it is sent.
    await deliver(message(body, "m-5", 2))
    assert len(world.tenant.activities()) == 1

    result = await replay_failure(services, "m-5")

    assert result.outcome == "already_sent"
    assert len(world.tenant.activities()) == 1
    assert await get_failure(services, "m-5") is None


async def test_drop_forgets_a_failure_without_sending(world: World) -> None:
    services = get_services()
    await deliver(message({"recipient": "carol@contoso.com", "text": "hi"}, "m-6"))

    assert await drop_failure(services, "m-6") is True
    assert await drop_failure(services, "m-6") is False
    assert await list_failures(services) == []


async def test_large_kept_body_round_trips(world: World) -> None:
    body = json.dumps({"recipient": "alice@contoso.com", "text": "é" * 100_000}).encode()  # > one property
    await deliver(message(body, "big-1"))

    kept = await get_failure(get_services(), "big-1")
    assert kept is not None and kept.body == body and not kept.body_truncated


@pytest.mark.parametrize("body", [HELLO, b"{not json"], ids=["valid", "invalid"])
async def test_message_is_not_completed_when_nothing_could_be_sent_or_kept(
    world: World, monkeypatch: pytest.MonkeyPatch, body: dict[str, Any] | bytes
) -> None:
    # Storage refuses every write (wrong account key): neither the idempotency record nor the
    # failure record can be written, so the function must raise and Service Bus redeliver.
    wrong_key = "A" * 86 + "=="
    monkeypatch.setenv("AzureWebJobsStorage", world.env["AzureWebJobsStorage"].replace(KEY, wrong_key))

    with pytest.raises(NotifyError):
        await deliver(message(body, "m-7"))
    assert not world.tenant.activities()


async def test_configuration_error_raises_so_the_message_is_not_lost(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MicrosoftAppId")
    with pytest.raises(NotifyError) as raised:
        await deliver(message(HELLO, "m-8"))
    assert raised.value.code == "configuration_error" and raised.value.target == "MicrosoftAppId"


async def test_queue_log_lines_carry_the_message_correlation_id(world: World, caplog: pytest.LogCaptureFixture) -> None:
    msg = ServiceBusMessage(
        body=json.dumps(HELLO).encode(),
        message_id="m-9",
        correlation_id="erp-batch-77",
        delivery_count=1,
        application_properties={},
        user_properties={},
    )
    caplog.clear()
    await deliver(msg)

    ours = [r for r in caplog.records if r.name.startswith("shared.")]
    assert ours and {getattr(r, "correlation_id", None) for r in ours} == {"erp-batch-77"}


async def test_a_kept_many_recipient_message_is_replayed_and_its_recipients_are_sent_once(world: World) -> None:
    """A message with ``recipients`` that failed on our side (missing consent) is kept, not retried;
    the replay goes through the queue path: only the recipients still pending are sent, once."""
    body = {"recipients": ["alice@contoso.com", "bob@contoso.com"], "text": "Town hall at 3"}
    roles = set(world.tenant.consented_roles)
    world.tenant.consented_roles.clear()

    await deliver(message(body, "m-many"))  # completes: kept, not redelivered

    [kept] = await list_failures(get_services())
    assert kept.message_id == "m-many" and kept.code == "missing_permission"
    world.tenant.consented_roles.update(roles)
    await reset_services()
    result = await replay_failure(get_services(), "m-many")

    assert result.outcome == "sent"
    assert await list_failures(get_services()) == []
    assert len(world.tenant.messages_for(world.user("alice"))) == 1
    assert len(world.tenant.messages_for(world.user("bob"))) == 1
    again = await replay_failure_or_none("m-many")
    assert again is None
    assert len(world.tenant.activities()) == 2


async def replay_failure_or_none(message_id: str) -> object | None:
    try:
        return await replay_failure(get_services(), message_id)
    except InvalidRequestError as err:
        assert err.code == "failure_not_found"
        return None
