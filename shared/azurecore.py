"""An azure-core credential over MSAL, for the Table Storage clients (azure-data-tables):
``ManagedIdentityCredential``, an ``azure.core.credentials_async.AsyncTokenCredential`` for
identity-based storage (``AzureWebJobsStorage__credential=managedidentity``), backed by MSAL's managed
identity support (``msal.ManagedIdentityClient``), which the app token already uses (azure-identity,
about 0.5 s of imports, is then not needed by a send); its HTTP goes through the shared httpx client.

This module is imported only where a Table client is built (``shared.bootstrap.table_service``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from azure.core.credentials import AccessToken, AccessTokenInfo, TokenRequestOptions
from azure.core.exceptions import (
    ClientAuthenticationError,
    ServiceRequestError,
)

from shared.tokens import _MsalHttpBridge


class ManagedIdentityCredential:
    """An ``AsyncTokenCredential`` (``get_token``, ``get_token_info``, ``close``) from MSAL's managed
    identity client: the app's system-assigned identity, or the user-assigned one ``client_id``
    (``AzureWebJobsStorage__clientId``). MSAL finds the endpoint as azure-identity does (App Service /
    Functions: IDENTITY_ENDPOINT and IDENTITY_HEADER; elsewhere IMDS), caches the token and refreshes
    it before it expires. MSAL is synchronous: it runs in a worker thread, its HTTP on our client.

    Failures: an endpoint that cannot be reached or answers 429/5xx is ``ServiceRequestError``
    (transient); any other refusal (no such identity, ...) is ``ClientAuthenticationError``. Neither
    carries the endpoint's answer (it may echo a token)."""

    def __init__(self, client: httpx.AsyncClient, *, client_id: str | None = None, timeout: float = 30.0) -> None:
        self._client = client
        self._client_id = client_id
        self._timeout = timeout
        self._msal: Any = None
        self._bridge: _MsalHttpBridge | None = None

    async def __aenter__(self) -> ManagedIdentityCredential:
        return self

    async def __aexit__(self, *args: Any) -> None:
        await self.close()

    async def close(self) -> None:
        return None  # the shared client outlives the credential

    async def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        info = await self.get_token_info(*scopes)
        return AccessToken(info.token, info.expires_on)

    async def get_token_info(self, *scopes: str, options: TokenRequestOptions | None = None) -> AccessTokenInfo:
        if len(scopes) != 1:
            raise ValueError("A managed identity token is for exactly one scope")
        if self._bridge is None:
            self._bridge = _MsalHttpBridge(self._client, asyncio.get_running_loop(), self._timeout)
        resource = scopes[0].removesuffix("/.default")
        bridge = self._bridge
        result = await asyncio.to_thread(self._acquire, resource, bridge)
        if "access_token" not in result:
            status = result.get("http_status") or 0
            message = f"The managed identity could not get a token for {resource} ({result.get('error', 'error')})"
            if result.get("error") == "transport_error" or status == 429 or status >= 500:
                raise ServiceRequestError(message)
            raise ClientAuthenticationError(message)
        now = int(time.time())
        expires_on = now + int(result.get("expires_in", 0))
        refresh_in = result.get("refresh_in")
        return AccessTokenInfo(
            str(result["access_token"]),
            expires_on,
            token_type=str(result.get("token_type", "Bearer")),
            refresh_on=now + int(refresh_in) if refresh_in else None,
        )

    # --- runs in a worker thread -------------------------------------------------------------
    def _acquire(self, resource: str, bridge: _MsalHttpBridge) -> dict[str, Any]:
        import msal

        if self._msal is None:
            identity = (
                msal.UserAssignedManagedIdentity(client_id=self._client_id)
                if self._client_id
                else msal.SystemAssignedManagedIdentity()
            )
            self._msal = msal.ManagedIdentityClient(identity, http_client=bridge)
        try:
            result = dict(self._msal.acquire_token_for_client(resource=resource))
        except httpx.TransportError as err:
            return {"error": "transport_error", "error_description": type(err).__name__}
        except ValueError:  # the endpoint's answer was not JSON (MSAL raises JSONDecodeError)
            return {"error": "invalid_response", "http_status": bridge.last_status}
        if "access_token" not in result:
            result["http_status"] = bridge.last_status
        return result
