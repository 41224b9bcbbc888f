"""The fake tenant's /_fake controls, as a person uses them against the sandbox: faults can be listed
and cleared, a misspelt setting is refused naming it, and the user states of docs/sandbox.md are one
request each and change what the product reports."""

from __future__ import annotations

import httpx

from tests.conftest import World
from tests.test_trigger_http import payload, post


def control(world: World, method: str, path: str, body: object = None) -> httpx.Response:
    with httpx.Client(verify=world.server.ssl_context(), base_url=world.server.base_url) as client:
        return client.request(method, path, json=body)


def test_queued_faults_are_listed_and_cleared(world: World) -> None:
    fault = {"route": "connector.send", "status": 429, "count": 2, "retry_after": 1}
    assert control(world, "POST", "/_fake/faults", fault).status_code == 204
    listed = control(world, "GET", "/_fake/faults").json()
    assert [(f["route"], f["status"], f["count"], f["retry_after"]) for f in listed] == [("connector.send", 429, 2, 1)]
    assert control(world, "DELETE", "/_fake/faults").status_code == 204
    assert control(world, "GET", "/_fake/faults").json() == []


def test_unknown_keys_are_refused_naming_them(world: World) -> None:
    answer = control(world, "POST", "/_fake/settings", {"rate_limit": True, "chat_ready_after": 1})
    assert answer.status_code == 400 and "rate_limit" in answer.json()["error"]
    assert control(world, "GET", "/_fake/settings").json()["chat_ready_after"] == 0  # nothing applied
    answer = control(world, "POST", "/_fake/faults", {"route": "connector.send", "status": 429, "retry": 1})
    assert answer.status_code == 400 and "retry" in answer.json()["error"]
    assert control(world, "GET", "/_fake/faults").json() == []
    assert control(world, "POST", "/_fake/settings", {"rate_limits": True}).status_code == 204
    assert control(world, "GET", "/_fake/settings").json()["rate_limits"] is True


async def test_user_blocked_the_bot_is_one_step(world: World) -> None:
    # By object id here: the test's no-UPN-in-logs guard also sees httpx's request lines.
    alice = world.user("alice")
    answer = control(world, "POST", f"/_fake/users/{alice.oid}/block")
    assert answer.status_code == 200 and answer.json()["blocked"] is True
    response = await post({"recipient": "alice@contoso.com", "text": "hi"})
    assert payload(response)["error"]["code"] == "recipient_blocked_bot"
    control(world, "POST", f"/_fake/users/{alice.oid}/unblock")
    assert (await post({"recipient": "alice@contoso.com", "text": "hi"})).status_code == 200


async def test_bot_disabled_by_admin_is_one_step(world: World) -> None:
    assert control(world, "POST", "/_fake/bot/disable").json()["bot_disabled"] is True
    response = await post({"recipient": "alice@contoso.com", "text": "hi"})
    assert payload(response)["error"]["code"] == "bot_disabled_by_admin"
    control(world, "POST", "/_fake/bot/enable")
    assert (await post({"recipient": "alice@contoso.com", "text": "hi"})).status_code == 200


async def test_user_uninstalled_the_app_is_one_step(world: World) -> None:
    alice = world.user("alice")
    assert (await post({"recipient": alice.upn, "text": "one"})).status_code == 200
    answer = control(world, "POST", f"/_fake/users/{alice.oid}/uninstall")
    assert answer.status_code == 200 and answer.json()["installed"] is False
    # The product notices the stale conversation and installs the app again.
    assert (await post({"recipient": alice.upn, "text": "two"})).status_code == 200
    assert world.tenant.is_installed(alice)
    assert control(world, "POST", "/_fake/users/00000000-0000-0000-0000-000000000000/block").status_code == 404
