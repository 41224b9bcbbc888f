"""The ways to send a warm message that the benchmark compares, all pointed at the same fake.

- ``FloorSender``: raw httpx, a fixed token, POST the activity. Nothing can be cheaper.
- ``FunctionSender``: the product: the HTTP function through the app object (validation,
  notification record, store, throttle, logging).
- ``LibrarySender``: the library's ``Notifier.send`` alone (info: the send path without the HTTP
  function's request handling and notification record).
- ``AdapterSender``: botbuilder's ``BotFrameworkAdapter.continue_conversation`` + ``send_activity``
  with a cached ConversationReference (the Bot Framework way of proactive messaging).
- ``SeedSender``: the naive flow that resolves on every send: Graph installed app + chat with
  requests, then botbuilder's (sync) ConnectorClient for members, create conversation and send.

The warm contenders rotate over the same conversations (``i`` counts sends), so no conversation
reaches Teams' per-conversation limits, which the product's throttle enforces client-side.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from bench.world import World
from shared.botframework import message_activity
from shared.message_content import MessageContent

TEXT = "Your **report** is ready"
BOT_SCOPE = "https://api.botframework.com/.default"
GRAPH_SCOPE = "https://graph.microsoft.com/.default"


def activity_dict() -> dict[str, Any]:
    """The same activity every contender sends."""
    return message_activity(MessageContent(text=TEXT))


def fetch_token(world: World, scope: str) -> str:
    response = httpx.post(
        f"{world.fake.base_url}/{world.tenant_id}/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": world.app_id,
            "client_secret": world.secret,
            "scope": scope,
        },
        verify=world.fake.ca_pem,
    )
    response.raise_for_status()
    return str(response.json()["access_token"])


class FloorSender:
    def __init__(self, world: World, conversation_ids: list[str]) -> None:
        self._token = fetch_token(world, BOT_SCOPE)
        self._client = httpx.AsyncClient(timeout=10)
        self._urls = [f"{world.service_url}v3/conversations/{c}/activities" for c in conversation_ids]
        self._activity = activity_dict()

    async def send(self, i: int) -> None:
        response = await self._client.post(
            self._urls[i % len(self._urls)], json=self._activity, headers={"Authorization": f"Bearer {self._token}"}
        )
        if response.status_code != 201:
            raise RuntimeError(f"floor send failed: {response.status_code}")

    async def aclose(self) -> None:
        await self._client.aclose()


class FunctionSender:
    """The product: the HTTP function ``notify`` as the host calls it (with its fan-out output binding)."""

    via = "HTTP function (function_app.notify)"

    def __init__(self, recipients: list[str]) -> None:
        from tests.functions import user_function

        self._function = user_function("notify")
        self._bodies = [json.dumps({"recipient": r, "text": TEXT}).encode() for r in recipients]

    async def send(self, i: int) -> None:
        import azure.functions as func

        from tests.functions import OutputMessages

        request = func.HttpRequest(
            "POST",
            "http://localhost:7071/api/notify",
            headers={"content-type": "application/json"},
            params={},
            route_params={},
            body=self._bodies[i % len(self._bodies)],
        )
        response = await self._function(request, OutputMessages())
        if response.status_code != 200:
            raise RuntimeError(f"function answered {response.status_code}: {response.get_body()[:200]!r}")


class LibrarySender:
    """The library's send path alone (``Notifier.send`` of the process's services): what the HTTP
    function adds on top is request parsing, the notification record and logging."""

    def __init__(self, recipients: list[str]) -> None:
        self._recipients = recipients
        self._message = MessageContent(text=TEXT)

    async def send(self, i: int) -> None:
        from shared.bootstrap import get_services

        await get_services().notifier.send(self._recipients[i % len(self._recipients)], self._message)


class AdapterSender:
    def __init__(self, world: World, conversations: list[tuple[str, str | None]]) -> None:
        """``conversations``: (conversation id, account id) pairs, rotated over like the others."""
        from botbuilder.core import BotFrameworkAdapter, BotFrameworkAdapterSettings, TurnContext
        from botbuilder.schema import Activity, ChannelAccount, ConversationAccount, ConversationReference
        from botframework.connector.auth import MicrosoftAppCredentials

        credentials = MicrosoftAppCredentials(world.app_id, world.secret, channel_auth_tenant=world.tenant_id)
        # Point the token fetch at the fake (its default is login.microsoftonline.com); MSAL must not
        # run instance discovery against the public cloud for an unknown host.
        credentials.oauth_endpoint = f"{world.fake.base_url}/{world.tenant_id}"
        credentials.app = _msal_app(world)
        self._adapter = BotFrameworkAdapter(
            BotFrameworkAdapterSettings(
                world.app_id, world.secret, channel_auth_tenant=world.tenant_id, app_credentials=credentials
            )
        )
        self._references = [
            ConversationReference(
                channel_id="msteams",
                service_url=world.service_url,
                conversation=ConversationAccount(
                    id=conversation_id, tenant_id=world.tenant_id, conversation_type="personal"
                ),
                bot=ChannelAccount(id=f"28:{world.app_id}"),
                user=ChannelAccount(id=account_id) if account_id else None,
            )
            for conversation_id, account_id in conversations
        ]
        self._app_id = world.app_id
        activity = activity_dict()
        self._activity_fields = {
            "type": "message",
            "text": activity["text"],
            "text_format": activity["textFormat"],
            "channel_data": activity["channelData"],
        }
        self._activity_type = Activity
        self._turn_context = TurnContext

    async def send(self, i: int) -> None:
        async def callback(context: Any) -> None:
            await context.send_activity(self._activity_type(**self._activity_fields))

        reference = self._references[i % len(self._references)]
        await self._adapter.continue_conversation(reference, callback, bot_id=self._app_id)


def _msal_app(world: World) -> Any:
    import msal

    return msal.ConfidentialClientApplication(
        world.app_id,
        client_credential=world.secret,
        authority=f"{world.fake.base_url}/{world.tenant_id}",
        instance_discovery=False,
    )


class SeedSender:
    """Resolve-on-every-send, written the straightforward way (sync requests + botbuilder's client).

    Generous to the seed: one requests.Session (keep-alive) and one ConnectorClient for all sends,
    MSAL's token cache used; an unfair version would open a new TLS connection per call.
    """

    def __init__(self, world: World) -> None:
        import requests
        from botframework.connector import ConnectorClient
        from botframework.connector.auth import MicrosoftAppCredentials

        self._world = world
        self._graph_app = _msal_app(world)
        credentials = MicrosoftAppCredentials(world.app_id, world.secret, channel_auth_tenant=world.tenant_id)
        credentials.oauth_endpoint = f"{world.fake.base_url}/{world.tenant_id}"
        credentials.app = _msal_app(world)
        self._connector = ConnectorClient(credentials, base_url=world.service_url)
        self._session = requests.Session()
        self._graph = world.fake.base_url + "/v1.0"
        self._teams_app_id = world.env["TeamsAppId"]

    def send(self, recipient: str) -> str:
        from botbuilder.schema import Activity, ChannelAccount, ConversationParameters

        world = self._world
        token = self._graph_app.acquire_token_for_client(scopes=[GRAPH_SCOPE])["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        apps = self._session.get(
            f"{self._graph}/users/{recipient}/teamwork/installedApps",
            params={"$expand": "teamsApp", "$filter": f"teamsApp/externalId eq '{self._teams_app_id}'"},
            headers=headers,
        )
        apps.raise_for_status()
        installation_id = apps.json()["value"][0]["id"]
        chat = self._session.get(
            f"{self._graph}/users/{recipient}/teamwork/installedApps/{installation_id}/chat", headers=headers
        )
        chat.raise_for_status()
        members = self._connector.conversations.get_conversation_members(chat.json()["id"])
        member = next(m for m in members if m.id.startswith("29:"))
        conversation = self._connector.conversations.create_conversation(
            ConversationParameters(
                is_group=False,
                bot=ChannelAccount(id=f"28:{world.app_id}"),
                members=[ChannelAccount(id=member.id)],
                tenant_id=world.tenant_id,
                channel_data={"tenant": {"id": world.tenant_id}},
            )
        )
        activity = activity_dict()
        sent = self._connector.conversations.send_to_conversation(
            conversation.id,
            Activity(
                type="message", text=activity["text"], text_format="markdown", channel_data=activity["channelData"]
            ),
        )
        return str(sent.id)

    def close(self) -> None:
        self._session.close()
