"""The one place that wires settings, the HTTP client, tokens, Graph, connector and stores.

Nothing is built at import time. ``get_services()`` builds everything lazily, once per process (and
event loop), on the first invocation; ``build_services`` is the same wiring for tests, benchmarks and
the command line, which pass their own settings.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Mapping
from typing import Any

import httpx
import msgspec

from shared.botframework import ChannelAuthenticator
from shared.callerauth import CallerAuthenticator
from shared.connector import ConnectorClient
from shared.graph import GraphClient
from shared.http import RetryPolicy, build_http_client
from shared.pipeline import Notifier
from shared.settings import Settings, load_settings
from shared.storage.budget import TenantBudget
from shared.storage.failures import FailureStore, TableFailureStore
from shared.storage.idempotency import IdempotencyStore, TableIdempotencyStore
from shared.storage.notifications import NotificationStore, TableNotificationStore
from shared.storage.optout import OptOutStore, TableOptOutStore
from shared.storage.references import CachedRecipientStore, RecipientStore, TableRecipientStore
from shared.storage.signing import SigningKeys, TableSigningKeys
from shared.throttle import Throttle

logger = logging.getLogger(__name__)


class Waits(msgspec.Struct, frozen=True):
    """How long the use cases wait on their own records; the deployed values (a test shortens them)."""

    # An HTTP repeat that finds the first attempt with its key still sending waits this long for its
    # result, then answers 409 request_in_progress with Retry-After.
    http_in_flight: float = 5.0
    # Over Service Bus, a delivery that finds the key held polls the key's record for the holder's
    # result for at most this long (it returns as soon as the result is recorded: a duplicate of a
    # delivery that finished in milliseconds completes in milliseconds), so the queue's 10 delivery
    # attempts (10 x 120 s) outlast a lease held after an unconfirmed send (6 min), and one wait stays
    # well inside functionTimeout (5 min) and the lock's auto-renewal (5 min).
    queue_in_flight: float = 120.0
    # Once Teams confirmed a send, its record (the idempotency key's result, the delivery row) is
    # retried for this long before giving up: well inside functionTimeout (5 min) and an HTTP caller's
    # patience (Power Automate waits 120 s), far longer than a storage blip. The key is never released
    # meanwhile.
    record_deadline: float = 100.0


# dict=True: a __dict__ for the cached properties below (aclose closes those that were built).
class Services(msgspec.Struct, dict=True):
    settings: Settings
    http: httpx.AsyncClient
    tokens: Any
    graph: GraphClient
    connector: ConnectorClient
    store: RecipientStore
    notifier: Notifier
    tables: Any  # azure.data.tables.aio.TableServiceClient
    throttle: Throttle | None = None
    optouts: OptOutStore | None = None  # recipients who uninstalled the bot: {TableNamePrefix}optouts
    table_credential: Any = None  # the credential the tables client uses (closed with it)
    budget: TenantBudget | None = None  # the tenants' shared request budgets ({TableNamePrefix}budget)
    waits: Waits = msgspec.field(default_factory=Waits)

    @functools.cached_property
    def channel_auth(self) -> ChannelAuthenticator:
        """The messaging endpoint's inbound token validation, built on the first inbound activity: it
        loads the Bot Framework SDK (botframework-connector), which no send needs. It also configures
        the SDK's process-wide validation state (BotOpenIdMetadata), once."""
        return ChannelAuthenticator(self.settings.app_id, self.settings.bot_openid_metadata, self.http)

    def table(self, suffix: str) -> Any:
        """A TableClient for one of the app's tables: {TableNamePrefix}{suffix}."""
        return self.tables.get_table_client(self.settings.table_prefix + suffix)

    @functools.cached_property
    def requests(self) -> IdempotencyStore:
        """Idempotency records: {TableNamePrefix}requests."""
        return TableIdempotencyStore(self.table("requests"))

    @functools.cached_property
    def notifications(self) -> NotificationStore:
        """Notifications and their per-recipient deliveries: {TableNamePrefix}notifications, ...deliveries."""
        return TableNotificationStore(self.table("notifications"), self.table("deliveries"))

    @functools.cached_property
    def caller_auth(self) -> CallerAuthenticator:
        """Who may call the HTTP API (ApiAuthMode): function keys, or Entra ID bearer tokens."""
        return CallerAuthenticator(self.settings, self.http)

    @functools.cached_property
    def signing(self) -> SigningKeys:
        """The deployment's key for notification ids and queued items: {TableNamePrefix}keys."""
        return TableSigningKeys(self.settings.notification_signing_key, self.table("keys"))

    @functools.cached_property
    def failures(self) -> FailureStore:
        """Queue messages that failed permanently: {TableNamePrefix}failures."""
        return TableFailureStore(self.table("failures"))

    async def aclose(self) -> None:
        await self.store.close()
        if self.budget is not None:
            await self.budget.close()
        if "requests" in self.__dict__:
            await self.requests.close()
        if "failures" in self.__dict__:
            await self.failures.close()
        if self.optouts is not None:
            await self.optouts.close()
        if "signing" in self.__dict__:
            await self.signing.close()
        if "notifications" in self.__dict__:
            await self.notifications.close()
        await self.tables.close()
        if self.table_credential is not None:
            await self.table_credential.close()
        await self.http.aclose()


