"""Who may send, and who did (issue 17 part 2): Entra ID bearer tokens for the HTTP API.

With ``ApiAuthMode`` = EntraId a caller needs an access token of the app's tenant for the API
(``ApiAudience``) with the app role ``ApiRequiredRole``; the tokens here are signed by the fake
tenant's Entra ID key and published at its JWKS, as Entra ID does. Every refused request answers
401/403 with a stable code and sends nothing; every accepted one logs the caller's client id with
the request's correlation id. Function keys stay the simple mode, logged as "function key".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import azure.functions as func
import jwt
import pytest

from tests.conftest import World
from tests.functions import OutputMessages, user_function
from tests.test_trigger_http import post

ROOT = Path(__file__).resolve().parent.parent
API_CLIENT_ID = "3f2504e0-4f89-41d3-9a0c-0305e82c3301"
API_URI = f"api://{API_CLIENT_ID}"
CLIENT = "a7b8c9d0-1111-4222-8333-944455556666"
ROLE = "Notifications.Send"


@pytest.fixture
def entra(world: World, monkeypatch: pytest.MonkeyPatch) -> World:
    monkeypatch.setenv("ApiAuthMode", "EntraId")
    monkeypatch.setenv("ApiAudience", API_URI)
    return world


def token(world: World, **overrides: Any) -> str:
    args: dict[str, Any] = {"audience": API_URI, "roles": [ROLE], "client_id": CLIENT}
    args.update(overrides)
    return world.tenant.sign_access_token(**args)


async def notify(authorization: str | None, body: dict[str, Any] | None = None) -> func.HttpResponse:
    headers = {"Authorization": authorization} if authorization is not None else {}
    return await post(body or {"recipient": "alice@contoso.com", "text": "Hi"}, headers)


def caller_lines(caplog: pytest.LogCaptureFixture, correlation_id: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name in ("shared.service", "shared.queue_delivery")
        and getattr(r, "correlation_id", None) == correlation_id
        and " from " in r.getMessage()
    ]


async def test_a_token_with_the_role_sends_and_the_caller_is_logged(
    entra: World, caplog: pytest.LogCaptureFixture
) -> None:
    response = await notify("Bearer " + token(entra))
    body = json.loads(response.get_body())
    assert response.status_code == 200, body
    assert len(entra.tenant.messages_for(entra.user("alice"))) == 1
    cid = response.headers["x-correlation-id"]
    [line] = caller_lines(caplog, cid)
    assert f"Entra client {CLIENT}" in line and cid in line


async def test_a_v2_token_whose_audience_is_the_api_client_id_is_accepted(entra: World) -> None:
    """Entra ID v2.0 access tokens carry the API's client id as ``aud``, not the Application ID URI."""
    response = await notify("Bearer " + token(entra, audience=API_CLIENT_ID))
    assert response.status_code == 200, response.get_body()


async def test_a_delegated_token_logs_the_client_and_the_user(entra: World, caplog: pytest.LogCaptureFixture) -> None:
    """Power Automate's connector signs the user in: a delegated token (``scp``) with the user's role."""
    user_oid = str(uuid.uuid4())
    response = await notify("Bearer " + token(entra, scp="Notifications.Send", oid=user_oid))
    assert response.status_code == 200
    [line] = caller_lines(caplog, response.headers["x-correlation-id"])
    assert f"Entra client {CLIENT} for user {user_oid}" in line


def _bot_framework_token(world: World) -> str:
    # Signed by a real key of the fake, but Bot Framework's, not the tenant's Entra ID key.
    return world.tenant.sign_channel_token(audience=API_URI, issuer=world.settings.api_issuer)


def _unsigned(world: World) -> str:
    claims = jwt.decode(token(world), options={"verify_signature": False})
    return jwt.encode(claims, key=None, algorithm="none")


def _other_tenant(world: World) -> str:
    other = str(uuid.uuid4())
    return token(world, tid=other)


@pytest.mark.parametrize(
    ("make", "status", "code"),
    [
        (lambda w: None, 401, "authentication_required"),
        (lambda w: "Basic dXNlcjpwYXNz", 401, "authentication_required"),
        (lambda w: "Bearer not-a-jwt", 401, "invalid_token"),
        (lambda w: "Bearer " + token(w, expires_in=-3600), 401, "token_expired"),
        (lambda w: "Bearer " + token(w, audience="api://some-other-api"), 401, "invalid_audience"),
        (lambda w: "Bearer " + token(w, audience="https://graph.microsoft.com"), 401, "invalid_audience"),
        (lambda w: "Bearer " + token(w, roles=[]), 403, "missing_role"),
        (lambda w: "Bearer " + token(w, roles=["Notifications.Read"]), 403, "missing_role"),
        (lambda w: "Bearer " + token(w, issuer="https://login.microsoftonline.com/x/v2.0"), 401, "invalid_token"),
        (lambda w: "Bearer " + _other_tenant(w), 401, "invalid_token"),
        (lambda w: "Bearer " + _bot_framework_token(w), 401, "invalid_token"),
        (lambda w: "Bearer " + _unsigned(w), 401, "invalid_token"),
        (lambda w: "Bearer " + token(w)[:-8] + "AAAAAAAA", 401, "invalid_token"),
    ],
    ids=[
        "missing",
        "basic",
        "garbage",
        "expired",
        "wrong-audience",
        "graph-audience",
        "no-role",
        "other-role",
        "other-issuer",
        "other-tenant",
        "bot-framework-key",
        "alg-none",
        "bad-signature",
    ],
)
async def test_a_refused_token_answers_a_stable_code_and_sends_nothing(
    entra: World, make: Any, status: int, code: str
) -> None:
    response = await notify(make(entra))
    body = json.loads(response.get_body())
    assert response.status_code == status, body
    assert body["error"]["code"] == code
    if status == 401:
        assert response.headers.get("WWW-Authenticate") == "Bearer"
    assert entra.tenant.calls("connector.send") == 0
    assert entra.tenant.calls("graph.installed_apps") == 0


