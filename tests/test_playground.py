"""Microsoft 365 Agents Playground (Microsoft's local Teams emulator, npm, pinned) as the Bot Connector:
the product's HTTP functions send a text, a card to an Entra object id, and update the sent card, and the
Playground's conversation shows each.

The fake tenant stays the login and Graph (the Playground has no Graph); its Graph answers the
Playground's personal chat as the user's installation chat, as the sandbox's ``--playground`` does. The
Playground's conversation is read where its own page reads it: the websocket
``/_ws_conversation/v1/conversations/stream`` (``createMessage`` / ``updateMessage``).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from scripts.playground import STREAM_PATH, Playground
from tests.conftest import World
from tests.test_fanout import call
from tests.test_trigger_http import payload, post

CARD = {
    "type": "AdaptiveCard",
    "version": "1.5",
    "body": [{"type": "TextBlock", "text": "Expense 42 needs your approval", "weight": "Bolder"}],
}
APPROVED = {**CARD, "body": [{"type": "TextBlock", "text": "Expense 42: approved", "weight": "Bolder"}]}


@pytest.fixture(scope="session")
def playground(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Playground]:
    """The real Playground, started once per session (its config answers after about 15 s)."""
    with Playground(tmp_path_factory.mktemp("playground")) as started:
        yield started


class Conversation:
    """What the Playground's page is told, in order."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self.seen: list[dict[str, Any]] = []

    async def wait_for(self, action: str, message_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + 10
        while True:
            for event in self.seen:
                if event.get("action") == action and event["message"].get("messageId") == message_id:
                    return event
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {action} of {message_id}; the Playground showed {self.seen}")
            try:
                frame = await self._ws.receive(timeout=left)
            except TimeoutError:
                continue
            if frame.type == aiohttp.WSMsgType.TEXT:
                self.seen.append(json.loads(frame.data))


@pytest.fixture
async def conversation(playground: Playground) -> AsyncIterator[Conversation]:
    async with aiohttp.ClientSession() as session, session.ws_connect(playground.url + STREAM_PATH) as ws:
        yield Conversation(ws)


@pytest.fixture
def via_playground(world: World, playground: Playground, monkeypatch: pytest.MonkeyPatch) -> World:
    world.env["ServiceUrl"] = playground.service_url  # plain http: allowed on loopback only
    monkeypatch.setenv("ServiceUrl", playground.service_url)
    world.tenant.use_external_chat(world.user("alice"), playground.personal_chat_id)
    return world


async def test_text_card_and_update_reach_the_playground(
    via_playground: World, playground: Playground, conversation: Conversation
) -> None:
    alice = via_playground.user("alice")
    chat = playground.personal_chat_id

    text = await post({"recipient": alice.upn, "text": "Your **report** is ready"})
    assert text.status_code == 200, payload(text)
    sent = payload(text)
    assert sent["conversationId"] == chat  # the conversation the Playground created for its user
    shown = await conversation.wait_for("createMessage", sent["activityId"])
    assert shown["actionConversationId"] == chat
    assert shown["message"]["text"] == "Your **report** is ready"
    assert shown["message"]["from"]["id"] == playground.config["config"]["bot"]["id"]

    card = await post({"recipient": alice.oid, "card": CARD, "summary": "Expense 42"}, {"Idempotency-Key": "exp-42"})
    assert card.status_code == 200, payload(card)
    shown = await conversation.wait_for("createMessage", payload(card)["activityId"])
    [attachment] = shown["message"]["attachments"]
    assert attachment == {"contentType": "application/vnd.microsoft.card.adaptive", "content": CARD}

    code, body, _ = await call("notification_update", "PUT", payload(card)["notificationId"], body={"card": APPROVED})
    assert code == 200, body
    assert [r["outcome"] for r in body["results"]] == ["updated"]
    shown = await conversation.wait_for("updateMessage", payload(card)["activityId"])
    assert shown["message"]["attachments"] == [
        {"contentType": "application/vnd.microsoft.card.adaptive", "content": APPROVED}
    ]
    # Nothing went to the fake tenant's own Bot Connector.
    assert via_playground.tenant.calls("connector.send") == 0
