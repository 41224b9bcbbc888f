"""The request and response models of the notify interface (DESIGN.md, "Interfaces").

One model, one validation, for every way a send request arrives: the HTTP body of ``POST /api/notify``
and the body of a Service Bus message are both parsed by ``parse_notify_request``. The Power Automate
connector's OpenAPI definition (connector/apiDefinition.swagger.json) describes these same models; a
test keeps the two in step.

Unknown fields are rejected (400 ``unknown_field`` naming the field): a misspelt ``tenantID`` or
``Text`` silently ignored would send the wrong message or to the wrong tenant.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from shared.errors import RequestError

# Teams rejects messages above ~28 KB (MessageSizeTooBig); refuse them before any upstream call.
MAX_BODY_BYTES = 28 * 1024
GUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_MAX_FIELD_NAME_IN_MESSAGE = 64


class NotifyRequest(BaseModel):
    """The body of ``POST /api/notify`` and of a Service Bus message: text and/or card to one user."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=False)

    recipient: Annotated[
        str,
        Field(
            min_length=1,
            max_length=320,
            title="Recipient",
            description="The user to message: their UPN (user@contoso.com) or Entra object id.",
        ),
    ]
    tenant_id: Annotated[
        str | None,
        Field(
            alias="tenantId",
            pattern=GUID_PATTERN,
            title="Tenant id",
            description="The recipient's Entra tenant id (a GUID). Default: the app's home tenant.",
        ),
    ] = None
    text: Annotated[
        str | None,
        Field(
            min_length=1,
            title="Text",
            description="The message text (Markdown). Give text, card, or both.",
        ),
    ] = None
    card: Annotated[
        dict[str, Any] | None,
        Field(
            title="Adaptive Card",
            description='An Adaptive Card JSON object ({"type": "AdaptiveCard", ...}). Give text, card, or both.',
        ),
    ] = None
    summary: Annotated[
        str | None,
        Field(
            min_length=1,
            max_length=1024,
            title="Summary",
            description="Optional preview text shown in the notification and activity feed.",
        ),
    ] = None

    @field_validator("recipient")
    @classmethod
    def _recipient_is_a_name(cls, value: str) -> str:
        stripped = value.strip()
        if not stripped or _CONTROL_CHARS.search(stripped):
            raise ValueError("must be a UPN or an Entra object id")
        return stripped

    @field_validator("card")
    @classmethod
    def _card_is_adaptive(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and value.get("type") != "AdaptiveCard":
            raise ValueError('must be an Adaptive Card object with "type": "AdaptiveCard"')
        return value

    @model_validator(mode="after")
    def _text_or_card(self) -> NotifyRequest:
        if self.text is None and self.card is None:
            raise ValueError("give text, card, or both")
        return self

    def fingerprint(self) -> str:
        """A digest of what is sent to whom: a repeated idempotency key must carry the same request."""
        canonical = json.dumps(self.model_dump(by_alias=True), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


class NotifyResponse(BaseModel):
    """The 200 answer of ``POST /api/notify``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    status: Annotated[Literal["sent"], Field(title="Status", description='Always "sent".')]
    activity_id: Annotated[
        str | None,
        Field(
            alias="activityId",
            title="Activity id",
            description="The id of the sent message in the conversation (null if Teams did not return one).",
        ),
    ]
    conversation_id: Annotated[
        str,
        Field(alias="conversationId", title="Conversation id", description="The 1:1 conversation the message went to."),
    ]
    recipient: Annotated[str, Field(title="Recipient", description="The recipient as given in the request.")]


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: Annotated[str, Field(title="Error code", description="A stable snake_case code (README.md, Error codes).")]
    message: Annotated[str, Field(title="Message", description="What went wrong and what to do about it.")]
    target: Annotated[
        str | None,
        Field(title="Target", description="The request field, header, setting or permission at fault."),
    ] = None


class ErrorResponse(BaseModel):
    """Every 4xx/5xx answer: ``{"error": {"code", "message", "target"}}``."""

    model_config = ConfigDict(extra="forbid")

    error: Annotated[ErrorDetail, Field(title="Error", description="The error.")]


def parse_notify_request(body: bytes, content_type: str | None = None) -> NotifyRequest:
    """Validate a raw request body. Raises ``RequestError`` naming the field at fault (never echoing
    the body). ``content_type`` is checked when given (HTTP); the queue passes None."""
    if content_type is not None and content_type.strip():
        media_type = content_type.split(";", 1)[0].strip().lower()
        if media_type != "application/json" and not media_type.endswith("+json"):
            raise RequestError(
                "The body must be JSON: send Content-Type: application/json.",
                code="unsupported_media_type",
                target="Content-Type",
                http_status=415,
            )
    if len(body) > MAX_BODY_BYTES:
        raise RequestError(
            f"The request body is {len(body)} bytes; Teams accepts messages up to about {MAX_BODY_BYTES} bytes.",
            code="message_too_large",
            target="body",
            http_status=413,
        )
    if not body.strip():
        raise RequestError("The request body is empty: send a JSON object.", code="invalid_request", target="body")
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        position = f" at line {err.lineno}, column {err.colno}" if isinstance(err, json.JSONDecodeError) else ""
        raise RequestError(
            f"The request body is not valid UTF-8 JSON{position}.", code="invalid_json", target="body"
        ) from None
    if not isinstance(payload, dict):
        raise RequestError("The request body must be a JSON object.", code="invalid_request", target="body")
    try:
        return NotifyRequest.model_validate(payload)
    except ValidationError as err:
        raise _validation_error(err.errors(include_url=False, include_input=False)) from None


def _field_name(error: ErrorDetails) -> str:
    parts = [str(p) for p in error["loc"]]
    name = ".".join(parts) if parts else "body"
    if len(name) > _MAX_FIELD_NAME_IN_MESSAGE:
        name = name[:_MAX_FIELD_NAME_IN_MESSAGE] + "..."
    return name


def _describe(error: ErrorDetails) -> str:
    field, kind = _field_name(error), error["type"]
    if kind == "missing":
        return f"{field} is required"
    if kind == "extra_forbidden":
        allowed = ", ".join(f.alias or name for name, f in NotifyRequest.model_fields.items())
        return f"unknown field '{field}' (allowed: {allowed})"
    if field == "tenantId" and kind in {"string_pattern_mismatch", "string_type"}:
        return "tenantId must be a GUID"
    if kind == "value_error":
        reason = str(error["msg"]).removeprefix("Value error, ")
        return f"{field} {reason}" if error["loc"] else reason
    return f"{field}: {error['msg']}"


def _validation_error(errors: list[ErrorDetails]) -> RequestError:
    first = errors[0]
    unknown = [e for e in errors if e["type"] == "extra_forbidden"]
    if unknown:
        first = unknown[0]
    messages = "; ".join(_describe(e) for e in ([first] + [e for e in errors if e is not first]))
    code = "unknown_field" if first["type"] == "extra_forbidden" else "invalid_request"
    target = _field_name(first) if first["loc"] else "body"
    # Errors on the model itself (text or card missing) point at the fields to add.
    if not first["loc"]:
        target = "text, card"
    return RequestError(f"Invalid request: {messages}.", code=code, target=target)
