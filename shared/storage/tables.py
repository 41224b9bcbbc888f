"""The Table Storage plumbing every store of the app shares: keys any string can have, the error
mapping into our error tree, and tables created on first use."""

from __future__ import annotations

import asyncio
import hashlib
from typing import TYPE_CHECKING, Any, Literal

from shared.errors import ConfigurationError, TransientError

if TYPE_CHECKING:
    from azure.data.tables.aio import TableClient

_FORBIDDEN_KEY_CHARS = frozenset("/\\#?%")


# Table Storage keys are at most 1 KiB of UTF-16 (512 code units; Azurite enforces exactly that). An
# escaped key longer than that is cut to _KEY_PREFIX_UNITS and ends with "%~" + a SHA-256 of the
# whole value: "%~" never occurs in an escaped key ('%' is always followed by two hex digits), so a
# shortened key never equals a plain one, and the digest keeps distinct values apart.
MAX_KEY_UNITS = 512
_KEY_PREFIX_UNITS = 400


def escape_key(value: str) -> str:
    """A Table Storage key for any string: '/', '\\', '#', '?', '%' and control characters are
    percent-encoded (Table Storage forbids them; guest UPNs contain '#EXT#'). Reversible while it fits
    the key limit; a longer one is shortened with a digest (see MAX_KEY_UNITS), so every value has a
    key that Table Storage accepts."""
    out: list[str] = []
    for ch in value:
        code = ord(ch)
        if ch in _FORBIDDEN_KEY_CHARS or code < 0x20 or 0x7F <= code <= 0x9F:
            out.append(f"%{code:02X}")
        else:
            out.append(ch)
    escaped = "".join(out)
    if len(escaped) <= MAX_KEY_UNITS // 2 or _utf16_units(escaped) <= MAX_KEY_UNITS:
        return escaped
    prefix: list[str] = []
    units = 0
    for piece in out:
        units += _utf16_units(piece)
        if units > _KEY_PREFIX_UNITS:
            break
        prefix.append(piece)
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:40]
    return "".join(prefix) + "%~" + digest


def _utf16_units(text: str) -> int:
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def unescape_key(value: str) -> str:
    from urllib.parse import unquote

    return unquote(value, encoding="latin-1")


class TableBacked:
    """Base of the app's Table Storage stores: their TableClients (the first is ``_table``), each
    table created on first use."""

    def __init__(self, table: TableClient, *more: TableClient) -> None:
        self._table = table
        self._all_tables = (table, *more)
        self._ready = False
        self._ready_lock = asyncio.Lock()

    async def _ensure_table(self) -> None:
        if self._ready:
            return
        async with self._ready_lock:
            if not self._ready:
                for table in self._all_tables:
                    await create_table_if_missing(table)
                self._ready = True

    async def close(self) -> None:
        for table in self._all_tables:
            await table.close()


class translate_storage_errors:
    """Turn azure-core transport/service errors into our tree (storage down = transient)."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> Literal[False]:
        if exc is None:
            return False
        from azure.core.exceptions import (
            ClientAuthenticationError,
            HttpResponseError,
            ResourceExistsError,
            ResourceModifiedError,
            ResourceNotFoundError,
            ServiceRequestError,
            ServiceResponseError,
        )

        if isinstance(exc, ResourceNotFoundError | ResourceExistsError | ResourceModifiedError):
            return False  # expected answers the caller handles
        if isinstance(exc, ClientAuthenticationError):
            raise ConfigurationError(
                "Table Storage rejected our credentials: check AzureWebJobsStorage / TableStorageConnection "
                "or the identity's Storage Table Data Contributor role.",
                code="storage_unauthorized",
                target="AzureWebJobsStorage",
            ) from exc
        if isinstance(exc, ServiceRequestError | ServiceResponseError):
            raise TransientError("Table Storage could not be reached.", target="storage", retry_after=5.0) from exc
        if isinstance(exc, HttpResponseError):
            status = exc.status_code or 0
            if status in (403,):
                raise ConfigurationError(
                    "Table Storage refused the request: check the storage role assignment.",
                    code="storage_unauthorized",
                    target="AzureWebJobsStorage",
                ) from exc
            raise TransientError(f"Table Storage answered {status}.", target="storage", retry_after=5.0) from exc
        return False


async def create_table_if_missing(table: TableClient) -> None:
    from azure.core.exceptions import ResourceExistsError

    try:
        with translate_storage_errors():
            await table.create_table()
    except ResourceExistsError:
        pass


async def update_if_unchanged(
    table: TableClient, entity: dict[str, Any], etag: str | None, *, merge: bool = False
) -> Any:
    """Update ``entity`` only if it is still as read (``etag``; Table Storage answers 412
    UpdateConditionNotMet otherwise): the write's metadata (its new ``etag``), or None when another
    writer changed or deleted it meanwhile. ``merge`` keeps the properties ``entity`` does not name."""
    from azure.core import MatchConditions
    from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
    from azure.data.tables import UpdateMode

    try:
        with translate_storage_errors():
            return await table.update_entity(
                entity,
                mode=UpdateMode.MERGE if merge else UpdateMode.REPLACE,
                etag=etag,
                match_condition=MatchConditions.IfNotModified,
            )
    except (ResourceModifiedError, ResourceNotFoundError):
        return None
