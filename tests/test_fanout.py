"""Many recipients, and the life of a sent message (status, update, recall), through the function app
object against the fake tenant and Azurite.

The large-batch tests drive the spread as the Functions host would: the HTTP function's Service Bus
output binding yields one message per recipient; each is fed to the queue function with bounded
concurrency, and a message whose function raised is delivered again (Service Bus redelivery).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from typing import Any

import azure.functions as func
import msgspec
import pytest
from azure.functions.servicebus import ServiceBusMessage

from faketenant import FakeUser
from shared.errors import TransientError
from shared.response_models import ChangeResponse, NotificationStatus, NotifyResponse
from tests.conftest import World
from tests.functions import OutputMessages, notify_request, shorten_waits, user_function

CARD = {"type": "AdaptiveCard", "version": "1.5", "body": [{"type": "TextBlock", "text": "Expense 42: approve?"}]}
APPROVED = {"type": "AdaptiveCard", "version": "1.5", "body": [{"type": "TextBlock", "text": "Expense 42: approved"}]}


@pytest.fixture(autouse=True)
def _fast_limits(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The fake does not rate-limit unless asked: lift our own tenant budgets so tests are quick
    (the test that turns the emulated Teams limits on sets its own). The Azure SDK's DEBUG lines (every
    storage request's headers) are not needed here; ours stay captured and checked for secrets."""
    monkeypatch.setenv("TenantSendRatePerSecond", "1000")
    monkeypatch.setenv("TenantGraphRatePerSecond", "1000")
    caplog.set_level(logging.WARNING, logger="azure")


async def post(body: dict[str, Any], key: str | None = None) -> tuple[func.HttpResponse, list[bytes]]:
    out = OutputMessages()
    response: func.HttpResponse = await user_function("notify")(notify_request(body, key), out)
    return response, out.messages


async def call(
    name: str, method: str, notification_id: str, params: dict[str, str] | None = None, body: Any = None
) -> tuple[int, dict[str, Any], func.HttpResponse]:
    request = func.HttpRequest(
        method,
        f"http://localhost/api/notifications/{notification_id}",
        headers={"Content-Type": "application/json"},
        params=params or {},
        route_params={"id": notification_id},
        body=json.dumps(body).encode() if body is not None else b"",
    )
    response: func.HttpResponse = await user_function(name)(request)
    return response.status_code, json.loads(response.get_body()), response


async def status(notification_id: str, **params: str) -> NotificationStatus:
    code, body, _ = await call("notification_status", "GET", notification_id, params)
    assert code == 200, body
    return msgspec.convert(body, NotificationStatus)


async def run_queue(messages: list[bytes], concurrency: int = 16, max_deliveries: int = 10) -> int:
    """Deliver every message to the queue function like Service Bus with maxConcurrentCalls; a raise
    means redelivery. Returns how many deliveries raised (and were redelivered)."""
    gate = asyncio.Semaphore(concurrency)
    redelivered = 0

    async def one(body: bytes) -> None:
        nonlocal redelivered
        for count in range(1, max_deliveries + 1):
            msg = ServiceBusMessage(
                body=body,
                message_id=str(uuid.uuid4()),  # the output binding cannot set ids: Service Bus assigns one
                delivery_count=count,
                application_properties={},
                user_properties={},
            )
            async with gate:
                try:
                    await user_function("notify_queue")(msg, OutputMessages())
                except TransientError:
                    redelivered += 1
                    continue
            return
        raise AssertionError("the message would have been dead-lettered")

    await asyncio.gather(*(one(m) for m in messages))
    return redelivered


def add_users(world: World, count: int, prefix: str = "user") -> list[FakeUser]:
    return [world.tenant.add_user(f"{prefix}{i}@contoso.com") for i in range(count)]


async def warm(world: World, users: list[FakeUser]) -> None:
    """Recipients messaged before: app installed, conversation open, and memoised in the app's store
    (so the run measures fan-out, not 1,000 cold resolutions)."""
    from shared.bootstrap import build_services
    from shared.storage.references import ConversationReference

    services = build_services(world.settings)
    try:
        for user in users:
            world.tenant.install_app(user)
            conversation = world.tenant.open_conversation(user)
            entry = ConversationReference(
                world.tenant.tenant_id, user.account_id, conversation, world.env["ServiceUrl"], user.oid, user.upn
            )
            await services.store.put(entry, [user.upn])
    finally:
        await services.aclose()


