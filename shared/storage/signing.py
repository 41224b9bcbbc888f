"""Signatures over what the app hands out and later takes back: notification ids and queued items.

A self-contained notification id (``s1.``) and a per-recipient Service Bus item carry what the app
acts on (tenant, recipient, conversation, service URL; notification id and recipient). Anyone who
can call the API or write to the queue could otherwise hand-build one, so each carries an HMAC-SHA256
tag (128 bits) over its purpose and content, with a key the deployment owns:

- ``NotificationSigningKey`` when set (base64 of at least 32 random bytes; in Azure a Key Vault
  reference), so several deployments or a key rotation can be managed outside the app;
- otherwise a key generated once per deployment and kept in Table Storage (``{TableNamePrefix}keys``,
  PartitionKey ``signing``, RowKey ``notification-ids``), written insert-if-absent so concurrent
  first instances agree on one key. It is read once per process.

An id or item signed under another key (another deployment, a hand edit) fails the check; callers
answer it as not found. Rotating the key invalidates outstanding ``s1.`` ids and queued items.

``SigningKeys`` is the protocol the use cases call; ``TableSigningKeys`` (the app's) and
``MemorySigningKeys`` (tests) implement it and pass one behaviour suite.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import secrets
from typing import TYPE_CHECKING, Protocol

from shared.errors import ConfigurationError
from shared.storage.tables import TableBacked, translate_storage_errors

if TYPE_CHECKING:
    from azure.data.tables.aio import TableClient

KEY_PARTITION = "signing"
KEY_ROW = "notification-ids"
_TAG_BYTES = 16
_KEY_BYTES = 32


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


class Signer:
    """HMAC-SHA256 tags bound to a purpose (an ``s1.`` id is never valid as a queue item's tag)."""

    def __init__(self, key: bytes) -> None:
        if len(key) < _KEY_BYTES:
            raise ValueError("a signing key has at least 32 bytes")
        self._key = key

    def __repr__(self) -> str:
        return "Signer(<key hidden>)"

    def tag(self, purpose: str, *parts: str) -> str:
        """The base64url tag of ``parts`` (joined unambiguously) for ``purpose``."""
        message = "\x1f".join((purpose, *parts)).encode()
        return _b64(hmac.new(self._key, message, hashlib.sha256).digest()[:_TAG_BYTES])

    def verify(self, tag: str, purpose: str, *parts: str) -> bool:
        return hmac.compare_digest(tag.encode(), self.tag(purpose, *parts).encode())


class SigningKeys(Protocol):
    """The deployment's signing key: the setting, or the one kept in storage (module docstring)."""

    async def signer(self) -> Signer: ...

    async def close(self) -> None: ...


class TableSigningKeys(TableBacked):
    """The deployment's signing key: the setting, or the one kept in Table Storage (module docstring)."""

    def __init__(self, configured: bytes | None, table: TableClient) -> None:
        super().__init__(table)
        self._signer = Signer(configured) if configured is not None else None
        self._lock = asyncio.Lock()

    async def signer(self) -> Signer:
        if self._signer is not None:
            return self._signer
        async with self._lock:
            if self._signer is None:
                self._signer = Signer(await self._stored_key())
        return self._signer

    async def _stored_key(self) -> bytes:
        from azure.core.exceptions import ResourceExistsError, ResourceNotFoundError

        await self._ensure_table()
        for _ in range(3):
            try:
                with translate_storage_errors():
                    entity = await self._table.get_entity(KEY_PARTITION, KEY_ROW)
                return _decode_key(str(entity.get("Key", "")))
            except ResourceNotFoundError:
                pass
            fresh = secrets.token_bytes(_KEY_BYTES)
            try:
                with translate_storage_errors():
                    await self._table.create_entity(
                        {"PartitionKey": KEY_PARTITION, "RowKey": KEY_ROW, "Key": base64.b64encode(fresh).decode()}
                    )
                return fresh
            except ResourceExistsError:
                continue  # another instance created it first: read theirs
        raise ConfigurationError(
            "The notification signing key could not be read or created in Table Storage.",
            code="signing_key_unavailable",
            target="NotificationSigningKey",
        )


class MemorySigningKeys:
    """The setting, or a key generated once and kept in process memory (tests)."""

    def __init__(self, configured: bytes | None = None) -> None:
        self._signer = Signer(configured) if configured is not None else None
        self._stored = secrets.token_bytes(_KEY_BYTES)

    def instance(self, configured: bytes | None = None) -> MemorySigningKeys:
        """Another instance of the app over the same stored key."""
        other = MemorySigningKeys(configured)
        other._stored = self._stored
        return other

    async def signer(self) -> Signer:
        return self._signer or Signer(self._stored)

    async def close(self) -> None:
        return None


def _decode_key(value: str) -> bytes:
    try:
        key = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if len(key) < _KEY_BYTES:
        raise ConfigurationError(
            "The notification signing key kept in Table Storage is malformed: delete the row "
            f"{KEY_PARTITION}/{KEY_ROW} of the keys table (outstanding ids become invalid) "
            "or set NotificationSigningKey.",
            code="signing_key_invalid",
            target="NotificationSigningKey",
        )
    return key
