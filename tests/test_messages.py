"""The bot's messaging endpoint (/api/messages), called through the function app object, against the
fake tenant (Bot Framework signing keys, Bot Connector, Graph) and Azurite.

Teams calls this endpoint when a user installs the app (or we install it for them) and when they
write to the bot; each test states what the user or the next send sees.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import azure.functions as func
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from faketenant import FakeUser
from shared.bootstrap import Services, get_services
from shared.inbound import HELP_TEXT
from shared.message_content import MessageContent
from tests.conftest import World
from tests.functions import user_function

HttpFunction = Callable[[func.HttpRequest], Awaitable[func.HttpResponse]]
GRAPH_AND_CONNECTOR = ("graph.", "connector.")


@pytest.fixture
def messages() -> HttpFunction:
    function: HttpFunction = user_function("messages")
    return function


async def post(messages: HttpFunction, body: dict[str, Any] | bytes, authorization: str | None) -> func.HttpResponse:
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = func.HttpRequest("POST", "http://localhost:7071/api/messages", headers=headers, body=raw)
    return await messages(request)


def bearer(world: World, activity: dict[str, Any], **token_args: Any) -> str:
    token_args.setdefault("service_url", activity["serviceUrl"])
    return "Bearer " + world.tenant.sign_channel_token(**token_args)


def activity_for(world: World, user: FakeUser, kind: str, **fields: Any) -> dict[str, Any]:
    """An activity as Teams sends it in the user's personal conversation with the bot."""
    bot = {"id": f"28:{world.tenant.app_id}", "name": "Notifications"}
    account = {"id": user.account_id, "name": user.display_name, "aadObjectId": user.oid}
    activity: dict[str, Any] = {
        "type": kind,
        "id": "f:" + uuid.uuid4().hex,
        "timestamp": "2026-01-15T10:00:00.000Z",
        "channelId": "msteams",
        "serviceUrl": world.server.service_url,
        "from": account,
        "recipient": bot,
        "conversation": {
            "id": world.tenant.conversation_id_for(user),
            "conversationType": "personal",
            "tenantId": user.tenant_id,
        },
        "channelData": {"tenant": {"id": user.tenant_id}},
    }
    if kind == "conversationUpdate":
        activity["membersAdded"] = [{"id": bot["id"]}, dict(account)]
    activity.update(fields)
    return activity


def user_installs(world: World, user: FakeUser) -> None:
    """What Teams holds after the user installs the app: the installation and the 1:1 conversation."""
    world.tenant.install_app(user)
    world.tenant.open_conversation(user)


def upstream(world: World) -> list[str]:
    return [r.route for r in world.tenant.log if r.route.startswith(GRAPH_AND_CONNECTOR)]


async def app_services() -> Services:
    """The services the function app built for the trigger (same process, same event loop)."""
    return get_services()


INSTALL_ACTIVITIES = {
    "installationUpdate add": lambda w, u: activity_for(w, u, "installationUpdate", action="add"),
    "conversationUpdate membersAdded": lambda w, u: activity_for(w, u, "conversationUpdate"),
}


@pytest.mark.parametrize("install", INSTALL_ACTIVITIES.values(), ids=INSTALL_ACTIVITIES.keys())
async def test_install_activity_makes_the_next_send_one_request_without_graph(
    world: World, messages: HttpFunction, monkeypatch: pytest.MonkeyPatch, install: Any
) -> None:
    # The configured default service URL is unusable: a send that works went to the activity's
    # (regional) serviceUrl.
    monkeypatch.setenv("ServiceUrl", "https://127.0.0.1:9/teams/")
    alice = world.user("alice")
    user_installs(world, alice)
    activity = install(world, alice)

    response = await post(messages, activity, bearer(world, activity))

    assert response.status_code == 200
    services = await app_services()
    entry = await services.store.get(world.tenant.tenant_id, alice.oid)
    assert entry is not None
    assert (entry.account_id, entry.conversation_id, entry.service_url, entry.upn) == (
        alice.account_id,
        activity["conversation"]["id"],
        world.server.service_url,
        alice.upn,
    )
    assert await services.store.get(world.tenant.tenant_id, "ALICE@contoso.com") == entry

    world.tenant.clear_log()
    result = await services.notifier.send("alice@contoso.com", MessageContent(text="Your report is ready"))

    assert not result.resolved
    assert [r.route for r in world.tenant.log] == ["connector.send"]
    assert [m["activity"]["text"] for m in world.tenant.messages_for(alice)] == ["Your report is ready"]


