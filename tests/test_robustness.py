"""Issue 16: hostile input and a faulty world never crash, park, block or duplicate a message.

Fault tests through the function app object against the fake tenant and Azurite: a blip at the login
endpoint, unknown tenants, storage failing between a confirmed send and its record, one poison
recipient among 25, dot segments in names and ids, and a duplicate queue delivery. Each states the
exact outcome a caller or an operator sees.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Any

import azure.functions as func
import pytest
from azure.functions.servicebus import ServiceBusMessage

from shared.bootstrap import get_services
from shared.errors import TransientError
from shared.failures import list_failures
from tests.conftest import World
from tests.functions import OutputMessages, user_function

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
