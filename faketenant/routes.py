"""Protocol logic of the fake: Entra login, managed identity, Graph v1.0, Bot Connector,
Bot Framework OpenID metadata and the ``/_fake`` control endpoints.

Transport-independent: :func:`dispatch` takes a parsed :class:`Request` and returns a
:class:`Response`; :mod:`faketenant.server` does the HTTP.
"""

from __future__ import annotations

import html
import json
import logging
import re
import time
import urllib.parse
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from .state import (
    BOT_AUDIENCE,
    BOTFRAMEWORK_TENANT_ID,
    GLOBAL_SERVICE_PREFIX,
    GRAPH_AUDIENCE,
    MEMBERS_LIMITS,
    REGIONS,
    ROLE_CATALOG,
    ROLE_INSTALL,
    SEND_LIMITS,
    STORAGE_AUDIENCE,
    TOKEN_EXCHANGE_AUDIENCE,
    Conversation,
    FakeTenant,
    FakeUser,
    IssuedToken,
    LoggedRequest,
    message_utf16_bytes,
)

logger = logging.getLogger("faketenant.routes")

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
INSTALL_ROLES = (
    ROLE_INSTALL,
    "TeamsAppInstallation.ReadWriteForUser.All",
    "TeamsAppInstallation.ReadWriteAndConsentSelfForUser.All",
    "TeamsAppInstallation.ReadWriteAndConsentForUser.All",
)
LIST_ROLES = (*INSTALL_ROLES, "TeamsAppInstallation.ReadForUser.All")
CATALOG_ROLES = (ROLE_CATALOG, "AppCatalog.ReadWrite.All")
_EXTERNAL_ID_RE = re.compile(r"externalId\s+eq\s+'((?:[^']|'')*)'", re.IGNORECASE)
_DISTRIBUTION_RE = re.compile(r"distributionMethod\s+eq\s+'((?:[^']|'')*)'", re.IGNORECASE)


@dataclass
class Request:
    """A parsed HTTP request."""

    method: str
    path: str  # raw path without query
    query_string: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    segments: list[str] = field(default_factory=list)  # URL-decoded path segments
    query: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, method: str, target: str, headers: dict[str, str], body: bytes) -> Request:
        """Build from the request line target and headers."""
        split = urllib.parse.urlsplit(target)
        segments = [urllib.parse.unquote(s) for s in split.path.split("/") if s != ""]
        query = {k: v for k, v in urllib.parse.parse_qsl(split.query, keep_blank_values=True)}
        return cls(method.upper(), split.path, split.query, headers, body, segments, query)

    def json(self) -> Any:
        """The body as JSON (raises ValueError)."""
        return json.loads(self.body.decode("utf-8") or "null")

    def form(self) -> dict[str, str]:
        """The body as an urlencoded form."""
        return dict(urllib.parse.parse_qsl(self.body.decode("utf-8"), keep_blank_values=True))

    def bearer(self) -> str | None:
        """The Bearer token from the Authorization header, if any."""
        auth = self.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        return token.strip() if scheme.lower() == "bearer" and token.strip() else None


@dataclass
class Response:
    """An HTTP response to write."""

    status: int
    body: bytes = b""
    content_type: str | None = "application/json; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    tenant_id: str | None = None  # for the log


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    """A JSON response."""
    return Response(status, json.dumps(payload).encode("utf-8"), headers=dict(headers or {}))


def empty(status: int) -> Response:
    """A response without body."""
    return Response(status, b"", content_type=None)


def _now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _fmt_seconds(value: float) -> str:
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.3f}".rstrip("0").rstrip(".")


# ---------------------------------------------------------------------------- error shapes
def aad_error(status: int, error: str, code: int, description: str) -> Response:
    """An Entra token-endpoint error."""
    trace, corr = str(uuid.uuid4()), str(uuid.uuid4())
    ts = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return json_response(
        status,
        {
            "error": error,
            "error_description": f"AADSTS{code}: {description} Trace ID: {trace} "
            f"Correlation ID: {corr} Timestamp: {ts}",
            "error_codes": [code],
            "timestamp": ts,
            "trace_id": trace,
            "correlation_id": corr,
        },
    )


def graph_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """A Graph error: ``{"error":{"code","message","innerError"}}``."""
    rid = str(uuid.uuid4())
    return json_response(
        status,
        {
            "error": {
                "code": code,
                "message": message,
                "innerError": {"date": _now_iso(), "request-id": rid, "client-request-id": rid},
            }
        },
        {"request-id": rid, **(headers or {})},
    )


def connector_error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    """A Bot Connector error with the X-Correlating-OperationId header."""
    return json_response(
        status,
        {"error": {"code": code, "message": message}},
        {"X-Correlating-OperationId": uuid.uuid4().hex, **(headers or {})},
    )


