"""The requests the app accepts (a send, an update, a queued fan-out item), each validated by one model.

The notify interface is described in docs/API.md, "Sending from Power Automate, scripts and Service Bus".

One model, one validation, for every way a send request arrives: the HTTP body of ``POST /api/notify``
and the body of a Service Bus message are both parsed by ``parse_notify_request``. The Power Automate
connector's OpenAPI definition (connector/apiDefinition.swagger.json) describes these same models; a
test keeps the two in step. The content (text, card, summary) is ``shared.message_content``'s
``MessageContent``, which both a send and an update are.

Unknown fields are rejected (400 ``unknown_field`` naming the field): a misspelt ``tenantID`` or
``Text`` silently ignored would send the wrong message or to the wrong tenant.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any, TypeVar

import msgspec
from msgspec import Meta

from shared.errors import InvalidRequestError
from shared.jsonbody import MAX_BODY_BYTES, MAX_RECIPIENTS, json_object, too_large
from shared.message_content import Card, MessageContent, Summary, Text

# Fan-out (docs/API.md, "Sending to many recipients"): up to SYNC_RECIPIENTS are sent while the caller
# waits (200), more are queued (202 + Location).
SYNC_RECIPIENTS = 20
GUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_MAX_FIELD_NAME_IN_MESSAGE = 64
# msgspec's ValidationError: "<what was expected> - at `$.field[3]`" (no location: the object itself).
_AT = re.compile(r"^(?P<reason>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.DOTALL)
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]+)`$")
NOT_A_NAME = "must be a UPN or an Entra object id"
ONE_OF_TWO = "give recipient or recipients (exactly one of the two)"

Recipient = Annotated[str, Meta(min_length=1, max_length=320)]


class NotifyRequest(MessageContent, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body of ``POST /api/notify`` and of a Service Bus message: text and/or card to one user
    (``recipient``) or to many (``recipients``), in a tenant."""

    recipient: (
        Annotated[
            Recipient,
            Meta(
                title="Recipient",
                description="The user to message: their UPN (user@contoso.com) or Entra object id. Give recipient "
                "or recipients.",
            ),
        ]
        | None
    ) = None
    recipients: (
        Annotated[
            list[Recipient],
            Meta(
                min_length=1,
                max_length=MAX_RECIPIENTS,
                title="Recipients",
                description="Several users to message (UPNs and/or Entra object ids, up to 10,000). Up to 20 are "
                "sent at once (200); more are queued (202 with a Location to poll).",
            ),
        ]
        | None
    ) = None
    tenant_id: (
        Annotated[
            str,
            Meta(
                pattern=GUID_PATTERN,
                title="Tenant id",
                description="The recipient's Entra tenant id (a GUID). Default: the app's home tenant.",
            ),
        ]
        | None
    ) = msgspec.field(default=None, name="tenantId")

    def recipient_list(self) -> list[str]:
        """Every recipient once (the first spelling of each, case-insensitively), in request order."""
        seen: dict[str, str] = {}
        for name in [self.recipient] if self.recipient is not None else list(self.recipients or []):
            seen.setdefault(name.lower(), name)
        return list(seen.values())

    def fingerprint(self) -> str:
        """A digest of what is sent to whom: a repeated idempotency key must carry the same request."""
        content: dict[str, Any] = {
            "recipient": self.recipient,
            "recipients": self.recipients,
            "tenantId": self.tenant_id,
            "text": self.text,
            "card": self.card,
            "summary": self.summary,
        }
        if content["recipients"] is None:
            del content["recipients"]  # single-recipient fingerprints stay what they were before fan-out
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


# The request's fields as a caller reads them: whom, then what (the "allowed" list of unknown_field).
NOTIFY_FIELDS = ("recipient", "recipients", "tenantId", "text", "card", "summary")


def _a_name(value: str) -> str | None:
    """The recipient trimmed, or None when it cannot name a user."""
    stripped = value.strip()
    if not stripped or _CONTROL_CHARS.search(stripped) or stripped in (".", ".."):
        return None
    return stripped


