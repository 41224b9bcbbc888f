"""The test world: Azurite (real Table Storage API) for the session, and per test a fresh loopback
fake tenant (login, Graph, Bot Connector), settings pointing at both, and a unique table prefix.

Tests reach the product only through its public entrypoints: the function app object, the library's
public functions, and the command line. Nothing of ours is mocked; only what lies outside the process
is faked, at the wire.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest

from faketenant import FakeTenant, FakeTenantServer, FakeUser
from shared.bootstrap import Services, build_services, reset_services
from shared.settings import Settings, load_settings
from tests.azurite import Azurite

CLIENT_SECRET = "fake-client-secret-value-7f3a9c"


# The slowest tests, by measured duration (``--durations``, serial run, busy machine: seconds), longest
# first: they start first, and the other tests run beside them when the suite runs in parallel
# (``./scripts/test`` runs pytest-xdist, ``-n``). Most of them wait (for a subprocess, a real outage, a
# rate limit); the fan-out of 1,000 computes. A name that goes stale here costs speed only, never a test.
SLOW_FIRST = (
    "tests/test_fanout.py::test_a_thousand_recipients_",  # 195
    "tests/test_bench_smoke.py::",  # 76
    "tests/test_infra.py::test_checkov_",  # 69 (one checkov run for both tests: test_infra.py)
    "tests/test_playground.py::",  # 47 + 25 (two Playgrounds)
    "tests/test_cli.py::test_operators_sign_in_with_their_own_identity_",  # 29
    "tests/test_sandbox.py::",  # 29
    "tests/test_budget.py::",  # 27
    "tests/test_fanout.py::test_kept_fan_out_recipient_is_replayed_",  # 23
    "tests/test_robustness.py::test_storage_down_",  # 20 + 18 + 15 + 10 (real outages)
    "tests/test_fanout.py::test_errors_on_our_side_leave_recipients_pending_",  # 19
    "tests/test_properties.py::",  # 16 + 3 + 2
    "tests/test_cli.py::test_status_watch_follows_",  # 11
)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        return next((i for i, prefix in enumerate(SLOW_FIRST) if item.nodeid.startswith(prefix)), len(SLOW_FIRST))

    items.sort(key=rank)  # stable: the order within each file, and so its module fixtures, is kept


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    server = Azurite().start()
    yield server
    server.stop()


@dataclass
class World:
    tenant: FakeTenant
    server: FakeTenantServer
    env: dict[str, str]
    users: dict[str, FakeUser] = field(default_factory=dict)

    @property
    def settings(self) -> Settings:
        return load_settings(self.env)

    def user(self, name: str) -> FakeUser:
        return self.users[name]


def _unique_prefix() -> str:
    return "t" + uuid.uuid4().hex[:16]


@pytest.fixture
def world(azurite: Azurite, monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    tenant = FakeTenant(
        tenant_id=str(uuid.uuid4()),
        app_id=str(uuid.uuid4()),
        teams_app_id=str(uuid.uuid4()),
        client_secret=CLIENT_SECRET,
    )
    users = {
        "alice": tenant.add_user("alice@contoso.com", display_name="Alice Smith"),
        "bob": tenant.add_user("bob@contoso.com", display_name="Bob Jones"),
        "oneil": tenant.add_user("o'neil@contoso.com", display_name="Pat O'Neil"),
        "guest": tenant.add_user("guest_fabrikam.com#EXT#@contoso.onmicrosoft.com", display_name="Guest User"),
    }
    server = FakeTenantServer(tenant)
    server.start()
    env = {
        "MicrosoftAppId": tenant.app_id,
        "MicrosoftAppPassword": CLIENT_SECRET,
        "MicrosoftAppTenantId": tenant.tenant_id,
        "MicrosoftAppType": "SingleTenant",
        "TeamsAppId": tenant.teams_app_id,
        "ServiceUrl": server.base_url + "/teams/",
        "AuthorityHost": server.base_url,
        "GraphEndpoint": server.base_url,
        "AzureWebJobsStorage": azurite.connection_string,
        "TableNamePrefix": _unique_prefix(),
        "ServiceBusQueueName": "notifications",
        "ServiceBusConnection": "Endpoint=sb://localhost/;SharedAccessKeyName=test;SharedAccessKey=test",
        "RetryMaxAttempts": "4",
        "RetryMaxDelaySeconds": "2",
        "BotOpenIdMetadata": server.base_url + "/botframework/v1/.well-known/openidconfiguration",
    }
    # The function host reads settings from the environment; so do the triggers under test.
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("SSL_CERT_FILE", server.ca_pem_path)
    yield World(tenant=tenant, server=server, env=env, users=users)
    server.stop()


@pytest.fixture
async def services(world: World) -> AsyncIterator[Services]:
    """The library wired exactly as the function app wires it, against the fake and Azurite."""
    built = build_services(world.settings)
    yield built
    await built.aclose()


@pytest.fixture(autouse=True)
async def _fresh_process_services() -> AsyncIterator[None]:
    """Each test starts like a fresh function host process (the app's lazily built services)."""
    await reset_services()
    yield
    await reset_services()


@pytest.fixture(autouse=True)
def _no_secrets_in_logs(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """No secret or token may reach a log line, in any test."""
    caplog.set_level(logging.DEBUG)
    yield
    records = [r for phase in ("setup", "call") for r in caplog.get_records(phase)] + caplog.records
    # The fake tenant stands for Microsoft's services: its own log lines are not the product's.
    ours = [r for r in records if not r.name.startswith("faketenant")]
    text = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in ours)
    assert CLIENT_SECRET not in text
    assert "eyJ" not in text, "something that looks like a JWT was logged"
    # Recipients appear in log lines by hash only (the test tenant's users are all @contoso.com).
    assert "contoso.com" not in text.replace("%40", "@").lower(), "a recipient's UPN was logged"
