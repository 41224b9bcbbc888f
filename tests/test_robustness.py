"""Issue 16: hostile input and a faulty world never crash, park, block or duplicate a message.

Fault tests through the function app object against the fake tenant and Azurite: a blip at the login
endpoint, unknown tenants, storage failing between a confirmed send and its record, one poison
recipient among 25, dot segments in names and ids, and a duplicate queue delivery. Each states the
exact outcome a caller or an operator sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import azure.functions as func
import pytest
from azure.functions.servicebus import ServiceBusMessage

from shared.bootstrap import get_services
from shared.errors import NotifyError, TransientError
from shared.failures import list_failures
from tests.conftest import World
from tests.functions import OutputMessages, shorten_waits, user_function
from tests.storageproxy import StorageProxy

HELLO: dict[str, Any] = {"recipient": "alice@contoso.com", "text": "Build 42 is green"}


async def post(body: bytes | dict[str, Any], headers: dict[str, str] | None = None) -> func.HttpResponse:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = func.HttpRequest(
        "POST",
        "http://localhost/api/notify",
        headers={"Content-Type": "application/json", **(headers or {})},
        params={},
        route_params={},
        body=raw,
    )
    response: func.HttpResponse = await user_function("notify")(request, OutputMessages())
    return response


def message(body: bytes | dict[str, Any], message_id: str, delivery_count: int = 1) -> ServiceBusMessage:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    return ServiceBusMessage(
        body=raw,
        message_id=message_id,
        delivery_count=delivery_count,
        content_type="application/json",
        application_properties={},
        user_properties={},
    )


async def deliver(msg: ServiceBusMessage) -> OutputMessages:
    out = OutputMessages()
    await user_function("notify_queue")(msg, out)
    return out


def error_code(response: func.HttpResponse) -> str:
    body = json.loads(response.get_body())
    return str(body["error"]["code"])


# --- 1. a blip at the login endpoint --------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "fault"),
    [
        pytest.param("openid", {"status": 503}, id="openid-503"),
        pytest.param("openid", {"status": 429, "retry_after": 1}, id="openid-429"),
        pytest.param("openid", {"status": 200, "malformed": True}, id="openid-malformed"),
        pytest.param("openid", {"status": 200, "body": ""}, id="openid-empty"),
        pytest.param("token", {"status": 503}, id="token-503"),
        pytest.param("token", {"status": 200, "malformed": True}, id="token-malformed"),
    ],
)
async def test_a_login_blip_is_transient_never_tenant_not_found(
    world: World, route: str, fault: dict[str, Any]
) -> None:
    world.tenant.add_fault(route, **fault)
    answers: list[tuple[int, str | None]] = []
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        response = await post(HELLO)
        code = None if response.status_code == 200 else error_code(response)
        answers.append((response.status_code, code))
        if response.status_code == 200:
            break
        assert (response.status_code, code) == (503, "upstream_unavailable"), answers
        assert int(response.headers["Retry-After"]) >= 1
        await asyncio.sleep(0.5)
    assert answers[-1] == (200, None), answers
    assert answers[0] == (503, "upstream_unavailable"), answers
    assert len(world.tenant.messages_for(world.user("alice"))) == 1


async def test_a_login_blip_over_service_bus_is_redelivered_then_sent(world: World) -> None:
    world.tenant.add_fault("openid", 200, malformed=True)
    attempts = 0
    for count in range(1, 20):
        attempts = count
        try:
            await deliver(message(HELLO, "login-blip", count))
        except TransientError as err:
            assert err.code == "upstream_unavailable"
            continue
        break
    assert attempts > 1, "the blip was not seen"
    assert len(world.tenant.messages_for(world.user("alice"))) == 1
    assert await list_failures(get_services()) == []


async def test_an_unknown_tenant_is_not_found_and_remembered(world: World) -> None:
    stranger = str(uuid.uuid4())
    first = await post({**HELLO, "tenantId": stranger})
    assert (first.status_code, error_code(first)) == (404, "tenant_not_found")
    logins = world.tenant.calls("openid") + world.tenant.calls("token")

    again = await post({**HELLO, "tenantId": stranger})

    assert (again.status_code, error_code(again)) == (404, "tenant_not_found")
    assert world.tenant.calls("openid") + world.tenant.calls("token") == logins, "no login round trip again"


# --- 2. input that used to crash is refused -------------------------------------------------------

CARD = {"type": "AdaptiveCard", "version": "1.5", "body": [{"type": "TextBlock", "text": "Approve?"}]}


def _nested_card(depth: int) -> bytes:
    inner = '{"type":"TextBlock","text":"deep"}'
    for _ in range(depth):
        inner = '{"type":"Container","items":[' + inner + "]}"
    return ('{"recipient":"alice@contoso.com","card":{"type":"AdaptiveCard","body":[' + inner + "]}}").encode()


HOSTILE_BODIES = [
    pytest.param(
        b'{"recipient":"alice@contoso.com","text":"x","n":' + b"9" * 4301 + b"}", 400, "invalid_json", id="huge-int"
    ),
    pytest.param(
        b'{"recipient":"alice@contoso.com","card":{"type":"AdaptiveCard","v":' + b"9" * 5000 + b"}}",
        400,
        "invalid_json",
        id="huge-int-in-card",
    ),
    pytest.param(b'{"recipient":"alice@contoso.com","text":"x","n":1e999}', 400, "invalid_json", id="float-overflow"),
    pytest.param(b"[" * 1000 + b"]" * 1000, 413, "json_too_deep", id="deep-array"),
    pytest.param(_nested_card(40), 413, "json_too_deep", id="deep-card"),
    pytest.param(
        b'{"recipient":"alice@contoso.com","card":{"type":"AdaptiveCard","body":[{"type":"TextBlock","text":"\\ud800"}]}}',
        400,
        "invalid_json",
        id="lone-surrogate-in-card",
    ),
    pytest.param(
        b'{"recipient":"alice@contoso.com","card":{"type":"AdaptiveCard","x":NaN}}', 400, "invalid_json", id="nan"
    ),
    pytest.param(
        b'{"recipient":"alice@contoso.com","card":{"type":"AdaptiveCard","x":-Infinity}}',
        400,
        "invalid_json",
        id="infinity",
    ),
]


@pytest.mark.parametrize(("body", "status", "code"), HOSTILE_BODIES)
@pytest.mark.parametrize("key", [None, "k-hostile"], ids=["unkeyed", "keyed"])
async def test_hostile_json_is_refused_over_http(
    world: World, body: bytes, status: int, code: str, key: str | None
) -> None:
    response = await post(body, {"Idempotency-Key": key} if key else None)

    assert (response.status_code, error_code(response)) == (status, code)
    assert world.tenant.calls("connector.send") == 0


async def test_a_nan_in_a_many_recipient_send_is_refused(world: World) -> None:
    body = b'{"recipients":["alice@contoso.com","bob@contoso.com"],"card":{"type":"AdaptiveCard","x":NaN}}'
    response = await post(body, {"Idempotency-Key": "nan-many"})
    assert (response.status_code, error_code(response)) == (400, "invalid_json")
    assert world.tenant.calls("connector.send") == 0


@pytest.mark.parametrize(("body", "status", "code"), HOSTILE_BODIES)
async def test_hostile_json_over_service_bus_is_kept_with_its_reason(
    world: World, body: bytes, status: int, code: str
) -> None:
    await deliver(message(body, "hostile-" + uuid.uuid4().hex[:8]))

    [kept] = await list_failures(get_services())
    assert (kept.http_status, kept.code) == (status, code)
    assert world.tenant.calls("connector.send") == 0


@pytest.mark.parametrize(("body", "status", "code"), HOSTILE_BODIES)
async def test_hostile_json_in_an_update_is_refused(world: World, body: bytes, status: int, code: str) -> None:
    sent = await post(HELLO, {"Idempotency-Key": "to-update"})
    assert sent.status_code == 200
    update = body.replace(b'"recipient":"alice@contoso.com",', b"")
    request = func.HttpRequest(
        "PUT",
        "http://localhost/api/notifications/to-update",
        headers={"Content-Type": "application/json"},
        params={},
        route_params={"id": "to-update"},
        body=update,
    )
    response = await user_function("notification_update")(request)

    assert (response.status_code, error_code(response)) == (status, code)
    assert world.tenant.calls("connector.update") == 0


async def test_the_messaging_endpoint_authenticates_before_it_parses(world: World) -> None:
    deep = b"[" * 200_000 + b"]" * 200_000
    for body in (deep, b"x" * 5_000_000):
        request = func.HttpRequest("POST", "http://localhost/api/messages", headers={}, body=body)
        response = await user_function("messages")(request)
        assert (response.status_code, error_code(response)) == (401, "unauthorized")


async def test_the_messaging_endpoint_caps_the_body(world: World) -> None:
    token = "Bearer " + world.tenant.sign_channel_token(service_url=world.server.service_url)
    big = json.dumps({"type": "message", "text": "x" * 300_000}).encode()
    deep = b"[" * 2_000 + b"]" * 2_000
    for body, status, code in ((big, 413, "message_too_large"), (deep, 413, "json_too_deep")):
        request = func.HttpRequest("POST", "http://localhost/api/messages", headers={"Authorization": token}, body=body)
        response = await user_function("messages")(request)
        assert (response.status_code, error_code(response)) == (status, code)


# --- 4. dot segments never rewrite an upstream URL ------------------------------------------------


@pytest.mark.parametrize("recipient", [".", "..", " .. "])
async def test_a_dot_segment_recipient_is_refused(world: World, recipient: str) -> None:
    response = await post({"recipient": recipient, "text": "hi"})
    assert (response.status_code, error_code(response)) == (400, "invalid_request")
    assert [e.route for e in world.tenant.log] == []


@pytest.mark.parametrize(
    ("user", "path"),
    [
        (".", "/v1.0/users/%2E/teamwork/installedApps"),
        ("..", "/v1.0/users/%2E%2E/teamwork/installedApps"),
        ("../..", "/v1.0/users/..%2F../teamwork/installedApps"),
        ("%2e%2e", "/v1.0/users/%252e%252e/teamwork/installedApps"),
        ("a?b#c", "/v1.0/users/a%3Fb%23c/teamwork/installedApps"),
    ],
)
async def test_graph_paths_keep_every_hostile_segment_inside_one_segment(world: World, user: str, path: str) -> None:
    services = get_services()
    with contextlib.suppress(NotifyError):  # the fake knows no such user: only the path matters here
        await services.graph.find_installation(world.tenant.tenant_id, user)

    [logged] = [e for e in world.tenant.log if e.route != "token" and e.route != "openid"]
    assert logged.method == "GET"
    assert logged.path == path


async def _issued_handle(world: World, conversation: str, activity: str) -> str:
    """The id this deployment would have issued (signed with its key) for a send whose conversation and
    activity ids are hostile: ids are signed, so only what the app issued can reach the connector."""
    from shared.bootstrap import get_services
    from shared.notification_ids import single_send_handle
    from shared.storage.notifications import Delivery

    services = get_services()
    sent = Delivery("", "alice@contoso.com", world.tenant.tenant_id, "sent", activity, conversation, None)
    handle = single_send_handle(sent, services.settings.service_url, await services.signing.signer())
    assert handle is not None
    return handle


@pytest.mark.parametrize(
    ("conversation", "activity", "path"),
    [
        ("..", "..", "/teams/v3/conversations/%2E%2E/activities/%2E%2E"),
        (".", ".", "/teams/v3/conversations/%2E/activities/%2E"),
        ("a:b/../c", "1?x", "/teams/v3/conversations/a:b%2F..%2Fc/activities/1%3Fx"),
    ],
)
async def test_connector_paths_keep_every_hostile_id_inside_one_segment(
    world: World, conversation: str, activity: str, path: str
) -> None:
    handle = await _issued_handle(world, conversation, activity)
    request = func.HttpRequest(
        "DELETE",
        "http://localhost/api/notifications/x",
        headers={},
        params={},
        route_params={"id": handle},
        body=b"",
    )
    response = await user_function("notification_recall")(request)

    assert response.status_code == 200, response.get_body()
    [logged] = [e for e in world.tenant.log if e.route.startswith("connector.") or e.route == "unknown"]
    assert (logged.method, logged.path) == ("DELETE", path)


# --- 3. one bad recipient or key blocks nothing -----------------------------------------------------


@pytest.mark.parametrize("key", ["/" * 170, "%" * 200, "#?\\" * 66, "é/" * 100, "\U0001f600/" * 100])
async def test_a_long_key_that_escapes_past_the_storage_limit_still_works(world: World, key: str) -> None:
    first = await post(HELLO, {"Idempotency-Key": key})
    again = await post(HELLO, {"Idempotency-Key": key})

    assert first.status_code == 200, first.get_body()
    assert again.status_code == 200 and again.headers.get("Idempotent-Replayed") == "true"
    assert json.loads(again.get_body()) == json.loads(first.get_body())
    assert len(world.tenant.messages_for(world.user("alice"))) == 1


async def test_over_long_ids_and_recipients_are_not_found(world: World) -> None:
    sent = await post(HELLO, {"Idempotency-Key": "long-lookups"})
    assert sent.status_code == 200
    long_id = "n" + "%/" * 3000
    status = await user_function("notification_status")(
        func.HttpRequest("GET", "http://localhost/x", headers={}, params={}, route_params={"id": long_id}, body=b"")
    )
    recall = await user_function("notification_recall")(
        func.HttpRequest(
            "DELETE",
            "http://localhost/x",
            headers={},
            params={"recipient": "#" * 5000},
            route_params={"id": "long-lookups"},
            body=b"",
        )
    )

    assert (status.status_code, error_code(status)) == (404, "notification_not_found")
    assert (recall.status_code, error_code(recall)) == (404, "recipient_not_in_notification")


POISON = "#" * 300


def _add_users(world: World) -> None:
    for name in _twenty_five():
        if name != POISON:
            world.tenant.install_app(world.tenant.add_user(name))  # installed already: a shorter cold path


def _twenty_five() -> list[str]:
    names = [f"user{i:02d}@contoso.com" for i in range(24)]
    return names[:7] + [POISON] + names[7:]


async def _drain(world: World, bodies: list[bytes]) -> None:
    """What Service Bus does with the fan-out messages: deliver each until it completes, up to 4 at once
    (host.json maxConcurrentCalls)."""
    slots = asyncio.Semaphore(4)

    async def one(index: int, body: bytes) -> None:
        async with slots:
            for count in range(1, 4):
                try:
                    await deliver(message(body, f"fan-{index}", count))
                except TransientError:
                    continue
                return

    await asyncio.gather(*(one(i, b) for i, b in enumerate(bodies)))


async def _status(notification_id: str) -> dict[str, Any]:
    response = await user_function("notification_status")(
        func.HttpRequest(
            "GET", "http://localhost/x", headers={}, params={}, route_params={"id": notification_id}, body=b""
        )
    )
    assert response.status_code == 200, response.get_body()
    body: dict[str, Any] = json.loads(response.get_body())
    return body


def _assert_one_poison_failed(world: World, status: dict[str, Any]) -> None:
    assert status["counts"] == {"pending": 0, "sent": 24, "failed": 1, "recalled": 0}
    assert status["finished"] is True
    [poisoned] = [r for r in status["recipients"] if r["state"] == "failed"]
    assert poisoned["recipient"] == POISON
    assert poisoned["error"]["code"] == "recipient_not_found"
    assert world.tenant.calls("connector.send") == 24


async def test_one_poison_recipient_in_25_over_http_fails_alone(world: World) -> None:
    _add_users(world)
    out = OutputMessages()
    request = func.HttpRequest(
        "POST",
        "http://localhost/api/notify",
        headers={"Content-Type": "application/json", "Idempotency-Key": "poison-25"},
        params={},
        route_params={},
        body=json.dumps({"recipients": _twenty_five(), "text": "Quarterly results"}).encode(),
    )
    response = await user_function("notify")(request, out)
    assert response.status_code == 202, response.get_body()
    assert len(out.messages) == 25

    await _drain(world, out.messages)

    _assert_one_poison_failed(world, await _status("poison-25"))
    assert await list_failures(get_services()) == []


async def test_one_poison_recipient_in_25_over_service_bus_fails_alone(world: World) -> None:
    _add_users(world)
    out = await deliver(message({"recipients": _twenty_five(), "text": "Quarterly results"}, "poison-q"))
    assert len(out.messages) == 25

    await _drain(world, out.messages)

    _assert_one_poison_failed(world, await _status("poison-q"))


# --- 6. a duplicate delivery waits on the first's result, not a fixed sleep ---------------------------


async def test_a_concurrent_duplicate_delivery_completes_when_the_first_does(world: World) -> None:
    world.tenant.add_fault("connector.send", 200, delay=1.0)  # the first send takes a second
    started = time.monotonic()

    async def duplicate() -> float:
        await asyncio.sleep(0.3)  # arrives while the first is sending
        await deliver(message(HELLO, "dup-1", 2))
        return time.monotonic() - started

    async def original() -> float:
        await deliver(message(HELLO, "dup-1", 1))
        return time.monotonic() - started

    first, second = await asyncio.gather(original(), duplicate())

    # The duplicate completes right after the first (it polls the record), not after a fixed sleep.
    assert second - first < 2, f"the first took {first:.1f}s, the duplicate {second:.1f}s"
    assert world.tenant.calls("connector.send") == 1
    assert len(world.tenant.messages_for(world.user("alice"))) == 1
    assert await list_failures(get_services()) == []


async def test_a_concurrent_duplicate_fan_out_delivery_completes_when_the_first_does(world: World) -> None:
    names = [f"user{i:02d}@contoso.com" for i in range(21)]
    for name in names:
        world.tenant.add_user(name)
    out = await deliver(message({"recipients": names, "text": "Concurrent"}, "dup-fan"))
    [body] = [m for m in out.messages if b"user00@" in m]
    world.tenant.add_fault("connector.send", 200, count=10, delay=1.0)
    started = time.monotonic()

    async def duplicate() -> float:
        await asyncio.sleep(0.3)
        await deliver(message(body, "fan-dup", 2))
        return time.monotonic() - started

    async def original() -> float:
        await deliver(message(body, "fan-dup", 1))
        return time.monotonic() - started

    first, second = await asyncio.gather(original(), duplicate())

    assert second - first < 2, f"the first took {first:.1f}s, the duplicate {second:.1f}s"
    assert len(world.tenant.messages_for(world.tenant.find_user("user00@contoso.com"))) == 1


# --- 5. storage failing between a confirmed send and its record ---------------------------------------


@pytest.fixture
async def storage(world: World, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[StorageProxy]:
    """Table Storage behind a proxy that can take it down (the product is pointed at the proxy)."""
    original = world.env["AzureWebJobsStorage"]
    upstream = original.split("TableEndpoint=", 1)[1].split(";", 1)[0]
    proxy = await StorageProxy(
        upstream.rsplit("/", 2)[0] if upstream.endswith("/") else upstream.rsplit("/", 1)[0]
    ).start()
    monkeypatch.setenv("AzureWebJobsStorage", proxy.connection_string(original))
    yield proxy
    await proxy.stop()


# Table Storage's own SDK retries a 503 three times within ~5 s; these outages outlast that (the key's
# record: longer than three such calls), so what is tested is the product's own retrying.
OUTAGE = 16.0
ROW_OUTAGE = 8.0


async def test_storage_down_after_a_confirmed_single_send(world: World, storage: StorageProxy) -> None:
    storage.down_after_first_conditional_write("requests", OUTAGE)
    started = time.monotonic()

    first = await post(HELLO, {"Idempotency-Key": "outage-1"})
    took = time.monotonic() - started
    again = await post(HELLO, {"Idempotency-Key": "outage-1"})

    assert storage.refused > 0, "the outage did not happen"
    assert first.status_code == 200, first.get_body()
    [sent] = world.tenant.messages_for(world.user("alice"))
    assert json.loads(first.get_body())["activityId"] == sent["id"]
    assert again.status_code == 200 and again.headers.get("Idempotent-Replayed") == "true"
    assert world.tenant.calls("connector.send") == 1
    assert took >= OUTAGE - 0.5  # the answer waited for the record instead of leaving it unwritten


async def test_storage_down_after_confirmed_sends_to_three(world: World, storage: StorageProxy) -> None:
    """The answer reports the true state while storage is down (a recipient Teams confirmed is sent, one
    whose send could not start is pending), and the retry with the same key resends to nobody."""
    storage.down_after_first_write("deliveries", ROW_OUTAGE)  # the first recipient's row, after its send
    upns = ["alice@contoso.com", "bob@contoso.com", "o'neil@contoso.com"]
    body = {"recipients": upns, "text": "Three"}

    def has_it() -> int:
        return sum(len(world.tenant.messages_for(world.tenant.find_user(upn))) for upn in upns)

    first = await post(body, {"Idempotency-Key": "outage-3"})

    assert storage.refused > 0, "the outage did not happen"
    assert first.status_code == 200, first.get_body()
    counts = json.loads(first.get_body())["counts"]
    # Which of the other two started before the outage depends on scheduling; the answer must say which.
    assert counts["sent"] == has_it() >= 1 and counts["pending"] == 3 - has_it() and counts["failed"] == 0

    await asyncio.sleep(ROW_OUTAGE)
    again = await post(body, {"Idempotency-Key": "outage-3"})

    assert again.status_code == 200, again.get_body()
    assert json.loads(again.get_body())["counts"] == {"pending": 0, "sent": 3, "failed": 0, "recalled": 0}
    assert world.tenant.calls("connector.send") == 3
    assert all(len(world.tenant.messages_for(world.tenant.find_user(upn))) == 1 for upn in upns)


async def test_storage_down_after_a_confirmed_fan_out_send(world: World, storage: StorageProxy) -> None:
    names = [f"user{i:02d}@contoso.com" for i in range(21)]
    for name in names:
        world.tenant.add_user(name)
    out = await deliver(message({"recipients": names, "text": "Outage"}, "outage-fan"))
    [body] = [m for m in out.messages if b"user00@" in m]
    storage.down_after_first_conditional_write("deliveries", ROW_OUTAGE)  # the row, after the send

    await deliver(message(body, "outage-fan-0", 1))  # completes: no redelivery, nothing kept
    await deliver(message(body, "outage-fan-0", 2))  # a redelivery anyway: nothing sent again

    assert storage.refused > 0, "the outage did not happen"
    assert len(world.tenant.messages_for(world.tenant.find_user("user00@contoso.com"))) == 1
    [row] = [r for r in (await _status("outage-fan"))["recipients"] if r["recipient"] == "user00@contoso.com"]
    assert row["state"] == "sent" and row["activityId"]


async def test_storage_down_past_the_record_deadline_never_resends_within_the_lease(
    world: World, storage: StorageProxy
) -> None:
    """The residual window (docs/RELIABILITY.md): storage down longer than Waits.record_deadline
    after a confirmed send. The send is reported, the key stays held (409) for its lease."""
    shorten_waits(record_deadline=0.5)
    storage.down_after_first_conditional_write("requests", 30.0)

    first = await post(HELLO, {"Idempotency-Key": "outage-long"})
    assert first.status_code == 200, first.get_body()
    storage._down_until = 0.0  # storage is back
    again = await post(HELLO, {"Idempotency-Key": "outage-long"})

    assert (again.status_code, error_code(again)) == (409, "request_in_progress")
    assert world.tenant.calls("connector.send") == 1
