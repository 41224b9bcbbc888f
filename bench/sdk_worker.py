"""One warm-send contender in its own process (and its own venv): ``python bench/sdk_worker.py MODE``.

Run by bench.sdks with the interpreter of the contender's venv (.bench-venvs/, built from
bench/requirements-MODE.txt), so this file imports only the standard library and that contender's
packages. Modes:

- ``teams``: the Teams SDK for Python (microsoft-teams-apps 2.x): ``App.send(conversation_id, activity)``.
- ``agents``: the Microsoft 365 Agents SDK (microsoft-agents-hosting-core 1.x, with its aiohttp
  ``CloudAdapter``): ``continue_conversation`` + ``send_activity``, the SDK's proactive messaging.
- ``httpx``: raw httpx POST with a fixed token (the floor), in a process like the SDKs'.

Protocol (JSON lines): the first stdin line is the world (fake base URL, tenant, app id and secret,
service URL, conversation ids, the activity); the worker answers ``{"ready": ...}``. Then each line
``{"n": N}`` runs N sends (rotating over the conversations) and answers the batch's process CPU time and
wall time (``{"cpu": s, "wall": s}``, totals); an empty line or EOF ends it. Any failure is answered as
``{"error": "..."}`` and ends the worker.

Tokens: both SDKs fetch their bot token from the fake's login endpoint with MSAL (client credentials,
the fake tenant's app id and secret), called the way each SDK's own client-secret path calls it
(``asyncio.to_thread(app.acquire_token_for_client)``, MSAL's cache keeping the token). Neither SDK can
point its own MSAL app at a non-Microsoft authority: MSAL asks login.microsoftonline.com about any host
it does not know unless ``instance_discovery=False``, and neither SDK passes that through. So the MSAL
app is built here with that switch and given to the SDK: the Teams SDK through its documented ``token``
option (a token callable), the Agents SDK through ``ConnectionManager(provider_factory=...)`` with an
``MsalAuth`` whose client application is built with the switch (everything else is MsalAuth's own code).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _loopback_only(event: str, args: tuple[Any, ...]) -> None:
    """No traffic may leave the machine (as bench.world does in the parent)."""
    if event == "socket.connect":
        address = args[1]
        host = address[0] if isinstance(address, tuple) else address
        if isinstance(host, str) and host not in _LOOPBACK and not host.startswith("/"):
            raise RuntimeError(f"bench worker: refusing a non-loopback connection to {host!r}")


def _host_like_logging() -> None:
    """Like the Functions host at Information (as bench.rows.host_like_logging for the in-process rows)."""
    handler = logging.StreamHandler(open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the process
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def _msal_app(world: dict[str, Any]) -> Any:
    import msal

    return msal.ConfidentialClientApplication(
        world["app_id"],
        client_credential=world["secret"],
        authority=f"{world['base_url']}/{world['tenant_id']}",
        instance_discovery=False,
    )


Send = Callable[[int], Awaitable[None]]


async def teams_sender(world: dict[str, Any]) -> tuple[Send, str]:
    from importlib.metadata import version

    from microsoft_teams.api import MessageActivityInput
    from microsoft_teams.apps import App

    msal_app = _msal_app(world)

    async def token(scope: str, tenant_id: str | None = None) -> str:
        result = await asyncio.to_thread(msal_app.acquire_token_for_client, [scope])
        return str(result["access_token"])

    app = App(
        client_id=world["app_id"],
        tenant_id=world["tenant_id"],
        token=token,
        service_url=world["service_url"],
    )
    await app.initialize()
    conversations = world["conversations"]
    fields = world["activity"]
    activity = MessageActivityInput(
        text=fields["text"], text_format=fields["textFormat"], channel_data=fields["channelData"]
    )

    async def send(i: int) -> None:
        sent = await app.send(conversations[i % len(conversations)], activity)
        if not sent.id:
            raise RuntimeError("App.send returned no activity id")

    return send, f"microsoft-teams-apps {version('microsoft-teams-apps')}"


async def agents_sender(world: dict[str, Any]) -> tuple[Send, str]:
    from importlib.metadata import version

    import msal
    from microsoft_agents.activity import Activity, ChannelAccount, ConversationAccount, ConversationReference
    from microsoft_agents.authentication.msal import MsalAuth
    from microsoft_agents.hosting.aiohttp import CloudAdapter
    from microsoft_agents.hosting.core import AgentAuthConfiguration, ConnectionManager, TurnContext

    class FakeAuthorityMsalAuth(MsalAuth):  # type: ignore[misc]
        """MsalAuth with its client application built with instance_discovery=False (see above)."""

        def _create_client_application(self, tenant_id: str | None = None) -> Any:
            config = self._msal_configuration
            return msal.ConfidentialClientApplication(
                client_id=config.CLIENT_ID,
                authority=MsalAuth._resolve_authority(config, tenant_id),
                client_credential=config.CLIENT_SECRET,
                instance_discovery=False,
            )

    config = AgentAuthConfiguration(
        client_id=world["app_id"],
        tenant_id=world["tenant_id"],
        client_secret=world["secret"],
        authority=f"{world['base_url']}/{world['tenant_id']}",
    )
    adapter = CloudAdapter(
        connection_manager=ConnectionManager(
            provider_factory=FakeAuthorityMsalAuth, connections_configurations={"SERVICE_CONNECTION": config}
        )
    )
    continuations = [
        ConversationReference(
            channel_id="msteams",
            service_url=world["service_url"],
            conversation=ConversationAccount(id=c, tenant_id=world["tenant_id"], conversation_type="personal"),
            agent=ChannelAccount(id=f"28:{world['app_id']}"),
        ).get_continuation_activity()
        for c in world["conversations"]
    ]
    fields = world["activity"]
    app_id = world["app_id"]

    async def send(i: int) -> None:
        async def callback(context: TurnContext) -> None:
            response = await context.send_activity(
                Activity(
                    type="message",
                    text=fields["text"],
                    text_format=fields["textFormat"],
                    channel_data=fields["channelData"],
                )
            )
            if response is None or not response.id:
                raise RuntimeError("send_activity returned no activity id")

        await adapter.continue_conversation(app_id, continuations[i % len(continuations)], callback)

    return send, f"microsoft-agents-hosting-core {version('microsoft-agents-hosting-core')}"


async def httpx_sender(world: dict[str, Any]) -> tuple[Send, str]:
    from importlib.metadata import version

    import httpx

    token = _msal_app(world).acquire_token_for_client(["https://api.botframework.com/.default"])["access_token"]
    client = httpx.AsyncClient(timeout=10)
    urls = [f"{world['service_url'].rstrip('/')}/v3/conversations/{c}/activities" for c in world["conversations"]]
    headers = {"Authorization": f"Bearer {token}"}

    async def send(i: int) -> None:
        response = await client.post(urls[i % len(urls)], json=world["activity"], headers=headers)
        if response.status_code != 201:
            raise RuntimeError(f"send failed: {response.status_code}")

    return send, f"httpx {version('httpx')}"


SENDERS = {"teams": teams_sender, "agents": agents_sender, "httpx": httpx_sender}


def _answer(value: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(value) + "\n")
    sys.stdout.flush()


async def serve(mode: str) -> None:
    world = json.loads(sys.stdin.readline())
    send, version = await SENDERS[mode](world)
    _answer({"ready": version})
    counter = 0
    while True:
        line = sys.stdin.readline().strip()
        if not line:
            return
        n = int(json.loads(line)["n"])
        gc.collect()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for _ in range(n):
            await send(counter)
            counter += 1
        _answer({"cpu": time.process_time() - cpu0, "wall": time.perf_counter() - wall0})


def main() -> int:
    sys.addaudithook(_loopback_only)
    _host_like_logging()
    try:
        asyncio.run(serve(sys.argv[1]))
    except Exception as error:  # noqa: BLE001 - reported to the parent, which says so in the row
        _answer({"error": f"{type(error).__name__}: {error}"[:500]})
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
