"""App tokens: MSAL client credentials for Graph (per recipient tenant) and the Bot Connector.

One ``ConfidentialClientApplication`` per authority, so MSAL's token cache is reused; a small memo of
the current token per (authority, scope) in front of it keeps the warm send free of thread hops.
MSAL is synchronous: it runs in a worker thread and its HTTP goes through our shared
``httpx.AsyncClient`` (``_MsalHttpBridge``), so there is one outbound HTTP stack.

Credentials, chosen by settings:
- ``secret``: MicrosoftAppPassword (local development).
- ``federated``: no secret anywhere; a managed-identity token for ``api://AzureADTokenExchange`` (the
  user-assigned identity ManagedIdentityClientId) is the client assertion of the app registration,
  which trusts that identity through a federated identity credential.
- ``msi``: MicrosoftAppType=UserAssignedMSI; the managed identity is the bot itself (home tenant only).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import threading
import time
from collections import OrderedDict
from typing import Any

import httpx
import msgspec

from shared.errors import ConfigurationError, NotifyError, RecipientError, TransientError
from shared.settings import Settings

logger = logging.getLogger(__name__)

GRAPH_SCOPE = "https://graph.microsoft.com/.default"
BOT_SCOPE = "https://api.botframework.com/.default"
TOKEN_EXCHANGE_RESOURCE = "api://AzureADTokenExchange"
# Refresh this long before expiry so a token never expires in flight.
_REFRESH_MARGIN = 300.0
# Per-tenant state (MSAL apps, token locks) is kept for at most this many tenants (least recently
# used dropped first): a flood of requests naming unknown tenant ids cannot grow it without bound.
MAX_TENANTS = 1000
# A tenant the login service said does not exist is answered from memory for this long (no login
# round trip per request naming it).
NEGATIVE_TTL = 60.0
# The only evidence that a tenant does not exist: the login service's own words for it. Anything
# else (a 429/5xx replayed by MSAL's throttle cache, a malformed or empty OpenID document, a
# connection error) is transient.
_UNKNOWN_TENANT_MARKERS = ("AADSTS90002", "invalid_tenant")


class _MsalHttpBridge:
    """The requests-like object MSAL wants, running each call on our AsyncClient's event loop."""

    def __init__(self, client: httpx.AsyncClient, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self._client = client
        self._loop = loop
        self._timeout = timeout
        # Several MSAL calls may run at once in worker threads: each sees its own last status.
        self._local = threading.local()

    @property
    def last_status(self) -> int | None:
        """The status of the last response in the calling thread (MSAL hides it in errors)."""
        status: int | None = getattr(self._local, "status", None)
        return status

    def _call(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        kwargs.pop("timeout", None)
        kwargs.pop("verify", None)
        self._local.status = None
        future = asyncio.run_coroutine_threadsafe(self._client.request(method, url, **kwargs), self._loop)
        response = future.result(self._timeout * 2)
        self._local.status = response.status_code
        return response

    def get(self, url: str, params: Any = None, headers: Any = None, **kwargs: Any) -> httpx.Response:
        return self._call("GET", url, params=params, headers=headers)

    def post(
        self, url: str, params: Any = None, data: Any = None, headers: Any = None, **kwargs: Any
    ) -> httpx.Response:
        return self._call("POST", url, params=params, data=data, headers=headers)

    def close(self) -> None:  # MSAL may call it; the shared client outlives MSAL.
        return None


class _Token(msgspec.Struct):
    value: str
    expires_at: float


def bot_token_tenant(settings: Settings) -> str:
    """The tenant whose authority issues the bot's Bot Connector tokens: single-tenant bots get them from
    their own tenant, multi-tenant ones from the botframework.com tenant (Bot Framework docs,
    "Authentication with the Bot Connector API")."""
    return "botframework.com" if settings.app_type == "MultiTenant" else settings.tenant_id


class TokenProvider:
    """Hands out bearer tokens; the only holder of the app's credentials."""

    def __init__(self, settings: Settings, client: httpx.AsyncClient) -> None:
        self._settings = settings
        self._client = client
        self._tokens: OrderedDict[tuple[str, str], _Token] = OrderedDict()
        self._locks: OrderedDict[tuple[str, str], asyncio.Lock] = OrderedDict()
        self._apps: OrderedDict[str, Any] = OrderedDict()
        self._unknown: OrderedDict[str, tuple[float, NotifyError]] = OrderedDict()
        self._mi_client: Any = None
        self._bridge: _MsalHttpBridge | None = None

    async def graph_token(self, tenant_id: str) -> str:
        return await self._token(tenant_id, GRAPH_SCOPE, recipient_tenant=tenant_id != self._settings.tenant_id)

    async def bot_token(self) -> str:
        return await self._token(bot_token_tenant(self._settings), BOT_SCOPE, recipient_tenant=False)

    def forget(self, tenant_id: str, scope: str) -> None:
        """Drop a token that the service rejected (401): ours and MSAL's cached copy, so the next
        call fetches a new one."""
        self._tokens.pop((tenant_id, scope), None)
        app = self._apps.get(tenant_id)
        if app is not None:
            app.remove_tokens_for_client()

    async def _token(self, tenant: str, scope: str, *, recipient_tenant: bool) -> str:
        key = (tenant, scope)
        cached = self._tokens.get(key)
        now = time.time()
        if cached is not None and cached.expires_at - _REFRESH_MARGIN > now:
            return cached.value
        known_missing = self._unknown.get(tenant)
        if known_missing is not None:
            if known_missing[0] > now:
                raise copy.copy(known_missing[1]) from None
            del self._unknown[tenant]
        lock = self._lock(key)
        async with lock:
            cached = self._tokens.get(key)
            if cached is not None and cached.expires_at - _REFRESH_MARGIN > time.time():
                return cached.value
            if self._bridge is None:
                self._bridge = _MsalHttpBridge(self._client, asyncio.get_running_loop(), self._settings.http_timeout)
            result = await asyncio.to_thread(self._acquire, tenant, scope)
            try:
                token = self._check(result, tenant, recipient_tenant=recipient_tenant)
            except NotifyError as err:
                if err.code == "tenant_not_found":
                    self._remember_unknown(tenant, err)
                raise
            self._tokens[key] = token
            self._tokens.move_to_end(key)
            while len(self._tokens) > 2 * MAX_TENANTS:
                self._tokens.popitem(last=False)
            return token.value

    def _lock(self, key: tuple[str, str]) -> asyncio.Lock:
        """The lock of one (tenant, scope); at most ``2 * MAX_TENANTS`` are kept (idle ones dropped first)."""
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
            if len(self._locks) > 2 * MAX_TENANTS:
                for old in [k for k, v in self._locks.items() if not v.locked()][: len(self._locks) - 2 * MAX_TENANTS]:
                    del self._locks[old]
        self._locks.move_to_end(key)
        return lock

    def _remember_unknown(self, tenant: str, err: NotifyError) -> None:
        self._unknown[tenant] = (time.time() + NEGATIVE_TTL, err)
        self._unknown.move_to_end(tenant)
        while len(self._unknown) > MAX_TENANTS:
            self._unknown.popitem(last=False)

    # --- runs in a worker thread -------------------------------------------------------------
    def _acquire(self, tenant: str, scope: str) -> dict[str, Any]:
        import msal  # imported on first token only: keeps cold start light
        import msal.exceptions

        bridge = self._bridge
        assert bridge is not None
        try:
            if self._settings.credential_kind == "msi":
                resource = scope.removesuffix("/.default")
                return dict(self._managed_identity(msal, bridge).acquire_token_for_client(resource=resource))
            app = self._apps.get(tenant)
            if app is None:
                app = msal.ConfidentialClientApplication(
                    self._settings.app_id,
                    client_credential=self._credential(msal, bridge),
                    authority=f"{self._settings.authority_host}/{tenant}",
                    http_client=bridge,
                    # Our AuthorityHost comes from settings (national cloud, loopback fake): no
                    # discovery call to the public cloud, the configured host is trusted as given.
                    instance_discovery=False,
                )
                self._apps[tenant] = app
                while len(self._apps) > MAX_TENANTS:
                    self._apps.popitem(last=False)
            with contextlib.suppress(KeyError):  # dropped meanwhile by another thread: still usable here
                self._apps.move_to_end(tenant)
            result = dict(app.acquire_token_for_client(scopes=[scope]))
            if "access_token" not in result:
                result["http_status"] = bridge.last_status
            return result
        except httpx.TransportError as err:
            return {"error": "transport_error", "error_description": type(err).__name__}
        except msal.exceptions.MsalServiceError:
            # MSAL raises this for a 5xx answer of the login endpoint (token or OpenID document),
            # including one its throttle cache replays for a few seconds without an HTTP call.
            return {"error": "temporarily_unavailable", "error_description": "login endpoint answered 5xx"}
        except (ValueError, RuntimeError) as err:
            # MSAL raises ValueError when the OpenID document cannot be had: a 4xx (an unknown tenant
            # answers 400 AADSTS90002, but a 429 is a 4xx too), or a body that is not JSON (also a
            # token answer). Only the login service's own words make it "tenant not found".
            if _says_unknown_tenant(err):
                return {"error": "invalid_authority", "error_description": "AADSTS90002"}
            return {"error": "temporarily_unavailable", "error_description": type(err).__name__}

    def _credential(self, msal: Any, bridge: _MsalHttpBridge) -> Any:
        if self._settings.credential_kind == "secret":
            return self._settings.app_password

        def assertion() -> str:
            result = self._managed_identity(msal, bridge).acquire_token_for_client(resource=TOKEN_EXCHANGE_RESOURCE)
            if "access_token" not in result:
                raise ConfigurationError(
                    "The managed identity could not get a token for the federated credential: "
                    f"{result.get('error', 'unknown error')}.",
                    code="managed_identity_unavailable",
                    target="ManagedIdentityClientId",
                )
            return str(result["access_token"])

        return {"client_assertion": assertion}

    def _managed_identity(self, msal: Any, bridge: _MsalHttpBridge) -> Any:
        if self._mi_client is None:
            client_id = (
                self._settings.app_id
                if self._settings.credential_kind == "msi"
                else self._settings.managed_identity_client_id
            )
            self._mi_client = msal.ManagedIdentityClient(
                msal.UserAssignedManagedIdentity(client_id=client_id), http_client=bridge
            )
        return self._mi_client

    # --- back on the event loop ---------------------------------------------------------------
    def _check(self, result: dict[str, Any], tenant: str, *, recipient_tenant: bool) -> _Token:
        if "access_token" in result:
            expires_in = float(result.get("expires_in", 3600))
            return _Token(str(result["access_token"]), time.time() + expires_in)
        raise _token_error(result, tenant, self._settings, recipient_tenant=recipient_tenant)


def _says_unknown_tenant(err: BaseException) -> bool:
    """True when the exception (or one it was raised from) quotes the login service saying the
    tenant does not exist. The text is only searched, never logged."""
    seen: BaseException | None = err
    for _ in range(5):
        if seen is None:
            return False
        if any(marker in str(seen) for marker in _UNKNOWN_TENANT_MARKERS):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _token_error(
    result: dict[str, Any],
    tenant: str,
    settings: Settings,
    *,
    recipient_tenant: bool,
) -> NotifyError:
    """Translate an MSAL error result. Only codes and AADSTS numbers are used: never the raw body."""
    error = str(result.get("error", ""))
    description = str(result.get("error_description", ""))
    aadsts = {c for c in result.get("error_codes", []) if isinstance(c, int)}
    for word in description.replace(":", " ").split():
        if word.startswith("AADSTS") and word[6:].isdigit():
            aadsts.add(int(word[6:]))
    credential_setting = {
        "secret": "MicrosoftAppPassword",
        "federated": "ManagedIdentityClientId",
        "msi": "MicrosoftAppId",
    }[settings.credential_kind]
    status = result.get("http_status") or 0
    if error in ("transport_error", "temporarily_unavailable", "server_error") or status == 429 or status >= 500:
        return TransientError(
            "The login endpoint could not be reached; try again later.", target="AuthorityHost", retry_after=5.0
        )
    if 90002 in aadsts or 90072 in aadsts or error == "invalid_authority":
        if recipient_tenant:
            return RecipientError(
                f"Tenant '{tenant}' was not found or does not trust this app.",
                code="tenant_not_found",
                target="tenantId",
            )
        return ConfigurationError(
            f"Tenant '{tenant}' was not found: check MicrosoftAppTenantId and AuthorityHost.",
            code="tenant_not_found",
            target="MicrosoftAppTenantId",
        )
    if 7000215 in aadsts or 7000222 in aadsts or 7000216 in aadsts:
        return ConfigurationError(
            f"The app's credential was rejected (invalid or expired): fix {credential_setting}.",
            code="invalid_client_credential",
            target=credential_setting,
        )
    if 700016 in aadsts:
        return ConfigurationError(
            f"The app MicrosoftAppId was not found in tenant '{tenant}'"
            + (" (the app is not consented there)." if recipient_tenant else "."),
            code="app_not_found",
            target="MicrosoftAppId",
        )
    if 7000112 in aadsts:
        return ConfigurationError(
            "The app registration is disabled in the tenant: an administrator must enable it.",
            code="app_disabled",
            target="MicrosoftAppId",
        )
    if 700211 in aadsts or 700212 in aadsts or 700213 in aadsts or 700027 in aadsts or 70021 in aadsts:
        return ConfigurationError(
            "The federated credential was rejected: the app registration must trust the managed identity "
            "ManagedIdentityClientId (issuer, subject, audience api://AzureADTokenExchange).",
            code="invalid_client_credential",
            target="ManagedIdentityClientId",
        )
    return ConfigurationError(
        f"Could not get an app token ({error or 'unknown error'}"
        + (f", AADSTS{min(aadsts)}" if aadsts else "")
        + f"): check MicrosoftAppId, {credential_setting} and MicrosoftAppTenantId.",
        code="token_error",
        target=credential_setting,
    )
