"""The app settings, declared once as a pydantic model, and ``load_settings``, which reads and validates them.

Every setting the code reads is a field of ``Settings`` under its app-setting name, so ``SETTING_NAMES``
(infra/ provisions exactly these, and a test keeps the two in step) is the model's list of aliases.
``load_settings`` reads them once from a mapping (``os.environ`` in the function host, a dict in tests)
and raises one ``ConfigurationError`` that names every missing or malformed setting; a value is never
echoed and secrets are kept out of ``repr``. ``ApiAuthMode`` is also read alone by shared.authmode,
which the host needs before the library loads.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError

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
_FAILED = object()  # in ValidationInfo.data: an earlier setting that was given but is malformed


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


def _invalid(text: str) -> PydanticCustomError:
    """A problem with one setting; load_settings reports it as "<setting name> <text>"."""
    return PydanticCustomError("setting", text)


def _check(test: Callable[[str], object], text: str) -> AfterValidator:
    def check(value: str | None) -> str | None:
        if value is not None and not test(value):
            raise _invalid(text)
        return value

    return AfterValidator(check)


def _one_of(choices: Mapping[str, str], text: str) -> BeforeValidator:
    """A case-insensitive choice, returned in its canonical spelling."""

    def choose(value: str) -> str:
        if value.lower() not in choices:
            raise _invalid(text)
        return choices[value.lower()]

    return BeforeValidator(choose)


def _number(low: float, high: float, kind: type[float] | type[int] = float) -> BeforeValidator:
    def number(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if not low <= value <= high:
            raise _invalid(f"must be a number between {low:g} and {high:g}")
        return kind(value)

    return BeforeValidator(number)


def _whole_days(raw: str) -> int:
    try:
        days = int(raw) if raw.isdigit() else -1
    except ValueError:  # a digit int() does not read, such as "²"
        days = -1
    if not 0 <= days <= 3650:
        raise _invalid("must be a whole number of days from 0 to 3650 (0 keeps rows forever)")
    return days


def _true_or_false(raw: str) -> bool:
    if raw.lower() not in ("true", "false"):
        raise _invalid("must be true or false")
    return raw.lower() == "true"


def _signing_key(raw: str) -> bytes:
    malformed = _invalid(f"must be base64 of at least {MIN_SIGNING_KEY_BYTES} random bytes")
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
        raise _invalid("must be an https:// URL (http:// only on loopback)")
    return value if value.endswith("/") else value + "/"


def _https_endpoint(value: str) -> str:
    if not _https_url(value):
        raise _invalid("must be an https:// URL")
    return value.rstrip("/")


def _expand_storage(value: str | None) -> str | None:
    return _DEVELOPMENT_STORAGE if value is not None and value.lower() == "usedevelopmentstorage=true" else value


_NOT_A_CONNECTION_STRING = (
    "is not a storage connection string (AccountName with AccountKey or SharedAccessSignature, or TableEndpoint)"
)
_APP_TYPES: dict[str, AppType] = {t.lower(): t for t in ("SingleTenant", "MultiTenant", "UserAssignedMSI")}
Guid = Annotated[str, _check(_is_guid, "must be a GUID")]
Days = Annotated[int, BeforeValidator(_whole_days)]
StorageConnection = Annotated[str | None, BeforeValidator(_expand_storage)]


class Settings(BaseModel):
    """Every app setting, under its app-setting name (the alias). Fields are validated in this order,
    so a rule that depends on another setting comes after it."""

    model_config = ConfigDict(frozen=True)

    app_id: Guid = Field(alias="MicrosoftAppId")
    tenant_id: Guid = Field(alias="MicrosoftAppTenantId")
    teams_app_id: Guid = Field(alias="TeamsAppId")
    app_type: Annotated[
        AppType, _one_of(_APP_TYPES, "must be SingleTenant, MultiTenant or UserAssignedMSI")
    ] = Field("SingleTenant", alias="MicrosoftAppType")
    managed_identity_client_id: Annotated[
        str | None, _check(_is_guid, "must be a GUID (the managed identity's client id)")
    ] = Field(None, alias="ManagedIdentityClientId")
    app_password: str | None = Field(None, alias="MicrosoftAppPassword", repr=False, validate_default=True)
    service_url: Annotated[str, AfterValidator(_service_url)] = Field(DEFAULT_SERVICE_URL, alias="ServiceUrl")
    authority_host: Annotated[str, AfterValidator(_https_endpoint)] = Field(
        DEFAULT_AUTHORITY_HOST, alias="AuthorityHost"
    )
    graph_endpoint: Annotated[str, AfterValidator(_https_endpoint)] = Field(
        DEFAULT_GRAPH_ENDPOINT, alias="GraphEndpoint"
    )
    # Table Storage: a connection string (secret-bearing, kept out of repr; TableStorageConnection, else
    # the host's AzureWebJobsStorage) or an identity-based endpoint (AzureWebJobsStorage__*).
    table_storage_connection: StorageConnection = Field(None, alias="TableStorageConnection", repr=False)
    table_service_uri: str | None = Field(None, alias="AzureWebJobsStorage__tableServiceUri")
    web_jobs_storage: StorageConnection = Field(None, alias="AzureWebJobsStorage", repr=False, validate_default=True)
    table_client_id: str | None = Field(None, alias="AzureWebJobsStorage__clientId")
    # "managedidentity": only the app's managed identity; otherwise the Functions host's developer
    # chain (DefaultAzureCredential: environment, managed identity, Azure CLI, VS Code, ...).
    table_credential: Annotated[str | None, AfterValidator(lambda v: v and v.lower())] = Field(
        None, alias="AzureWebJobsStorage__credential"
    )
    table_prefix: Annotated[
        str, _check(_TABLE_PREFIX_RE.match, "must be 3-40 letters or digits starting with a letter")
    ] = Field(DEFAULT_TABLE_PREFIX, alias="TableNamePrefix")
    queue_name: str = Field(DEFAULT_QUEUE_NAME, alias="ServiceBusQueueName")
    http_timeout: Annotated[float, _number(0.1, 120.0)] = Field(10.0, alias="HttpTimeoutSeconds")
    retry_max_attempts: Annotated[int, _number(1, 10, int)] = Field(4, alias="RetryMaxAttempts")
    retry_max_delay: Annotated[float, _number(0.0, 300.0)] = Field(30.0, alias="RetryMaxDelaySeconds")
    bot_openid_metadata: str | None = Field(None, alias="BotOpenIdMetadata")
    # Sends in flight per instance; the request rates are the whole tenant's budgets, shared by all
    # instances through Table Storage (shared.storage.budget; docs/API.md, "Rate limits").
    max_concurrent_sends: Annotated[int, _number(1, 256, int)] = Field(8, alias="MaxConcurrentSends")
    tenant_send_rate: Annotated[float, _number(1.0, 1000.0)] = Field(30.0, alias="TenantSendRatePerSecond")
    tenant_graph_rate: Annotated[float, _number(1.0, 1000.0)] = Field(30.0, alias="TenantGraphRatePerSecond")
    # HMAC key of notification ids and queued items (NotificationSigningKey, e.g. a Key Vault
    # reference); None: a key generated once and kept in Table Storage (shared.storage.signing).
    notification_signing_key: Annotated[bytes | None, BeforeValidator(_signing_key)] = Field(
        None, alias="NotificationSigningKey", repr=False
    )
    # Who may call the HTTP API (shared.callerauth): function keys, or Entra ID bearer tokens.
    api_auth_mode: Annotated[ApiAuthMode, _one_of(API_AUTH_MODES, "must be FunctionKey or EntraId")] = Field(
        "FunctionKey", alias="ApiAuthMode"
    )
    api_audience: str | None = Field(None, alias="ApiAudience", validate_default=True)
    api_required_role: Annotated[
        str, _check(_APP_ROLE_RE.fullmatch, "must be an app role value (letters, digits, '.', '_', '-')")
    ] = Field(DEFAULT_API_ROLE, alias="ApiRequiredRole")
    # The recipients' side (shared.storage.optout, shared.retention).
    reinstall_after_uninstall: Annotated[bool, BeforeValidator(_true_or_false)] = Field(
        True, alias="ReinstallAfterUninstall"
    )
    retention_days_requests: Days = Field(DEFAULT_RETENTION_DAYS, alias="RetentionDaysRequests")
    retention_days_notifications: Days = Field(DEFAULT_RETENTION_DAYS, alias="RetentionDaysNotifications")
    retention_days_deliveries: Days = Field(DEFAULT_RETENTION_DAYS, alias="RetentionDaysDeliveries")
    retention_days_failures: Days = Field(DEFAULT_RETENTION_DAYS, alias="RetentionDaysFailures")
    recipient_cache_unused_days: Days = Field(DEFAULT_RETENTION_DAYS, alias="RecipientCacheUnusedDays")

    @model_validator(mode="before")
    @classmethod
    def _given(cls, source: Any) -> dict[str, str]:
        """Only our settings, trimmed; an empty one counts as unset, so its default applies."""
        values = {name: source.get(name) for name in SETTING_NAMES}
        return {name: value.strip() for name, value in values.items() if value is not None and value.strip()}

    @field_validator("app_password")
    @classmethod
    def _password_or_federated(cls, value: str | None, info: ValidationInfo) -> str | None:
        # A malformed ManagedIdentityClientId was given (and is reported itself).
        mi_given = info.data.get("managed_identity_client_id", _FAILED) is not None
        app_type = info.data.get("app_type", "SingleTenant")
        if value is None and app_type != "UserAssignedMSI" and not mi_given:
            raise _invalid(
                "is missing: set it (local development) "
                "or set ManagedIdentityClientId for the secretless federated credential"
            )
        return value

    @field_validator("web_jobs_storage")
    @classmethod
    def _storage(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("table_storage_connection", _FAILED) is not None:
            return value  # TableStorageConnection holds the tables; AzureWebJobsStorage is the host's
        if value is None and info.data.get("table_service_uri") is None:
            raise _invalid(
                "is missing: set a storage connection string, TableStorageConnection, "
                "or AzureWebJobsStorage__tableServiceUri for an identity-based connection"
            )
        if value is not None and not _storage_connection_string(value):
            raise _invalid(_NOT_A_CONNECTION_STRING)
        return value

    @field_validator("table_storage_connection")
    @classmethod
    def _table_storage(cls, value: str | None) -> str | None:
        if value is not None and not _storage_connection_string(value):
            raise _invalid(_NOT_A_CONNECTION_STRING)
        return value

    @field_validator("api_audience")
    @classmethod
    def _audience(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None and info.data.get("api_auth_mode") == "EntraId":
            raise _invalid("is missing: ApiAuthMode EntraId needs the API's Application ID URI (api://...)")
        if value is not None and not (_is_guid(value) or _URI_RE.fullmatch(value)):
            raise _invalid("must be the API's Application ID URI (e.g. api://<client id>) or its client id")
        return value

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


# Every app setting the code reads. Settings written by the Functions platform itself
# (IDENTITY_ENDPOINT, WEBSITE_*) are not ours and are not listed.
SETTING_NAMES: tuple[str, ...] = (
    *(str(field.alias) for field in Settings.model_fields.values()),
    "ServiceBusConnection",  # read by the host's Service Bus trigger and output bindings (function_app.py)
)


def _problem_text(error: ErrorDetails) -> str:
    if error["type"] == "setting":
        return error["msg"]
    return "is missing" if error["type"] == "missing" else "is malformed"


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read and validate every setting; raise one ConfigurationError naming all that are wrong."""
    try:
        return Settings.model_validate(os.environ if env is None else env)
    except ValidationError as invalid:
        # Our validators raise only "setting" errors; anything else is named without its value.
        # A defaulted setting's error is located by its field name, a given one's by its setting name.
        aliases = {name: str(field.alias) for name, field in Settings.model_fields.items()}
        problems = [
            (aliases.get(str(error["loc"][0]), str(error["loc"][0])), _problem_text(error))
            for error in invalid.errors(include_input=False)
        ]
    # Raised outside the except block: pydantic's error (which holds the values) is not its context.
    raise ConfigurationError(
        "Invalid configuration: " + "; ".join(f"{name} {text}" for name, text in problems) + ".",
        code="configuration_error",
        target=", ".join(name for name, _ in problems),
    )
