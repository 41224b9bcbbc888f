"""The notification header and the per-recipient delivery row: the records, and their Table Storage
entity format (content split over properties, escaped keys, page tokens). shared.storage.notifications
stores them."""

from __future__ import annotations

import base64
import binascii
import datetime
import json
from typing import Any

import msgspec

from shared.errors import InvalidRequestError
from shared.message_content import MessageContent
from shared.response_models import DeliveryResult, DeliveryState, ErrorDetail
from shared.storage.tables import escape_key

HEADER_ROW = "notification"


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class Delivery(msgspec.Struct, frozen=True):
    notification_id: str
    recipient: str
    tenant_id: str
    state: DeliveryState
    activity_id: str | None = None
    conversation_id: str | None = None
    service_url: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    content_fingerprint: str | None = None  # of the last update applied
    etag: str | None = None
    error_status: int | None = None  # HTTP status of the last error (pending: ours or upstream's; failed: 4xx)

    @property
    def needs_operator(self) -> bool:
        """Still pending after a failure on our side that a retry alone will not fix (configuration,
        permissions, an upstream error): kept for an operator's replay rather than redelivered."""
        return self.state == "pending" and self.error_status is not None and self.error_status not in (409, 503)

    def result(self) -> DeliveryResult:
        error = ErrorDetail(code=self.error_code, message=self.error_message or "") if self.error_code else None
        return DeliveryResult(recipient=self.recipient, state=self.state, activity_id=self.activity_id, error=error)


class Header(msgspec.Struct, frozen=True):
    notification_id: str
    tenant_id: str
    total: int
    fingerprint: str
    content: MessageContent
    source: str = ""  # "http" (Idempotency-Key) or "queue" (message id); "" on rows written before it
    recalled: bool = False  # the whole notification was recalled: queued items are not sent
    owner: str = ""  # the Entra ID client that created it ("" for function keys and the queue)


# A Table Storage string property holds at most 32K UTF-16 characters, and a message Teams accepts
# (~100 KB as UTF-16) may need up to four: the content is kept in "Content", "Content1", ... and
# "ContentParts" says how many (rows written before it have one "Content").
_CONTENT_CHARS = 30_000


def content_properties(content: str) -> dict[str, Any]:
    parts = [content[i : i + _CONTENT_CHARS] for i in range(0, max(1, len(content)), _CONTENT_CHARS)]
    properties: dict[str, Any] = {"ContentParts": len(parts)}
    for index, part in enumerate(parts):
        properties["Content" if index == 0 else f"Content{index}"] = part
    return properties


def joined_content(entity: Any) -> str:
    parts = int(entity.get("ContentParts") or 1)
    return str(entity["Content"]) + "".join(str(entity[f"Content{i}"]) for i in range(1, parts))


def recipient_row(recipient: str) -> str:
    return escape_key(recipient.strip().lower())


def content_json(content: MessageContent) -> str:
    """The content as a header stores it ("Content"...): a JSON object of its text, card and summary,
    the absent ones left out."""
    return json.dumps(content.content_dict(), separators=(",", ":"), ensure_ascii=False)


def content_of(stored: str) -> MessageContent:
    """A header's stored content read back (only text, card and summary count; as stored, so not
    validated again)."""
    content = json.loads(stored)
    return MessageContent(text=content.get("text"), card=content.get("card"), summary=content.get("summary"))


def entity_of(d: Delivery) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "PartitionKey": escape_key(d.notification_id),
        "RowKey": recipient_row(d.recipient),
        "NotificationId": d.notification_id,
        "Recipient": d.recipient,
        "TenantId": d.tenant_id,
        "State": d.state,
        "ActivityId": d.activity_id or "",
        "ConversationId": d.conversation_id or "",
        "ServiceUrl": d.service_url or "",
        "ErrorCode": d.error_code or "",
        "ErrorMessage": d.error_message or "",
        "ContentFingerprint": d.content_fingerprint or "",
        "ErrorStatus": d.error_status or 0,
        "UpdatedAt": utc_now(),
    }
    return entity


def delivery_of(entity: Any, etag: str | None = None) -> Delivery:
    def text(name: str) -> str | None:
        value = entity.get(name)
        return str(value) if value else None

    state = str(entity.get("State", "pending"))
    return Delivery(
        notification_id=str(entity["NotificationId"]),
        recipient=str(entity["Recipient"]),
        tenant_id=str(entity["TenantId"]),
        state=state if state in ("pending", "sent", "failed", "recalled") else "pending",  # type: ignore[arg-type]
        activity_id=text("ActivityId"),
        conversation_id=text("ConversationId"),
        service_url=text("ServiceUrl"),
        error_code=text("ErrorCode"),
        error_message=text("ErrorMessage"),
        content_fingerprint=text("ContentFingerprint"),
        error_status=int(entity.get("ErrorStatus") or 0) or None,
        etag=str(entity.metadata["etag"]) if getattr(entity, "metadata", None) else etag,
    )


def encode_token(raw: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(raw, separators=(",", ":")).encode()).decode().rstrip("=")


def decode_token(token: str) -> Any:  # by_page is typed str; the tables SDK takes this dict
    """The Table Storage continuation (``{"PartitionKey": ..., "RowKey": ...}``) a page token carries."""
    invalid = InvalidRequestError(
        "continuationToken is not one this API returned.", code="invalid_continuation_token", target="continuationToken"
    )
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, RecursionError) as err:
        raise invalid from err
    if (
        not isinstance(raw, dict)
        or not raw
        or not set(raw) <= {"PartitionKey", "RowKey"}
        or not all(isinstance(v, str) for v in raw.values())
    ):
        raise invalid
    return {str(k): str(v) for k, v in raw.items()}
