"""Teams and Graph as they really behave (issue 14): eight failure kinds from public reports, each
through the real function (HTTP, and Service Bus and fan-out where they apply), asserting what the
caller sees and the exact upstream requests made.

The fake expresses each condition as the real service does (faketenant/, sources cited there).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import azure.functions as func
import pytest
from azure.functions.servicebus import ServiceBusMessage

from faketenant import FakeUser
from shared.bootstrap import get_services
from shared.errors import TransientError
from shared.failures import get_failure
from shared.storage.references import ConversationReference
from tests.conftest import World
from tests.functions import OutputMessages, notify_request, user_function
from tests.test_messages import activity_for, bearer, user_installs
from tests.test_messages import post as post_activity

UPSTREAM = ("graph.", "connector.")
WELCOME = {"recipient": "alice@contoso.com", "text": "welcome"}


@pytest.fixture(autouse=True)
def _quiet_storage_debug(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="azure")


async def post(body: dict[str, Any], key: str | None = None) -> tuple[int, dict[str, Any], func.HttpResponse]:
    request = notify_request(body, key)
    response: func.HttpResponse = await user_function("notify")(request, OutputMessages())
    return response.status_code, json.loads(response.get_body()), response


async def call(
    name: str, method: str, notification_id: str, body: Any = None
) -> tuple[int, dict[str, Any], func.HttpResponse]:
    request = func.HttpRequest(
        method,
        f"http://localhost/api/notifications/{notification_id}",
        headers={"Content-Type": "application/json"},
        params={},
        route_params={"id": notification_id},
        body=json.dumps(body).encode() if body is not None else b"",
    )
    response: func.HttpResponse = await user_function(name)(request)
    return response.status_code, json.loads(response.get_body()), response


async def queue(body: dict[str, Any], message_id: str, delivery_count: int = 1) -> None:
    msg = ServiceBusMessage(
        body=json.dumps(body).encode(),
        message_id=message_id,
        delivery_count=delivery_count,
        content_type="application/json",
        application_properties={},
        user_properties={},
    )
    await user_function("notify_queue")(msg, OutputMessages())


async def queue_until_completed(body: dict[str, Any], message_id: str, max_deliveries: int = 10) -> int:
    """What Service Bus does: redeliver while the function raises. Returns the completing delivery."""
    for count in range(1, max_deliveries + 1):
        try:
            await queue(body, message_id, count)
        except TransientError:
            continue
        return count
    raise AssertionError("the message would have been dead-lettered")


def upstream(world: World) -> list[str]:
    """Graph and connector routes in order (token and metadata requests left out)."""
    return [r.route for r in world.tenant.log if r.route.startswith(UPSTREAM)]


def texts(world: World, user: FakeUser) -> list[str]:
    return [str(m["activity"].get("text")) for m in world.tenant.messages_for(user)]


async def warm(world: World, user: FakeUser) -> None:
    """A send that installs the app and memoises the recipient, then a clean log."""
    code, body, _ = await post({"recipient": user.upn, "text": "first"})
    assert code == 200, body
    world.tenant.clear_log()


# The installation's chat id is the bot's 1:1 conversation id (Teams docs, "Send proactive
# installation messages"): no members call and no create conversation after the install.
RESOLVE_AFTER_INSTALL = [
    "graph.install",
    "graph.installed_apps",
    "graph.chat",
    "connector.send",
]


# --- 1. MessageWritesBlocked: blocked the bot, or uninstalled the app ---------------------------------


async def test_writes_blocked_after_an_uninstall_reinstalls_and_sends_once(world: World) -> None:
    world.tenant.message_writes_blocked = True
    alice = world.user("alice")
    await warm(world, alice)
    world.tenant.uninstall_app(alice)

    code, body, _ = await post({"recipient": alice.upn, "text": "after uninstall"})

    assert code == 200, body
    assert texts(world, alice) == ["first", "after uninstall"]
    # The 403, a look at the installation (gone), the install and resolution, one send.
    assert upstream(world) == ["connector.send", "graph.installed_apps", *RESOLVE_AFTER_INSTALL]
    assert world.tenant.is_installed(alice)


async def test_writes_blocked_with_the_app_installed_is_a_block(world: World) -> None:
    world.tenant.message_writes_blocked = True
    alice = world.user("alice")
    await warm(world, alice)
    world.tenant.block_bot(alice)

    code, body, _ = await post({"recipient": alice.upn, "text": "blocked"})

    assert code == 403 and body["error"]["code"] == "recipient_blocked_bot", body
    assert "MessageWritesBlocked" in body["error"]["message"]
    assert upstream(world) == ["connector.send", "graph.installed_apps"]
    assert texts(world, alice) == ["first"]


async def test_writes_blocked_over_the_queue_and_in_a_fan_out(world: World) -> None:
    world.tenant.message_writes_blocked = True
    alice, bob = world.user("alice"), world.user("bob")
    await warm(world, alice)
    await warm(world, bob)
    world.tenant.uninstall_app(alice)
    world.tenant.block_bot(bob)

    await queue({"recipient": alice.upn, "text": "queued"}, "m-wb-1")
    assert texts(world, alice) == ["first", "queued"]
    assert await get_failure(get_services(), "m-wb-1") is None

    world.tenant.uninstall_app(alice)
    code, body, _ = await post({"recipients": [alice.upn, bob.upn], "text": "all hands"}, key="wb-fan")
    assert code == 200 and body["finished"] is True, body
    states = {r["recipient"]: (r["state"], (r.get("error") or {}).get("code")) for r in body["recipients"]}
    assert states == {alice.upn: ("sent", None), bob.upn: ("failed", "recipient_blocked_bot")}
    assert texts(world, alice)[-1] == "all hands" and texts(world, bob) == ["first"]


# --- 2. Install refused by a Teams app permission policy ----------------------------------------------


async def test_app_permission_policy_is_the_recipients_permanent_error(world: World) -> None:
    alice = world.user("alice")
    world.tenant.block_app_by_policy(alice)

    code, body, _ = await post(WELCOME)

    assert code == 403, body
    assert body["error"]["code"] == "app_blocked_by_policy" and body["error"]["target"] == "recipient"
    assert "permission policy" in body["error"]["message"]
    # Asked once: a policy is not a transient fault.
    assert upstream(world) == ["graph.installed_apps", "graph.catalog", "graph.install"]


async def test_app_permission_policy_fails_one_recipient_and_the_notification_finishes(world: World) -> None:
    alice, bob = world.user("alice"), world.user("bob")
    world.tenant.block_app_by_policy(bob)

    code, body, response = await post({"recipients": [alice.upn, bob.upn], "text": "all hands"}, key="policy-1")

    assert code == 200 and body["finished"] is True, body
    [a, b] = body["recipients"]
    assert a["state"] == "sent" and b["state"] == "failed"
    assert b["error"]["code"] == "app_blocked_by_policy"
    assert "Retry-After" not in response.headers
    assert texts(world, alice) == ["all hands"]

    # Over the queue the same is the sender's to know: kept with its reason, not retried.
    world.tenant.clear_log()
    await queue({"recipient": bob.upn, "text": "queued"}, "m-policy")
    kept = await get_failure(get_services(), "m-policy")
    assert kept is not None and kept.code == "app_blocked_by_policy" and kept.http_status == 403
    assert upstream(world).count("graph.install") == 1


async def test_a_missing_role_is_still_missing_permission(world: World) -> None:
    world.tenant.consented_roles.discard("TeamsAppInstallation.ReadWriteSelfForUser.All")

    code, body, _ = await post(WELCOME)

    assert code == 500 and body["error"]["code"] == "missing_permission", body
    assert body["error"]["target"] == "TeamsAppInstallation.ReadWriteSelfForUser.All"


async def test_a_queued_fan_out_finishes_with_the_policy_blocked_and_the_uninstalled_recipients(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over 20 recipients: one Service Bus message per recipient (the output binding), each delivered."""
    monkeypatch.setenv("TenantSendRatePerSecond", "1000")
    monkeypatch.setenv("TenantGraphRatePerSecond", "1000")
    world.tenant.message_writes_blocked = True
    alice, bob = world.user("alice"), world.user("bob")
    await warm(world, alice)
    world.tenant.uninstall_app(alice)
    world.tenant.block_app_by_policy(bob)
    others = [world.tenant.add_user(f"staff{i}@contoso.com") for i in range(20)]
    request = {"recipients": [alice.upn, bob.upn, *(u.upn for u in others)], "text": "all hands"}
    out = OutputMessages()
    http = func.HttpRequest(
        "POST",
        "http://localhost/api/notify",
        headers={"Content-Type": "application/json", "Idempotency-Key": "fan-q"},
        params={},
        route_params={},
        body=json.dumps(request).encode(),
    )
    response: func.HttpResponse = await user_function("notify")(http, out)
    assert response.status_code == 202 and len(out.messages) == 22

    for index, body in enumerate(out.messages):
        msg = ServiceBusMessage(
            body=body, message_id=f"fan-q-{index}", delivery_count=1, application_properties={}, user_properties={}
        )
        await user_function("notify_queue")(msg, OutputMessages())

    code, status, _ = await call("notification_status", "GET", "fan-q")
    assert status["finished"] is True and status["counts"]["sent"] == 21 and status["counts"]["failed"] == 1
    [failed] = [r for r in status["recipients"] if r["state"] == "failed"]
    assert failed["recipient"] == bob.upn and failed["error"]["code"] == "app_blocked_by_policy"
    assert texts(world, alice) == ["first", "all hands"]


