"""Identity-based storage as infra deploys it (AzureWebJobsStorage__tableServiceUri,
__credential=managedidentity, __clientId): the app's managed identity gets the Table Storage token
through MSAL from the Functions identity endpoint (IDENTITY_ENDPOINT + IDENTITY_HEADER). Azurite runs
with HTTPS and OAuth: it accepts only a bearer token for Azure Storage.

The sends run in a fresh interpreter: the Table clients' transport (aiohttp) builds its default TLS
context once, when it is imported, from SSL_CERT_FILE (here the fake's CA, which signed Azurite's
certificate); a test process that imported aiohttp earlier would not trust Azurite."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.azurite import Azurite
from tests.conftest import World

ROOT = Path(__file__).resolve().parent.parent

_SEND = r"""
import asyncio, json, sys
from shared.bootstrap import build_services
from shared.errors import ConfigurationError
from shared.message_content import MessageContent
from shared.settings import load_settings

async def main():
    services = build_services(load_settings(json.loads(sys.argv[1])))
    result = {"activities": [], "error": None}
    try:
        for recipient in sys.argv[2:]:
            sent = await services.notifier.send(recipient, MessageContent(text="one"))
            result["activities"].append(sent.activity_id)
    except ConfigurationError as err:
        result["error"] = err.code
    finally:
        await services.aclose()
    print(json.dumps(result))

asyncio.run(main())
"""


async def _send(env: dict[str, str], *recipients: str) -> dict[str, object]:
    """The app's services built from ``env`` in a fresh interpreter, sending to ``recipients``."""
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _SEND,
        json.dumps(env),
        *recipients,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await asyncio.wait_for(child.communicate(), timeout=120)
    assert child.returncode == 0
    result: dict[str, object] = json.loads(out.decode().strip().splitlines()[-1])
    return result


@pytest.fixture
def oauth_storage(world: World, tmp_path: Path) -> Iterator[Azurite]:
    certificate = world.server.ca.issue_cert("127.0.0.1")
    cert_path, key_path = tmp_path / "azurite-cert.pem", tmp_path / "azurite-key.pem"
    certificate.cert_chain_pems[0].write_to_path(str(cert_path))
    certificate.private_key_pem.write_to_path(str(key_path))
    storage = Azurite(tls=(str(cert_path), str(key_path))).start()
    yield storage
    storage.stop()


def _identity_env(world: World, storage: Azurite, monkeypatch: pytest.MonkeyPatch, client_id: str) -> dict[str, str]:
    # What the Functions platform provides to a site with a managed identity (App Service protocol,
    # https://learn.microsoft.com/azure/app-service/overview-managed-identity#rest-endpoint-reference).
    monkeypatch.setenv("IDENTITY_ENDPOINT", world.server.base_url + "/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", world.tenant.identity_header)
    env = {k: v for k, v in world.env.items() if k != "AzureWebJobsStorage"}
    return env | {
        "AzureWebJobsStorage__tableServiceUri": storage.table_service_uri,
        "AzureWebJobsStorage__credential": "managedidentity",
        "AzureWebJobsStorage__clientId": client_id,
    }


async def test_identity_based_storage_uses_the_managed_identity_token(
    world: World, oauth_storage: Azurite, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _identity_env(world, oauth_storage, monkeypatch, world.tenant.managed_identity_client_id)
    # Each send reads and writes Table Storage (recipient cache, the tenant's send budget); Azurite
    # in OAuth mode answers only requests bearing a token for Azure Storage.
    result = await _send(env, "alice@contoso.com", "bob@contoso.com")
    activities = result["activities"]
    assert isinstance(activities, list) and len(activities) == 2 and all(activities), result
    # The client id named the user-assigned identity (the fake's endpoint refuses any other); one
    # token for the whole run: MSAL caches it for its lifetime.
    assert [e.status for e in world.tenant.log if e.route == "msi"] == [200]
    assert len(world.tenant.messages_for(world.user("bob"))) == 1
    assert len(world.tenant.messages_for(world.user("alice"))) == 1


async def test_an_identity_the_endpoint_does_not_know_is_a_configuration_error(
    world: World, oauth_storage: Azurite, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _identity_env(world, oauth_storage, monkeypatch, "00000000-0000-0000-0000-000000000001")
    result = await _send(env, "alice@contoso.com")
    assert result["error"] == "storage_unauthorized"
    assert world.tenant.calls("msi") == 1
    assert world.tenant.messages_for(world.user("alice")) == []