# ---------------------------------------------------------------------------- routing
def route_of(req: Request) -> str | None:
    """The route name of a request (None for unknown; "control" for /_fake)."""
    s, m = req.segments, req.method
    n = len(s)
    if n >= 1 and s[0] == "_fake":
        return "control"
    if m == "GET" and s == ["common", "discovery", "instance"]:
        return "instance_discovery"
    if m == "GET" and n == 4 and s[1:] == ["v2.0", ".well-known", "openid-configuration"]:
        return "openid"
    if m == "POST" and n == 4 and s[1:] == ["oauth2", "v2.0", "token"]:
        return "token"
    if m == "GET" and n == 4 and s[1:] == ["discovery", "v2.0", "keys"]:
        return "jwks"
    if m == "GET" and s == ["msi", "token"]:
        return "msi"
    if m == "GET" and s == ["botframework", "v1", ".well-known", "openidconfiguration"]:
        return "botframework.openid"
    if m == "GET" and s == ["botframework", "keys"]:
        return "botframework.jwks"
    if n >= 1 and s[0] == "v1.0":
        if n == 5 and s[1] == "users" and s[3:] == ["teamwork", "installedApps"]:
            return {"GET": "graph.installed_apps", "POST": "graph.install"}.get(m)
        if m == "GET" and n == 7 and s[1] == "users" and s[3:5] == ["teamwork", "installedApps"] and s[6] == "chat":
            return "graph.chat"
        if m == "GET" and s[1:] == ["appCatalogs", "teamsApps"]:
            return "graph.catalog"
        return None
    if n >= 3 and (s[0] == GLOBAL_SERVICE_PREFIX or s[0] in REGIONS) and s[1] == "v3" and s[2] == "conversations":
        if m == "POST" and n == 3:
            return "connector.create"
        if m == "GET" and n == 5 and s[4] == "members":
            return "connector.members"
        if n >= 5 and s[4] == "activities":
            if m == "POST" and n in (5, 6):
                return "connector.send"
            if n == 6:
                return {"PUT": "connector.update", "DELETE": "connector.delete"}.get(m)
    return None


def dispatch(tenant: FakeTenant, req: Request) -> Response:
    """Answer a request against ``tenant``; faults and logging are handled by the caller."""
    route = route_of(req)
    handler = _HANDLERS.get(route or "")
    if handler is None:
        return graph_error(404, "NotFound", f"No route for {req.method} {req.path}")
    return handler(tenant, req)


def fault_response(
    route: str, fault_status: int, body: dict[str, Any] | str | None, retry_after: float | None, malformed: bool
) -> Response:
    """The response for an injected fault."""
    headers: dict[str, str] = {}
    if retry_after is not None:
        headers["Retry-After"] = _fmt_seconds(retry_after)
    if malformed:
        return Response(200, b"<html>not json{", content_type="application/json", headers=headers)
    if isinstance(body, str):
        return Response(fault_status, body.encode("utf-8"), content_type="text/plain", headers=headers)
    if body is not None:
        return json_response(fault_status, body, headers)
    if route in ("token", "openid", "instance_discovery"):
        return json_response(
            fault_status,
            {
                "error": "temporarily_unavailable",
                "error_description": "AADSTS50196: injected fault",
                "error_codes": [50196],
            },
            headers,
        )
    if route.startswith("graph."):
        code = "TooManyRequests" if fault_status == 429 else _status_code_name(fault_status)
        return graph_error(fault_status, code, "Injected fault.", headers)
    if route.startswith("connector."):
        code = "Throttled" if fault_status == 429 else _status_code_name(fault_status)
        return connector_error(fault_status, code, "Injected fault.", headers)
    return json_response(fault_status, {"statusCode": fault_status, "message": "Injected fault."}, headers)


def _status_code_name(status: int) -> str:
    return {
        400: "BadArgument",
        401: "Unauthorized",
        403: "Forbidden",
        404: "NotFound",
        409: "Conflict",
        412: "PreconditionFailed",
        413: "MessageSizeTooBig",
        500: "ServiceError",
        502: "BadGateway",
        503: "ServiceUnavailable",
        504: "GatewayTimeout",
    }.get(status, "ServiceError")


# ---------------------------------------------------------------------------- login
def _known_authority_tenant(tenant: FakeTenant, segment: str) -> str | None:
    if segment.lower() == "botframework.com":
        return BOTFRAMEWORK_TENANT_ID
    for tid in tenant.tenant_ids:
        if tid.lower() == segment.lower():
            return tid
    return None


def _openid(tenant: FakeTenant, req: Request) -> Response:
    seg = req.segments[0]
    tid = _known_authority_tenant(tenant, seg)
    if tid is None:
        return aad_error(
            400,
            "invalid_tenant",
            90002,
            f"Tenant '{seg}' not found. Check to make sure "
            "you have the correct tenant ID and are signing into the correct cloud.",
        )
    return json_response(200, _openid_doc(tenant.base_url or "", seg, tid))