def table_service(settings: Settings, http: httpx.AsyncClient) -> tuple[Any, Any]:
    """The TableServiceClient and the credential it owns (None with a connection string).

    Its requests go through ``shared.tablehttp.TableHttpTransport`` (HTTP/1.1 over asyncio with h11):
    azure-core's default transport, aiohttp, cost the first send after a cold start about 0.2 s of
    imports, and an httpx transport about 3x the CPU per request (its reasons and measurements are in
    that module). Where the environment names a proxy (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY) the
    default aiohttp transport is used with the environment's settings, as azure-core does by default.
    Without a proxy aiohttp is never given ``trust_env``: it would look the proxy up and parse
    ~/.netrc in a worker thread on every request.

    An identity-based connection (``AzureWebJobsStorage__tableServiceUri``) authenticates as the
    Functions host does: with ``AzureWebJobsStorage__credential=managedidentity`` (as infra deploys)
    only the app's managed identity (``__clientId`` for a user-assigned one), through MSAL's managed
    identity client (``shared.azurecore.ManagedIdentityCredential``); otherwise azure-identity's
    DefaultAzureCredential, so an operator's workstation uses its own sign-in (``az login``, VS Code,
    AZURE_* environment variables) where shared keys are disabled."""
    from azure.data.tables.aio import TableServiceClient

    from shared.azurecore import ManagedIdentityCredential

    options: dict[str, Any] = {}  # with a proxy: azure-core's default transport, which reads it
    if not env_proxy_configured():
        from shared.tablehttp import TableHttpTransport

        options["transport"] = TableHttpTransport()
    if settings.table_connection_string:
        return TableServiceClient.from_connection_string(settings.table_connection_string, **options), None
    assert settings.table_service_uri is not None
    credential: Any
    if settings.table_credential == "managedidentity":
        credential = ManagedIdentityCredential(http, client_id=settings.table_client_id, timeout=settings.http_timeout)
    else:
        from azure.identity.aio import DefaultAzureCredential

        credential = DefaultAzureCredential(managed_identity_client_id=settings.table_client_id)
    client = TableServiceClient(endpoint=settings.table_service_uri, credential=credential, **options)
    return client, credential


def env_proxy_configured() -> bool:
    """Whether the environment names a proxy (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, any case)."""
    import urllib.request

    return any(scheme in ("http", "https", "all") for scheme in urllib.request.getproxies_environment())


# Loggers of libraries that log request URLs at INFO: Graph URLs name the recipient (a UPN) and Table
# Storage URLs carry cache keys. Our own log lines name recipients by hash only.
_URL_LOGGERS = ("httpx", "azure.core.pipeline.policies.http_logging_policy")


def quiet_url_loggers() -> None:
    for name in _URL_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def build_services(settings: Settings, *, store: RecipientStore | None = None) -> Services:
    from shared.tokens import TokenProvider

    quiet_url_loggers()
    http = build_http_client(settings)
    policy = RetryPolicy.from_settings(settings)
    tokens = TokenProvider(settings, http)
    tables, table_credential = table_service(settings, http)
    budget = TenantBudget(
        tables.get_table_client(settings.table_prefix + "budget"),
        {"connector": settings.tenant_send_rate, "graph": settings.tenant_graph_rate},
    )
    throttle = Throttle(
        max_concurrent=settings.max_concurrent_sends,
        send_rate=settings.tenant_send_rate,
        graph_rate=settings.tenant_graph_rate,
        max_wait=settings.retry_max_delay,
        budget=budget,
    )
    graph = GraphClient(settings, http, tokens, policy, throttle)
    connector = ConnectorClient(settings, http, tokens, policy, throttle)
    if store is None:
        store = CachedRecipientStore(TableRecipientStore(tables.get_table_client(settings.table_prefix + "accounts")))
    optouts = TableOptOutStore(tables.get_table_client(settings.table_prefix + "optouts"))
    notifier = Notifier(settings, graph, connector, store, throttle, optouts=optouts)
    return Services(
        settings,
        http,
        tokens,
        graph,
        connector,
        store,
        notifier,
        tables,
        throttle,
        optouts=optouts,
        table_credential=table_credential,
        budget=budget,
    )


_services: Services | None = None
_services_loop: asyncio.AbstractEventLoop | None = None


def get_services(env: Mapping[str, str] | None = None) -> Services:
    """The process's services, built on first use (raises ConfigurationError naming bad settings)."""
    global _services, _services_loop
    loop = asyncio.get_running_loop()
    if _services is None or _services_loop is not loop:
        _services = build_services(load_settings(env))
        _services_loop = loop
    return _services


async def reset_services() -> None:
    """Close and forget the process's services (tests, configuration reload)."""
    global _services, _services_loop
    if _services is not None:
        current, _services, _services_loop = _services, None, None
        await current.aclose()