@pytest.mark.parametrize(("name", "method"), [("notification_status", "GET"), ("notification_recall", "DELETE")])
async def test_status_and_changes_need_the_role_too(entra: World, name: str, method: str) -> None:
    sent = await notify("Bearer " + token(entra))
    notification_id = json.loads(sent.get_body())["notificationId"]

    async def call(authorization: str | None) -> func.HttpResponse:
        headers = {"Authorization": authorization} if authorization else {}
        request = func.HttpRequest(
            method,
            f"http://localhost/api/notifications/{notification_id}",
            headers=headers,
            params={},
            route_params={"id": notification_id},
            body=b"",
        )
        response: func.HttpResponse = await user_function(name)(request)
        return response

    assert (await call(None)).status_code == 401
    refused = await call("Bearer " + token(entra, roles=[]))
    assert refused.status_code == 403 and json.loads(refused.get_body())["error"]["code"] == "missing_role"
    assert entra.tenant.calls("connector.delete") == 0
    assert (await call("Bearer " + token(entra))).status_code == 200


async def test_function_key_mode_logs_the_function_key_as_the_caller(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    response = await notify(None)
    assert response.status_code == 200
    [line] = caller_lines(caplog, response.headers["x-correlation-id"])
    assert "from function key" in line


def _auth_levels(mode: str) -> dict[str, str]:
    probe = (
        "from function_app import app\n"
        "for f in app.get_functions():\n"
        "    for b in f.get_bindings():\n"
        "        d = b.get_dict_repr()\n"
        "        if d['type'] == 'httpTrigger':\n"
        "            print(f.get_function_name(), getattr(d['authLevel'], 'value', d['authLevel']))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ApiAuthMode": mode}
    run = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=60
    )
    return dict(line.split() for line in run.stdout.splitlines())


def test_entra_mode_lets_the_app_check_the_token_instead_of_the_host_checking_a_key() -> None:
    api = ("notify", "notification_status", "notification_update", "notification_recall")
    keyed, entra = _auth_levels("FunctionKey"), _auth_levels("EntraId")
    assert {keyed[n] for n in api} == {"function"}
    assert {entra[n] for n in api} == {"anonymous"}
    assert keyed["messages"] == entra["messages"] == "anonymous"  # the bot endpoint checks its own JWT


async def test_the_tenant_keys_are_fetched_once_for_many_requests(entra: World) -> None:
    for _ in range(3):
        assert (await notify("Bearer " + token(entra))).status_code == 200
    assert entra.tenant.calls("jwks") == 1


async def test_a_host_booted_moments_ago_fetches_the_keys(entra: World) -> None:
    """time.monotonic() counts from the host's boot: a Functions instance started seconds ago must still
    fetch the tenant's keys on its first bearer token (it once took "never fetched" for "fetched at boot"
    and refused every token for the first five minutes of a fresh host)."""
    from shared.bootstrap import get_services
    from shared.callerauth import CallerAuthenticator

    services = get_services()
    booted_seconds_ago = CallerAuthenticator(services.settings, services.http, clock=lambda: 42.0)
    for _ in range(2):
        caller = await booted_seconds_ago.authenticate("Bearer " + token(entra))
        assert caller.kind == "entra" and caller.client_id == CLIENT
    assert entra.tenant.calls("jwks") == 1


async def test_queue_sends_name_their_caller(world: World, caplog: pytest.LogCaptureFixture) -> None:
    from azure.functions.servicebus import ServiceBusMessage

    body = json.dumps({"recipient": "alice@contoso.com", "text": "From a system"}).encode()
    msg = ServiceBusMessage(
        body=body, message_id="m-caller-1", delivery_count=1, application_properties={}, user_properties={}
    )
    await user_function("notify_queue")(msg, OutputMessages())
    assert len(world.tenant.messages_for(world.user("alice"))) == 1
    [line] = caller_lines(caplog, "m-caller-1")
    assert "from Service Bus queue" in line


