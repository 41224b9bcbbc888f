"""POST /api/notify through the function app object, against the fake tenant and Azurite.

Each test states what a caller (Power Automate, a script) sees: status, body, headers, and how many
messages reached the user.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Callable
from typing import Any

import azure.functions as func
import msgspec
import pytest

from shared.bootstrap import get_services
from shared.jsonbody import MAX_BODY_BYTES
from shared.request_models import notify_request
from shared.response_models import ErrorResponse, NotifyResponse
from shared.storage.idempotency import TableIdempotencyStore
from tests.conftest import CLIENT_SECRET, World
from tests.functions import OutputMessages, shorten_waits, user_function

HELLO: dict[str, Any] = {"recipient": "alice@contoso.com", "text": "Your **report** is ready"}
CARD = {"type": "AdaptiveCard", "version": "1.5", "body": [{"type": "TextBlock", "text": "Approve?"}]}


async def post(
    body: bytes | dict[str, Any], headers: dict[str, str] | None = None, content_type: str | None = "application/json"
) -> func.HttpResponse:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    all_headers = {"Content-Type": content_type} if content_type else {}
    all_headers.update(headers or {})
    request = func.HttpRequest(
        "POST", "http://localhost/api/notify", headers=all_headers, params={}, route_params={}, body=raw
    )
    response: func.HttpResponse = await user_function("notify")(request, OutputMessages())
    return response


def payload(response: func.HttpResponse) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(response.get_body())
    return body


def assert_error(response: func.HttpResponse, status: int, code: str, target: str | None) -> dict[str, Any]:
    body = payload(response)
    assert response.status_code == status, body
    msgspec.convert(body, ErrorResponse)  # the documented error schema
    assert body["error"]["code"] == code
    assert body["error"].get("target") == target
    assert "Traceback" not in response.get_body().decode()
    assert response.headers.get("x-correlation-id")
    return body


def sends(world: World) -> int:
    return world.tenant.calls("connector.send")


async def test_send_answers_200_with_the_activity_and_conversation(world: World) -> None:
    response = await post(HELLO)

    body = payload(response)
    assert response.status_code == 200, body
    msgspec.convert(body, NotifyResponse)
    [delivered] = world.tenant.messages_for(world.user("alice"))
    assert body == {
        "status": "sent",
        "activityId": delivered["id"],
        "conversationId": world.tenant.chat_id_for(world.user("alice")),
        "recipient": "alice@contoso.com",
        "notificationId": body["notificationId"],
    }
    assert body["notificationId"]
    assert response.mimetype == "application/json"


async def test_card_with_text_and_summary_reaches_the_user_as_given(world: World) -> None:
    tenant_id = world.tenant.tenant_id
    response = await post(
        {"recipient": "bob@contoso.com", "text": "hi", "card": CARD, "summary": "Approval", "tenantId": tenant_id}
    )

    assert response.status_code == 200, payload(response)
    [delivered] = world.tenant.messages_for(world.user("bob"))
    activity = delivered["activity"]
    assert activity["attachments"][0]["content"] == CARD
    assert activity["summary"] == "Approval" and activity["text"] == "hi"


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code", "target"),
    [
        pytest.param(
            b'{"recipient": "alice@contoso.com", "text": ',
            "application/json",
            400,
            "invalid_json",
            "body",
            id="malformed-json",
        ),
        pytest.param(b"\xff\xfe{}", "application/json", 400, "invalid_json", "body", id="not-utf8"),
        pytest.param(b"", "application/json", 400, "invalid_request", "body", id="empty-body"),
        pytest.param(b"   ", "application/json", 400, "invalid_request", "body", id="blank-body"),
        pytest.param(b"[1, 2]", "application/json", 400, "invalid_request", "body", id="not-an-object"),
        pytest.param(
            json.dumps(HELLO).encode(),
            "text/plain",
            415,
            "unsupported_media_type",
            "Content-Type",
            id="wrong-content-type",
        ),
        pytest.param(
            json.dumps(HELLO).encode(),
            "application/x-www-form-urlencoded",
            415,
            "unsupported_media_type",
            "Content-Type",
            id="form-content-type",
        ),
        pytest.param(
            json.dumps({"recipient": "alice@contoso.com", "text": "x" * MAX_BODY_BYTES}).encode(),
            "application/json",
            413,
            "message_too_large",
            "body",
            id="oversized",
        ),
        pytest.param(
            json.dumps({**HELLO, "tenantID": "x"}).encode(),
            "application/json",
            400,
            "unknown_field",
            "tenantID",
            id="unknown-field",
        ),
        pytest.param(
            json.dumps({**HELLO, "tenantId": "contoso"}).encode(),
            "application/json",
            400,
            "invalid_request",
            "tenantId",
            id="bad-guid",
        ),
        pytest.param(
            json.dumps({"text": "hi"}).encode(),
            "application/json",
            400,
            "invalid_request",
            "recipient",
            id="no-recipient",
        ),
        pytest.param(
            json.dumps({"recipient": "  ", "text": "hi"}).encode(),
            "application/json",
            400,
            "invalid_request",
            "recipient",
            id="blank-recipient",
        ),
        pytest.param(
            json.dumps({"recipient": 42, "text": "hi"}).encode(),
            "application/json",
            400,
            "invalid_request",
            "recipient",
            id="recipient-not-string",
        ),
        pytest.param(
            json.dumps({"recipient": "alice@contoso.com"}).encode(),
            "application/json",
            400,
            "invalid_request",
            "text, card",
            id="no-text-or-card",
        ),
        pytest.param(
            json.dumps({"recipient": "alice@contoso.com", "card": {"type": "HeroCard"}}).encode(),
            "application/json",
            400,
            "invalid_request",
            "card",
            id="card-not-adaptive",
        ),
        pytest.param(
            json.dumps({"recipient": "alice@contoso.com", "card": "AdaptiveCard"}).encode(),
            "application/json",
            400,
            "invalid_request",
            "card",
            id="card-not-object",
        ),
        pytest.param(
            json.dumps({**HELLO, "summary": ""}).encode(),
            "application/json",
            400,
            "invalid_request",
            "summary",
            id="empty-summary",
        ),
    ],
)
async def test_bad_input_is_a_4xx_naming_the_field_and_sends_nothing(
    world: World, body: bytes, content_type: str, status: int, code: str, target: str
) -> None:
    response = await post(body, content_type=content_type)

    assert_error(response, status, code, target)
    assert [r.route for r in world.tenant.log] == []


async def test_missing_content_type_is_accepted_as_json(world: World) -> None:
    response = await post(HELLO, content_type=None)
    assert response.status_code == 200, payload(response)


async def test_an_unknown_field_is_named_in_the_message(world: World) -> None:
    body = assert_error(await post({**HELLO, "colour": "red"}), 400, "unknown_field", "colour")
    assert "colour" in body["error"]["message"] and "tenantId" in body["error"]["message"]


def _unknown_user(world: World) -> dict[str, Any]:
    return {"recipient": "nobody@contoso.com", "text": "hi"}


def _blocked(world: World) -> dict[str, Any]:
    world.tenant.install_app(world.user("alice"))
    world.tenant.block_bot(world.user("alice"))
    return HELLO


def _disabled(world: World) -> dict[str, Any]:
    world.tenant.disable_bot_for_tenant()
    return HELLO


def _not_in_catalog(world: World) -> dict[str, Any]:
    world.tenant.remove_from_catalog()
    return HELLO


def _no_consent(world: World) -> dict[str, Any]:
    world.tenant.consented_roles.clear()
    return HELLO


def _connector_down(world: World) -> dict[str, Any]:
    world.tenant.add_fault("connector.send", 503, count=20, retry_after=0)
    return HELLO


def _graph_throttled_long(world: World) -> dict[str, Any]:
    world.tenant.add_fault("graph.installed_apps", 429, count=20, retry_after=120)
    return HELLO


def _payload_rejected(world: World) -> dict[str, Any]:
    world.tenant.add_fault("connector.send", 400, body={"error": {"code": "BadArgument", "message": "bad card"}})
    return {**HELLO, "card": CARD}


def _service_error(world: World) -> dict[str, Any]:
    world.tenant.add_fault("connector.send", 500, body={"error": {"code": "ServiceError", "message": "oops"}})
    return HELLO


def _unknown_tenant(world: World) -> dict[str, Any]:
    return {**HELLO, "tenantId": str(uuid.uuid4())}


@pytest.mark.parametrize(
    ("arrange", "status", "code", "target"),
    [
        pytest.param(_unknown_user, 404, "recipient_not_found", "recipient", id="unknown-user"),
        pytest.param(_blocked, 403, "recipient_blocked_bot", "recipient", id="user-blocked-bot"),
        pytest.param(_disabled, 403, "bot_disabled_by_admin", "recipient", id="admin-disabled-bot"),
        pytest.param(_unknown_tenant, 404, "tenant_not_found", "tenantId", id="unknown-tenant"),
        pytest.param(_payload_rejected, 422, "message_rejected", "card", id="teams-rejects-payload"),
        pytest.param(_not_in_catalog, 500, "app_not_in_catalog", "TeamsAppId", id="app-not-in-catalog"),
        pytest.param(
            _no_consent, 500, "missing_permission", "TeamsAppInstallation.ReadWriteSelfForUser.All", id="no-consent"
        ),
        pytest.param(_service_error, 502, "upstream_error", "connector", id="connector-500"),
        pytest.param(_connector_down, 503, "upstream_unavailable", "connector", id="connector-503"),
        pytest.param(_graph_throttled_long, 503, "upstream_unavailable", "graph", id="graph-429-long"),
    ],
)
async def test_upstream_outcomes_map_to_documented_statuses(
    world: World, arrange: Callable[[World], dict[str, Any]], status: int, code: str, target: str
) -> None:
    response = await post(arrange(world))

    assert_error(response, status, code, target)
    assert ("Retry-After" in response.headers) == (status == 503)
    if status == 503:
        assert int(response.headers["Retry-After"]) >= 1
    assert not world.tenant.activities()


async def test_bad_setting_is_a_500_naming_it_without_secrets(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TeamsAppId", "not-a-guid")

    body = assert_error(await post(HELLO), 500, "configuration_error", "TeamsAppId")

    assert "TeamsAppId" in body["error"]["message"]
    assert CLIENT_SECRET not in json.dumps(body)


async def test_rejected_secret_names_the_setting(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MicrosoftAppPassword", "wrong-secret-value")
    body = assert_error(await post(HELLO), 500, "invalid_client_credential", "MicrosoftAppPassword")
    assert "wrong-secret-value" not in json.dumps(body)


# --- Idempotency-Key -----------------------------------------------------------------------------


async def test_same_key_twice_sends_once_and_answers_the_same(world: World) -> None:
    key = {"Idempotency-Key": str(uuid.uuid4())}
    first = await post(HELLO, key)
    again = await post(HELLO, key)

    assert first.status_code == again.status_code == 200
    assert payload(first) == payload(again)
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert len(world.tenant.messages_for(world.user("alice"))) == 1


async def test_a_repeated_key_answers_byte_for_byte_what_the_first_attempt_answered(world: World) -> None:
    """The key records the answer (a send, or the caller's own mistake); its repeat renders it again."""
    sent_key, refused_key = {"Idempotency-Key": "bytes-1"}, {"Idempotency-Key": "bytes-2"}
    first_sent = await post(HELLO, sent_key)
    first_refused = await post({"recipient": "carol@contoso.com", "text": "hi"}, refused_key)

    again_sent = await post(HELLO, sent_key)
    again_refused = await post({"recipient": "carol@contoso.com", "text": "hi"}, refused_key)

    assert (first_sent.status_code, first_refused.status_code) == (200, 404)
    assert again_sent.get_body() == first_sent.get_body()
    assert again_refused.get_body() == first_refused.get_body()
    assert again_sent.headers.get("Idempotent-Replayed") == again_refused.headers.get("Idempotent-Replayed") == "true"
    assert sends(world) == 1


async def test_same_key_from_ten_concurrent_callers_sends_once(world: World) -> None:
    key = {"Idempotency-Key": "batch-42"}
    responses = await asyncio.gather(*(post(HELLO, key) for _ in range(10)))

    assert sends(world) == 1
    assert len(world.tenant.messages_for(world.user("alice"))) == 1
    winners = [payload(r) for r in responses if r.status_code == 200]
    assert winners and all(w == winners[0] for w in winners)
    for response in responses:
        if response.status_code != 200:
            assert_error(response, 409, "request_in_progress", "Idempotency-Key")
            assert response.headers["Retry-After"]


async def test_same_key_for_a_different_message_is_422(world: World) -> None:
    key = {"Idempotency-Key": "k-1"}
    assert (await post(HELLO, key)).status_code == 200

    assert_error(await post({**HELLO, "text": "something else"}, key), 422, "idempotency_key_reused", "Idempotency-Key")
    assert sends(world) == 1


async def test_keys_are_per_tenant_and_case_of_json_does_not_matter(world: World) -> None:
    key = {"Idempotency-Key": "k-2"}
    assert (await post(HELLO, key)).status_code == 200
    # Same request, different JSON layout: still the same request.
    same = json.dumps(HELLO, indent=2, sort_keys=True).encode()
    assert (await post(same, key)).status_code == 200
    assert sends(world) == 1


async def test_permanent_failure_is_recorded_and_returned_again(world: World) -> None:
    key = {"Idempotency-Key": "k-3"}
    request = {"recipient": "carol@contoso.com", "text": "hi"}
    first = await post(request, key)
    assert_error(first, 404, "recipient_not_found", "recipient")

    world.tenant.add_user("carol@contoso.com")
    world.tenant.clear_log()
    again = await post(request, key)

    assert payload(again) == payload(first) and again.status_code == 404
    assert [r.route for r in world.tenant.log] == []


async def test_transient_failure_releases_the_key_so_a_retry_sends(world: World) -> None:
    key = {"Idempotency-Key": "k-4"}
    world.tenant.add_fault("connector.send", 503, count=world.settings.retry_max_attempts, retry_after=0)
    assert_error(await post(HELLO, key), 503, "upstream_unavailable", "connector")

    retry = await post(HELLO, key)

    assert retry.status_code == 200, payload(retry)
    assert len(world.tenant.messages_for(world.user("alice"))) == 1


async def _marker(world: World, key: str, *, lease: float) -> None:
    """An in-flight marker left by another instance (one that died mid-send when lease is 0)."""
    services = get_services()
    other_instance = TableIdempotencyStore(services.table("requests"), lease_seconds=lease)
    request = notify_request(HELLO)
    await other_instance.claim("http", world.tenant.tenant_id, key, request.fingerprint())


async def test_stale_in_flight_marker_is_taken_over(world: World) -> None:
    await _marker(world, "k-5", lease=0)

    response = await post(HELLO, {"Idempotency-Key": "k-5"})

    assert response.status_code == 200, payload(response)
    assert len(world.tenant.messages_for(world.user("alice"))) == 1


async def test_live_in_flight_marker_answers_409_and_sends_nothing(
    world: World,
) -> None:
    shorten_waits(http_in_flight=0.2)
    await _marker(world, "k-6", lease=600)

    response = await post(HELLO, {"Idempotency-Key": "k-6"})

    assert_error(response, 409, "request_in_progress", "Idempotency-Key")
    assert int(response.headers["Retry-After"]) >= 1
    assert sends(world) == 0


async def test_unusable_idempotency_key_is_400(world: World) -> None:
    assert_error(await post(HELLO, {"Idempotency-Key": "x" * 500}), 400, "invalid_idempotency_key", "Idempotency-Key")
    assert sends(world) == 0


# --- correlation id ------------------------------------------------------------------------------


@pytest.mark.parametrize("header", ["x-correlation-id", "x-ms-client-tracking-id"])
async def test_correlation_id_is_echoed_and_on_every_log_line(
    world: World, header: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.clear()
    response = await post(HELLO, {header: "flow-run-123"})

    assert response.headers["x-correlation-id"] == "flow-run-123"
    ours = [r for r in caplog.records if r.name.startswith("shared.")]
    assert ours, "the send logged nothing"
    assert {getattr(r, "correlation_id", None) for r in ours} == {"flow-run-123"}


async def test_correlation_id_is_generated_when_absent_or_unusable(world: World) -> None:
    plain = await post(HELLO)
    odd = await post({"recipient": "bob@contoso.com", "text": "x"}, {"x-correlation-id": "bad id\twith tab"})

    assert uuid.UUID(plain.headers["x-correlation-id"])
    assert uuid.UUID(odd.headers["x-correlation-id"])


async def test_no_body_text_reaches_the_logs(world: World, caplog: pytest.LogCaptureFixture) -> None:
    secret_text = "quarterly numbers 7Q2X"
    await post({"recipient": "alice@contoso.com", "text": secret_text})
    await post({"recipient": "nobody@contoso.com", "text": secret_text})
    ours = [r for r in caplog.records if not r.name.startswith("faketenant")]  # the fake logs deliveries
    assert secret_text not in "\n".join(r.getMessage() for r in ours)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_an_upstream_failure_does_not_spend_the_idempotency_key(world: World) -> None:
    world.tenant.add_fault("connector.send", 500, body={"error": {"code": "ServiceError", "message": "boom"}})
    first = await post(HELLO, {"Idempotency-Key": "retry-after-500"})
    assert_error(first, 502, "upstream_error", "connector")

    second = await post(HELLO, {"Idempotency-Key": "retry-after-500"})
    assert second.status_code == 200, payload(second)
    assert len(world.tenant.messages_for(world.user("alice"))) == 1


async def test_an_unconfirmed_send_keeps_the_key_so_a_retry_cannot_duplicate(world: World) -> None:
    await post(HELLO)  # warm
    world.tenant.add_fault("connector.send", 504)
    first = await post(HELLO, {"Idempotency-Key": "unconfirmed-1"})
    assert_error(first, 503, "delivery_unconfirmed", "connector")
    assert first.headers.get("Retry-After")

    sends_before = sends(world)
    shorten_waits(http_in_flight=0.2)
    retry = await post(HELLO, {"Idempotency-Key": "unconfirmed-1"})
    assert_error(retry, 409, "request_in_progress", "Idempotency-Key")
    assert sends(world) == sends_before
