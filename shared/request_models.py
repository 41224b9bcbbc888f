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
from typing import Annotated, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails, PydanticCustomError

from shared.errors import InvalidRequestError
from shared.jsonbody import MAX_BODY_BYTES, MAX_RECIPIENTS, json_object, too_large
from shared.message_content import Card, MessageContent, Summary, Text

# Fan-out (docs/API.md, "Sending to many recipients"): up to SYNC_RECIPIENTS are sent while the caller
# waits (200), more are queued (202 + Location).
SYNC_RECIPIENTS = 20
GUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_MAX_FIELD_NAME_IN_MESSAGE = 64


Recipient = Annotated[str, Field(min_length=1, max_length=320)]


class Addressing(BaseModel):
    """Whom a send goes to: one user (``recipient``) or many (``recipients``), in a tenant."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False)

    recipient: Annotated[
        str | None,
        Field(
            min_length=1,
            max_length=320,
            title="Recipient",
            description="The user to message: their UPN (user@contoso.com) or Entra object id. Give recipient or "
            "recipients.",
        ),
    ] = None
    recipients: Annotated[
        list[Recipient] | None,
        Field(
            min_length=1,
            max_length=MAX_RECIPIENTS,
            title="Recipients",
            description="Several users to message (UPNs and/or Entra object ids, up to 10,000). Up to 20 are sent "
            "at once (200); more are queued (202 with a Location to poll).",
        ),
    ] = None
    tenant_id: Annotated[
        str | None,
        Field(
            alias="tenantId",
            pattern=GUID_PATTERN,
            title="Tenant id",
            description="The recipient's Entra tenant id (a GUID). Default: the app's home tenant.",
        ),
    ] = None

    @field_validator("recipient")
    @classmethod
    def _recipient_is_a_name(cls, value: str | None) -> str | None:
        return None if value is None else _a_name(value)

    @field_validator("recipients")
    @classmethod
    def _recipients_are_names(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [_a_name(v) for v in value]

    @model_validator(mode="after")
    def _recipient_or_recipients(self) -> Self:
        if (self.recipient is None) == (self.recipients is None):
            raise PydanticCustomError("recipient_count", "give recipient or recipients (exactly one of the two)")
        return self

    def recipient_list(self) -> list[str]:
        """Every recipient once (the first spelling of each, case-insensitively), in request order."""
        seen: dict[str, str] = {}
        for name in [self.recipient] if self.recipient is not None else list(self.recipients or []):
            seen.setdefault(name.lower(), name)
        return list(seen.values())


# The bases in this order keep the request's field order (recipient, recipients, tenantId, text, card,
# summary: pydantic collects fields from the last base first) and check whom before what: an
# inherited validator of Addressing runs before MessageContent's.
class NotifyRequest(MessageContent, Addressing):
    """The body of ``POST /api/notify`` and of a Service Bus message: text and/or card to one user
    (``recipient``) or to many (``recipients``)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False)

    def fingerprint(self) -> str:
        """A digest of what is sent to whom: a repeated idempotency key must carry the same request."""
        content = self.model_dump(by_alias=True)
        if content["recipients"] is None:
            del content["recipients"]  # single-recipient fingerprints stay what they were before fan-out
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


def _a_name(value: str) -> str:
    stripped = value.strip()
    if not stripped or _CONTROL_CHARS.search(stripped) or stripped in (".", ".."):
        raise ValueError("must be a UPN or an Entra object id")
    return stripped


class UpdateRequest(MessageContent):
    """The body of ``PUT /api/notifications/{id}``: the new content of the sent message."""

    text: Annotated[Text, Field(description="The new message text (Markdown).")] = None
    card: Annotated[Card, Field(description="The new Adaptive Card JSON object. Give text, card, or both.")] = None
    summary: Annotated[Summary, Field(description="Optional preview text.")] = None


class FanOutItem(BaseModel):
    """The body of one queued per-recipient send of a large notification (written by the app itself).

    The Functions Service Bus output binding of a Python app sets only the message body, not its
    message id, so the deterministic ``deliveryId`` travels in the body and is the idempotency key."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    delivery_id: Annotated[str, Field(alias="deliveryId", min_length=1, max_length=200)]
    notification_id: Annotated[str, Field(alias="notificationId", min_length=1, max_length=200)]
    recipient: Recipient
    # HMAC tag over notification id, recipient and delivery id (shared.storage.signing): a hand-made item is refused.
    signature: Annotated[str | None, Field(alias="signature", max_length=100)] = None


def parse_notify_request(body: bytes, content_type: str | None = None) -> NotifyRequest:
    """Validate a raw request body. Raises ``InvalidRequestError`` naming the field at fault (never echoing
    the body). ``content_type`` is checked when given (HTTP); the queue passes None."""
    payload = json_object(body, content_type)
    try:
        request = NotifyRequest.model_validate(payload)
    except ValidationError as err:
        raise _validation_error(err.errors(include_url=False, include_input=False)) from None
    if request.content_bytes() > MAX_BODY_BYTES:
        raise too_large(request.content_bytes())
    return request


def parse_update_request(body: bytes, content_type: str | None = None) -> UpdateRequest:
    """Validate the body of ``PUT /api/notifications/{id}`` (same conventions as a send)."""
    payload = json_object(body, content_type)
    try:
        request = UpdateRequest.model_validate(payload)
    except ValidationError as err:
        raise _validation_error(err.errors(include_url=False, include_input=False), UpdateRequest) from None
    if request.content_bytes() > MAX_BODY_BYTES:
        raise too_large(request.content_bytes())
    return request


def _field_name(error: ErrorDetails) -> str:
    parts = [str(p) for p in error["loc"]]
    name = ".".join(parts) if parts else "body"
    if len(name) > _MAX_FIELD_NAME_IN_MESSAGE:
        name = name[:_MAX_FIELD_NAME_IN_MESSAGE] + "..."
    return name


def _describe(error: ErrorDetails, model: type[BaseModel] = NotifyRequest) -> str:
    field, kind = _field_name(error), error["type"]
    if kind == "missing":
        return f"{field} is required"
    if kind == "extra_forbidden":
        allowed = ", ".join(f.alias or name for name, f in model.model_fields.items())
        return f"unknown field '{field}' (allowed: {allowed})"
    if field == "tenantId" and kind in {"string_pattern_mismatch", "string_type"}:
        return "tenantId must be a GUID"
    if kind == "recipient_count":
        return str(error["msg"])
    if kind == "value_error":
        reason = str(error["msg"]).removeprefix("Value error, ")
        return f"{field} {reason}" if error["loc"] else reason
    return f"{field}: {error['msg']}"


def _validation_error(errors: list[ErrorDetails], model: type[BaseModel] = NotifyRequest) -> InvalidRequestError:
    first = errors[0]
    unknown = [e for e in errors if e["type"] == "extra_forbidden"]
    if unknown:
        first = unknown[0]
    messages = "; ".join(_describe(e, model) for e in ([first] + [e for e in errors if e is not first]))
    code = "unknown_field" if first["type"] == "extra_forbidden" else "invalid_request"
    target = _field_name(first) if first["loc"] else "body"
    # Errors on the model itself point at the fields to add.
    if first["type"] == "recipient_count":
        target = "recipient"
    elif not first["loc"]:
        target = "text, card"
    return InvalidRequestError(f"Invalid request: {messages}.", code=code, target=target)
