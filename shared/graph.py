"""Microsoft Graph helpers: is our Teams app installed for a user, install it, and its 1:1 chat.

Requests and answers follow the Graph v1.0 reference (userTeamwork: list and add installedApps, get chat).
Path segments are URL-encoded (guest UPNs contain '#EXT#'), OData string literals are quoted by doubling
single quotes. Graph errors are translated here: unknown user -> RecipientError, missing application
permission -> ConfigurationError naming the permission, throttling and 5xx -> retried, then TransientError.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import quote

import httpx
import msgspec

from shared.errors import ConfigurationError, NotifyError, RecipientError, TransientError, UpstreamError
from shared.http import DEFAULT_RETRY_STATUSES, BearerAuth, RetryPolicy, request_with_retry
from shared.settings import Settings
from shared.throttle import Gate, Throttle
from shared.tokens import GRAPH_SCOPE, TokenProvider

logger = logging.getLogger(__name__)

INSTALL_PERMISSION = "TeamsAppInstallation.ReadWriteSelfForUser.All"
CATALOG_PERMISSION = "AppCatalog.Read.All"
# Graph answers 500 for some transient faults too; GETs and the install are safe to repeat.
_GRAPH_RETRY = DEFAULT_RETRY_STATUSES | {500}
# Right after an install the installation's chat may be missing for longer than one request's retries
# (reports: tens of seconds to minutes): a 404 there means "not reachable yet", never "not found".
_CHAT_RETRY = _GRAPH_RETRY | {404}


def odata_quote(value: str) -> str:
    """An OData string literal: single quotes doubled, then wrapped in quotes."""
    return "'" + value.replace("'", "''") + "'"


def path_segment(value: str) -> str:
    """One URL path segment. ``.`` and ``..`` are percent-encoded too: left as they are, URL
    normalisation (httpx's, RFC 3986 section 5.2.4) would remove them and rewrite the path."""
    segment = quote(value, safe="")
    return segment.replace(".", "%2E") if segment in (".", "..") else segment


class Installation(msgspec.Struct, frozen=True):
    installation_id: str
    catalog_id: str


class GraphClient:
    def __init__(
        self,
        settings: Settings,
        client: httpx.AsyncClient,
        tokens: TokenProvider,
        policy: RetryPolicy,
        throttle: Throttle | None = None,
    ) -> None:
        self._settings = settings
        self._client = client
        self._tokens = tokens
        self._policy = policy
        self._throttle = throttle
        self._base = settings.graph_base
        self._catalog_ids: dict[str, str] = {}

    async def find_installation(self, tenant_id: str, user: str) -> Installation | None:
        """GET /users/{id}/teamwork/installedApps: our app's installation for the user, or None."""
        response = await self._call(
            tenant_id,
            "GET",
            f"/users/{path_segment(user)}/teamwork/installedApps",
            params={
                "$expand": "teamsApp",
                "$filter": f"teamsApp/externalId eq {odata_quote(self._settings.teams_app_id)}",
            },
            permission=INSTALL_PERMISSION,
        )
        for item in _values(response):
            app = item.get("teamsApp") or {}
            if str(app.get("externalId", "")).lower() == self._settings.teams_app_id.lower():
                return Installation(installation_id=str(item["id"]), catalog_id=str(app.get("id", "")))
        return None

    async def catalog_app_id(self, tenant_id: str) -> str:
        """GET /appCatalogs/teamsApps: the org catalog id of TeamsAppId (memoised per tenant)."""
        cached = self._catalog_ids.get(tenant_id)
        if cached is not None:
            return cached
        response = await self._call(
            tenant_id,
            "GET",
            "/appCatalogs/teamsApps",
            params={
                "$filter": "distributionMethod eq 'organization' and externalId eq "
                + odata_quote(self._settings.teams_app_id)
            },
            permission=CATALOG_PERMISSION,
        )
        values = _values(response)
        if not values:
            raise ConfigurationError(
                f"The Teams app TeamsAppId={self._settings.teams_app_id} is not in the organization's app "
                f"catalog of tenant {tenant_id}: upload the app package (appPackage/) in the Teams admin center.",
                code="app_not_in_catalog",
                target="TeamsAppId",
            )
        catalog_id = str(values[0]["id"])
        self._catalog_ids[tenant_id] = catalog_id
        return catalog_id

    async def install(self, tenant_id: str, user: str) -> None:
        """POST /users/{id}/teamwork/installedApps: install our app for the user from the org catalog; 409
        Conflict means it already is. The catalog id is memoised; when the install rejects it (the app was
        re-uploaded and got a new id), it is looked up again once."""
        for attempt in (1, 2):
            catalog_id = await self.catalog_app_id(tenant_id)
            response = await self._call(
                tenant_id,
                "POST",
                f"/users/{path_segment(user)}/teamwork/installedApps",
                json={"teamsApp@odata.bind": f"{self._base}/appCatalogs/teamsApps/{path_segment(catalog_id)}"},
                permission=INSTALL_PERMISSION,
                accept=(201, 200, 204, 400, 404, 409),
            )
            if response.status_code in (400, 404):
                self._catalog_ids.pop(tenant_id, None)
                if attempt == 1:
                    logger.info("the install rejected the memoised catalog id; looking it up again")
                    continue
                raise ConfigurationError(
                    f"Graph refused to install the Teams app TeamsAppId={self._settings.teams_app_id} from the "
                    "org catalog: check the app package in the Teams admin center.",
                    code="app_not_installable",
                    target="TeamsAppId",
                )
            if response.status_code == 409:
                logger.info("app already installed for the recipient (409)")
            return

    async def installation_chat(self, tenant_id: str, user: str, installation_id: str, *, just_installed: bool) -> str:
        """GET /users/{id}/teamwork/installedApps/{installationId}/chat: the 1:1 chat between the user and
        the bot. The installation exists (we just listed it), so a chat still missing after the inline
        retries is transient whether we installed the app now or an earlier attempt did:
        ``conversation_unavailable`` (503 with Retry-After, a Service Bus redelivery), never
        ``recipient_not_found``."""
        try:
            response = await self._call(
                tenant_id,
                "GET",
                f"/users/{path_segment(user)}/teamwork/installedApps/{path_segment(installation_id)}/chat",
                permission=INSTALL_PERMISSION,
                retry_statuses=_CHAT_RETRY,
            )
        except TransientError as err:
            if "answered 404" not in err.message:
                raise
            raise TransientError(
                "The recipient's chat with the bot does not exist yet: Teams creates it after the app is installed, "
                "which can take minutes for users who have not opened Teams recently.",
                code="conversation_unavailable",
                target="recipient",
                retry_after=max(err.retry_after, self._policy.max_delay),
            ) from err
        body = _json(response)
        chat_id = body.get("id") if isinstance(body, dict) else None
        if not isinstance(chat_id, str) or not chat_id:
            raise UpstreamError(
                "Graph returned an installation chat without an id.", code="upstream_error", target="graph"
            )
        return chat_id

    async def _call(
        self,
        tenant_id: str,
        method: str,
        path: str,
        *,
        permission: str,
        params: dict[str, str] | None = None,
        json: Any = None,
        accept: tuple[int, ...] = (200,),
        retry_statuses: frozenset[int] = _GRAPH_RETRY,
    ) -> httpx.Response:
        gate = Gate(self._throttle, "graph", tenant_id) if self._throttle is not None else None
        auth = BearerAuth(
            lambda: self._tokens.graph_token(tenant_id), lambda: self._tokens.forget(tenant_id, GRAPH_SCOPE)
        )
        response = await request_with_retry(
            self._client,
            method,
            self._base + path,
            policy=self._policy,
            service="graph",
            retry_statuses=retry_statuses,
            params=params,
            json=json,
            gate=gate,
            auth=auth,
        )
        if response.status_code in accept:
            return response
        raise _graph_error(response, permission)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError as err:
        raise TransientError(
            f"Graph returned a malformed body (HTTP {response.status_code}).", target="graph", retry_after=5.0
        ) from err


def _values(response: httpx.Response) -> list[dict[str, Any]]:
    body = _json(response)
    values = body.get("value") if isinstance(body, dict) else None
    if not isinstance(values, list):
        raise TransientError("Graph returned a collection without 'value'.", target="graph", retry_after=5.0)
    return [v for v in values if isinstance(v, dict)]


def _blocked_by_policy(message: str, response: httpx.Response) -> bool:
    """Graph's 403 "App is blocked by app permission policy" (innerError code AccessDenied), told
    apart from a missing role ("Missing role permissions on the request") by what Graph says."""
    if "Missing role permissions" in message:
        return False
    if "permission policy" in message.lower():
        return True
    try:
        inner = response.json()["error"].get("innerError") or {}
    except (ValueError, KeyError, TypeError, AttributeError):
        return False
    return isinstance(inner, dict) and str(inner.get("code", "")) == "AccessDenied"


def _graph_error(response: httpx.Response, permission: str) -> NotifyError:
    status = response.status_code
    code, message = "", ""
    try:
        error = response.json().get("error", {})
        code, message = str(error.get("code", "")), str(error.get("message", ""))
    except (ValueError, AttributeError):
        pass
    if status == 404 or code in {"NotFound", "Request_ResourceNotFound", "ResourceNotFound"}:
        return RecipientError(
            "The recipient was not found in the tenant (check the UPN or object id, and tenantId).",
            code="recipient_not_found",
            target="recipient",
        )
    if status == 403 and _blocked_by_policy(message, response):
        # A Teams app permission policy keeps this user from the app: theirs, permanent, not our
        # consent: 403 Forbidden "App is blocked by app permission policy", innerError AccessDenied.
        # Graph's 403 for a missing role says "Missing role permissions".
        return RecipientError(
            f"A Teams app permission policy blocks this app for the recipient (Graph: {message[:200]}): a Teams "
            "administrator must allow the app for them.",
            code="app_blocked_by_policy",
            target="recipient",
            http_status=403,
        )
    if status == 403:
        needed = permission
        if (
            "Missing role permissions" in message
            and CATALOG_PERMISSION in message
            and INSTALL_PERMISSION not in message
        ):
            needed = CATALOG_PERMISSION
        return ConfigurationError(
            f"The app lacks the Microsoft Graph application permission {needed} (admin consent required) "
            "in the recipient's tenant.",
            code="missing_permission",
            target=needed,
        )
    if status == 401:
        return ConfigurationError(
            "Graph rejected the app token: check MicrosoftAppId and that the app is consented in the tenant.",
            code="graph_unauthorized",
            target="MicrosoftAppId",
        )
    if status == 400:
        return RecipientError(
            f"Graph rejected the recipient ({code or 'BadRequest'}): give a UPN or an Entra object id.",
            code="invalid_recipient",
            target="recipient",
            http_status=400,
        )
    return UpstreamError(f"Graph answered {status} ({code or 'no code'}).", code="upstream_error", target="graph")
