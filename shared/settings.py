"""The app settings, declared once as the fields of ``Settings``, and ``load_settings``, which reads and
validates them.

Every setting the code reads is a field of ``Settings`` (a frozen ``msgspec.Struct``) declared with
``_setting``: its app-setting name, its default (none: required), how a given value is parsed and
checked, any rule against the settings declared before it, and whether it holds a secret.
``SETTING_NAMES`` (infra/ provisions exactly these, and a test keeps the two in step) is the list of
those names. ``load_settings`` reads them once from a mapping (``os.environ`` in the function host, a
dict in tests), validates them in declaration order and raises one ``ConfigurationError`` that names
every missing or malformed setting; a value is never echoed and secrets are kept out of ``repr``.
``ApiAuthMode`` is also read alone by shared.authmode, which the host needs before the library loads.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
import urllib.parse
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

import msgspec

from shared.authmode import API_AUTH_MODES, ApiAuthMode
from shared.errors import ConfigurationError

AppType = Literal["SingleTenant", "MultiTenant", "UserAssignedMSI"]

DEFAULT_SERVICE_URL = "https://smba.trafficmanager.net/teams/"
DEFAULT_AUTHORITY_HOST = "https://login.microsoftonline.com"
DEFAULT_GRAPH_ENDPOINT = "https://graph.microsoft.com"
DEFAULT_QUEUE_NAME = "notifications"
DEFAULT_TABLE_PREFIX = "teamsnotify"
DEFAULT_API_ROLE = "Notifications.Send"
DEFAULT_RETENTION_DAYS = 30
MIN_SIGNING_KEY_BYTES = 32

# Azurite's well-known shortcut, expanded so azure-data-tables understands it.
_DEVELOPMENT_STORAGE = (
    "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
    "AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;"
    "TableEndpoint=http://127.0.0.1:10002/devstoreaccount1;"
)
_URI_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://\S+")
_TABLE_PREFIX_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]{2,39}$")
_APP_ROLE_RE = re.compile(r"[A-Za-z0-9._-]{1,120}")
_FAILED = object()  # an earlier setting that was given but is malformed (absent from the validated ones)


class _Invalid(Exception):
    """A problem with one setting; load_settings reports it as "<setting name> <text>"."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text


# parse: a given (trimmed, non-empty) value to the field's value. rule: the field's value (given or
# default) checked against the settings validated before it (by attribute; a malformed one is absent).
_Parse = Callable[[str], Any]
_Rule = Callable[[Any, Mapping[str, Any]], Any]


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


def _check(test: Callable[[str], object], text: str) -> _Parse:
    def check(value: str) -> str:
        if not test(value):
            raise _Invalid(text)
        return value

    return check


def _one_of(choices: Mapping[str, str], text: str) -> _Parse:
    """A case-insensitive choice, returned in its canonical spelling."""

    def choose(value: str) -> str:
        if value.lower() not in choices:
            raise _Invalid(text)
        return choices[value.lower()]

    return choose


