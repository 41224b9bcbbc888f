"""Settings are read in one place; every missing or malformed one is named."""

from __future__ import annotations

import pytest

from shared.errors import ConfigurationError
from shared.settings import load_settings

GOOD = {
    "MicrosoftAppId": "5e1f2a3b-1111-4222-8333-944455556666",
    "MicrosoftAppPassword": "secret-value-that-must-not-leak",
    "MicrosoftAppTenantId": "7a8b9c0d-1111-4222-8333-944455556666",
    "TeamsAppId": "0f0e0d0c-1111-4222-8333-944455556666",
    "AzureWebJobsStorage": "UseDevelopmentStorage=true",
}


def test_defaults_are_the_public_cloud() -> None:
    settings = load_settings(GOOD)
    assert settings.service_url == "https://smba.trafficmanager.net/teams/"
    assert settings.graph_base == "https://graph.microsoft.com/v1.0"
    assert settings.authority_host == "https://login.microsoftonline.com"
    assert settings.app_type == "SingleTenant" and settings.credential_kind == "secret"
    assert settings.queue_name == "notifications" and settings.bot_id == "28:" + GOOD["MicrosoftAppId"]


def test_secret_is_not_in_repr() -> None:
    assert "secret-value-that-must-not-leak" not in repr(load_settings(GOOD))


def test_every_problem_is_named_at_once() -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_settings({"MicrosoftAppId": "not-a-guid", "ServiceUrl": "http://insecure/", "RetryMaxAttempts": "many"})
    error = caught.value
    for name in (
        "MicrosoftAppId",
        "MicrosoftAppTenantId",
        "TeamsAppId",
        "MicrosoftAppPassword",
        "ServiceUrl",
        "AzureWebJobsStorage",
        "RetryMaxAttempts",
    ):
        assert name in error.message and name in (error.target or "")
    assert error.code == "configuration_error"


def test_secretless_federated_credential_needs_no_password() -> None:
    env = {k: v for k, v in GOOD.items() if k != "MicrosoftAppPassword"}
    env["ManagedIdentityClientId"] = "9d8c7b6a-1111-4222-8333-944455556666"
    assert load_settings(env).credential_kind == "federated"


def test_identity_based_table_storage() -> None:
    env = {k: v for k, v in GOOD.items() if k != "AzureWebJobsStorage"}
    env["AzureWebJobsStorage__tableServiceUri"] = "https://acct.table.core.windows.net"
    settings = load_settings(env)
    assert (
        settings.table_connection_string is None
        and settings.table_service_uri == env["AzureWebJobsStorage__tableServiceUri"]
    )


def test_service_url_gets_a_trailing_slash_and_bad_prefix_is_named() -> None:
    assert load_settings({**GOOD, "ServiceUrl": "https://smba.trafficmanager.net/emea"}).service_url.endswith("/emea/")
    with pytest.raises(ConfigurationError, match="TableNamePrefix"):
        load_settings({**GOOD, "TableNamePrefix": "1-bad"})


@pytest.mark.parametrize(
    ("name", "value"),
    [("AzureWebJobsStorage", "not a connection string"), ("TableStorageConnection", "AccountName=only")],
)
def test_malformed_storage_connection_string_is_named(name: str, value: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        load_settings({**GOOD, name: value})
    assert caught.value.target == name
    assert value not in caught.value.message  # it may hold a key: never echoed


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:56150/_connector",
        "http://127.8.9.10/_connector/",
        "http://localhost:56150/_connector/",
        "http://LOCALHOST/_connector/",
        "http://[::1]:56150/_connector/",
    ],
)
def test_service_url_may_be_plain_http_on_loopback_only(url: str) -> None:
    # A local Bot Connector emulator (Microsoft 365 Agents Playground) serves plain http on this machine.
    assert load_settings({**GOOD, "ServiceUrl": url}).service_url == url.rstrip("/") + "/"


@pytest.mark.parametrize(
    "url",
    [
        "http://smba.trafficmanager.net/teams/",
        "http://10.0.0.5:56150/_connector/",
        "http://192.168.1.20/_connector/",
        "http://localhost.evil.example/_connector/",
        "http://127.0.0.1.nip.io/_connector/",
        "http://[::2]/_connector/",
        "http:///_connector/",
        "ftp://127.0.0.1/_connector/",
    ],
)
def test_service_url_plain_http_elsewhere_is_refused(url: str) -> None:
    # The bot's token must never cross a network in clear.
    with pytest.raises(ConfigurationError) as caught:
        load_settings({**GOOD, "ServiceUrl": url})
    assert caught.value.target == "ServiceUrl"
    assert "https://" in caught.value.message


def test_plain_http_is_still_refused_for_login_and_graph() -> None:
    for name in ("AuthorityHost", "GraphEndpoint"):
        with pytest.raises(ConfigurationError) as caught:
            load_settings({**GOOD, name: "http://127.0.0.1:8443"})
        assert caught.value.target == name
