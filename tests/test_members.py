"""Which member of the installation's 1:1 chat is the recipient.

The Bot Connector's members call answers ChannelAccounts whose ``id`` is opaque: Teams' users are
"29:...", but a local emulator's (Microsoft 365 Agents Playground: "user-id-0") are not, and a bot
is "28:...". The product picks the member whose aadObjectId/objectId (or UPN) is the recipient, else the
one member that is not the bot (GET /v3/conversations/{id}/members; https://learn.microsoft.com/microsoftteams/platform/
bots/how-to/get-teams-context#fetch-the-roster-or-user-profile).

The members call is the fallback of a tenant whose connector refuses the installation's chat id as a
conversation id (a cold send otherwise sends to the chat id directly), so every test here runs in
such a tenant.
"""

from __future__ import annotations

from typing import Any

from tests.conftest import World
from tests.test_trigger_http import payload, post


def _bot(world: World) -> dict[str, Any]:
    world.tenant.refuse_chat_id_conversations()  # the members fallback (module docstring)
    return {"id": "28:" + world.tenant.app_id, "name": "Notifier"}


async def test_the_recipient_is_picked_by_object_id_not_by_a_29_prefix(world: World) -> None:
    alice, bob = world.user("alice"), world.user("bob")
    # Bob's "29:" account first: the old "first id starting with 29:" rule would message Bob.
    members = [_bot(world), bob.channel_account(), alice.channel_account()]
    world.tenant.add_fault("connector.members", 200, body=members)

    response = await post({"recipient": alice.oid, "text": "for Alice"})

    assert response.status_code == 200, payload(response)
    assert [m["activity"]["text"] for m in world.tenant.messages_for(alice)] == ["for Alice"]
    assert world.tenant.messages_for(bob) == []


async def test_the_one_member_that_is_not_the_bot_is_picked_whatever_its_id(world: World) -> None:
    alice = world.user("alice")
    # An emulator-style account: the id is not "29:..." and the objectId is not the recipient's.
    user = {**alice.channel_account(), "id": alice.oid, "objectId": "00000000-0000-0000-0000-0000000000020"}
    user.pop("userPrincipalName")
    user.pop("email")
    world.tenant.add_fault("connector.members", 200, body=[_bot(world), user])

    response = await post({"recipient": "alice@contoso.com", "text": "hello"})

    assert response.status_code == 200, payload(response)
    assert [m["activity"]["text"] for m in world.tenant.messages_for(alice)] == ["hello"]


async def test_several_other_members_and_none_is_the_recipient_is_not_guessed(world: World) -> None:
    alice, bob = world.user("alice"), world.user("bob")
    others = [bob.channel_account(), world.user("oneil").channel_account()]
    world.tenant.add_fault("connector.members", 200, body=[_bot(world), *others])

    response = await post({"recipient": alice.oid, "text": "for Alice"})

    assert response.status_code >= 500, payload(response)
    # Only the refused send to the chat id; nothing after the members call.
    assert world.tenant.calls("connector.send") == 1
    for name in ("alice", "bob", "oneil"):
        assert world.tenant.messages_for(world.user(name)) == []