class UpdateRequest(MessageContent, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body of ``PUT /api/notifications/{id}``: the new content of the sent message."""

    text: Annotated[Text, Meta(description="The new message text (Markdown).")] | None = None
    card: Annotated[Card, Meta(description="The new Adaptive Card JSON object. Give text, card, or both.")] | None = (
        None
    )
    summary: Annotated[Summary, Meta(description="Optional preview text.")] | None = None


UPDATE_FIELDS = ("text", "card", "summary")


class FanOutItem(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The body of one queued per-recipient send of a large notification (written by the app itself).

    The Functions Service Bus output binding of a Python app sets only the message body, not its
    message id, so the deterministic ``deliveryId`` travels in the body and is the idempotency key."""

    delivery_id: Annotated[str, Meta(min_length=1, max_length=200)] = msgspec.field(name="deliveryId")
    notification_id: Annotated[str, Meta(min_length=1, max_length=200)] = msgspec.field(name="notificationId")
    recipient: Recipient
    # HMAC tag over notification id, recipient and delivery id (shared.storage.signing): a hand-made item is refused.
    signature: Annotated[str, Meta(max_length=100)] | None = None

    def to_json(self) -> str:
        return msgspec.json.encode(self).decode()


def fan_out_item(payload: Any) -> FanOutItem | None:
    """A queued per-recipient item, or None when ``payload`` is not one."""
    try:
        return msgspec.convert(payload, FanOutItem)
    except msgspec.ValidationError:
        return None


def parse_notify_request(body: bytes, content_type: str | None = None) -> NotifyRequest:
    """Validate a raw request body. Raises ``InvalidRequestError`` naming the field at fault (never echoing
    the body). ``content_type`` is checked when given (HTTP); the queue passes None."""
    return notify_request(json_object(body, content_type))


def notify_request(payload: dict[str, Any]) -> NotifyRequest:
    """Validate a send request already read as a JSON object (as ``parse_notify_request``)."""
    request = _convert(payload, NotifyRequest, NOTIFY_FIELDS)
    recipient, recipients = request.recipient, request.recipients
    if recipient is not None:
        recipient = _a_name(recipient)
        if recipient is None:
            raise _invalid(f"recipient {NOT_A_NAME}", "recipient")
    if recipients is not None:
        names = [_a_name(r) for r in recipients]
        for index, name in enumerate(names):
            if name is None:
                raise _invalid(f"recipients {NOT_A_NAME} (item {index})", "recipients")
        recipients = [name for name in names if name is not None]
    if (recipient is None) == (recipients is None):
        raise _invalid(ONE_OF_TWO, "recipient")
    _check_content(request)
    request = msgspec.structs.replace(request, recipient=recipient, recipients=recipients)
    if request.content_bytes() > MAX_BODY_BYTES:
        raise too_large(request.content_bytes())
    return request


def parse_update_request(body: bytes, content_type: str | None = None) -> UpdateRequest:
    """Validate the body of ``PUT /api/notifications/{id}`` (same conventions as a send)."""
    request = _convert(json_object(body, content_type), UpdateRequest, UPDATE_FIELDS)
    _check_content(request)
    if request.content_bytes() > MAX_BODY_BYTES:
        raise too_large(request.content_bytes())
    return request


_Model = TypeVar("_Model", NotifyRequest, UpdateRequest)


def _convert(payload: dict[str, Any], model: type[_Model], fields: tuple[str, ...]) -> _Model:
    """The payload as ``model``: unknown fields first (a misspelt field explains the errors after it),
    then the fields' types and constraints."""
    unknown = [name for name in payload if name not in fields]
    if unknown:
        names = "; ".join(f"unknown field '{_shortened(name)}'" for name in unknown)
        raise InvalidRequestError(
            f"Invalid request: {names} (allowed: {', '.join(fields)}).",
            code="unknown_field",
            target=_shortened(unknown[0]),
        )
    try:
        return msgspec.convert(payload, model)
    except msgspec.ValidationError as err:
        raise _field_error(str(err)) from None


def _field_error(text: str) -> InvalidRequestError:
    """msgspec's first error, named by the field at fault (never echoing a value: msgspec's messages
    name the expected type or constraint only)."""
    found = _AT.match(text)
    reason, path = (found.group("reason"), found.group("path") or "") if found else (text, "")
    missing = _MISSING.match(reason)
    if missing:
        field = missing.group("field")
        return _invalid(f"{field} is required", field)
    field = _shortened(re.sub(r"\[(\d+)\]", r".\1", path).lstrip(".")) or "body"
    if field == "tenantId":
        return _invalid("tenantId must be a GUID", field)
    return _invalid(f"{field}: {reason}", field)


def _check_content(request: MessageContent) -> None:
    problem = request.problem()
    if problem is not None:
        field, reason = problem
        raise _invalid(f"{field} {reason}" if field == "card" else reason, field)


def _shortened(name: str) -> str:
    return name[:_MAX_FIELD_NAME_IN_MESSAGE] + "..." if len(name) > _MAX_FIELD_NAME_IN_MESSAGE else name


def _invalid(message: str, target: str) -> InvalidRequestError:
    return InvalidRequestError(f"Invalid request: {message}.", code="invalid_request", target=target)
