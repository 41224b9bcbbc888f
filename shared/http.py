"""Outbound HTTP: the one shared httpx.AsyncClient and the retry loop every upstream call goes through.

Transient answers (429, listed 5xx, timeouts, connection errors) are retried with bounded exponential
backoff and full jitter, honouring Retry-After. When attempts run out, or the service asks us to wait
longer than we are allowed to wait inline, a ``TransientError`` carrying ``retry_after`` is raised so
the trigger can answer 503 / let Service Bus redeliver. Every other answer is returned to the caller,
which knows what its status codes mean.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import random
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import httpx
import msgspec

from shared.errors import TransientError
from shared.settings import Settings

if TYPE_CHECKING:
    from shared.throttle import Gate

logger = logging.getLogger(__name__)

DEFAULT_RETRY_STATUSES = frozenset({429, 502, 503, 504})
# For a request that is not idempotent (sending a message), answers after which the request may
# already have taken effect: a gateway error or a timeout once the request was written.
_UNCONFIRMED_STATUSES = frozenset({502, 504})


class _NoCookies(httpx.Cookies):
    """An always-empty cookie jar: no upstream of ours (Entra, Graph, the Bot Connector) uses cookies,
    and httpx's cookie handling (wrapping every response for http.cookiejar) costs ~7% of a warm send."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None

    def __bool__(self) -> bool:
        return False


class CookielessClient(httpx.AsyncClient):
    """httpx.AsyncClient without cookie handling (see ``_NoCookies``)."""

    _NONE = _NoCookies()

    @property
    def cookies(self) -> httpx.Cookies:
        return self._NONE

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        raise TypeError("this client keeps no cookies")


def build_http_client(settings: Settings) -> httpx.AsyncClient:
    """The process-wide client. Trusts SSL_CERT_FILE (httpx's trust_env) for a private CA."""
    return CookielessClient(
        timeout=httpx.Timeout(settings.http_timeout),
        limits=httpx.Limits(max_connections=200, max_keepalive_connections=50, keepalive_expiry=60),
        follow_redirects=False,
        headers={"User-Agent": "teams-proactive-notify/1.0"},
    )


class RetryPolicy(msgspec.Struct, frozen=True):
    max_attempts: int = 4
    max_delay: float = 30.0
    base_delay: float = 0.5

    @classmethod
    def from_settings(cls, settings: Settings) -> RetryPolicy:
        return cls(max_attempts=settings.retry_max_attempts, max_delay=settings.retry_max_delay)

    def backoff(self, attempt: int) -> float:
        """Full-jitter exponential backoff for the attempt that just failed (1-based)."""
        ceiling = min(self.max_delay, self.base_delay * (2 ** (attempt - 1)))
        return random.uniform(ceiling / 2, ceiling)


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Parse Retry-After: delta-seconds (fractions accepted) or an HTTP date."""
    raw = headers.get("retry-after")
    if not raw:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.datetime.now(datetime.UTC)).total_seconds())


class BearerAuth(httpx.Auth):
    """The app token as ``Authorization: Bearer``, for Graph and the Bot Connector alike. A 401 (a token
    revoked or expired early) makes it ``forget`` the token and send once more with a fresh one."""

    def __init__(self, token: Callable[[], Awaitable[str]], forget: Callable[[], None]) -> None:
        self._token = token
        self._forget = forget

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        request.headers["Authorization"] = f"Bearer {await self._token()}"
        response = yield request
        if response.status_code == 401:
            self._forget()
            request.headers["Authorization"] = f"Bearer {await self._token()}"
            yield request


async def request_with_retry(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    *,
    policy: RetryPolicy,
    service: str,
    retry_statuses: frozenset[int] = DEFAULT_RETRY_STATUSES,
    headers: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
    json: Any = None,
    content: bytes | None = None,
    idempotent: bool = True,
    gate: Gate | None = None,
    auth: httpx.Auth | None = None,
) -> httpx.Response:
    """Send one request, retrying transient failures. ``service`` names the upstream in errors/logs.

    ``idempotent=False`` (a message send) retries only what certainly did not take effect (429, 412,
    503, a connection never made); after a timeout on the response or a 502/504 the outcome is
    unknown, and a ``TransientError`` with code ``delivery_unconfirmed`` is raised at once instead of
    sending again.

    ``gate`` (shared.throttle) is awaited before every attempt and told about every 429, so one
    throttled request pauses the tenant's other requests in this process too.
    """
    attempt = 0
    while True:
        attempt += 1
        wait: float | None
        if gate is not None:
            await gate.before()
        try:
            response = await client.request(
                method, url, headers=headers, params=params, json=json, content=content, auth=auth
            )
        except (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout) as err:
            reason, wait = f"{service} could not be reached ({type(err).__name__})", None
            last_err: BaseException | None = err
            status: int | None = None
        except httpx.TransportError as err:
            if not idempotent:
                raise _unconfirmed(service) from err
            reason, wait = f"{service} failed ({type(err).__name__})", None
            last_err = err
            status = None
        else:
            if response.status_code not in retry_statuses:
                return response
            if not idempotent and response.status_code in _UNCONFIRMED_STATUSES:
                raise _unconfirmed(service)
            wait = retry_after_seconds(response.headers)
            if response.status_code == 429 and gate is not None:
                gate.throttled(wait if wait is not None else policy.backoff(attempt))
            reason = f"{service} answered {response.status_code}"
            last_err = None
            status = response.status_code
        delay = policy.backoff(attempt) if wait is None else wait
        if attempt >= policy.max_attempts or delay > policy.max_delay:
            logger.warning("giving up on %s %s after %d attempt(s): %s", method, service, attempt, reason)
            error = TransientError(
                f"{reason}; try again later.",
                code="upstream_unavailable",
                target=service,
                retry_after=max(1.0, delay if wait is not None else policy.backoff(attempt)),
            )
            if last_err is not None:
                raise error from last_err
            raise error
        # The extra fields let a caller show the wait (the command line's "waiting 12 s" line).
        logger.info(
            "retrying %s %s in %.2fs (attempt %d): %s",
            method,
            service,
            delay,
            attempt,
            reason,
            extra={"wait_seconds": delay, "wait_service": service, "wait_status": status},
        )
        await (gate.sleep(delay) if gate is not None else asyncio.sleep(delay))


def _unconfirmed(service: str) -> TransientError:
    return TransientError(
        f"{service} did not confirm the send; it may or may not have been delivered.",
        code="delivery_unconfirmed",
        target=service,
        retry_after=60.0,
    )