def _openid_doc(base: str, seg: str, tid: str) -> dict[str, Any]:
    auth = f"{base}/{seg}"
    return {
        "token_endpoint": f"{auth}/oauth2/v2.0/token",
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": f"{auth}/discovery/v2.0/keys",
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": f"{base}/{tid}/v2.0",
        "request_uri_parameter_supported": False,
        "authorization_endpoint": f"{auth}/oauth2/v2.0/authorize",
        "device_authorization_endpoint": f"{auth}/oauth2/v2.0/devicecode",
        "end_session_endpoint": f"{auth}/oauth2/v2.0/logout",
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "tid", "oid"],
        "tenant_region_scope": "EU",
        "cloud_instance_name": "microsoftonline.com",
        "msgraph_host": "graph.microsoft.com",
    }


def _jwks(tenant: FakeTenant, req: Request) -> Response:
    """The tenant's token signing keys, at the ``jwks_uri`` of its OpenID configuration
    (https://learn.microsoft.com/entra/identity-platform/access-tokens#validate-tokens: the keys
    that sign access tokens are published at ``{authority}/discovery/v2.0/keys``)."""
    if _known_authority_tenant(tenant, req.segments[0]) is None:
        return aad_error(400, "invalid_tenant", 90002, f"Tenant '{req.segments[0]}' not found.")
    return json_response(200, tenant.entra_jwks())


def _instance_discovery(tenant: FakeTenant, req: Request) -> Response:
    base = tenant.base_url or ""
    host = urllib.parse.urlsplit(base).netloc or "127.0.0.1"
    return json_response(
        200,
        {
            "tenant_discovery_endpoint": f"{base}/{tenant.tenant_id}/v2.0/.well-known/openid-configuration",
            "api-version": "1.1",
            "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
        },
    )


def _scope_audience(scope: str) -> str | None:
    for item in scope.split():
        res = item[: -len("/.default")] if item.endswith("/.default") else None
        if res is None:
            continue
        res = res.rstrip("/")
        if res in (GRAPH_AUDIENCE, "https://graph.microsoft.com/"):
            return GRAPH_AUDIENCE
        if res in (BOT_AUDIENCE, "api://botframework.com"):
            return BOT_AUDIENCE
        if res == STORAGE_AUDIENCE:
            return STORAGE_AUDIENCE  # Table Storage with Microsoft Entra ID (see STORAGE_AUDIENCE)
    return None