async def test_install_activity_for_an_install_we_made_keeps_the_cache_warm(
    world: World, messages: HttpFunction
) -> None:
    """Our own Graph install makes Teams call the endpoint; the entry it writes matches the resolution."""
    bob = world.user("bob")
    services = await app_services()
    await services.notifier.send(bob.upn, MessageContent(text="first"))
    resolved = await services.store.get(world.tenant.tenant_id, bob.upn)
    world.tenant.open_conversation(bob)  # the conversation Teams names in the activity
    activity = activity_for(world, bob, "conversationUpdate")

    assert (await post(messages, activity, bearer(world, activity))).status_code == 200

    entry = await services.store.get(world.tenant.tenant_id, bob.upn)
    assert resolved is not None and entry is not None
    # The send resolved the installation's chat id; the activity adds the ChannelAccount (and keeps
    # the UPN alias), with the conversation id Teams sent it in.
    assert resolved.account_id is None and resolved.conversation_id == world.tenant.chat_id_for(bob)
    assert (entry.account_id, entry.conversation_id) == (bob.account_id, activity["conversation"]["id"])
    world.tenant.clear_log()
    await services.notifier.send(bob.oid, MessageContent(text="second"))
    assert upstream(world) == ["connector.send"]


UNINSTALL_ACTIVITIES = {
    "installationUpdate remove": lambda w, u: activity_for(w, u, "installationUpdate", action="remove"),
    "conversationUpdate membersRemoved": lambda w, u: activity_for(
        w, u, "conversationUpdate", membersAdded=None, membersRemoved=[{"id": f"28:{w.tenant.app_id}"}]
    ),
}


@pytest.mark.parametrize("uninstall", UNINSTALL_ACTIVITIES.values(), ids=UNINSTALL_ACTIVITIES.keys())
async def test_uninstall_activity_evicts_and_the_next_send_installs_again(
    world: World, messages: HttpFunction, uninstall: Any
) -> None:
    alice = world.user("alice")
    user_installs(world, alice)
    installed = activity_for(world, alice, "installationUpdate", action="add")
    assert (await post(messages, installed, bearer(world, installed))).status_code == 200
    services = await app_services()
    assert await services.store.get(world.tenant.tenant_id, alice.upn) is not None

    world.tenant.uninstall_app(alice)
    removed = uninstall(world, alice)
    assert (await post(messages, removed, bearer(world, removed))).status_code == 200

    assert await services.store.get(world.tenant.tenant_id, alice.oid) is None
    assert await services.store.get(world.tenant.tenant_id, alice.upn) is None
    world.tenant.clear_log()
    result = await services.notifier.send(alice.upn, MessageContent(text="welcome back"))
    assert result.resolved
    assert upstream(world)[:3] == ["graph.installed_apps", "graph.catalog", "graph.install"]
    assert world.tenant.is_installed(alice)


