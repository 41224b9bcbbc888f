"""The recipients' side (issue 17 part 3): a user who uninstalls the bot is not reinstalled when
``ReinstallAfterUninstall`` is false, until they install it again.

Teams tells the bot of the uninstall with an ``installationUpdate`` ``remove`` on /api/messages (the
opt-out is recorded in Azurite); the next send answers 403 ``recipient_opted_out`` without installing
anything; the user's own install (``installationUpdate`` ``add``) ends the opt-out. With the default
(true) the uninstalled user is reinstalled, as before.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from faketenant import FakeUser
from tests.conftest import World
from tests.functions import user_function
from tests.test_messages import activity_for, bearer, post, user_installs
from tests.test_trigger_http import post as notify


async def _uninstall(world: World, user: FakeUser) -> None:
    """The user removes the app in Teams: Teams removes it and tells the bot."""
    activity = activity_for(world, user, "installationUpdate", action="remove")
    world.tenant.uninstall_app(user)
    response = await post(user_function("messages"), activity, bearer(world, activity))
    assert response.status_code == 200


async def _install(world: World, user: FakeUser) -> None:
    user_installs(world, user)
    activity = activity_for(world, user, "installationUpdate", action="add")
    response = await post(user_function("messages"), activity, bearer(world, activity))
    assert response.status_code == 200


def _body(response: Any) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(response.get_body())
    return body


@pytest.mark.parametrize("name", ["upn", "oid"])
async def test_with_reinstall_off_an_uninstalled_user_is_not_messaged_until_they_install_again(
    world: World, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    monkeypatch.setenv("ReinstallAfterUninstall", "false")
    alice = world.user("alice")
    recipient = alice.upn if name == "upn" else alice.oid
    assert (await notify({"recipient": recipient, "text": "Before"})).status_code == 200
    await _uninstall(world, alice)
    installs = world.tenant.calls("graph.install")

    response = await notify({"recipient": recipient, "text": "After the uninstall"})

    body = _body(response)
    assert response.status_code == 403, body
    assert body["error"]["code"] == "recipient_opted_out" and body["error"]["target"] == "recipient"
    assert world.tenant.calls("graph.install") == installs  # nothing installed again
    assert [m["activity"]["text"] for m in world.tenant.messages_for(alice)] == ["Before"]
    # Kept: asking again changes nothing.
    assert _body(await notify({"recipient": recipient, "text": "Again"}))["error"]["code"] == "recipient_opted_out"

    await _install(world, alice)  # the user installs the app themselves
    response = await notify({"recipient": recipient, "text": "Welcome back"})
    assert response.status_code == 200, _body(response)
    assert world.tenant.messages_for(alice)[-1]["activity"]["text"] == "Welcome back"


async def test_by_default_an_uninstalled_user_is_reinstalled_as_before(world: World) -> None:
    alice = world.user("alice")
    assert (await notify({"recipient": alice.upn, "text": "Before"})).status_code == 200
    await _uninstall(world, alice)
    installs = world.tenant.calls("graph.install")

    response = await notify({"recipient": alice.upn, "text": "After"})

    assert response.status_code == 200, _body(response)
    assert world.tenant.calls("graph.install") == installs + 1
    assert world.tenant.messages_for(alice)[-1]["activity"]["text"] == "After"


async def test_the_opt_out_is_kept_in_table_storage_across_processes(world: World, monkeypatch: Any) -> None:
    """Recorded by one instance, honoured by another (a fresh process: services rebuilt)."""
    from shared.bootstrap import reset_services

    alice = world.user("alice")
    assert (await notify({"recipient": alice.upn, "text": "Before"})).status_code == 200
    await _uninstall(world, alice)
    await reset_services()
    monkeypatch.setenv("ReinstallAfterUninstall", "false")
    assert _body(await notify({"recipient": alice.upn, "text": "x"}))["error"]["code"] == "recipient_opted_out"


async def test_an_upgrade_is_not_an_opt_out(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ReinstallAfterUninstall", "false")
    alice = world.user("alice")
    assert (await notify({"recipient": alice.upn, "text": "Before"})).status_code == 200
    activity = activity_for(world, alice, "installationUpdate", action="remove-upgrade")
    assert (await post(user_function("messages"), activity, bearer(world, activity))).status_code == 200
    assert (await notify({"recipient": alice.upn, "text": "After"})).status_code == 200


def test_reinstall_after_uninstall_is_validated() -> None:
    from shared.errors import ConfigurationError
    from shared.settings import load_settings
    from tests.test_settings import GOOD

    assert load_settings(GOOD).reinstall_after_uninstall is True
    assert load_settings({**GOOD, "ReinstallAfterUninstall": "False"}).reinstall_after_uninstall is False
    with pytest.raises(ConfigurationError) as caught:
        load_settings({**GOOD, "ReinstallAfterUninstall": "sometimes"})
    assert caught.value.target == "ReinstallAfterUninstall"