async def test_a_thousand_recipients_under_rate_limits_each_get_exactly_one_message(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    users = add_users(world, 1000)
    await warm(world, users)
    world.tenant.rate_limits = True
    # The emulated Teams per-app-per-tenant limit, raised from Teams' 30/s so the run takes seconds
    # (at 30/s 1,000 sends need >= 33 s); the minimum wall time is 1,000 sends / 200 per second = 5 s.
    # Our tenant budget (TenantSendRatePerSecond) is set above it, as if it were misconfigured,
    # and Teams additionally throttles a burst of sends: the 429s must be absorbed, not lost.
    world.tenant.app_rate_per_second = 200
    world.tenant.add_fault("connector.send", 429, count=40, retry_after=0.3)
    monkeypatch.setenv("TenantSendRatePerSecond", "400")
    monkeypatch.setenv("MaxConcurrentSends", "32")
    started = time.monotonic()

    response, messages = await post({"recipients": [u.upn for u in users], "text": "Quarterly results"}, "q3")

    body = json.loads(response.get_body())
    assert response.status_code == 202, body
    notification_id = body["notificationId"]
    assert notification_id == "q3" and response.headers["Location"] == "/api/notifications/q3"
    assert body["total"] == 1000 and body["counts"]["pending"] == 1000 and not body["finished"]
    assert len(messages) == 1000

    redelivered = await run_queue(messages, concurrency=32)
    elapsed = time.monotonic() - started

    assert all(len(world.tenant.messages_for(u)) == 1 for u in users)
    throttled = sum(1 for r in world.tenant.log if r.status == 429)
    assert throttled >= 40
    done = await status(notification_id, top="1000")
    assert done.finished and done.counts.sent == 1000 and done.total == 1000
    assert {r.state for r in done.recipients} == {"sent"} and len(done.recipients) == 1000
    print(
        f"\nfan-out of 1000 warm recipients: {elapsed:.1f}s; emulated minimum {1000 / 200:.1f}s "
        f"(1000 sends at 200/s); {throttled} x 429, {redelivered} redeliveries"
    )

    # Service Bus delivers every message once more: nothing new is sent.
    sends_before = world.tenant.calls("connector.send")
    await run_queue(messages, concurrency=32)
    assert world.tenant.calls("connector.send") == sends_before
    assert all(len(world.tenant.messages_for(u)) == 1 for u in users)


@pytest.mark.parametrize("good", [3, 20], ids=["sync", "queued"])
async def test_unknown_and_blocked_users_are_recorded_and_the_batch_finishes(world: World, good: int) -> None:
    users = add_users(world, good)
    blocked = world.tenant.add_user("blocker@contoso.com")
    world.tenant.install_app(blocked)
    world.tenant.block_bot(blocked)
    recipients = [u.upn for u in users] + ["ghost@contoso.com", blocked.upn]

    response, messages = await post({"recipients": recipients, "text": "Policy update"})
    body = json.loads(response.get_body())
    if len(recipients) > 20:
        assert response.status_code == 202, body
        await run_queue(messages)
    else:
        assert response.status_code == 200, body
        assert messages == []
        msgspec.convert(body, NotificationStatus)

    result = await status(body["notificationId"])
    assert result.finished and result.total == good + 2
    assert (result.counts.sent, result.counts.failed, result.counts.pending) == (good, 2, 0)
    by_recipient = {r.recipient: r for r in result.recipients}
    assert by_recipient["ghost@contoso.com"].error is not None
    assert by_recipient["ghost@contoso.com"].error.code == "recipient_not_found"
    assert by_recipient[blocked.upn].error is not None
    assert by_recipient[blocked.upn].error.code == "recipient_blocked_bot"
    assert all(len(world.tenant.messages_for(u)) == 1 for u in users)
    assert not world.tenant.messages_for(blocked)


async def test_retried_request_sends_nothing_twice_and_a_different_body_is_refused(world: World) -> None:
    users = add_users(world, 25)
    request = {"recipients": [u.upn for u in users], "text": "Reminder"}
    first, messages = await post(request, "reminder-1")
    await run_queue(messages)

    again, messages_again = await post(request, "reminder-1")
    assert again.status_code == 202
    assert messages_again == []  # every recipient is already final: nothing to spread
    assert all(len(world.tenant.messages_for(u)) == 1 for u in users)
    other, _ = await post({**request, "text": "Something else"}, "reminder-1")
    assert other.status_code == 422 and json.loads(other.get_body())["error"]["code"] == "idempotency_key_reused"


async def test_status_is_paged(world: World) -> None:
    users = add_users(world, 5)
    response, _ = await post({"recipients": [u.upn for u in users], "text": "hi"})
    notification_id = json.loads(response.get_body())["notificationId"]

    seen: list[str] = []
    token: str | None = None
    while True:
        params = {"top": "2"} | ({"continuationToken": token} if token else {})
        page = await status(notification_id, **params)
        assert len(page.recipients) <= 2 and page.counts.sent == 5
        seen += [r.recipient for r in page.recipients]
        token = page.continuation_token
        if token is None:
            break
    assert sorted(seen) == sorted(u.upn for u in users)
    code, body, _ = await call("notification_status", "GET", "no-such-id")
    assert code == 404 and body["error"]["code"] == "notification_not_found"


async def test_update_then_recall_change_the_sent_message_and_a_second_recall_is_a_no_op(world: World) -> None:
    alice, bob = world.user("alice"), world.user("bob")
    response, _ = await post({"recipients": [alice.upn, bob.upn], "card": CARD}, "expense-42")
    assert response.status_code == 200

    code, body, _ = await call("notification_update", "PUT", "expense-42", body={"card": APPROVED})
    assert code == 200, body
    assert {r.outcome for r in msgspec.convert(body, ChangeResponse).results} == {"updated"}
    for user in (alice, bob):
        [message] = world.tenant.messages_for(user)
        assert message["activity"]["attachments"][0]["content"] == APPROVED and message["updated"] == 1
    # The same update again changes nothing upstream.
    updates = world.tenant.calls("connector.update")
    assert (await call("notification_update", "PUT", "expense-42", body={"card": APPROVED}))[0] == 200
    assert world.tenant.calls("connector.update") == updates

    code, body, _ = await call("notification_recall", "DELETE", "expense-42", {"recipient": alice.upn})
    assert code == 200 and body["results"] == [{"recipient": alice.upn, "outcome": "recalled", "error": None}]
    assert world.tenant.messages_for(alice) == [] and len(world.tenant.messages_for(bob)) == 1

    code, body, _ = await call("notification_recall", "DELETE", "expense-42")
    assert code == 200 and {r["outcome"] for r in body["results"]} == {"recalled"}
    deletes = world.tenant.calls("connector.delete")
    code, body, _ = await call("notification_recall", "DELETE", "expense-42")
    assert code == 200 and {r["outcome"] for r in body["results"]} == {"recalled"}
    assert world.tenant.calls("connector.delete") == deletes
    assert world.tenant.messages_for(bob) == []
    result = await status("expense-42")
    assert result.finished and result.counts.recalled == 2


async def test_single_send_has_a_notification_id_that_can_be_updated_and_recalled(world: World) -> None:
    response, _ = await post({"recipient": "alice@contoso.com", "text": "Draft"})
    body = msgspec.convert(json.loads(response.get_body()), NotifyResponse)
    assert body.notification_id

    code, _, _ = await call("notification_update", "PUT", body.notification_id, body={"text": "Final"})
    assert code == 200
    [message] = world.tenant.messages_for(world.user("alice"))
    assert message["activity"]["text"] == "Final"
    code, result, _ = await call("notification_recall", "DELETE", body.notification_id)
    assert code == 200 and result["results"][0]["outcome"] == "recalled"
    assert world.tenant.messages_for(world.user("alice")) == []


async def test_unkeyed_single_send_id_is_self_contained_and_its_whole_life_works(world: World) -> None:
    """No row is written for a sent single send without a key; status, update and recall work from the
    id itself, and the first change records the row (a second recall is a no-op; status shows it)."""
    from shared.bootstrap import get_services

    alice = world.user("alice")
    await post({"recipient": alice.upn, "text": "Warm-up"})  # resolves the conversation (cold path)
    response, _ = await post({"recipient": alice.upn, "text": "Draft"})  # warm
    sent = msgspec.convert(json.loads(response.get_body()), NotifyResponse)
    handle = sent.notification_id
    assert handle is not None and handle.startswith("s1.") and "/" not in handle and "\\" not in handle
    store = get_services().notifications
    assert await store.all(handle) == [] and await store.get(handle, alice.upn) is None

    result = await status(handle)
    assert result.finished and result.total == 1 and result.counts.sent == 1
    assert [(r.recipient, r.state, r.activity_id) for r in result.recipients] == [(alice.upn, "sent", sent.activity_id)]

    code, body, _ = await call("notification_update", "PUT", handle, body={"text": "Final"})
    assert code == 200 and body["results"] == [{"recipient": alice.upn, "outcome": "updated", "error": None}]
    assert [m["activity"]["text"] for m in world.tenant.messages_for(alice)] == ["Warm-up", "Final"]
    updates = world.tenant.calls("connector.update")
    assert (await call("notification_update", "PUT", handle, body={"text": "Final"}))[0] == 200
    assert world.tenant.calls("connector.update") == updates  # the row written by the update remembers it

    code, body, _ = await call("notification_recall", "DELETE", handle)
    assert code == 200 and body["results"] == [{"recipient": alice.upn, "outcome": "recalled", "error": None}]
    assert [m["activity"]["text"] for m in world.tenant.messages_for(alice)] == ["Warm-up"]
    deletes = world.tenant.calls("connector.delete")
    code, body, _ = await call("notification_recall", "DELETE", handle, {"recipient": alice.upn})
    assert code == 200 and body["results"][0]["outcome"] == "recalled"
    assert world.tenant.calls("connector.delete") == deletes
    result = await status(handle)
    assert result.finished and result.counts.recalled == 1 and result.counts.sent == 0
    assert result.recipients[0].state == "recalled"


@pytest.mark.parametrize(
    "notification_id",
    [
        "s1.",
        "s1.!!!!",
        "s1.bm90IGpzb24",  # "not json"
        "s1.WzFd",  # [1]
        "s1.eyJ0IjoieCJ9",  # {"t":"x"}: fields missing
        # a forged handle naming a service URL that is not Bot Framework's
        "s1.eyJ0IjoidCIsInIiOiJyIiwiYyI6ImMiLCJhIjoiYSIsInUiOiJodHRwczovL2V2aWwuZXhhbXBsZS8ifQ",
    ],
)
@pytest.mark.parametrize("method", ["notification_status", "notification_update", "notification_recall"])
async def test_a_malformed_single_send_id_is_not_found(world: World, notification_id: str, method: str) -> None:
    verb = {"notification_status": "GET", "notification_update": "PUT", "notification_recall": "DELETE"}[method]
    body = {"text": "x"} if verb == "PUT" else None
    code, answer, _ = await call(method, verb, notification_id, body=body)
    assert code == 404 and answer["error"]["code"] == "notification_not_found"
    assert world.tenant.calls("connector.update") == world.tenant.calls("connector.delete") == 0


async def test_update_for_a_user_who_blocked_the_bot_is_reported_not_retried(world: World) -> None:
    alice = world.user("alice")
    await post({"recipients": [alice.upn, "bob@contoso.com"], "text": "v1"}, "n-blocked")
    world.tenant.block_bot(alice)

    code, body, response = await call("notification_update", "PUT", "n-blocked", body={"text": "v2"})

    assert code == 200 and "Retry-After" not in response.headers
    outcomes = {r["recipient"]: r for r in body["results"]}
    assert outcomes[alice.upn]["outcome"] == "failed"
    assert outcomes[alice.upn]["error"]["code"] == "recipient_blocked_bot"
    assert outcomes["bob@contoso.com"]["outcome"] == "updated"
    code, body, _ = await call(
        "notification_update", "PUT", "n-blocked", {"recipient": "carol@contoso.com"}, {"text": "x"}
    )
    assert code == 404 and body["error"]["code"] == "recipient_not_in_notification"


async def test_recall_before_the_queue_runs_means_nobody_is_messaged(world: World) -> None:
    users = add_users(world, 21)
    response, messages = await post({"recipients": [u.upn for u in users], "text": "Oops"}, "oops")
    assert response.status_code == 202

    code, body, _ = await call("notification_recall", "DELETE", "oops")
    await run_queue(messages)

    assert code == 200 and {r["outcome"] for r in body["results"]} == {"recalled"}
    assert world.tenant.calls("connector.send") == 0
    assert (await status("oops")).counts.recalled == 21


@pytest.mark.parametrize(
    ("body", "target"),
    [
        ({"recipient": "alice@contoso.com", "recipients": ["bob@contoso.com"], "text": "x"}, "recipient"),
        ({"recipients": [], "text": "x"}, "recipients"),
        ({"recipients": ["a@contoso.com"] * 10_001, "text": "x"}, "recipients"),
    ],
    ids=["both", "empty", "over-limit"],
)
async def test_recipients_are_validated(world: World, body: dict[str, Any], target: str) -> None:
    response, messages = await post(body)
    error = json.loads(response.get_body())["error"]
    assert response.status_code == 400 and error["target"] == target and messages == []


def test_command_line_shows_updates_and_recalls_a_notification(world: World, tmp_path: Any) -> None:
    from shared.bootstrap import reset_services
    from tests.test_cli import Cli, write_settings

    async def send() -> None:
        try:
            response, _ = await post({"recipients": ["alice@contoso.com", "ghost@contoso.com"], "text": "v1"}, "cli-1")
            assert response.status_code == 200
        finally:
            await reset_services()

    asyncio.run(send())
    cli = Cli(
        write_settings(
            world, tmp_path / "local.settings.json", TenantSendRatePerSecond="1000", TenantGraphRatePerSecond="1000"
        )
    )

    assert cli("notification", "status", "cli-1") == 0
    assert "1 sent, 1 failed, 0 pending" in cli.output and "recipient_not_found" in cli.output
    code, body = cli.json("notification", "update", "cli-1", "--text", "v2", "--recipient", "alice@contoso.com")
    assert code == 0 and body["results"][0]["outcome"] == "updated"
    assert world.tenant.messages_for(world.user("alice"))[0]["activity"]["text"] == "v2"
    assert cli("notification", "recall", "cli-1") == 0
    assert world.tenant.messages_for(world.user("alice")) == []


@pytest.mark.parametrize("count", [3, 25], ids=["sync", "queued"])
async def test_errors_on_our_side_leave_recipients_pending_and_a_repeat_sends_them_after_the_fix(
    world: World, count: int
) -> None:
    users = add_users(world, count)
    await warm(world, users)
    request = {"recipients": [u.upn for u in users], "text": "Maintenance tonight"}
    world.tenant.add_fault("connector.send", 401, count=1000)  # the Bot Connector rejects our token

    response, messages = await post(request, "maint-1")
    await run_queue(messages)

    during = await status("maint-1")
    assert not during.finished and (during.counts.failed, during.counts.pending) == (0, count)
    assert {r.error.code for r in during.recipients if r.error} == {"bot_unauthorized"}
    if count > 20:  # over Service Bus each recipient's message is kept for an operator's replay
        from shared.bootstrap import get_services
        from shared.failures import list_failures

        assert {f.code for f in await list_failures(get_services())} == {"bot_unauthorized"}
    assert not any(world.tenant.messages_for(u) for u in users)

    world.tenant.clear_faults()
    again, messages_again = await post(request, "maint-1")
    await run_queue(messages_again)

    assert again.status_code == (202 if count > 20 else 200)
    assert len(messages_again) == (count if count > 20 else 0)
    done = await status("maint-1")
    assert done.finished and done.counts.sent == count
    assert all(len(world.tenant.messages_for(u)) == 1 for u in users)


async def test_kept_fan_out_recipient_is_replayed_through_the_queue_path_and_its_row_is_updated(
    world: World,
) -> None:
    from shared.bootstrap import get_services, reset_services
    from shared.failures import list_failures, replay_failure

    users = add_users(world, 21)
    world.tenant.add_fault("connector.send", 401, count=1000)
    _, messages = await post({"recipients": [u.upn for u in users], "text": "Kept"}, "kept-1")
    await run_queue(messages)
    kept = await list_failures(get_services())
    assert len(kept) == 21

    world.tenant.clear_faults()
    await reset_services()  # the operator replays from another process
    results = [await replay_failure(get_services(), f.message_id) for f in kept]

    assert {r.outcome for r in results} == {"sent"}
    assert await list_failures(get_services()) == []
    done = await status("kept-1")
    assert done.finished and done.counts.sent == 21
    assert all(len(world.tenant.messages_for(u)) == 1 for u in users)


async def test_unconfirmed_fan_out_send_waits_out_the_lease_instead_of_dead_lettering(world: World) -> None:
    """A send Teams did not confirm keeps its key for the lease; a redelivery polls the key's record
    for up to Waits.queue_in_flight (10 of them outlast the lease), then is abandoned after a
    short pause, and the row keeps the delivery_unconfirmed error."""
    from shared import delivery
    from shared.bootstrap import Waits

    users = add_users(world, 21)
    await warm(world, users)
    # The poll is made short here, so what would take two minutes runs at once.
    deployed_wait = Waits().queue_in_flight
    shorten_waits(queue_in_flight=0.3)
    world.tenant.add_fault("connector.send", 504, count=1)
    _, messages = await post({"recipients": [u.upn for u in users], "text": "Unconfirmed"}, "unc-1")
    first = [m for m in messages if users[0].upn.encode() in m]

    with pytest.raises(TransientError):
        await user_function("notify_queue")(_queue_message(first[0], 1), OutputMessages())
    started = time.monotonic()
    with pytest.raises(TransientError) as in_flight:
        await user_function("notify_queue")(_queue_message(first[0], 2), OutputMessages())
    waited = time.monotonic() - started

    assert in_flight.value.code == "request_in_progress" and in_flight.value.retry_after > 300
    assert 0.3 <= waited < 0.3 + delivery.IN_FLIGHT_RETRY_AFTER + 2, waited
    assert 10 * deployed_wait > in_flight.value.retry_after
    row = (await status("unc-1", top="100")).recipients
    [mine] = [r for r in row if r.recipient == users[0].upn]
    assert mine.state == "pending" and mine.error is not None and mine.error.code == "delivery_unconfirmed"


def _queue_message(body: bytes, count: int, message_id: str | None = None) -> ServiceBusMessage:
    return ServiceBusMessage(
        body=body,
        message_id=message_id or str(uuid.uuid4()),
        delivery_count=count,
        application_properties={},
        user_properties={},
    )


# --- pacing does not hold a concurrency slot, and never waits past the retry policy -----------------


async def test_a_send_waiting_for_its_conversation_window_lets_another_user_go_first(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice, bob = world.user("alice"), world.user("bob")
    await warm(world, [alice, bob])
    monkeypatch.setenv("MaxConcurrentSends", "1")

    # Teams allows 7 sends per second and 8 per 2 seconds to one conversation: alice's later sends wait
    # their turn, and bob's send, queued behind them for the one slot, goes first instead of waiting
    # with them. Twelve, not eight: on a loaded machine eight sends can take longer than the 1 s window,
    # and then none of them waits; twelve wait unless eight sends take over 2 s.
    responses = await asyncio.gather(
        *(post({"recipient": alice.upn, "text": f"alice {i}"}) for i in range(12)),
        post({"recipient": bob.upn, "text": "bob"}),
    )

    assert all(r.status_code == 200 for r, _ in responses)
    order = [a["activity"]["text"] for a in world.tenant.activities()]
    assert order.index("bob") < len(order) - 1, order
    assert order[-1].startswith("alice")


async def test_a_tenant_pause_longer_than_the_retry_policy_fails_fast_with_retry_after(world: World) -> None:
    alice, bob = world.user("alice"), world.user("bob")
    await warm(world, [alice, bob])
    world.tenant.add_fault("connector.send", 429, count=1, retry_after=600)

    first, _ = await post({"recipient": alice.upn, "text": "one"})
    second, _ = await post({"recipient": bob.upn, "text": "two"})

    assert first.status_code == 503 and int(first.headers["Retry-After"]) >= 500
    # The tenant is paused in this process: the next send does not sleep 10 minutes holding a slot.
    assert second.status_code == 503 and int(second.headers["Retry-After"]) >= 500
    assert json.loads(second.get_body())["error"]["code"] == "upstream_unavailable"
    assert world.tenant.calls("connector.send") == 1 and not world.tenant.messages_for(bob)


# --- notification ids: one per key, per source and tenant, always reachable --------------------------


async def test_a_key_used_for_a_broadcast_is_refused_for_a_different_single_send(world: World) -> None:
    users = add_users(world, 25)
    await post({"recipients": [u.upn for u in users], "text": "Broadcast"}, "k1")

    single, _ = await post({"recipient": "alice@contoso.com", "text": "Something else"}, "k1")

    assert single.status_code == 422
    assert json.loads(single.get_body())["error"]["code"] == "idempotency_key_reused"
    assert not world.tenant.messages_for(world.user("alice"))
    result = await status("k1")
    assert result.total == 25 and result.counts.sent == 0 and result.counts.pending == 25


async def test_an_http_key_equal_to_a_service_bus_message_id_is_not_merged_into_its_notification(
    world: World,
) -> None:
    from shared.bootstrap import get_services
    from shared.failures import list_failures

    response, _ = await post({"recipient": "alice@contoso.com", "text": "Order 42 shipped"}, "order-42")
    assert response.status_code == 200
    queued = _queue_message(
        json.dumps({"recipient": "bob@contoso.com", "text": "Order 42 shipped"}).encode(), 1, "order-42"
    )

    await user_function("notify_queue")(queued, OutputMessages())

    [kept] = await list_failures(get_services())
    assert kept.message_id == "order-42" and kept.code == "idempotency_key_reused"
    assert not world.tenant.messages_for(world.user("bob"))
    code, body, _ = await call("notification_recall", "DELETE", "order-42")
    assert code == 200 and [r["recipient"] for r in body["results"]] == ["alice@contoso.com"]


@pytest.mark.parametrize("count", [1, 3], ids=["single", "batch"])
async def test_a_key_with_a_slash_gives_a_notification_id_that_can_be_reached(world: World, count: int) -> None:
    recipients = ["alice@contoso.com", "bob@contoso.com", "o'neil@contoso.com"][:count]
    body = {"recipient": recipients[0]} if count == 1 else {"recipients": recipients}

    response, _ = await post({**body, "text": "Invoice"}, "invoices/2026/1001")

    notification_id = json.loads(response.get_body())["notificationId"]
    assert response.status_code == 200 and "/" not in notification_id
    assert (await status(notification_id)).counts.sent == count
    again, _ = await post({**body, "text": "Invoice"}, "invoices/2026/1001")
    assert json.loads(again.get_body())["notificationId"] == notification_id


@pytest.mark.parametrize("token", ["%%%", "WzFd", "eyJ4IjogMX0", "eyJSb3dLZXkiOiAxfQ", "bnVsbA"])
async def test_a_garbled_continuation_token_is_a_400(world: World, token: str) -> None:
    response, _ = await post({"recipients": ["alice@contoso.com", "bob@contoso.com"], "text": "hi"}, "paged")
    assert response.status_code == 200

    code, body, _ = await call("notification_status", "GET", "paged", {"top": "1", "continuationToken": token})

    assert code == 400 and body["error"]["code"] == "invalid_continuation_token"


async def test_an_update_racing_a_recall_never_brings_the_recalled_rows_back(world: World) -> None:
    """Rows are rewritten with an ETag match: whichever of the two finishes last, what the status shows
    is what Teams shows (recalled, deleted), never a 'sent' written from a stale read."""
    users = add_users(world, 3)
    await warm(world, users)
    await post({"recipients": [u.upn for u in users], "text": "v1"}, "race-1")
    world.tenant.add_fault("connector.delete", 200, count=3, delay=0.3)  # the recall is slow

    (recall_code, recall, _), (update_code, _, _) = await asyncio.gather(
        call("notification_recall", "DELETE", "race-1"),
        call("notification_update", "PUT", "race-1", body={"text": "v2"}),
    )

    assert recall_code == 200 and update_code == 200
    assert {r["outcome"] for r in recall["results"]} == {"recalled"}
    assert all(world.tenant.messages_for(u) == [] for u in users)
    result = await status("race-1")
    assert result.counts.recalled == 3 and result.counts.sent == 0
