"""Settings: the one place app settings are read and validated.

Every setting the code reads is listed in ``SETTING_NAMES`` (infra/ provisions exactly these, and a
test keeps the two in step). ``load_settings`` reads them once from a mapping (``os.environ`` in the
function host, a dict in tests) and raises one ``ConfigurationError`` that names every missing or
malformed setting. Secrets are kept out of ``repr``.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
import urllib.parse
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from shared.errors import ConfigurationError

AppType = Literal["SingleTenant", "MultiTenant", "UserAssignedMSI"]
ApiAuthMode = Literal["FunctionKey", "EntraId"]

DEFAULT_SERVICE_URL = "https://smba.trafficmanager.net/teams/"
DEFAULT_AUTHORITY_HOST = "https://login.microsoftonline.com"
DEFAULT_GRAPH_ENDPOINT = "https://graph.microsoft.com"
DEFAULT_QUEUE_NAME = "notifications"
DEFAULT_TABLE_PREFIX = "teamsnotify"
DEFAULT_API_ROLE = "Notifications.Send"
DEFAULT_RETENTION_DAYS = 30
MIN_SIGNING_KEY_BYTES = 32

# Every app setting the code reads. Settings written by the Functions platform itself
# (IDENTITY_ENDPOINT, WEBSITE_*) are not ours and are not listed.
SETTING_NAMES: tuple[str, ...] = (
    "MicrosoftAppId",
    "MicrosoftAppPassword",
    "MicrosoftAppTenantId",
    "MicrosoftAppType",
    "ManagedIdentityClientId",
    "TeamsAppId",
    "ServiceUrl",
    "AuthorityHost",
    "GraphEndpoint",
    "AzureWebJobsStorage",
    "AzureWebJobsStorage__tableServiceUri",
    "AzureWebJobsStorage__clientId",
    "AzureWebJobsStorage__credential",
    "TableStorageConnection",
    "TableNamePrefix",
    "ServiceBusConnection",
    "ServiceBusQueueName",
    "HttpTimeoutSeconds",
    "RetryMaxAttempts",
    "RetryMaxDelaySeconds",
    "BotOpenIdMetadata",
    "MaxConcurrentSends",
    "TenantSendRatePerSecond",
    "TenantGraphRatePerSecond",
    # Security and governance (issue 17): signed ids, who may call the API, recipients' side.
    "NotificationSigningKey",
    "ApiAuthMode",
    "ApiAudience",
    "ApiRequiredRole",
    "ReinstallAfterUninstall",
    "RetentionDaysRequests",
    "RetentionDaysNotifications",
    "RetentionDaysDeliveries",
    "RetentionDaysFailures",
    "RecipientCacheUnusedDays",
)

_URI_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")
_TABLE_PREFIX_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]{2,39}$")


@dataclass(frozen=True)
class Settings:
    app_id: str
    tenant_id: str
    teams_app_id: str
    app_type: AppType = "SingleTenant"
    app_password: str | None = field(default=None, repr=False)
    managed_identity_client_id: str | None = None
    service_url: str = DEFAULT_SERVICE_URL
    authority_host: str = DEFAULT_AUTHORITY_HOST
    graph_endpoint: str = DEFAULT_GRAPH_ENDPOINT
    # Table Storage: a connection string (secret-bearing, kept out of repr) or an identity-based endpoint.
    table_connection_string: str | None = field(default=None, repr=False)
    table_service_uri: str | None = None
    table_client_id: str | None = None
    # "managedidentity": only the app's managed identity; otherwise the Functions host's developer
    # chain (DefaultAzureCredential: environment, managed identity, Azure CLI, VS Code, ...).
    table_credential: str | None = None
    table_prefix: str = DEFAULT_TABLE_PREFIX
    queue_name: str = DEFAULT_QUEUE_NAME
    http_timeout: float = 10.0
    retry_max_attempts: int = 4
    retry_max_delay: float = 30.0
    bot_openid_metadata: str | None = None
    # Sends in flight per instance; the request rates are the whole tenant's budgets, shared by all
    # instances through Table Storage (shared.budget; docs/API.md, "Rate limits").
    max_concurrent_sends: int = 8
    tenant_send_rate: float = 30.0
    tenant_graph_rate: float = 30.0
    # HMAC key of notification ids and queued items (NotificationSigningKey, e.g. a Key Vault
    # reference); None: a key generated once and kept in Table Storage (shared.signing).
    notification_signing_key: bytes | None = field(default=None, repr=False)
    # Who may call the HTTP API (shared.callerauth): function keys, or Entra ID bearer tokens.
    api_auth_mode: ApiAuthMode = "FunctionKey"
    api_audience: str | None = None
    api_required_role: str = DEFAULT_API_ROLE
    # The recipients' side (shared.optout, shared.retention).
    reinstall_after_uninstall: bool = True
    retention_days_requests: int = DEFAULT_RETENTION_DAYS
    retention_days_notifications: int = DEFAULT_RETENTION_DAYS
    retention_days_deliveries: int = DEFAULT_RETENTION_DAYS
    retention_days_failures: int = DEFAULT_RETENTION_DAYS
    recipient_cache_unused_days: int = DEFAULT_RETENTION_DAYS

    @property
    def api_issuer(self) -> str:
        """The issuer of the Entra ID v2.0 access tokens the API accepts (its own tenant's)."""
        return f"{self.authority_host}/{self.tenant_id}/v2.0"

    @property
    def api_audiences(self) -> tuple[str, ...]:
        """Accepted ``aud`` values: the Application ID URI, and the client id it names (``api://{guid}``):
        Entra ID v2.0 access tokens carry the API's client id as their audience."""
        if self.api_audience is None:
            return ()
        found = re.fullmatch(r"api://([0-9A-Fa-f-]{36})/?", self.api_audience)
        if found and _is_guid(found.group(1)):
            return (self.api_audience, found.group(1).lower())
        return (self.api_audience,)

    @property
    def graph_base(self) -> str:
        return self.graph_endpoint.rstrip("/") + "/v1.0"

    @property
    def bot_id(self) -> str:
        return "28:" + self.app_id

    @property
    def credential_kind(self) -> Literal["secret", "federated", "msi"]:
        if self.app_type == "UserAssignedMSI":
            return "msi"
        if self.app_password:
            return "secret"
        return "federated"


def _is_guid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _https_url(value: str) -> bool:
    return value.startswith("https://") and len(value) > len("https://")


def _loopback_http_url(value: str) -> bool:
    """A plain-http URL whose host is this machine (127.0.0.0/8, localhost, ::1): a local emulator such
    as Microsoft 365 Agents Playground. The bot's token never leaves the machine in clear."""
    if not value.startswith("http://"):
        return False
    try:
        host = urllib.parse.urlsplit(value).hostname
    except ValueError:
        return False
    if host is None:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _storage_connection_string(value: str) -> bool:
    parts = dict(p.split("=", 1) for p in value.split(";") if "=" in p)
    keys = {k.strip().lower() for k, v in parts.items() if v.strip()}
    return "tableendpoint" in keys or (
        "accountname" in keys and ("accountkey" in keys or "sharedaccesssignature" in keys)
    )


def api_auth_mode(env: Mapping[str, str] | None = None) -> ApiAuthMode:
    """The ``ApiAuthMode`` alone, for the function app's HTTP auth level at indexing time (EntraId:
    the host checks no function key, the app checks the bearer token). An unknown value counts as
    FunctionKey (the host keeps checking keys); load_settings reports it."""
    value = ((os.environ if env is None else env).get("ApiAuthMode") or "").strip().lower()
    return "EntraId" if value == "entraid" else "FunctionKey"


def _signing_key(value: str) -> bytes | None:
    try:
        key = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return key if len(key) >= MIN_SIGNING_KEY_BYTES else None


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every setting; raise one ConfigurationError naming all that are wrong."""
    source = os.environ if env is None else env

    def get(name: str) -> str | None:
        value = source.get(name)
        if value is None:
            return None
        value = value.strip()
        return value or None

    problems: list[str] = []
    names: list[str] = []

    def problem(name: str, text: str) -> None:
        names.append(name)
        problems.append(f"{name} {text}")

    app_id = get("MicrosoftAppId")
    tenant_id = get("MicrosoftAppTenantId")
    teams_app_id = get("TeamsAppId")
    for name, value in (("MicrosoftAppId", app_id), ("MicrosoftAppTenantId", tenant_id), ("TeamsAppId", teams_app_id)):
        if value is None:
            problem(name, "is missing")
        elif not _is_guid(value):
            problem(name, "must be a GUID")

    app_type_raw = get("MicrosoftAppType") or "SingleTenant"
    app_type_map: dict[str, AppType] = {t.lower(): t for t in ("SingleTenant", "MultiTenant", "UserAssignedMSI")}
    app_type = app_type_map.get(app_type_raw.lower())
    if app_type is None:
        problem("MicrosoftAppType", "must be SingleTenant, MultiTenant or UserAssignedMSI")
        app_type = "SingleTenant"

    password = get("MicrosoftAppPassword")
    mi_client_id = get("ManagedIdentityClientId")
    if mi_client_id is not None and not _is_guid(mi_client_id):
        problem("ManagedIdentityClientId", "must be a GUID (the managed identity's client id)")
    if app_type != "UserAssignedMSI" and password is None and mi_client_id is None:
        problem(
            "MicrosoftAppPassword",
            "is missing: set it (local development) "
            "or set ManagedIdentityClientId for the secretless federated credential",
        )

    urls: dict[str, str] = {}
    for name, default in (
        ("ServiceUrl", DEFAULT_SERVICE_URL),
        ("AuthorityHost", DEFAULT_AUTHORITY_HOST),
        ("GraphEndpoint", DEFAULT_GRAPH_ENDPOINT),
    ):
        value = get(name) or default
        if name == "ServiceUrl" and _loopback_http_url(value):
            pass  # a local Bot Connector emulator (Agents Playground) serves plain http on loopback
        elif not _https_url(value):
            problem(name, "must be an https:// URL" + (" (http:// only on loopback)" if name == "ServiceUrl" else ""))
        urls[name] = value
    service_url = urls["ServiceUrl"]
    if not service_url.endswith("/"):
        service_url += "/"

    table_connection_name = "TableStorageConnection" if get("TableStorageConnection") else "AzureWebJobsStorage"
    table_connection = get(table_connection_name)
    table_service_uri = get("AzureWebJobsStorage__tableServiceUri")
    if table_connection is None and table_service_uri is None:
        problem(
            "AzureWebJobsStorage",
            "is missing: set a storage connection string, TableStorageConnection, "
            "or AzureWebJobsStorage__tableServiceUri for an identity-based connection",
        )
    if table_connection is not None and table_connection.lower() == "usedevelopmentstorage=true":
        # Azurite's well-known shortcut, expanded so azure-data-tables understands it.
        table_connection = (
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
            "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
            "TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;"
        )

    if table_connection is not None and not _storage_connection_string(table_connection):
        problem(
            table_connection_name,
            "is not a storage connection string (AccountName with AccountKey or SharedAccessSignature, "
            "or TableEndpoint)",
        )

    table_prefix = get("TableNamePrefix") or DEFAULT_TABLE_PREFIX
    if not _TABLE_PREFIX_RE.match(table_prefix):
        problem("TableNamePrefix", "must be 3-40 letters or digits starting with a letter")

    def number(name: str, default: float, low: float, high: float) -> float:
        raw = get(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            problem(name, f"must be a number between {low:g} and {high:g}")
            return default
        if not low <= value <= high:
            problem(name, f"must be a number between {low:g} and {high:g}")
            return default
        return value

    http_timeout = number("HttpTimeoutSeconds", 10.0, 0.1, 120.0)
    retry_attempts = int(number("RetryMaxAttempts", 4, 1, 10))
    retry_max_delay = number("RetryMaxDelaySeconds", 30.0, 0.0, 300.0)
    max_concurrent_sends = int(number("MaxConcurrentSends", 8, 1, 256))
    send_rate = number("TenantSendRatePerSecond", 30.0, 1.0, 1000.0)
    graph_rate = number("TenantGraphRatePerSecond", 30.0, 1.0, 1000.0)

    signing_raw = get("NotificationSigningKey")
    signing_key = _signing_key(signing_raw) if signing_raw is not None else None
    if signing_raw is not None and signing_key is None:
        problem("NotificationSigningKey", f"must be base64 of at least {MIN_SIGNING_KEY_BYTES} random bytes")

    mode_raw = get("ApiAuthMode") or "FunctionKey"
    mode_map: dict[str, ApiAuthMode] = {m.lower(): m for m in ("FunctionKey", "EntraId")}
    mode = mode_map.get(mode_raw.lower())
    if mode is None:
        problem("ApiAuthMode", "must be FunctionKey or EntraId")
        mode = "FunctionKey"
    api_audience = get("ApiAudience")
    if mode == "EntraId" and api_audience is None:
        problem("ApiAudience", "is missing: ApiAuthMode EntraId needs the API's Application ID URI (api://...)")
    elif api_audience is not None and not (_is_guid(api_audience) or _URI_RE.fullmatch(api_audience)):
        problem("ApiAudience", "must be the API's Application ID URI (e.g. api://<client id>) or its client id")
    api_role = get("ApiRequiredRole") or DEFAULT_API_ROLE
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,120}", api_role):
        problem("ApiRequiredRole", "must be an app role value (letters, digits, '.', '_', '-')")

    reinstall_raw = (get("ReinstallAfterUninstall") or "true").lower()
    if reinstall_raw not in ("true", "false"):
        problem("ReinstallAfterUninstall", "must be true or false")

    def whole_days(name: str) -> int:
        raw = get(name)
        if raw is None:
            return DEFAULT_RETENTION_DAYS
        if not raw.isdigit() or int(raw) > 3650:
            problem(name, "must be a whole number of days from 0 to 3650 (0 keeps rows forever)")
            return DEFAULT_RETENTION_DAYS
        return int(raw)

    days = {
        name: whole_days(name)
        for name in (
            "RetentionDaysRequests",
            "RetentionDaysNotifications",
            "RetentionDaysDeliveries",
            "RetentionDaysFailures",
            "RecipientCacheUnusedDays",
        )
    }

    if problems:
        raise ConfigurationError(
            "Invalid configuration: " + "; ".join(problems) + ".",
            code="configuration_error",
            target=", ".join(names),
        )

    assert app_id is not None and tenant_id is not None and teams_app_id is not None
    return Settings(
        app_id=app_id,
        tenant_id=tenant_id,
        teams_app_id=teams_app_id,
        app_type=app_type,
        app_password=password,
        managed_identity_client_id=mi_client_id,
        service_url=service_url,
        authority_host=urls["AuthorityHost"].rstrip("/"),
        graph_endpoint=urls["GraphEndpoint"].rstrip("/"),
        table_connection_string=table_connection,
        table_service_uri=table_service_uri,
        table_client_id=get("AzureWebJobsStorage__clientId"),
        table_credential=(get("AzureWebJobsStorage__credential") or "").lower() or None,
        table_prefix=table_prefix,
        queue_name=get("ServiceBusQueueName") or DEFAULT_QUEUE_NAME,
        http_timeout=http_timeout,
        retry_max_attempts=retry_attempts,
        retry_max_delay=retry_max_delay,
        bot_openid_metadata=get("BotOpenIdMetadata"),
        max_concurrent_sends=max_concurrent_sends,
        tenant_send_rate=send_rate,
        tenant_graph_rate=graph_rate,
        notification_signing_key=signing_key,
        api_auth_mode=mode,
        api_audience=api_audience,
        api_required_role=api_role,
        reinstall_after_uninstall=reinstall_raw != "false",
        retention_days_requests=days["RetentionDaysRequests"],
        retention_days_notifications=days["RetentionDaysNotifications"],
        retention_days_deliveries=days["RetentionDaysDeliveries"],
        retention_days_failures=days["RetentionDaysFailures"],
        recipient_cache_unused_days=days["RecipientCacheUnusedDays"],
    )