def _forged(world: World, activity: dict[str, Any]) -> str:
    """Right claims and key id, but signed with a key the Bot Framework never published."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    genuine = jwt.get_unverified_header(world.tenant.sign_channel_token())
    now = int(time.time())
    claims = {
        "iss": "https://api.botframework.com",
        "aud": world.tenant.app_id,
        "serviceurl": activity["serviceUrl"],
        "nbf": now,
        "exp": now + 600,
    }
    return "Bearer " + jwt.encode(claims, key, algorithm="RS256", headers={"kid": genuine["kid"]})


BAD_CREDENTIALS: dict[str, Callable[[World, dict[str, Any]], str | None]] = {
    "no Authorization header": lambda w, a: None,
    "empty bearer": lambda w, a: "Bearer ",
    "not a bearer token": lambda w, a: bearer(w, a).replace("Bearer ", "Basic "),
    "not a JWT": lambda w, a: "Bearer not-a-jwt",
    # botframework-connector allows 5 minutes of clock skew: expired 10 minutes ago.
    "expired": lambda w, a: bearer(w, a, expires_in=-600),
    "wrong audience": lambda w, a: bearer(w, a, audience=str(uuid.uuid4())),
    "wrong issuer": lambda w, a: bearer(w, a, issuer=f"https://sts.windows.net/{w.tenant.tenant_id}/"),
    # The SDK would take this one down its Emulator path (no serviceUrl binding, keys from the internet).
    "an Emulator token": lambda w, a: bearer(
        w, a, issuer="https://sts.windows.net/d6d49420-f39b-4df7-a1dc-d59a935871db/"
    ),
    "serviceUrl claim mismatch": lambda w, a: bearer(w, a, service_url="https://smba.trafficmanager.net/amer/"),
    "signed by an unknown key": _forged,
}


@pytest.mark.parametrize("credential", BAD_CREDENTIALS.values(), ids=BAD_CREDENTIALS.keys())
async def test_requests_without_a_valid_channel_token_are_refused_and_nothing_is_stored(
    world: World, messages: HttpFunction, credential: Callable[[World, dict[str, Any]], str | None]
) -> None:
    alice = world.user("alice")
    user_installs(world, alice)
    activity = activity_for(world, alice, "installationUpdate", action="add")
    message = activity_for(world, alice, "message", text="hello?")

    # A body that is no activity has no serviceUrl to bind the token to: only the token itself is checked.
    bodies: list[dict[str, Any] | bytes] = [activity, message]
    if credential is not BAD_CREDENTIALS["serviceUrl claim mismatch"]:
        bodies.append(b"{not json")
    for body in bodies:
        response = await post(messages, body, credential(world, activity))
        assert response.status_code == 401
        assert response.headers.get("WWW-Authenticate") == "Bearer"
        assert json.loads(response.get_body())["error"]["code"] == "unauthorized"

    services = await app_services()
    assert await services.store.count(world.tenant.tenant_id) == 0
    assert upstream(world) == []
    assert world.tenant.messages_for(alice) == []


async def test_no_token_is_refused_before_anything_is_fetched(world: World, messages: HttpFunction) -> None:
    activity = activity_for(world, world.user("alice"), "installationUpdate", action="add")
    assert (await post(messages, activity, None)).status_code == 401
    assert world.tenant.log == []


async def test_a_message_gets_the_help_reply_in_the_same_chat(
    world: World, messages: HttpFunction, caplog: pytest.LogCaptureFixture
) -> None:
    alice = world.user("alice")
    user_installs(world, alice)
    activity = activity_for(world, alice, "message", text="what can you do for me, secret question?")

    response = await post(messages, activity, bearer(world, activity))

    assert response.status_code == 200
    [reply] = world.tenant.messages_for(alice)
    assert reply["conversation_id"] == activity["conversation"]["id"]
    assert reply["activity"]["text"] == HELP_TEXT
    assert reply["activity"]["replyToId"] == activity["id"]
    [send] = [r for r in world.tenant.log if r.route == "connector.send"]
    assert send.path.endswith("/activities/" + activity["id"])
    assert "secret question" not in caplog.text
    # The message also refreshed the cache: the next send by object id is warm.
    services = await app_services()
    world.tenant.clear_log()
    assert not (await services.notifier.send(alice.oid, MessageContent(text="hi"))).resolved
    assert upstream(world) == ["connector.send"]


async def test_a_reply_that_fails_is_never_an_error_for_the_user(world: World, messages: HttpFunction) -> None:
    alice = world.user("alice")
    user_installs(world, alice)
    world.tenant.add_fault("connector.send", 500, body={"error": {"code": "ServiceError", "message": "boom"}})
    activity = activity_for(world, alice, "message", text="hi")

    response = await post(messages, activity, bearer(world, activity))

    assert response.status_code == 200
    assert world.tenant.messages_for(alice) == []


OTHER_ACTIVITIES: dict[str, dict[str, Any]] = {
    "typing": {"type": "typing"},
    "invoke": {"type": "invoke", "name": "adaptiveCard/action", "value": {"action": {"type": "Action.Execute"}}},
    "messageReaction": {"type": "messageReaction", "reactionsAdded": [{"type": "like"}]},
    "event": {"type": "event", "name": "application/vnd.microsoft.meetingStart"},
    "a type nobody knows yet": {"type": "somethingNew"},
    "install into a team": {
        "type": "installationUpdate",
        "action": "add",
        "conversation": {"id": "19:abc@thread.tacv2", "conversationType": "channel"},
    },
    "installationUpdate without action": {"type": "installationUpdate"},
}


@pytest.mark.parametrize("fields", OTHER_ACTIVITIES.values(), ids=OTHER_ACTIVITIES.keys())
async def test_other_activities_are_acknowledged_and_ignored(
    world: World, messages: HttpFunction, fields: dict[str, Any]
) -> None:
    alice = world.user("alice")
    user_installs(world, alice)
    activity = activity_for(world, alice, "typing")
    activity.update(fields)

    response = await post(messages, activity, bearer(world, activity))

    assert response.status_code == 200
    services = await app_services()
    assert await services.store.count(world.tenant.tenant_id) == 0
    assert upstream(world) == []


BAD_BODIES: dict[str, bytes] = {
    "not JSON": b"{not json",
    "not UTF-8": b"\xff\xfe",
    "a JSON array": b"[1, 2]",
    "an activity without serviceUrl": json.dumps({"type": "message", "channelId": "msteams"}).encode(),
    "an activity without type": json.dumps({"channelId": "msteams", "serviceUrl": "https://x/"}).encode(),
}


@pytest.mark.parametrize("body", BAD_BODIES.values(), ids=BAD_BODIES.keys())
async def test_a_malformed_body_with_a_valid_token_is_a_400(world: World, messages: HttpFunction, body: bytes) -> None:
    response = await post(messages, body, "Bearer " + world.tenant.sign_channel_token())

    assert response.status_code == 400
    assert json.loads(response.get_body())["error"]["code"] == "invalid_activity"
    services = await app_services()
    assert await services.store.count(world.tenant.tenant_id) == 0


async def test_signing_keys_are_fetched_once_through_the_apps_http_client(world: World, messages: HttpFunction) -> None:
    """The fake's CA is trusted only through SSL_CERT_FILE (which botframework-connector's own
    requests-based fetch ignores); the keys are fetched once and reused."""
    for name in ("alice", "bob"):
        user = world.user(name)
        user_installs(world, user)
        activity = activity_for(world, user, "installationUpdate", action="add")
        assert (await post(messages, activity, bearer(world, activity))).status_code == 200
    assert world.tenant.calls("botframework.openid") == 1
    assert world.tenant.calls("botframework.jwks") == 1


ODD_SHAPES: dict[str, dict[str, Any]] = {
    "install without from": {"type": "installationUpdate", "action": "add", "from": None},
    "install from a user without object id": {"type": "installationUpdate", "action": "add", "from": {"id": "29:x"}},
    "install without tenant": {
        "type": "installationUpdate",
        "action": "add",
        "conversation": {"id": "a:1", "conversationType": "personal"},
        "channelData": {},
    },
    "members without ids": {"type": "conversationUpdate", "membersAdded": [{"name": "x"}, None]},
    "message without conversation": {"type": "message", "conversation": None},
    "channelData not an object": {"type": "installationUpdate", "action": "remove", "channelData": [1]},
}


@pytest.mark.parametrize("fields", ODD_SHAPES.values(), ids=ODD_SHAPES.keys())
async def test_odd_but_authenticated_activities_never_fail(
    world: World, messages: HttpFunction, fields: dict[str, Any]
) -> None:
    activity = activity_for(world, world.user("alice"), "typing")
    activity.update(fields)

    response = await post(messages, activity, bearer(world, activity))

    assert response.status_code == 200
    services = await app_services()
    assert await services.store.count(world.tenant.tenant_id) == 0
