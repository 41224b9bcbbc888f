"""Microsoft 365 Agents Playground (Microsoft's local Teams emulator, npm, pinned) as the Bot Connector:
the product's HTTP functions send a text, a card to an Entra object id, and update the sent card, and the
Playground's conversation shows each.

The fake tenant stays the login and Graph (the Playground has no Graph); its Graph answers the
Playground's personal chat as the user's installation chat, as the sandbox's ``--playground`` does. The
Playground's conversation is read where its own page reads it: the websocket
``/_ws_conversation/v1/conversations/stream`` (``createMessage`` / ``updateMessage``).
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from scripts.playground import STREAM_PATH, Playground
from tests.azurite import ROOT
from tests.conftest import World
from tests.test_fanout import call
from tests.test_sandbox import Lines
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


def test_the_sandbox_with_playground_delivers_to_the_playground(tmp_path: Path) -> None:
    """`scripts/sandbox --playground`: the Playground is the Bot Connector, the page address is printed,
    and the printed send command lands in the Playground's personal chat."""
    state = tmp_path / "sandbox"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "sandbox.py"), "--playground", "--state-dir", str(state)]
        + ["--port", "0", "--blob-port", "0", "--queue-port", "0", "--table-port", "0", "--playground-port", "0"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = Lines(proc)
        lines.wait_for("sandbox ready", timeout=150)
        page = next(line.split()[2] for line in lines.seen if line.strip().startswith("Teams client"))
        send = next(line.strip() for line in lines.seen if " send --to alice@contoso.com" in line)
        values = json.loads((state / "local.settings.json").read_text())["Values"]
        assert values["ServiceUrl"] == page + "/_connector/"

        async def shown_after_send() -> dict[str, Any]:
            async with aiohttp.ClientSession() as session, session.ws_connect(page + STREAM_PATH) as ws:
                done = await asyncio.to_thread(
                    subprocess.run, send, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=60
                )
                assert done.returncode == 0, done.stdout + done.stderr
                activity_id = done.stdout.split("activity id:")[1].split()[0]
                return await Conversation(ws).wait_for("createMessage", activity_id)

        shown = asyncio.run(shown_after_send())
        assert shown["message"]["text"] == "Hello from the sandbox"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0
    assert proc.stdout is not None
    proc.stdout.close()
    with socket.socket() as sock:  # the Playground is gone too
        assert sock.connect_ex(("127.0.0.1", int(page.rsplit(":", 1)[1]))) != 0