def _token(tenant: FakeTenant, req: Request) -> Response:
    seg = req.segments[0]
    tid = _known_authority_tenant(tenant, seg)
    if tid is None:
        return aad_error(
            400,
            "invalid_request",
            90002,
            f"Tenant '{seg}' not found. Check to make sure "
            "you have the correct tenant ID and are signing into the correct cloud.",
        )
    form = req.form()
    if form.get("grant_type") != "client_credentials":
        return aad_error(400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type.")
    client_id = form.get("client_id", "")
    if client_id.lower() != tenant.app_id.lower():
        return aad_error(
            400,
            "unauthorized_client",
            700016,
            f"Application with identifier '{client_id}' was not found in the directory "
            f"'{seg}'. This can happen if the application has not been installed by the "
            "administrator of the tenant or consented to by any user in the tenant.",
        )
    if tenant.app_disabled:
        return aad_error(
            400, "unauthorized_client", 7000112, f"Application '{client_id}'({tenant.app_display_name}) is disabled."
        )
    secret = form.get("client_secret")
    assertion = form.get("client_assertion")
    if secret is not None:
        if secret != tenant.client_secret:
            return aad_error(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request "
                f"is the client secret value, not the client secret ID, for a secret added to "
                f"app '{client_id}'.",
            )
    elif assertion is not None:
        if form.get("client_assertion_type") != JWT_BEARER:
            return aad_error(
                400, "invalid_request", 700023, "Invalid client_assertion_type; expected " + JWT_BEARER + "."
            )
        info = tenant.lookup_token(assertion)
        if info is None or info.audience != TOKEN_EXCHANGE_AUDIENCE:
            return aad_error(401, "invalid_client", 700027, "Client assertion failed signature validation.")
        if not tenant.federated_credential_enabled:
            return aad_error(
                400, "invalid_request", 70021, "No matching federated identity record found for presented assertion."
            )
    else:
        return aad_error(
            401,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        )
    audience = _scope_audience(form.get("scope", ""))
    if audience is None:
        return aad_error(
            400,
            "invalid_scope",
            1002012,
            f"The provided value for scope {form.get('scope', '')} is not valid. Client "
            "credential flows must have a scope value with /.default suffixed to the "
            "resource identifier (application ID URI).",
        )
    token, issued = tenant.issue_token(audience, tid)
    lifetime = int(issued.expires_at - time.time() + 0.5)
    resp = json_response(
        200,
        {"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": token},
    )
    resp.tenant_id = tid
    return resp


def _msi(tenant: FakeTenant, req: Request) -> Response:
    if req.headers.get("x-identity-header") != tenant.identity_header:
        return json_response(401, {"statusCode": 401, "message": "Unauthorized: missing or wrong X-IDENTITY-HEADER."})
    client_id = req.query.get("client_id")
    if client_id is not None and client_id.lower() != tenant.managed_identity_client_id.lower():
        return json_response(400, {"statusCode": 400, "message": "Unable to load the proper Managed Identity."})
    resource = req.query.get("resource", "")
    resource = resource.removesuffix("/.default")
    norm = resource.rstrip("/")
    audience = {
        GRAPH_AUDIENCE: GRAPH_AUDIENCE,
        BOT_AUDIENCE: BOT_AUDIENCE,
        "api://botframework.com": BOT_AUDIENCE,
        TOKEN_EXCHANGE_AUDIENCE: TOKEN_EXCHANGE_AUDIENCE,
        # Identity-based storage: the app's managed identity asks its endpoint for resource
        # https://storage.azure.com ("Authorize access to table data with a managed identity",
        # https://learn.microsoft.com/azure/storage/tables/authorize-managed-identity; the endpoint's
        # ``resource`` parameter, https://learn.microsoft.com/azure/app-service/overview-managed-identity#rest-endpoint-reference).
        STORAGE_AUDIENCE: STORAGE_AUDIENCE,
    }.get(norm)
    if audience is None:
        return json_response(500, {"statusCode": 500, "message": f"Unknown resource '{resource}'."})
    token, issued = tenant.issue_token(
        audience, tenant.tenant_id, app_id=tenant.managed_identity_client_id, managed_identity=True
    )
    resp = json_response(
        200,
        {
            "access_token": token,
            "expires_on": str(int(issued.expires_at)),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": tenant.managed_identity_client_id,
        },
    )
    resp.tenant_id = tenant.tenant_id
    return resp


# ---------------------------------------------------------------------------- graph
def _graph_auth(tenant: FakeTenant, req: Request, roles: tuple[str, ...]) -> IssuedToken | Response:
    token = req.bearer()
    if token is None:
        return graph_error(401, "InvalidAuthenticationToken", "Access token is empty.")
    info = tenant.lookup_token(token)
    if info is None:
        return graph_error(401, "InvalidAuthenticationToken", "Access token has expired or is not yet valid.")
    if info.audience != GRAPH_AUDIENCE:
        return graph_error(401, "InvalidAuthenticationToken", "Invalid audience.")
    with tenant.lock:
        # Revoking consent takes effect at once (tests); granting needs a new token (like Entra).
        have = info.roles & tenant.consented_roles
    if not have & set(roles):
        return graph_error(
            403,
            "Forbidden",
            "Missing role permissions on the request. API requires one of "
            f"'{', '.join(roles)}'. Roles on the request '{', '.join(sorted(have))}'.",
        )
    return info


def _graph_user(tenant: FakeTenant, info: IssuedToken, raw: str) -> FakeUser | Response:
    user = tenant.find_user(raw, info.tenant_id)
    if user is None:
        return graph_error(404, "NotFound", f"User Id '{raw}' not found.")
    return user


def _catalog_item(tenant: FakeTenant) -> dict[str, Any]:
    return {
        "id": tenant.catalog_id,
        "externalId": tenant.teams_app_id,
        "displayName": tenant.app_display_name,
        "distributionMethod": "organization",
    }


def _graph_installed_apps(tenant: FakeTenant, req: Request) -> Response:
    info = _graph_auth(tenant, req, LIST_ROLES)
    if isinstance(info, Response):
        return info
    user = _graph_user(tenant, info, req.segments[2])
    if isinstance(user, Response):
        return user
    flt = req.query.get("$filter", "")
    match = _EXTERNAL_ID_RE.search(flt)
    wanted = match.group(1).replace("''", "'") if match else None
    expand = "teamsApp" in req.query.get("$expand", "")
    value: list[dict[str, Any]] = []
    with tenant.lock:
        inst = tenant.installations.get(user.oid)
        if inst is not None and (wanted is None or wanted.lower() == tenant.teams_app_id.lower()):
            item: dict[str, Any] = {"id": inst.id}
            if expand:
                item["teamsApp"] = _catalog_item(tenant)
            value.append(item)
    resp = json_response(200, {"@odata.context": "fake", "value": value})
    resp.tenant_id = info.tenant_id
    return resp


def _graph_catalog(tenant: FakeTenant, req: Request) -> Response:
    info = _graph_auth(tenant, req, CATALOG_ROLES)
    if isinstance(info, Response):
        return info
    flt = req.query.get("$filter", "")
    ext = _EXTERNAL_ID_RE.search(flt)
    dist = _DISTRIBUTION_RE.search(flt)
    value: list[dict[str, Any]] = []
    with tenant.lock:
        ok = tenant.in_catalog
        if ext and ext.group(1).replace("''", "'").lower() != tenant.teams_app_id.lower():
            ok = False
        if dist and dist.group(1).replace("''", "'") != "organization":
            ok = False
        if ok:
            value.append(_catalog_item(tenant))
    resp = json_response(200, {"@odata.context": "fake", "value": value})
    resp.tenant_id = info.tenant_id
    return resp


def _graph_install(tenant: FakeTenant, req: Request) -> Response:
    info = _graph_auth(tenant, req, INSTALL_ROLES)
    if isinstance(info, Response):
        return info
    user = _graph_user(tenant, info, req.segments[2])
    if isinstance(user, Response):
        return user
    try:
        body = req.json()
        bind = body["teamsApp@odata.bind"]
        if not isinstance(bind, str):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        return graph_error(400, "BadRequest", "Invalid request body: 'teamsApp@odata.bind' is required.")
    m = re.search(r"/appCatalogs/teamsApps/([^/?'()]+)", bind) or re.search(r"teamsApps\('([^']+)'\)", bind)
    catalog_id = urllib.parse.unquote(m.group(1)) if m else ""
    with tenant.lock:
        if not tenant.in_catalog or catalog_id != tenant.catalog_id:
            return graph_error(404, "NotFound", f"The app with id '{catalog_id}' was not found in the catalog.")
        if tenant.is_installed(user):
            return graph_error(409, "Conflict", "App is already installed.")
        if tenant.is_blocked_by_policy(user):
            # See FakeTenant.block_app_by_policy (its source): 403 Forbidden, innerError AccessDenied.
            resp = graph_error(403, "Forbidden", "App is blocked by app permission policy. Contact your administrator.")
            body = json.loads(resp.body)
            body["error"]["innerError"]["code"] = "AccessDenied"
            resp.body = json.dumps(body).encode("utf-8")
            return resp
        tenant.install_app(user, chat_delay=tenant.chat_ready_after)
    resp = empty(201)
    resp.tenant_id = info.tenant_id
    return resp


def _graph_chat(tenant: FakeTenant, req: Request) -> Response:
    info = _graph_auth(tenant, req, INSTALL_ROLES)
    if isinstance(info, Response):
        return info
    user = _graph_user(tenant, info, req.segments[2])
    if isinstance(user, Response):
        return user
    installation_id = req.segments[5]
    with tenant.lock:
        inst = tenant.installations.get(user.oid)
        if inst is None or inst.id != installation_id:
            return graph_error(404, "NotFound", f"Installation '{installation_id}' not found.")
        if not inst.chat_ready():  # see Installation.chat_ready_at
            return graph_error(404, "NotFound", "Chat not found.")
        chat_id = tenant.chat_id_for(user)
        tenant.open_conversation(user, chat_id)
    resp = json_response(200, {"@odata.context": "fake", "id": chat_id})
    resp.tenant_id = info.tenant_id
    return resp


# ---------------------------------------------------------------------------- connector
def _connector_auth(tenant: FakeTenant, req: Request) -> IssuedToken | Response:
    token = req.bearer()
    info = tenant.lookup_token(token) if token else None
    if info is None or info.audience != BOT_AUDIENCE:
        return connector_error(401, "Unauthorized", "Authorization has been denied for this request.")
    if info.app_id.lower() not in (tenant.app_id.lower(), tenant.managed_identity_client_id.lower()):
        return connector_error(401, "BotNotRegistered", "The bot is not registered.")
    return info


def _conversation_gate(tenant: FakeTenant, user: FakeUser, *, writes_blocked_body: bool = False) -> Response | None:
    """403 codes of the Bot Connector ("Handle status codes from bots conversational APIs",
    https://learn.microsoft.com/microsoftteams/platform/bots/build-conversational-capability#status-codes-from-bot-conversational-apis):
    BotDisabledByAdmin, ConversationBlockedByUser, BotNotInConversationRoster. A new message to a user
    who blocked the bot or uninstalled the app may instead carry the MessageWritesBlocked body (see
    ``FakeTenant.message_writes_blocked``); updates and deletes after an uninstall answer
    BotNotInConversationRoster, and, as the refused update or delete changes nothing, the earlier
    messages stay in the chat."""
    if tenant.is_bot_disabled(user.tenant_id):
        return connector_error(403, "BotDisabledByAdmin", "The bot is disabled by the tenant admin.")
    blocked, installed = tenant.is_blocked(user.oid), tenant.is_installed(user)
    if writes_blocked_body and tenant.message_writes_blocked and (blocked or not installed):
        return json_response(
            403,
            {"errorCode": 209, "message": json.dumps({"subCode": "MessageWritesBlocked"}, separators=(",", ":"))},
            {"X-Correlating-OperationId": uuid.uuid4().hex},
        )
    if blocked:
        return connector_error(403, "ConversationBlockedByUser", "User blocked the conversation with the bot.")
    if not installed:
        return connector_error(403, "BotNotInConversationRoster", "The bot is not part of the conversation roster.")
    return None


def _geo_gate(tenant: FakeTenant, req: Request, tenant_id: str) -> Response | None:
    """A regional service URL of another region than the tenant's answers 400 BadArgument (see
    ``FakeTenant.set_geo``); the global ``/teams/`` URL routes to the right region."""
    region = req.segments[0]
    geo = tenant.geo_of(tenant_id)
    if region == GLOBAL_SERVICE_PREFIX or geo is None or region == geo:
        return None
    return connector_error(
        400,
        "BadArgument",
        f"Incoming request was redirected to the wrong geo! Current geo: {region.upper()}, Target geo: {geo.upper()}",
    )


def _too_big(tenant: FakeTenant, req: Request) -> Response | None:
    """413 MessageSizeTooBig for a body over the connector's limit (see ``MAX_REQUEST_BYTES``)."""
    if len(req.body) > tenant.max_request_bytes:
        return connector_error(
            413,
            "MessageSizeTooBig",
            f"The request content length exceeded limit of {tenant.max_request_bytes} bytes.",
        )
    return None


def _message_too_big(tenant: FakeTenant, activity: dict[str, Any]) -> Response | None:
    """413 MessageSizeTooBig for a message over Teams' limit measured as Teams does (UTF-16)."""
    if message_utf16_bytes(activity) > tenant.max_message_bytes:
        return connector_error(413, "MessageSizeTooBig", "Message size too large.")
    return None


def _throttled(wait: float) -> Response:
    return connector_error(
        429, "Throttled", "Too many requests.", {"Retry-After": _fmt_seconds(round(wait + 0.0005, 3))}
    )


def _live_conversation(tenant: FakeTenant, cid: str) -> tuple[Conversation, FakeUser] | Response:
    conv = tenant.get_conversation(cid)
    if conv is None:
        return connector_error(404, "ConversationNotFound", "Conversation not found.")
    user = tenant.find_user(conv.user_oid)
    assert user is not None
    return conv, user


def _reach_conversation(tenant: FakeTenant, req: Request) -> tuple[Conversation, FakeUser] | Response:
    """What every call on an existing conversation (/v3/conversations/{id}/...) passes first: the bot
    token, the conversation, and the region of the service URL."""
    info = _connector_auth(tenant, req)
    if isinstance(info, Response):
        return info
    found = _live_conversation(tenant, req.segments[3])
    if isinstance(found, Response):
        return found
    geo = _geo_gate(tenant, req, found[1].tenant_id)
    return geo if geo is not None else found


def _connector_members(tenant: FakeTenant, req: Request) -> Response:
    found = _reach_conversation(tenant, req)
    if isinstance(found, Response):
        return found
    conv, user = found
    wait = tenant.check_rate(conv.id + "#members", user.tenant_id, MEMBERS_LIMITS)
    if wait is not None:
        return _throttled(wait)
    if tenant.is_bot_disabled(user.tenant_id):
        return connector_error(403, "BotDisabledByAdmin", "The bot is disabled by the tenant admin.")
    if not tenant.is_installed(user):
        return connector_error(403, "BotNotInConversationRoster", "The bot is not part of the conversation roster.")
    resp = json_response(200, [user.channel_account()])
    resp.tenant_id = user.tenant_id
    return resp


def _connector_create(tenant: FakeTenant, req: Request) -> Response:
    info = _connector_auth(tenant, req)
    if isinstance(info, Response):
        return info
    try:
        body = req.json()
        if not isinstance(body, dict):
            raise TypeError
    except (ValueError, TypeError):
        return connector_error(400, "BadSyntax", "The request body is not valid JSON.")
    tenant_id = body.get("tenantId") or ((body.get("channelData") or {}).get("tenant") or {}).get("id")
    if not tenant_id:
        return connector_error(400, "BadArgument", "Missing tenantId.")
    bot_id = (body.get("bot") or {}).get("id", "")
    if bot_id.lower() != f"28:{tenant.app_id}".lower():
        return connector_error(400, "BadArgument", f"Invalid bot id '{bot_id}'.")
    members = body.get("members") or []
    if body.get("isGroup") or len(members) != 1 or not isinstance(members[0], dict):
        return connector_error(400, "BadArgument", "Exactly one member is required for a 1:1 conversation.")
    member_id = str(members[0].get("id", ""))
    user = tenant.user_by_account_id(member_id) or (
        tenant.find_user(member_id) if member_id and not member_id.startswith("29:") else None
    )
    if user is None or user.tenant_id.lower() != str(tenant_id).lower():
        return connector_error(400, "BadArgument", f"Member '{member_id}' not found in tenant '{tenant_id}'.")
    geo = _geo_gate(tenant, req, user.tenant_id)
    if geo is not None:
        return geo
    cid = tenant.conversation_id_for(user)
    wait = tenant.check_rate(cid, user.tenant_id, SEND_LIMITS)
    if wait is not None:
        return _throttled(wait)
    gate = _conversation_gate(tenant, user)
    if gate is not None:
        return gate
    tenant.open_conversation(user, cid)
    resp = json_response(201, {"id": cid})
    resp.tenant_id = user.tenant_id
    return resp


def _activity_body(req: Request) -> dict[str, Any] | Response:
    try:
        body = req.json()
    except ValueError:
        return connector_error(400, "BadSyntax", "The request body is not valid JSON.")
    if not isinstance(body, dict) or not body.get("type"):
        return connector_error(400, "BadArgument", "Activity type is required.")
    return body


def _connector_send(tenant: FakeTenant, req: Request) -> Response:
    found = _reach_conversation(tenant, req)
    if isinstance(found, Response):
        return found
    conv, user = found
    if conv.id.startswith("19:") and not tenant.accepts_chat_id_conversations(user.tenant_id):
        # A tenant whose connector refuses the Graph chat id for sends (FakeTenant.get_conversation).
        return connector_error(404, "ConversationNotFound", "Conversation not found.")
    wait = tenant.check_rate(conv.id, user.tenant_id, SEND_LIMITS)
    if wait is not None:
        return _throttled(wait)
    gate = _conversation_gate(tenant, user, writes_blocked_body=True)
    if gate is not None:
        return gate
    too_big = _too_big(tenant, req)
    if too_big is not None:
        return too_big
    body = _activity_body(req)
    if isinstance(body, Response):
        return body
    too_big = _message_too_big(tenant, body)
    if too_big is not None:
        return too_big
    record = tenant.store_activity(conv, body)
    resp = json_response(201, {"id": record["id"]})
    resp.tenant_id = user.tenant_id
    return resp


def _connector_update(tenant: FakeTenant, req: Request) -> Response:
    found = _reach_conversation(tenant, req)
    if isinstance(found, Response):
        return found
    conv, user = found
    gate = _conversation_gate(tenant, user)
    if gate is not None:
        return gate
    too_big = _too_big(tenant, req)
    if too_big is not None:
        return too_big
    body = _activity_body(req)
    if isinstance(body, Response):
        return body
    too_big = _message_too_big(tenant, body)
    if too_big is not None:
        return too_big
    aid = req.segments[5]
    with tenant.lock:
        rec = tenant.get_activity(conv.id, aid)
        if rec is None:
            return connector_error(404, "ActivityNotFound", "Activity not found.")
        rec["activity"] = body
        rec["updated"] += 1
    resp = json_response(200, {"id": aid})
    resp.tenant_id = user.tenant_id
    return resp


def _connector_delete(tenant: FakeTenant, req: Request) -> Response:
    found = _reach_conversation(tenant, req)
    if isinstance(found, Response):
        return found
    conv, user = found
    gate = _conversation_gate(tenant, user)
    if gate is not None:
        return gate
    aid = req.segments[5]
    with tenant.lock:
        rec = tenant.get_activity(conv.id, aid)
        if rec is None:
            return connector_error(404, "ActivityNotFound", "Activity not found.")
        rec["deleted"] = True
    resp = empty(200)
    resp.tenant_id = user.tenant_id
    return resp


# ---------------------------------------------------------------------------- bot framework
def _bf_openid(tenant: FakeTenant, req: Request) -> Response:
    base = tenant.base_url or ""
    return json_response(
        200,
        {
            "issuer": "https://api.botframework.com",
            "authorization_endpoint": "https://invalid.botframework.com",
            "jwks_uri": f"{base}/botframework/keys",
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        },
    )


def _bf_jwks(tenant: FakeTenant, req: Request) -> Response:
    return json_response(200, tenant.jwks())


# ---------------------------------------------------------------------------- control
def control(tenant: FakeTenant, req: Request) -> Response:
    """The ``/_fake`` endpoints (not logged, no auth, no faults)."""
    s, m = req.segments[1:], req.method
    try:
        if m == "GET" and s == []:
            return Response(200, _html(tenant).encode("utf-8"), content_type="text/html; charset=utf-8")
        if m == "GET" and s == ["log"]:
            return json_response(200, [e.to_dict() for e in tenant.log])
        if m == "POST" and s == ["log", "clear"]:
            tenant.clear_log()
            return empty(204)
        if m == "GET" and s == ["users"]:
            return json_response(200, tenant.snapshot_users())
        if m == "POST" and s == ["users"]:
            body = req.json()
            user = tenant.add_user(
                body["upn"],
                display_name=body.get("display_name"),
                oid=body.get("oid"),
                tenant_id=body.get("tenant_id"),
                installed=bool(body.get("installed", False)),
            )
            return json_response(201, {**user.channel_account(), "oid": user.oid, "upn": user.upn})
        if m == "GET" and s == ["faults"]:
            return json_response(200, [asdict(f) for f in tenant.queued_faults()])
        if m == "DELETE" and s == ["faults"]:
            tenant.clear_faults()
            return empty(204)
        if m == "POST" and s == ["faults"]:
            body = _control_body(req, FAULT_KEYS, required=("route", "status"))
            tenant.add_fault(
                body["route"],
                int(body["status"]),
                count=int(body.get("count", 1)),
                retry_after=body.get("retry_after"),
                delay=float(body.get("delay", 0.0)),
                body=body.get("body"),
                malformed=bool(body.get("malformed", False)),
                applied=bool(body.get("applied", False)),
            )
            return empty(204)
        if m == "GET" and s == ["settings"]:
            with tenant.lock:
                return json_response(200, {key: getattr(tenant, key) for key in SETTING_KEYS})
        if m == "POST" and s == ["settings"]:
            body = _control_body(req, SETTING_KEYS)
            with tenant.lock:
                for key, value in body.items():
                    setattr(tenant, key, type(getattr(tenant, key))(value))
            return empty(204)
        if m == "POST" and len(s) == 3 and s[0] == "users" and s[2] in USER_STATES:
            user = tenant.find_user(s[1])
            if user is None:
                return json_response(404, {"error": f"no user {s[1]!r}"})
            getattr(tenant, USER_STATES[s[2]])(user)
            return json_response(200, [u for u in tenant.snapshot_users() if u["oid"] == user.oid][0])
        if m == "POST" and s in (["bot", "disable"], ["bot", "enable"]):
            body = _control_body(req, ("tenant_id",)) if req.body.strip() else {}
            tenant_id = body.get("tenant_id") or tenant.tenant_id
            if not tenant.has_tenant(tenant_id):
                return json_response(404, {"error": f"no tenant {tenant_id!r}"})
            tenant.disable_bot_for_tenant(tenant_id, disabled=s[1] == "disable")
            return json_response(200, {"tenant_id": tenant_id, "bot_disabled": s[1] == "disable"})
        if m == "GET" and s == ["messages"]:
            return json_response(200, tenant.messages_by_user())
    except (ValueError, KeyError, TypeError) as exc:
        return json_response(400, {"error": str(exc)})
    return json_response(404, {"error": f"no control endpoint {m} {req.path}"})


#: Keys of POST /_fake/settings (the FakeTenant attributes of the same name).
SETTING_KEYS = (
    "rate_limits",
    "app_rate_per_second",
    "chat_ready_after",
    "app_disabled",
    "federated_credential_enabled",
    "message_writes_blocked",
    "max_message_bytes",
    "max_request_bytes",
    "token_lifetime",
)
#: Keys of POST /_fake/faults (FakeTenant.add_fault's arguments).
FAULT_KEYS = ("route", "status", "count", "retry_after", "delay", "body", "malformed", "applied")
#: POST /_fake/users/{upn or oid}/{state}: one-step user states, the FakeTenant methods behind them.
USER_STATES = {
    "block": "block_bot",  # the user blocked the bot: 403 ConversationBlockedByUser
    "unblock": "unblock_bot",
    "uninstall": "uninstall_app",  # the user removed the app: 403 BotNotInConversationRoster
    "install": "install_app",
}


def _control_body(req: Request, allowed: tuple[str, ...], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """A control endpoint's JSON object body; an unknown key (a typo would otherwise do nothing) or a
    missing one is a 400 naming it."""
    body = req.json()
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(unknown)}; known: {', '.join(allowed)}")
    missing = [key for key in required if key not in body]
    if missing:
        raise ValueError(f"missing key(s) {', '.join(missing)}")
    return body


def _html(tenant: FakeTenant) -> str:
    rows: list[str] = []
    for upn, msgs in tenant.messages_by_user().items():
        items = "".join(
            f"<li><code>{html.escape(r['id'])}</code> {html.escape(_text(r['activity']))}</li>" for r in msgs
        )
        rows.append(f"<h2>{html.escape(upn)} ({len(msgs)})</h2><ul>{items}</ul>")
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>faketenant</title></head><body>"
        f"<h1>Fake tenant {html.escape(tenant.tenant_id)}</h1>{''.join(rows)}</body></html>"
    )


def _text(activity: dict[str, Any]) -> str:
    from .state import preview

    return preview(activity, limit=500)


_HANDLERS = {
    "instance_discovery": _instance_discovery,
    "openid": _openid,
    "jwks": _jwks,
    "token": _token,
    "msi": _msi,
    "graph.installed_apps": _graph_installed_apps,
    "graph.catalog": _graph_catalog,
    "graph.install": _graph_install,
    "graph.chat": _graph_chat,
    "connector.members": _connector_members,
    "connector.create": _connector_create,
    "connector.send": _connector_send,
    "connector.update": _connector_update,
    "connector.delete": _connector_delete,
    "botframework.openid": _bf_openid,
    "botframework.jwks": _bf_jwks,
    "control": control,
}


def log_entry(req: Request, route: str, status: int, tenant_id: str | None) -> LoggedRequest:
    """The log record of an answered request (no headers, no body)."""
    query = req.query_string if route not in ("token", "msi") else ""
    return LoggedRequest(req.method, req.path, query, route, status, time.time(), tenant_id)