# --- 3. The chat is not ready for longer than one request's retries -----------------------------------


async def test_chat_not_ready_is_transient_and_the_retry_after_it_appears_delivers_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RetryMaxAttempts", "2")
    world.tenant.chat_ready_after = 2.5
    alice = world.user("alice")

    first, body, response = await post(WELCOME, key="welcome-alice-1")
    assert first == 503 and body["error"]["code"] == "conversation_unavailable", body
    assert int(response.headers["Retry-After"]) >= 2
    # Asked again before the chat exists: still transient, nothing recorded against the key.
    again, body, _ = await post(WELCOME, key="welcome-alice-1")
    assert again == 503 and body["error"]["code"] == "conversation_unavailable", body
    assert world.tenant.calls("graph.install") == 1

    await asyncio.sleep(2.6)
    done, body, _ = await post(WELCOME, key="welcome-alice-1")
    assert done == 200, body
    replay, replayed, _ = await post(WELCOME, key="welcome-alice-1")
    assert replay == 200 and replayed["activityId"] == body["activityId"]
    assert texts(world, alice) == ["welcome"]


async def test_chat_not_ready_over_the_queue_is_redelivered_not_kept(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RetryMaxAttempts", "2")
    world.tenant.chat_ready_after = 1.5

    delivery = await queue_until_completed(WELCOME, "m-welcome")

    assert delivery == 2  # the first waited (Retry-After) and was redelivered; the second sent
    assert texts(world, world.user("alice")) == ["welcome"]
    assert await get_failure(get_services(), "m-welcome") is None


async def test_chat_not_ready_in_a_fan_out_leaves_the_recipient_pending_until_a_repeat(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RetryMaxAttempts", "2")
    world.tenant.chat_ready_after = 2.0
    alice, bob = world.user("alice"), world.user("bob")
    request = {"recipients": [alice.upn, bob.upn], "text": "all hands"}

    code, body, response = await post(request, key="fan-ready")
    assert code == 200 and body["finished"] is False, body
    assert {r["state"] for r in body["recipients"]} == {"pending"}
    assert int(response.headers["Retry-After"]) >= 2

    await asyncio.sleep(2.1)
    code, body, _ = await post(request, key="fan-ready")
    assert code == 200 and body["finished"] is True and {r["state"] for r in body["recipients"]} == {"sent"}
    assert texts(world, alice) == ["all hands"] and texts(world, bob) == ["all hands"]


# --- 4. Message size: Teams is the judge ---------------------------------------------------------------


async def test_a_message_within_teams_limit_is_delivered(world: World) -> None:
    text = "お知らせ" * 2500  # 10,000 characters: 20 KB as UTF-16, 30 KB as UTF-8
    code, body, _ = await post({"recipient": "alice@contoso.com", "text": text}, key="size-ok")
    assert code == 200, body
    assert texts(world, world.user("alice")) == [text]


async def test_a_message_teams_finds_too_large_is_its_413(world: World) -> None:
    text = "x" * 60_000  # 60 KB on the wire, 120 KB as UTF-16: over Teams' ~100 KB

    code, body, _ = await post({"recipient": "alice@contoso.com", "text": text})

    assert code == 413 and body["error"]["code"] == "message_too_large", body
    assert "MessageSizeTooBig" in body["error"]["message"]
    assert upstream(world).count("connector.send") == 1  # asked once, not retried
    await queue({"recipient": "alice@contoso.com", "text": text}, "m-big")
    kept = await get_failure(get_services(), "m-big")
    assert kept is not None and kept.code == "message_too_large"


async def test_only_a_message_teams_would_certainly_refuse_is_refused_here(world: World) -> None:
    code, body, _ = await post({"recipient": "alice@contoso.com", "text": "x" * 262_145})
    assert code == 413 and body["error"]["code"] == "message_too_large", body
    assert "262144" in body["error"]["message"]
    assert upstream(world) == []


async def test_a_large_keyed_message_is_kept_whole_for_status_and_fan_out(world: World) -> None:
    # 50,000 characters: 100,000 bytes as UTF-16 (just within Teams' limit), more than one Table
    # Storage string property holds.
    text = "y" * 50_000
    alice, bob = world.user("alice"), world.user("bob")
    code, body, _ = await post({"recipients": [alice.upn, bob.upn], "text": text}, key="large-1")
    assert code == 200 and body["finished"] is True, body
    assert texts(world, alice) == [text] and texts(world, bob) == [text]


# --- 5. Update or recall after the user uninstalled ---------------------------------------------------


async def test_update_and_recall_after_an_uninstall_fail_and_the_message_stays_sent(world: World) -> None:
    alice = world.user("alice")
    code, body, _ = await post({"recipient": alice.upn, "text": "Payroll v1"}, key="pay-1")
    assert code == 200, body
    world.tenant.uninstall_app(alice)
    world.tenant.clear_log()

    code, updated, _ = await call("notification_update", "PUT", "pay-1", {"text": "Payroll v2 (corrected)"})
    assert code == 200, updated
    [result] = updated["results"]
    assert result["outcome"] == "failed" and result["error"]["code"] == "app_not_installed"
    assert "BotNotInConversationRoster" in result["error"]["message"]

    code, recalled, _ = await call("notification_recall", "DELETE", "pay-1")
    assert code == 200, recalled
    [result] = recalled["results"]
    assert result["outcome"] == "failed" and result["error"]["code"] == "app_not_installed"

    assert upstream(world) == ["connector.update", "connector.delete"]
    assert texts(world, alice) == ["Payroll v1"]  # still in her chat, unchanged
    code, status, _ = await call("notification_status", "GET", "pay-1")
    assert status["recipients"][0]["state"] == "sent" and status["counts"]["recalled"] == 0


# --- 6. A stale regional service URL -------------------------------------------------------------------


async def test_a_regional_url_in_the_wrong_geo_falls_back_to_serviceurl_and_keeps_it(world: World) -> None:
    alice = world.user("alice")
    user_installs(world, alice)
    # The install activity Teams sends the bot carries alice's regional service URL.
    install = activity_for(
        world, alice, "installationUpdate", action="add", serviceUrl=world.tenant.service_url_for(alice, "emea")
    )
    answer = await post_activity(user_function("messages"), install, bearer(world, install))
    assert answer.status_code in (200, 201), answer.get_body()
    world.tenant.set_geo("eudb")  # later the tenant moves
    world.tenant.clear_log()

    code, body, _ = await post({"recipient": alice.upn, "text": "after the move"}, key="geo-1")

    assert code == 200, body
    sends = [(r.path.split("/")[1], r.status) for r in world.tenant.log if r.route.startswith(UPSTREAM)]
    assert sends == [("emea", 400), ("teams", 201)]
    kept = await get_services().store.get(world.tenant.tenant_id, alice.upn)
    assert kept is not None and kept.service_url == world.env["ServiceUrl"]
    world.tenant.clear_log()
    assert (await post({"recipient": alice.oid, "text": "next"}))[0] == 200
    assert [r.path.split("/")[1] for r in world.tenant.log if r.route.startswith(UPSTREAM)] == ["teams"]
    assert texts(world, alice) == ["after the move", "next"]


async def test_update_of_a_message_sent_on_a_regional_url_after_the_move(world: World) -> None:
    alice = world.user("alice")
    world.tenant.install_app(alice)
    conversation = world.tenant.open_conversation(alice)
    regional = world.tenant.service_url_for(alice, "emea")
    await get_services().store.put(
        ConversationReference(world.tenant.tenant_id, alice.account_id, conversation, regional, alice.oid, alice.upn),
        [alice.upn],
    )
    assert (await post({"recipient": alice.upn, "text": "v1"}, key="geo-upd"))[0] == 200  # no geo yet
    world.tenant.set_geo("eudb")
    world.tenant.clear_log()

    code, body, _ = await call("notification_update", "PUT", "geo-upd", {"text": "v2"})

    assert code == 200 and body["results"][0]["outcome"] == "updated", body
    assert [(r.path.split("/")[1], r.status) for r in world.tenant.log] == [("emea", 400), ("teams", 200)]
    assert texts(world, alice) == ["v2"]


async def test_a_rejected_text_message_does_not_blame_a_card_and_carries_teams_words(world: World) -> None:
    world.tenant.add_fault(
        "connector.send", 400, body={"error": {"code": "BadArgument", "message": "Activity text is malformed"}}
    )
    code, body, _ = await post(WELCOME)
    assert code == 422 and body["error"]["code"] == "message_rejected", body
    assert body["error"]["target"] == "text"
    assert "BadArgument" in body["error"]["message"] and "Activity text is malformed" in body["error"]["message"]


# --- 7. Retry-After is honoured on every path ---------------------------------------------------------


async def test_retry_after_longer_than_we_wait_inline_is_passed_on(world: World) -> None:
    alice, bob = world.user("alice"), world.user("bob")
    await warm(world, alice)
    await warm(world, bob)
    world.tenant.add_fault("connector.send", 429, retry_after=120, count=2)

    started = time.monotonic()
    code, body, response = await post({"recipients": [alice.upn, bob.upn], "text": "later"}, key="ra-1")

    assert time.monotonic() - started < 5  # no fixed wait
    assert code == 200 and body["finished"] is False, body
    assert response.headers["Retry-After"] == "120"
    world.tenant.add_fault("connector.send", 429, retry_after=120)
    code, body, response = await post({"recipient": alice.upn, "text": "one"})
    assert code == 503 and response.headers["Retry-After"] == "120", body


async def test_over_the_queue_a_redelivery_comes_no_earlier_than_retry_after(world: World) -> None:
    alice, bob = world.user("alice"), world.user("bob")
    await warm(world, alice)
    await warm(world, bob)
    # 3 s: longer than RetryMaxDelaySeconds (2), so not waited for inline.
    world.tenant.add_fault("connector.send", 429, retry_after=3, count=2)
    request = {"recipients": [alice.upn, bob.upn], "text": "queued"}

    started = time.monotonic()
    with pytest.raises(TransientError):
        await queue(request, "m-ra", 1)
    # Waited out (a send held back by the tenant's pause may report what is left of it: a hair less).
    assert time.monotonic() - started >= 2.9
    # One 429 may be left unused: the tenant's shared budget spaces the two sends, so the second can be
    # held back by the tenant's pause before it reaches Teams. Teams' own pause is over by now.
    world.tenant.clear_faults()
    await queue(request, "m-ra", 2)

    assert texts(world, alice) == ["first", "queued"] and texts(world, bob) == ["first", "queued"]


# --- Delivered, then an error: the send is not made twice ---------------------------------------------


@pytest.mark.parametrize("status", [502, 504])
async def test_a_send_delivered_before_a_gateway_error_is_not_sent_again(world: World, status: int) -> None:
    alice = world.user("alice")
    await warm(world, alice)
    world.tenant.add_fault("connector.send", status, applied=True)

    code, body, response = await post({"recipient": alice.upn, "text": "once"}, key="once-1")
    assert code == 503 and body["error"]["code"] == "delivery_unconfirmed", body
    again, body, _ = await post({"recipient": alice.upn, "text": "once"}, key="once-1")
    assert again == 409 and body["error"]["code"] == "request_in_progress", body

    assert texts(world, alice) == ["first", "once"]  # Teams has it once; we never sent it again
    assert upstream(world) == ["connector.send"]