def test_entra_mode_settings_are_validated() -> None:
    from shared.errors import ConfigurationError
    from shared.settings import load_settings
    from tests.test_settings import GOOD

    settings = load_settings({**GOOD, "ApiAuthMode": "entraid", "ApiAudience": API_URI})
    assert settings.api_auth_mode == "EntraId" and settings.api_required_role == ROLE
    assert settings.api_audiences == (API_URI, API_CLIENT_ID)
    assert load_settings(GOOD).api_auth_mode == "FunctionKey"
    for bad, target in (
        ({"ApiAuthMode": "EntraId"}, "ApiAudience"),  # the audience is required
        ({"ApiAuthMode": "Anonymous"}, "ApiAuthMode"),
        ({"ApiAuthMode": "EntraId", "ApiAudience": "not a uri"}, "ApiAudience"),
        ({"ApiRequiredRole": "two words"}, "ApiRequiredRole"),
    ):
        with pytest.raises(ConfigurationError) as caught:
            load_settings({**GOOD, **bad})
        assert caught.value.target == target


def test_the_connector_offers_oauth2_with_entra_id_as_a_second_security_definition() -> None:
    swagger = json.loads((ROOT / "connector" / "apiDefinition.swagger.json").read_text())
    oauth = swagger["securityDefinitions"]["oauth2_auth"]
    assert oauth["type"] == "oauth2" and oauth["flow"] == "accessCode"
    assert oauth["authorizationUrl"].startswith("https://login.microsoftonline.com/")
    assert {"api_key": []} in swagger["security"] and {"oauth2_auth": []} in swagger["security"]
    api_page = (ROOT / "docs" / "API.md").read_text()
    assert "## Who may call the API" in api_page and "oauth2_auth" in api_page


# --- a notification belongs to the Entra ID client that sent it -------------------------------------

OTHER_CLIENT = "b1c2d3e4-1111-4222-8333-944455556666"


async def change(name: str, notification_id: str, authorization: str, body: Any = None) -> func.HttpResponse:
    method = {"notification_status": "GET", "notification_update": "PUT", "notification_recall": "DELETE"}[name]
    request = func.HttpRequest(
        method,
        f"http://localhost/api/notifications/{notification_id}",
        headers={"Authorization": authorization, "Content-Type": "application/json"},
        params={},
        route_params={"id": notification_id},
        body=json.dumps(body).encode() if body is not None else b"",
    )
    response: func.HttpResponse = await user_function(name)(request)
    return response


async def _another_clients_requests_are_not_found(world: World, notification_id: str) -> None:
    other = "Bearer " + token(world, client_id=OTHER_CLIENT)
    for name in ("notification_status", "notification_update", "notification_recall"):
        response = await change(name, notification_id, other, {"text": "Hijacked"} if "update" in name else None)
        body = json.loads(response.get_body())
        assert response.status_code == 404 and body["error"]["code"] == "notification_not_found", (name, body)
    assert world.tenant.calls("connector.update") == world.tenant.calls("connector.delete") == 0


async def test_another_client_cannot_see_or_change_a_single_send(entra: World) -> None:
    mine = "Bearer " + token(entra)
    sent = json.loads((await notify(mine)).get_body())
    notification_id = sent["notificationId"]
    await _another_clients_requests_are_not_found(entra, notification_id)

    assert (await change("notification_update", notification_id, mine, {"text": "Edited"})).status_code == 200
    # The change wrote rows for the id: still only its sender's.
    other = "Bearer " + token(entra, client_id=OTHER_CLIENT)
    response = await change("notification_recall", notification_id, other)
    assert response.status_code == 404
    assert entra.tenant.messages_for(entra.user("alice"))[-1]["activity"]["text"] == "Edited"
    assert (await change("notification_recall", notification_id, mine)).status_code == 200


async def test_another_client_cannot_use_a_key_it_did_not_send(entra: World) -> None:
    mine, other = "Bearer " + token(entra), "Bearer " + token(entra, client_id=OTHER_CLIENT)

    async def keyed(authorization: str, key: str, body: dict[str, Any]) -> func.HttpResponse:
        return await post(body, {"Authorization": authorization, "Idempotency-Key": key})

    single = {"recipient": "alice@contoso.com", "text": "Order 42 shipped"}
    many = {"recipients": ["alice@contoso.com", "bob@contoso.com"], "text": "Maintenance tonight"}
    first = json.loads((await keyed(mine, "order-42", single)).get_body())
    assert (await keyed(mine, "maint", many)).status_code == 200
    sends = entra.tenant.calls("connector.send")

    replay = await keyed(other, "order-42", single)  # the same key and body from another client
    body = json.loads(replay.get_body())
    assert replay.status_code == 422 and body["error"]["code"] == "idempotency_key_reused"
    assert first["activityId"] not in replay.get_body().decode()
    assert entra.tenant.calls("connector.send") == sends
    for notification_id in ("order-42", "maint"):
        await _another_clients_requests_are_not_found(entra, notification_id)
    assert (await change("notification_status", "maint", mine)).status_code == 200
