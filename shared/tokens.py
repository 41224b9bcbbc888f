"""App tokens: MSAL client credentials for Graph (per recipient tenant) and the Bot Connector.

The client-credentials request (PROTOCOL.md, Tokens) is made directly over the shared
``httpx.AsyncClient``, with a memo of the current token per (authority, scope): MSAL is not used on
the send path (it is synchronous and loads requests, which a first send after a cold start would pay
for). One outbound HTTP stack, no worker threads.

Credentials, chosen by settings:
- ``secret``: MicrosoftAppPassword (local development).
- ``federated``: no secret anywhere; a managed-identity token for ``api://AzureADTokenExchange`` (the
  user-assigned identity ManagedIdentityClientId) is the client assertion of the app registration,
  which trusts that identity through a federated identity credential.
- ``msi``: MicrosoftAppType=UserAssignedMSI; the managed identity is the bot itself (home tenant only).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import httpx

from shared.errors import ConfigurationError, NotifyError, RecipientError, TransientError
from shared.settings import Settings

logger = logging.getLogger(__name__)

GRAPH_SCOPE = "https://graph.microsoft.com/.default"
BOT_SCOPE = "https://api.botframework.com/.default"
TOKEN_EXCHANGE_RESOURCE = "api://AzureADTokenExchange"
# Refresh this long before expiry so a token never expires in flight.
_REFRESH_MARGIN = 300.0


JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: The App Service managed identity protocol version (Functions, Flex Consumption included).
_MI_API_VERSION = "2019-08-01"


@dataclass
class _Token:
    value: str
    expires_at: float


class TokenProvider:
    """Hands out bearer tokens; the only holder of the app's credentials."""

    def __init__(self, settings: Settings, client: httpx.AsyncClient) -> None:
        self._settings = settings
        self._client = client
        self._tokens: dict[tuple[str, str], _Token] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._mi_tokens: dict[tuple[str, str], _Token] = {}

    async def graph_token(self, tenant_id: str) -> str:
        return await self._token(tenant_id, GRAPH_SCOPE, recipient_tenant=tenant_id != self._settings.tenant_id)

    async def bot_token(self) -> str:
        # Single-tenant bots get Bot Framework tokens from their own tenant, multi-tenant ones from
        # the botframework.com tenant (PROTOCOL.md, Tokens).
        tenant = "botframework.com" if self._settings.app_type == "MultiTenant" else self._settings.tenant_id
        return await self._token(tenant, BOT_SCOPE, recipient_tenant=False)

    def forget(self, tenant_id: str, scope: str) -> None:
        """Drop a token that the service rejected (401), so the next call fetches a new one."""
        self._tokens.pop((tenant_id, scope), None)
        self._mi_tokens.clear()

    async def _token(self, tenant: str, scope: str, *, recipient_tenant: bool) -> str:
        key = (tenant, scope)
        cached = self._tokens.get(key)
        now = time.time()
        if cached is not None and cached.expires_at - _REFRESH_MARGIN > now:
            return cached.value
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            cached = self._tokens.get(key)
            if cached is not None and cached.expires_at - _REFRESH_MARGIN > time.time():
                return cached.value
            result = await self._acquire(tenant, scope)
            token = self._check(result, tenant, recipient_tenant=recipient_tenant)
            self._tokens[key] = token
            return token.value

    async def managed_identity_token(self, resource: str, client_id: str) -> _Token:
        """A managed-identity token (App Service protocol: IDENTITY_ENDPOINT + IDENTITY_HEADER, which
        Azure Functions provides), memoised until shortly before it expires."""
        key = (resource, client_id)
        cached = self._mi_tokens.get(key)
        if cached is not None and cached.expires_at - _REFRESH_MARGIN > time.time():
            return cached
        result = await self._managed_identity(resource, client_id)
        if "access_token" not in result:
            raise ConfigurationError(
                f"The managed identity could not get a token: {result.get('error', 'unknown error')}.",
                code="managed_identity_unavailable",
                target="ManagedIdentityClientId",
            )
        token = _Token(str(result["access_token"]), time.time() + float(result.get("expires_in", 3600)))
        self._mi_tokens[key] = token
        return token

    async def _acquire(self, tenant: str, scope: str) -> dict[str, Any]:
        """OAuth 2.0 client credentials (PROTOCOL.md, Tokens) straight over the shared httpx client: the
        send path needs no MSAL (which would load requests). Answers are dicts in the token
        endpoint's shape (``access_token``/``expires_in`` or ``error``/``error_codes``)."""
        settings = self._settings
        if settings.credential_kind == "msi":
            return await self._managed_identity(scope.removesuffix("/.default"), settings.app_id)
        form = {"grant_type": "client_credentials", "client_id": settings.app_id, "scope": scope}
        if settings.credential_kind == "secret":
            form["client_secret"] = settings.app_password or ""
        else:
            assert settings.managed_identity_client_id is not None
            assertion = await self.managed_identity_token(TOKEN_EXCHANGE_RESOURCE, settings.managed_identity_client_id)
            form["client_assertion_type"] = JWT_BEARER
            form["client_assertion"] = assertion.value
        url = f"{settings.authority_host}/{tenant}/oauth2/v2.0/token"
        return await self._post_json("POST", url, data=form)

    async def _managed_identity(self, resource: str, client_id: str) -> dict[str, Any]:
        endpoint, secret = os.environ.get("IDENTITY_ENDPOINT"), os.environ.get("IDENTITY_HEADER")
        if not endpoint or not secret:
            return {"error": "managed_identity_unavailable", "error_description": "IDENTITY_ENDPOINT is not set"}
        params = {"resource": resource, "api-version": _MI_API_VERSION, "client_id": client_id}
        result = await self._post_json("GET", endpoint, params=params, headers={"X-IDENTITY-HEADER": secret})
        if "access_token" in result and "expires_in" not in result:
            expires_on = float(result.get("expires_on") or 0)
            result["expires_in"] = max(0.0, expires_on - time.time()) if expires_on else 3600.0
        if "access_token" not in result and "error" not in result:
            result["error"] = "managed_identity_unavailable"
        return result

    async def _post_json(self, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = await self._client.request(method, url, **kwargs)
        except httpx.TransportError as err:
            return {"error": "transport_error", "error_description": type(err).__name__}
        try:
            body = response.json()
        except ValueError:
            body = None
        result: dict[str, Any] = dict(body) if isinstance(body, dict) else {"error": "malformed_response"}
        if "access_token" not in result:
            result["http_status"] = response.status_code
        return result

    def _check(self, result: dict[str, Any], tenant: str, *, recipient_tenant: bool) -> _Token:
        if "access_token" in result:
            expires_in = float(result.get("expires_in", 3600))
            return _Token(str(result["access_token"]), time.time() + expires_in)
        raise _token_error(result, tenant, self._settings, recipient_tenant=recipient_tenant)


def _token_error(
    result: dict[str, Any],
    tenant: str,
    settings: Settings,
    *,
    recipient_tenant: bool,
) -> NotifyError:
    """Translate a token endpoint error answer. Only codes and AADSTS numbers are used: never the raw body."""
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
    if error in ("transport_error", "temporarily_unavailable") or status == 429 or status >= 500:
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
