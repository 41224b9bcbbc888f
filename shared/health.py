"""Liveness and readiness: are the settings usable and is Table Storage reachable?

``check_health`` backs the anonymous ``GET /api/health``: cheap (one Table Storage read, no token,
no Graph), and its answer carries check names and stable codes only: no secret, no tenant data,
no message text. The detailed diagnosis (tokens, consent, catalog, a recipient) is ``shared.doctor``.

``probe_store`` is the store check both share: one point read of a key that never exists, with no
SDK retries and a short connect timeout, so a store that is down answers in about a second rather
than after azure-core's retry back-off.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.errors import NotifyError, TransientError
from shared.storage.tables import translate_storage_errors

logger = logging.getLogger(__name__)

# The table every deployment has (the ChannelAccount store) and a row key no entity ever uses.
PROBE_TABLE_SUFFIX = "accounts"
_PROBE_PARTITION = "health"
_PROBE_ROW = "probe"
_PROBE_TIMEOUT = 3.0


async def probe_store(table: Any) -> None:
    """One cheap authorised read of the app's table. Returns when the store answered (a missing
    entity or a not-yet-created table both prove it is reachable); raises a NotifyError otherwise."""
    from azure.core.exceptions import ResourceNotFoundError

    try:
        with translate_storage_errors():
            await table.get_entity(
                _PROBE_PARTITION,
                _PROBE_ROW,
                retry_total=0,
                connection_timeout=_PROBE_TIMEOUT,
                read_timeout=_PROBE_TIMEOUT,
            )
    except ResourceNotFoundError:
        return


@dataclass(frozen=True)
class HealthReport:
    """Whether this process can serve (``ok``), and each check's status and stable code."""

    ok: bool
    checks: dict[str, dict[str, str]] = field(default_factory=dict)

    def failed(self) -> list[str]:
        """The codes of the failed checks, in order."""
        return [c["code"] for c in self.checks.values() if c.get("status") == "fail" and "code" in c]


async def check_health(env: Mapping[str, str] | None = None) -> HealthReport:
    """Readiness of the process's services (built on first use, as the other triggers build them)."""
    from shared.bootstrap import get_services

    checks: dict[str, dict[str, str]] = {}
    try:
        services = get_services(env)
    except NotifyError as err:
        checks["settings"] = {"status": "fail", "code": err.code}
        checks["store"] = {"status": "skipped"}
        return HealthReport(False, checks)
    checks["settings"] = {"status": "ok"}
    try:
        await probe_store(services.table(PROBE_TABLE_SUFFIX))
    except NotifyError as err:
        logger.warning("health: store check failed (%s)", err.code)
        checks["store"] = {"status": "fail", "code": _store_code(err)}
        return HealthReport(False, checks)
    checks["store"] = {"status": "ok"}
    return HealthReport(True, checks)


def _store_code(err: NotifyError) -> str:
    if isinstance(err, TransientError):
        return "storage_unavailable"
    return err.code
