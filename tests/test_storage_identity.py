"""Identity-based storage as infra deploys it (AzureWebJobsStorage__tableServiceUri,
__credential=managedidentity, __clientId): the app's managed identity gets the Table Storage token
through MSAL from the Functions identity endpoint (IDENTITY_ENDPOINT + IDENTITY_HEADER), and the
Table clients' requests go out through the shared httpx client. Azurite runs with HTTPS and OAuth:
it accepts only a bearer token for Azure Storage."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.bootstrap import build_services
from shared.errors import ConfigurationError
from shared.message_content import MessageContent
from shared.settings import load_settings
from tests.azurite import Azurite
from tests.conftest import World


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
    services = build_services(load_settings(env))
    try:
        # Each send reads and writes Table Storage (recipient cache, the tenant's send budget); Azurite
        # in OAuth mode answers only requests bearing a token for Azure Storage.
        first = await services.notifier.send("alice@contoso.com", MessageContent(text="one"))
        second = await services.notifier.send("bob@contoso.com", MessageContent(text="two"))
    finally:
        await services.aclose()
    assert first.activity_id and second.activity_id
    # The client id named the user-assigned identity (the fake's endpoint refuses any other); one
    # token for the whole run: MSAL caches it for its lifetime.
    assert [e.status for e in world.tenant.log if e.route == "msi"] == [200]
    assert len(world.tenant.messages_for(world.user("bob"))) == 1
    assert len(world.tenant.messages_for(world.user("alice"))) == 1


async def test_an_identity_the_endpoint_does_not_know_is_a_configuration_error(
    world: World, oauth_storage: Azurite, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = _identity_env(world, oauth_storage, monkeypatch, "00000000-0000-0000-0000-000000000001")
    services = build_services(load_settings(env))
    try:
        with pytest.raises(ConfigurationError) as caught:
            await services.notifier.send("alice@contoso.com", MessageContent(text="one"))
    finally:
        await services.aclose()
    assert caught.value.code == "storage_unauthorized"
    assert world.tenant.calls("msi") == 1
    assert world.tenant.messages_for(world.user("alice")) == []
