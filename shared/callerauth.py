"""Who may call the HTTP API (notify, status, update, recall), and who did.

Two modes, chosen by ``ApiAuthMode``:

- ``FunctionKey`` (the simple mode, the default): the Functions host checks the function key before
  the app runs; every caller holding a key is the same caller, logged as "function key".
- ``EntraId`` (recommended): the functions are anonymous at the host and the app requires an
  ``Authorization: Bearer`` Microsoft Entra ID v2.0 access token, validated here against the app's
  own tenant: RS256 signature by a key of the tenant's JWKS (from its OpenID configuration under
  ``AuthorityHost``), issuer ``{AuthorityHost}/{MicrosoftAppTenantId}/v2.0``, audience ``ApiAudience``
  (or the client id it names), not expired, and the app role ``ApiRequiredRole`` in ``roles``. The
  caller is logged by its client id (``azp``, or ``appid``), plus the user's object id for a
  delegated token (Power Automate's connector signs users in).

Errors have stable codes: 401 ``authentication_required`` (no bearer token), ``invalid_token``
(malformed, bad signature, unknown key, wrong issuer or tenant), ``token_expired``,
``invalid_audience``; 403 ``missing_role``. A token never reaches a log line or a response.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections.abc import Callable
from typing import Any, Literal

import httpx
import msgspec

from shared.errors import AuthenticationError, ConfigurationError, ForbiddenError, TransientError
from shared.settings import Settings

logger = logging.getLogger(__name__)

#: Signing keys are refetched after this long, and at most this often when a token names an unknown key.
KEYS_MAX_AGE = 24 * 3600.0
UNKNOWN_KEY_REFETCH_INTERVAL = 300.0
#: Clock skew tolerated on exp/nbf (seconds).
LEEWAY = 60


class Caller(msgspec.Struct, frozen=True):
    """The authenticated caller of one request, as it appears in the log."""

    kind: Literal["function_key", "entra", "queue"]
    client_id: str | None = None
    user_object_id: str | None = None  # delegated tokens: the signed-in user

    def __str__(self) -> str:
        if self.kind == "function_key":
            return "function key"
        if self.kind == "queue":
            return "Service Bus queue"
        user = f" for user {self.user_object_id}" if self.user_object_id else ""
        return f"Entra client {self.client_id}{user}"


FUNCTION_KEY_CALLER = Caller("function_key")
QUEUE_CALLER = Caller("queue")

# The caller of the request being handled. Set by the entrypoints (shared.service) once the caller is
# authenticated; a notification created by an Entra ID client belongs to it (``owner_id``).
_current: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("caller", default=None)


def act_as(caller: Caller) -> None:
    """Make ``caller`` the caller of the rest of this invocation (each invocation is its own task)."""
    _current.set(caller)


def owner_id() -> str:
    """Who a notification created now belongs to: the Entra client id, or "" (function keys, the queue
    and the operator's command line are one shared identity, as before)."""
    caller = _current.get()
    return caller.client_id or "" if caller is not None and caller.kind == "entra" else ""


def may_access(owner: str) -> bool:
    """Whether the current caller may see and change a notification owned by ``owner``: an Entra ID
    client only its own (or one with no owner); every other caller, all."""
    current = owner_id()
    return not current or not owner or owner.lower() == current.lower()


class CallerAuthenticator:
    """Validates the API's bearer tokens in ``EntraId`` mode (see the module docstring)."""

    def __init__(
        self, settings: Settings, http: httpx.AsyncClient, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._settings = settings
        self._http = http
        self._clock = clock
        self._keys: dict[str, Any] = {}
        # None until the first fetch: time.monotonic() counts from boot, so on a host up for less than
        # the refetch interval any number standing for "never" would look recent.
        self._fetched_at: float | None = None
        self._lock = asyncio.Lock()

    async def authenticate(self, authorization: str | None) -> Caller:
        if self._settings.api_auth_mode == "FunctionKey":
            return FUNCTION_KEY_CALLER
        import jwt  # PyJWT (and cryptography) only where bearer tokens are checked: not on FunctionKey sends

        token = _bearer(authorization)
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise _invalid("The bearer token is not a JWT.") from None
        kid = header.get("kid")
        if header.get("alg") != "RS256" or not isinstance(kid, str):
            raise _invalid("The bearer token is not signed the way Entra ID signs access tokens.")
        key = await self._key(kid)
        if key is None:
            raise _invalid("The bearer token is not signed by a key of this tenant.")
        settings = self._settings
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=["RS256"],
                audience=list(settings.api_audiences),
                issuer=settings.api_issuer,
                leeway=LEEWAY,
                options={"require": ["exp", "iss", "aud"]},
            )
        except jwt.ExpiredSignatureError:
            raise AuthenticationError("The bearer token has expired.", code="token_expired") from None
        except jwt.InvalidAudienceError:
            raise AuthenticationError(
                "The bearer token is not for this API (audience).", code="invalid_audience", target="ApiAudience"
            ) from None
        except jwt.InvalidIssuerError:
            raise _invalid("The bearer token was not issued by this tenant.") from None
        except jwt.InvalidTokenError:
            raise _invalid("The bearer token is not valid.") from None
        if str(claims.get("tid", "")).lower() != settings.tenant_id.lower():
            raise _invalid("The bearer token was not issued by this tenant.")
        client_id = claims.get("azp") or claims.get("appid")
        if not isinstance(client_id, str) or not client_id:
            raise _invalid("The bearer token names no client application.")
        roles = claims.get("roles")
        if not isinstance(roles, list) or settings.api_required_role not in roles:
            logger.info("caller %s refused: app role %s not assigned", client_id, settings.api_required_role)
            raise ForbiddenError(
                f"The caller has not been assigned the app role '{settings.api_required_role}' of this API.",
                code="missing_role",
                target="ApiRequiredRole",
            )
        user = claims.get("oid") if "scp" in claims else None
        return Caller("entra", client_id=client_id, user_object_id=str(user) if user else None)

    def _keys_age(self) -> float | None:
        """Seconds since the keys were fetched; None before the first fetch."""
        return None if self._fetched_at is None else self._clock() - self._fetched_at

    async def _key(self, kid: str) -> Any:
        age = self._keys_age()
        if age is None or age > KEYS_MAX_AGE or (kid not in self._keys and age > UNKNOWN_KEY_REFETCH_INTERVAL):
            async with self._lock:
                age = self._keys_age()  # another task may have fetched them meanwhile
                if age is None or age > UNKNOWN_KEY_REFETCH_INTERVAL:
                    self._keys = await self._fetch_keys()
                    self._fetched_at = self._clock()
        return self._keys.get(kid)

    async def _fetch_keys(self) -> dict[str, Any]:
        settings = self._settings
        metadata_url = f"{settings.authority_host}/{settings.tenant_id}/v2.0/.well-known/openid-configuration"
        try:
            metadata = await self._get_json(metadata_url)
            if metadata.get("issuer") != settings.api_issuer or not isinstance(metadata.get("jwks_uri"), str):
                raise ConfigurationError(
                    "The tenant's OpenID configuration does not match MicrosoftAppTenantId / AuthorityHost.",
                    code="api_auth_metadata_invalid",
                    target="AuthorityHost",
                )
            jwks = await self._get_json(str(metadata["jwks_uri"]))
        except httpx.HTTPError as err:
            raise TransientError(
                "The tenant's token signing keys could not be fetched.", code="signing_keys_unavailable"
            ) from err
        import jwt

        keys: dict[str, Any] = {}
        for entry in jwks.get("keys", []) if isinstance(jwks.get("keys"), list) else []:
            if not isinstance(entry, dict) or entry.get("kty") != "RSA" or entry.get("use", "sig") != "sig":
                continue
            try:
                keys[str(entry["kid"])] = jwt.PyJWK(entry, algorithm="RS256").key
            except (jwt.PyJWKError, KeyError):
                continue
        logger.info("fetched %d token signing keys of the API's tenant", len(keys))
        return keys

    async def _get_json(self, url: str) -> dict[str, Any]:
        response = await self._http.get(url)
        if response.status_code != 200:
            raise TransientError(
                f"The tenant's signing key metadata answered {response.status_code}.", code="signing_keys_unavailable"
            )
        try:
            payload = response.json()
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            raise TransientError("The tenant's signing key metadata is not JSON.", code="signing_keys_unavailable")
        return payload


def _bearer(authorization: str | None) -> str:
    scheme, _, token = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError(
            "This API requires an Entra ID access token: Authorization: Bearer <token>.",
            code="authentication_required",
            target="Authorization",
        )
    return token.strip()


def _invalid(message: str) -> AuthenticationError:
    return AuthenticationError(message, code="invalid_token", target="Authorization")