def _number(low: float, high: float, kind: type[float] | type[int] = float) -> _Parse:
    def number(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not low <= value <= high:
            raise _Invalid(f"must be a number between {low:g} and {high:g}")
        return kind(value)

    return number


def _whole_days(raw: str) -> int:
    try:
        days = int(raw) if raw.isdigit() else -1
    except ValueError:  # a digit int() does not read, such as "²"
        days = -1
    if not 0 <= days <= 3650:
        raise _Invalid("must be a whole number of days from 0 to 3650 (0 keeps rows forever)")
    return days


def _true_or_false(raw: str) -> bool:
    if raw.lower() not in ("true", "false"):
        raise _Invalid("must be true or false")
    return raw.lower() == "true"


def _signing_key(raw: str) -> bytes:
    malformed = _Invalid(f"must be base64 of at least {MIN_SIGNING_KEY_BYTES} random bytes")
    try:
        key = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise malformed from None
    if len(key) < MIN_SIGNING_KEY_BYTES:
        raise malformed
    return key


def _service_url(value: str) -> str:
    # A local Bot Connector emulator (Agents Playground) serves plain http on loopback.
    if not (_https_url(value) or _loopback_http_url(value)):
        raise _Invalid("must be an https:// URL (http:// only on loopback)")
    return value if value.endswith("/") else value + "/"


def _https_endpoint(value: str) -> str:
    if not _https_url(value):
        raise _Invalid("must be an https:// URL")
    return value.rstrip("/")


def _expand_storage(value: str) -> str:
    return _DEVELOPMENT_STORAGE if value.lower() == "usedevelopmentstorage=true" else value


_NOT_A_CONNECTION_STRING = (
    "is not a storage connection string (AccountName with AccountKey or SharedAccessSignature, or TableEndpoint)"
)


def _table_storage(value: str) -> str:
    value = _expand_storage(value)
    if not _storage_connection_string(value):
        raise _Invalid(_NOT_A_CONNECTION_STRING)
    return value


def _password_or_federated(value: str | None, earlier: Mapping[str, Any]) -> str | None:
    # A malformed ManagedIdentityClientId was given (and is reported itself).
    mi_given = earlier.get("managed_identity_client_id", _FAILED) is not None
    app_type = earlier.get("app_type", "SingleTenant")
    if value is None and app_type != "UserAssignedMSI" and not mi_given:
        raise _Invalid(
            "is missing: set it (local development) "
            "or set ManagedIdentityClientId for the secretless federated credential"
        )
    return value


def _storage(value: str | None, earlier: Mapping[str, Any]) -> str | None:
    if earlier.get("table_storage_connection", _FAILED) is not None:
        return value  # TableStorageConnection holds the tables; AzureWebJobsStorage is the host's
    if value is None and earlier.get("table_service_uri") is None:
        raise _Invalid(
            "is missing: set a storage connection string, TableStorageConnection, "
            "or AzureWebJobsStorage__tableServiceUri for an identity-based connection"
        )
    if value is not None and not _storage_connection_string(value):
        raise _Invalid(_NOT_A_CONNECTION_STRING)
    return value


def _audience(value: str | None, earlier: Mapping[str, Any]) -> str | None:
    if value is None and earlier.get("api_auth_mode") == "EntraId":
        raise _Invalid("is missing: ApiAuthMode EntraId needs the API's Application ID URI (api://...)")
    if value is not None and not (_is_guid(value) or _URI_RE.fullmatch(value)):
        raise _Invalid("must be the API's Application ID URI (e.g. api://<client id>) or its client id")
    return value


# Each field's reading, by app-setting name, in declaration order: (default, parse, rule, secret).
_DECLARED: dict[str, tuple[Any, _Parse | None, _Rule | None, bool]] = {}


def _setting(
    name: str,
    default: Any = msgspec.NODEFAULT,
    *,
    parse: _Parse | None = None,
    rule: _Rule | None = None,
    secret: bool = False,
) -> Any:
    """A field of Settings read from the app setting ``name``; without a default it is required.
    ``parse`` turns a given value into the field's value (None: the trimmed text). ``rule`` then checks
    the value, given or default, against the settings declared before it. A ``secret`` is not in repr."""
    _DECLARED[name] = (default, parse, rule, secret)
    return msgspec.field(default=default, name=name)


_GUID = _check(_is_guid, "must be a GUID")
_APP_TYPES: dict[str, AppType] = {t.lower(): t for t in ("SingleTenant", "MultiTenant", "UserAssignedMSI")}


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    """Every app setting, under its app-setting name. Fields are validated in this order, so a rule
    that depends on another setting comes after it."""

    app_id: str = _setting("MicrosoftAppId", parse=_GUID)
    tenant_id: str = _setting("MicrosoftAppTenantId", parse=_GUID)
    teams_app_id: str = _setting("TeamsAppId", parse=_GUID)
    app_type: AppType = _setting(
        "MicrosoftAppType",
        "SingleTenant",
        parse=_one_of(_APP_TYPES, "must be SingleTenant, MultiTenant or UserAssignedMSI"),
    )
    managed_identity_client_id: str | None = _setting(
        "ManagedIdentityClientId", None, parse=_check(_is_guid, "must be a GUID (the managed identity's client id)")
    )
    app_password: str | None = _setting("MicrosoftAppPassword", None, rule=_password_or_federated, secret=True)
    service_url: str = _setting("ServiceUrl", DEFAULT_SERVICE_URL, parse=_service_url)
    authority_host: str = _setting("AuthorityHost", DEFAULT_AUTHORITY_HOST, parse=_https_endpoint)
    graph_endpoint: str = _setting("GraphEndpoint", DEFAULT_GRAPH_ENDPOINT, parse=_https_endpoint)
    # Table Storage: a connection string (secret-bearing, kept out of repr; TableStorageConnection, else
    # the host's AzureWebJobsStorage) or an identity-based endpoint (AzureWebJobsStorage__*).
    table_storage_connection: str | None = _setting("TableStorageConnection", None, parse=_table_storage, secret=True)
    table_service_uri: str | None = _setting("AzureWebJobsStorage__tableServiceUri", None)
    web_jobs_storage: str | None = _setting(
        "AzureWebJobsStorage", None, parse=_expand_storage, rule=_storage, secret=True
    )
    table_client_id: str | None = _setting("AzureWebJobsStorage__clientId", None)
    # "managedidentity": only the app's managed identity; otherwise the Functions host's developer
    # chain (DefaultAzureCredential: environment, managed identity, Azure CLI, VS Code, ...).
    table_credential: str | None = _setting("AzureWebJobsStorage__credential", None, parse=str.lower)
    table_prefix: str = _setting(
        "TableNamePrefix",
        DEFAULT_TABLE_PREFIX,
        parse=_check(_TABLE_PREFIX_RE.match, "must be 3-40 letters or digits starting with a letter"),
    )
    queue_name: str = _setting("ServiceBusQueueName", DEFAULT_QUEUE_NAME)
    http_timeout: float = _setting("HttpTimeoutSeconds", 10.0, parse=_number(0.1, 120.0))
    retry_max_attempts: int = _setting("RetryMaxAttempts", 4, parse=_number(1, 10, int))
    retry_max_delay: float = _setting("RetryMaxDelaySeconds", 30.0, parse=_number(0.0, 300.0))
    bot_openid_metadata: str | None = _setting("BotOpenIdMetadata", None)
    # Sends in flight per instance; the request rates are the whole tenant's budgets, shared by all
    # instances through Table Storage (shared.storage.budget; docs/API.md, "Rate limits").
    max_concurrent_sends: int = _setting("MaxConcurrentSends", 8, parse=_number(1, 256, int))
    tenant_send_rate: float = _setting("TenantSendRatePerSecond", 30.0, parse=_number(1.0, 1000.0))
    tenant_graph_rate: float = _setting("TenantGraphRatePerSecond", 30.0, parse=_number(1.0, 1000.0))
    # HMAC key of notification ids and queued items (NotificationSigningKey, e.g. a Key Vault
    # reference); None: a key generated once and kept in Table Storage (shared.storage.signing).
    notification_signing_key: bytes | None = _setting("NotificationSigningKey", None, parse=_signing_key, secret=True)
    # Who may call the HTTP API (shared.callerauth): function keys, or Entra ID bearer tokens.
    api_auth_mode: ApiAuthMode = _setting(
        "ApiAuthMode", "FunctionKey", parse=_one_of(API_AUTH_MODES, "must be FunctionKey or EntraId")
    )
    api_audience: str | None = _setting("ApiAudience", None, rule=_audience)
    api_required_role: str = _setting(
        "ApiRequiredRole",
        DEFAULT_API_ROLE,
        parse=_check(_APP_ROLE_RE.fullmatch, "must be an app role value (letters, digits, '.', '_', '-')"),
    )
    # The recipients' side (shared.storage.optout, shared.retention).
    reinstall_after_uninstall: bool = _setting("ReinstallAfterUninstall", True, parse=_true_or_false)
    retention_days_requests: int = _setting("RetentionDaysRequests", DEFAULT_RETENTION_DAYS, parse=_whole_days)
    retention_days_notifications: int = _setting(
        "RetentionDaysNotifications", DEFAULT_RETENTION_DAYS, parse=_whole_days
    )
    retention_days_deliveries: int = _setting("RetentionDaysDeliveries", DEFAULT_RETENTION_DAYS, parse=_whole_days)
    retention_days_failures: int = _setting("RetentionDaysFailures", DEFAULT_RETENTION_DAYS, parse=_whole_days)
    recipient_cache_unused_days: int = _setting("RecipientCacheUnusedDays", DEFAULT_RETENTION_DAYS, parse=_whole_days)

    def _shown(self) -> Iterator[tuple[str, Any]]:
        """The fields repr and str show: every one but the secrets."""
        for attribute in _SHOWN:
            yield attribute, getattr(self, attribute)

    def __repr__(self) -> str:
        return "Settings(" + ", ".join(f"{name}={value!r}" for name, value in self._shown()) + ")"

    def __str__(self) -> str:
        return " ".join(f"{name}={value!r}" for name, value in self._shown())

    def __rich_repr__(self) -> list[tuple[str, Any]]:
        return list(self._shown())

    @property
    def table_connection_string(self) -> str | None:
        """The tables' connection string: TableStorageConnection, else AzureWebJobsStorage."""
        return self.table_storage_connection or self.web_jobs_storage

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


if tuple(_DECLARED) != Settings.__struct_encode_fields__:
    raise TypeError("every field of Settings is declared once with _setting()")
# (attribute, app-setting name, default, parse, rule) of every field, in declaration order.
_FIELDS = tuple(
    (attribute, name, *_DECLARED[name][:3])
    for attribute, name in zip(Settings.__struct_fields__, Settings.__struct_encode_fields__, strict=True)
)
_SHOWN = tuple(
    attribute
    for attribute, name in zip(Settings.__struct_fields__, Settings.__struct_encode_fields__, strict=True)
    if not _DECLARED[name][3]
)

# Every app setting the code reads. Settings written by the Functions platform itself
# (IDENTITY_ENDPOINT, WEBSITE_*) are not ours and are not listed.
SETTING_NAMES: tuple[str, ...] = (
    *Settings.__struct_encode_fields__,
    "ServiceBusConnection",  # read by the host's Service Bus trigger and output bindings (function_app.py)
)


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every setting; raise one ConfigurationError naming all that are wrong.

    Only our settings are read, trimmed; an empty one counts as unset, so its default applies."""
    source = os.environ if env is None else env
    valid: dict[str, Any] = {}  # by attribute; a setting that is wrong is left out
    problems: list[tuple[str, str]] = []
    for attribute, name, default, parse, rule in _FIELDS:
        raw = source.get(name)
        given = raw.strip() if raw is not None else ""
        try:
            if given:
                value = given if parse is None else parse(given)
            elif default is msgspec.NODEFAULT:
                problems.append((name, "is missing"))
                continue
            else:
                value = default
            if rule is not None:
                value = rule(value, valid)
        except _Invalid as invalid:
            problems.append((name, invalid.text))
            continue
        except ValueError:  # not one of ours: named without its value
            problems.append((name, "is malformed"))
            continue
        valid[attribute] = value
    if problems:
        # Raised outside the except blocks: no exception (which might hold a value) is its context.
        raise ConfigurationError(
            "Invalid configuration: " + "; ".join(f"{name} {text}" for name, text in problems) + ".",
            code="configuration_error",
            target=", ".join(name for name, _ in problems),
        )
    return Settings(**valid)
