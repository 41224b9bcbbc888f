"""azure-core adapters over our own HTTP stack, for the Table Storage clients (azure-data-tables).

- ``HttpxTransport``: an ``azure.core.pipeline.transport.AsyncHttpTransport`` that sends through the
  process's shared ``httpx.AsyncClient``. azure-core's default async transport is aiohttp, which costs
  a first send about half a second of imports for a second HTTP stack; with this one the Table
  clients' requests go through the same client (and connection pool) as Graph and the Bot Connector.
  Everything above the transport is azure-core's own pipeline: retries (the Tables retry policy),
  authentication, redirects, logging.
- ``ManagedIdentityCredential``: an ``azure.core.credentials_async.AsyncTokenCredential`` for
  identity-based storage (``AzureWebJobsStorage__credential=managedidentity``), backed by MSAL's
  managed identity support (``msal.ManagedIdentityClient``), which the app token already uses; its
  HTTP also goes through the shared client.

This module is imported only where a Table client is built (``shared.bootstrap.table_service``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import httpx
from azure.core.configuration import ConnectionConfiguration
from azure.core.credentials import AccessToken, AccessTokenInfo, TokenRequestOptions
from azure.core.exceptions import (
    ClientAuthenticationError,
    IncompleteReadError,
    ServiceRequestError,
    ServiceRequestTimeoutError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)
from azure.core.pipeline.transport import AsyncHttpTransport
from azure.core.rest import HttpRequest as RestHttpRequest
from azure.core.rest._http_response_impl_async import AsyncHttpResponseImpl

from shared.tokens import _MsalHttpBridge


def _service_error(err: httpx.HTTPError, *, reading_body: bool = False) -> Exception:
    """azure-core's error for an httpx failure, as its aiohttp transport maps aiohttp's.

    ``ServiceRequestError``: the request never reached the service (connect failed or timed out, no
    pooled connection became free); azure-core's retry policy retries these for every method.
    ``ServiceResponseError``: the request may have been received (the connection broke or timed out
    after it was written); retried only for idempotent methods, so a create is never replayed blind.
    """
    if isinstance(err, httpx.ConnectTimeout | httpx.PoolTimeout):
        return ServiceRequestTimeoutError(err, error=err)
    if isinstance(err, httpx.ConnectError | httpx.UnsupportedProtocol | httpx.ProxyError):
        return ServiceRequestError(err, error=err)
    if isinstance(err, httpx.TimeoutException):  # read or write timeout: the request may be in flight
        return ServiceResponseTimeoutError(err, error=err)
    if reading_body and isinstance(err, httpx.RemoteProtocolError | httpx.ReadError):
        return IncompleteReadError(err, error=err)  # the body ended early (retried as a response error)
    if isinstance(err, httpx.DecodingError):
        return ServiceResponseError(err, error=err)
    if isinstance(err, httpx.TransportError):
        return ServiceResponseError(err, error=err)
    return ServiceRequestError(err, error=err)


def _as_signed(url: str) -> str:
    """The URL as the Tables SDK signed it. With an async transport, its shared-key signature covers
    the path as yarl normalizes it (``_authentication.SharedKeyCredentialPolicy``: aiohttp, the
    default transport, sends that form: ``%40`` in a row key goes out as ``@``); so we send that form
    too. Without yarl the SDK signs the path as given, and so it is sent as given."""
    try:
        from yarl import URL  # imported by azure-data-tables itself when present
    except ImportError:
        return url
    return str(URL(url))


async def _stream_download(pipeline: Any, response: HttpxTransportResponse, **kwargs: Any) -> AsyncIterator[bytes]:
    """The body in blocks: decoded (Content-Encoding undone by httpx) unless ``decompress=False``."""
    internal = response._internal_response
    decompress = kwargs.pop("decompress", True)
    if kwargs:
        raise TypeError(f"Got an unexpected keyword argument: {next(iter(kwargs))}")
    blocks = internal.aiter_bytes(response._block_size) if decompress else internal.aiter_raw(response._block_size)
    try:
        async for block in blocks:
            yield block
    except httpx.HTTPError as err:
        await response.close()
        raise _service_error(err, reading_body=True) from err


class HttpxTransportResponse(AsyncHttpResponseImpl):
    """An ``azure.core.rest.AsyncHttpResponse`` over an httpx response opened as a stream."""

    def __init__(self, *, request: RestHttpRequest, internal_response: httpx.Response, block_size: int) -> None:
        super().__init__(
            request=request,
            internal_response=internal_response,
            block_size=block_size,
            status_code=internal_response.status_code,
            reason=internal_response.reason_phrase,
            content_type=internal_response.headers.get("content-type"),
            headers=internal_response.headers,
            stream_download_generator=_stream_download,
        )

    def body(self) -> bytes:
        """The body, already read (azure-core's deprecated sync accessor, which it still uses to split a
        batch answer into its parts; the base class would call the async ``read`` without awaiting it)."""
        content: bytes = self.content
        return content

    async def close(self) -> None:
        if not self.is_closed:
            self._is_closed = True
            await self._internal_response.aclose()


class HttpxTransport(AsyncHttpTransport[RestHttpRequest, HttpxTransportResponse]):
    """Sends azure-core requests with a shared ``httpx.AsyncClient`` (which this transport does not
    close: its owner does). Keyword arguments are azure-core's connection configuration
    (``connection_timeout``, ``read_timeout``, ``connection_data_block_size``), with its defaults;
    per-call ``connection_timeout`` / ``read_timeout`` override them, as with the default transport.
    TLS verification and proxies are the client's (httpx honours SSL_CERT_FILE and the proxy
    environment variables): a per-call ``connection_verify``, ``connection_cert`` or ``proxies`` that
    asks for something else is refused rather than ignored."""

    def __init__(self, client: httpx.AsyncClient, **kwargs: Any) -> None:
        self._client = client
        self.connection_config = ConnectionConfiguration(**kwargs)

    async def __aenter__(self) -> HttpxTransport:
        await self.open()
        return self

    async def __aexit__(self, *args: Any) -> None:
        await self.close()

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None  # the shared client outlives the Table clients

    async def sleep(self, duration: float) -> None:
        await asyncio.sleep(duration)

    async def send(
        self,
        request: RestHttpRequest,
        *,
        stream: bool = False,
        proxies: MutableMapping[str, str] | None = None,
        **config: Any,
    ) -> HttpxTransportResponse:
        if not isinstance(request, RestHttpRequest):
            raise TypeError("HttpxTransport sends azure.core.rest.HttpRequest only (the Tables SDK's requests)")
        if proxies:
            raise ValueError("HttpxTransport uses the httpx client's proxy settings (HTTPS_PROXY)")
        if config.pop("connection_verify", True) is not True or config.pop("connection_cert", None) is not None:
            raise ValueError("HttpxTransport uses the httpx client's TLS settings (SSL_CERT_FILE)")
        if request.files:
            raise ValueError("HttpxTransport does not send multipart/form-data file uploads")
        connect = config.pop("connection_timeout", self.connection_config.timeout)
        read = config.pop("read_timeout", self.connection_config.read_timeout)
        timeout = httpx.Timeout(connect=connect, read=read, write=read, pool=connect)
        body = request.data
        if hasattr(body, "__aiter__") or isinstance(body, dict):
            raise ValueError("HttpxTransport sends bytes or str bodies (what the Tables SDK builds)")
        internal = self._client.build_request(
            request.method, _as_signed(request.url), headers=dict(request.headers), content=body, timeout=timeout
        )
        try:
            result = await self._client.send(internal, stream=True, follow_redirects=False)
        except httpx.HTTPError as err:
            raise _service_error(err) from err
        response = HttpxTransportResponse(
            request=request, internal_response=result, block_size=self.connection_config.data_block_size
        )
        if not stream:
            try:
                await response.read()
            finally:
                await response.close()
        return response


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
