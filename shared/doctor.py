"""Is this deployment set up right? The checks behind ``python -m shared.cli doctor``.

``diagnose`` runs the checks in order and yields one ``CheckResult`` per check as it completes:
settings, a Graph token, the consented Graph application permissions, the Teams app in the org
catalog, a Bot Framework token, Table Storage, and optionally one recipient resolved end to end
(installs the app for them if needed; sends nothing). A check whose prerequisite failed is skipped,
so every line names one cause. Each failure carries the library's stable error code and the fix.

Nothing here prints or logs a secret or a token: the Graph token is only decoded (not verified) in
memory to read its ``roles`` claim.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from shared.errors import ConfigurationError, NotifyError
from shared.graph import CATALOG_PERMISSION, INSTALL_PERMISSION
from shared.health import PROBE_TABLE_SUFFIX, probe_store
from shared.settings import Settings, load_settings
from shared.tokens import bot_token_tenant

logger = logging.getLogger(__name__)

Status = Literal["ok", "fail", "skip"]

# The permissions the product needs, each with the broader ones that also grant what it does.
REQUIRED_PERMISSIONS: dict[str, tuple[str, ...]] = {
    INSTALL_PERMISSION: (
        INSTALL_PERMISSION,
        "TeamsAppInstallation.ReadWriteAndConsentSelfForUser.All",
        "TeamsAppInstallation.ReadWriteForUser.All",
        "TeamsAppInstallation.ReadWriteAndConsentForUser.All",
    ),
    CATALOG_PERMISSION: (CATALOG_PERMISSION, "AppCatalog.ReadWrite.All"),
}

CHECK_TITLES: dict[str, str] = {
    "settings": "settings",
    "graph_token": "Graph token",
    "permissions": "Graph permissions",
    "catalog": "Teams app in catalog",
    "bot_token": "Bot Framework token",
    "store": "Table Storage",
    "recipient": "recipient",
}


@dataclass(frozen=True)
class CheckResult:
    name: str
    status: Status
    detail: str
    code: str | None = None
    target: str | None = None

    @property
    def title(self) -> str:
        return CHECK_TITLES.get(self.name, self.name)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"check": self.name, "status": self.status, "detail": self.detail}
        if self.code:
            out["code"] = self.code
        if self.target:
            out["target"] = self.target
        return out


def _fail(name: str, err: NotifyError) -> CheckResult:
    return CheckResult(name, "fail", err.message, err.code, err.target)


def _skip(name: str, why: str) -> CheckResult:
    return CheckResult(name, "skip", why)


def token_roles(token: str) -> list[str]:
    """The ``roles`` claim of a JWT access token, read without verifying the signature."""
    parts = token.split(".")
    if len(parts) != 3:
        return []
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, ValueError):
        return []
    roles = claims.get("roles") if isinstance(claims, dict) else None
    return [str(r) for r in roles] if isinstance(roles, list) else []


def admin_consent_url(settings: Settings, tenant_id: str) -> str:
    return f"{settings.authority_host}/{tenant_id}/adminconsent?client_id={settings.app_id}"


def missing_permissions(roles: list[str]) -> list[str]:
    have = set(roles)
    return [needed for needed, granted_by in REQUIRED_PERMISSIONS.items() if not have & set(granted_by)]


_ZERO_GUID = "00000000-0000-0000-0000-000000000000"


def placeholder_settings(env: Mapping[str, str]) -> list[str]:
    """Settings that still hold a placeholder of local.settings.json.example: the all-zero GUID or
    an ``<angle-bracketed>`` hint such as ``<client secret, local development only>``."""
    return [
        name
        for name, value in env.items()
        if isinstance(value, str) and (value.strip() == _ZERO_GUID or re.search(r"<[^<>]+>", value))
    ]


async def diagnose(
    env: Mapping[str, str], *, recipient: str | None = None, tenant_id: str | None = None
) -> AsyncIterator[CheckResult]:
    """Run every check in order, yielding each result as soon as it is known."""
    from shared.bootstrap import build_services

    placeholders = placeholder_settings(env)
    try:
        settings = load_settings(env)
        if placeholders:
            raise ConfigurationError(
                f"{', '.join(placeholders)} still hold(s) the example file's placeholder value: put in your "
                "own (the app registration's ids and secret, your Teams app id, your Service Bus connection).",
                code="placeholder_setting",
                target=", ".join(placeholders),
            )
    except NotifyError as err:
        yield _fail("settings", err)
        for name in ("graph_token", "permissions", "catalog", "bot_token", "store", "recipient"):
            if name != "recipient" or recipient:
                yield _skip(name, "needs valid settings")
        return
    credential = {"secret": "client secret", "federated": "federated credential", "msi": "managed identity"}
    yield CheckResult(
        "settings",
        "ok",
        f"app {settings.app_id}, tenant {settings.tenant_id}, {settings.app_type}, "
        f"{credential[settings.credential_kind]}",
    )

    tenant = tenant_id or settings.tenant_id
    services = build_services(settings)
    try:
        ok: dict[str, bool] = {}

        # A Graph token for the tenant (bad secret, wrong tenant, disabled app are told apart by code).
        graph_token: str | None = None
        try:
            graph_token = await services.tokens.graph_token(tenant)
        except NotifyError as err:
            yield _fail("graph_token", err)
        else:
            yield CheckResult("graph_token", "ok", f"issued for tenant {tenant}")
        ok["graph_token"] = graph_token is not None

        # The consented application permissions, from the token's roles claim.
        missing: list[str] = list(REQUIRED_PERMISSIONS)
        if graph_token is None:
            yield _skip("permissions", "needs a Graph token")
        else:
            missing = missing_permissions(token_roles(graph_token))
            if missing:
                yield CheckResult(
                    "permissions",
                    "fail",
                    f"missing application permission {' and '.join(missing)}: add it to the app registration, "
                    f"then grant admin consent at {admin_consent_url(settings, tenant)}",
                    "missing_permission",
                    ", ".join(missing),
                )
            else:
                yield CheckResult("permissions", "ok", " and ".join(REQUIRED_PERMISSIONS) + " consented")
        ok["permissions"] = graph_token is not None and not missing

        # The Teams app in the org catalog.
        ok["catalog"] = False
        if graph_token is None:
            yield _skip("catalog", "needs a Graph token")
        elif CATALOG_PERMISSION in missing:
            yield _skip("catalog", f"needs {CATALOG_PERMISSION}")
        else:
            try:
                catalog_id = await services.graph.catalog_app_id(tenant)
            except NotifyError as err:
                yield _fail("catalog", err)
            else:
                ok["catalog"] = True
                yield CheckResult("catalog", "ok", f"TeamsAppId {settings.teams_app_id} is catalog app {catalog_id}")

        # A Bot Framework token (its own authority: the app's tenant, or botframework.com).
        try:
            await services.tokens.bot_token()
        except NotifyError as err:
            ok["bot_token"] = False
            yield _fail("bot_token", err)
        else:
            ok["bot_token"] = True
            yield CheckResult("bot_token", "ok", f"issued by {bot_token_tenant(settings)}")

        # Table Storage.
        table_name = settings.table_prefix + PROBE_TABLE_SUFFIX
        try:
            await probe_store(services.table(PROBE_TABLE_SUFFIX))
        except NotifyError as err:
            ok["store"] = False
            yield CheckResult(
                "store",
                "fail",
                f"{err.message} Check AzureWebJobsStorage / TableStorageConnection "
                "(is the storage account or Azurite running?).",
                "storage_unavailable" if err.code == "upstream_unavailable" else err.code,
                err.target,
            )
        else:
            ok["store"] = True
            yield CheckResult("store", "ok", f"table {table_name} reachable")

        # One recipient, resolved end to end without sending.
        if recipient:
            failed = [CHECK_TITLES[name] for name, passed in ok.items() if not passed]
            if failed:
                yield _skip("recipient", "needs " + ", ".join(failed))
            else:
                try:
                    entry = await services.notifier.resolve(recipient, tenant)
                except NotifyError as err:
                    yield _fail("recipient", err)
                else:
                    yield CheckResult(
                        "recipient",
                        "ok",
                        f"{recipient} resolved: conversation {entry.conversation_id}, Teams account "
                        f"{entry.account_id or '(not known yet)'} (nothing sent)",
                    )
    finally:
        await services.aclose()
