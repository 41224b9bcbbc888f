"""The request and response models of the notify interface (docs/API.md, "Sending from Power Automate,
scripts and Service Bus").

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

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails, PydanticCustomError

from shared.errors import InvalidRequestError

# Teams is the judge of a message's size: its limit is about 100 KB measured as UTF-16 (text, card,
# mentions; base64 images excluded), and over it the connector answers 413 MessageSizeTooBig, which
# becomes message_too_large. Refused here, before any upstream call, is only what Teams would
# certainly refuse: a message whose content alone (UTF-8 JSON) is over the 262,144 bytes the
# connector accepts as a request body (Teams docs, "Format your bot messages": message size).
MAX_BODY_BYTES = 262_144
# A raw body may spell every character as a 6-byte \uXXXX escape: parsed up to that much.
MAX_RAW_BODY_BYTES = 6 * MAX_BODY_BYTES
# Fan-out (docs/API.md, "Sending to many recipients"): up to MAX_RECIPIENTS per request; up to
# SYNC_RECIPIENTS are sent while the caller waits (200), more are queued (202 + Location).
MAX_RECIPIENTS = 10_000
SYNC_RECIPIENTS = 20
# A request naming 10,000 recipients is larger than one message: the raw body may be this large,
# the message itself (text, card, summary) still at most MAX_BODY_BYTES.
MAX_REQUEST_BYTES = MAX_RAW_BODY_BYTES + MAX_RECIPIENTS * 330
GUID_PATTERN = r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
# JSON nested deeper than this is refused (413 json_too_deep) before anything walks it recursively
# (json, pydantic, Table Storage and Teams all have limits of their own, some of them crashes). A
# real Adaptive Card nests well under half of it (one card level is an object and an array).
MAX_JSON_DEPTH = 64
_MAX_FIELD_NAME_IN_MESSAGE = 64


Recipient = Annotated[str, Field(min_length=1, max_length=320)]


class NotifyRequest(BaseModel):
    """The body of ``POST /api/notify`` and of a Service Bus message: text and/or card to one user
    (``recipient``) or to many (``recipients``)."""

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
    text: Annotated[
        str | None,
        Field(
            min_length=1,
            title="Text",
            description="The message text (Markdown). Give text, card, or both. Teams accepts about 100 KB of text "
            "and card together, measured as UTF-16 (2 bytes per character; images as URLs).",
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
    def _recipient_is_a_name(cls, value: str | None) -> str | None:
        return None if value is None else _a_name(value)

    @field_validator("recipients")
    @classmethod
    def _recipients_are_names(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else [_a_name(v) for v in value]

    @field_validator("card")
    @classmethod
    def _card_is_adaptive(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and value.get("type") != "AdaptiveCard":
            raise ValueError('must be an Adaptive Card object with "type": "AdaptiveCard"')
        return value

    @model_validator(mode="after")
    def _text_or_card(self) -> NotifyRequest:
        if (self.recipient is None) == (self.recipients is None):
            raise PydanticCustomError("recipient_count", "give recipient or recipients (exactly one of the two)")
        if self.text is None and self.card is None:
            raise ValueError("give text, card, or both")
        return self

    def fingerprint(self) -> str:
        """A digest of what is sent to whom: a repeated idempotency key must carry the same request."""
        content = self.model_dump(by_alias=True)
        if content["recipients"] is None:
            del content["recipients"]  # single-recipient fingerprints stay what they were before fan-out
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def recipient_list(self) -> list[str]:
        """Every recipient once (the first spelling of each, case-insensitively), in request order."""
        seen: dict[str, str] = {}
        for name in [self.recipient] if self.recipient is not None else list(self.recipients or []):
            seen.setdefault(name.lower(), name)
        return list(seen.values())

    def content_bytes(self) -> int:
        """The size of what is sent (text, card, summary), which Teams limits."""
        content = {"text": self.text, "card": self.card, "summary": self.summary}
        return len(json.dumps(content, separators=(",", ":"), ensure_ascii=False).encode())


def _a_name(value: str) -> str:
    stripped = value.strip()
    if not stripped or _CONTROL_CHARS.search(stripped) or stripped in (".", ".."):
        raise ValueError("must be a UPN or an Entra object id")
    return stripped


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
    notification_id: Annotated[
        str | None,
        Field(
            alias="notificationId",
            title="Notification id",
            description="The id to get the status of, update or recall this message (/api/notifications/{id}).",
        ),
    ] = None


class ErrorDetail(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: Annotated[str, Field(title="Error code", description="A stable snake_case code (docs/ERRORS.md).")]
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
    """Validate a raw request body. Raises ``InvalidRequestError`` naming the field at fault (never echoing
    the body). ``content_type`` is checked when given (HTTP); the queue passes None."""
    payload = _json_object(body, content_type)
    try:
        request = NotifyRequest.model_validate(payload)
    except ValidationError as err:
        raise _validation_error(err.errors(include_url=False, include_input=False)) from None
    if request.content_bytes() > MAX_BODY_BYTES:
        raise _too_large(request.content_bytes())
    return request


def _json_object(body: bytes, content_type: str | None) -> dict[str, Any]:
    if content_type is not None and content_type.strip():
        media_type = content_type.split(";", 1)[0].strip().lower()
        if media_type != "application/json" and not media_type.endswith("+json"):
            raise InvalidRequestError(
                "The body must be JSON: send Content-Type: application/json.",
                code="unsupported_media_type",
                target="Content-Type",
                http_status=415,
            )
    if len(body) > MAX_REQUEST_BYTES or (len(body) > MAX_RAW_BODY_BYTES and b'"recipients"' not in body):
        raise _too_large(len(body))
    if not body.strip():
        raise InvalidRequestError(
            "The request body is empty: send a JSON object.", code="invalid_request", target="body"
        )
    payload = loads_strict(body)
    if not isinstance(payload, dict):
        raise InvalidRequestError("The request body must be a JSON object.", code="invalid_request", target="body")
    return payload


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"the number {text[:20]} is too large")
    return value


def loads_strict(body: bytes | str, target: str = "body") -> Any:
    """Parse untrusted JSON strictly, or raise ``InvalidRequestError``: UTF-8 only, no NaN/Infinity, no
    number beyond a float or Python's 4,300-digit integer limit, no lone surrogate in a string
    (400 ``invalid_json``), nesting at most ``MAX_JSON_DEPTH`` (413 ``json_too_deep``). Whatever it
    returns can be re-serialised, stored and sent as JSON without an error."""
    if _nesting_exceeds(body, MAX_JSON_DEPTH):
        raise InvalidRequestError(
            f"The JSON is nested deeper than {MAX_JSON_DEPTH} levels.",
            code="json_too_deep",
            target=target,
            http_status=413,
        )
    try:
        payload = json.loads(body, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        position = f" at line {err.lineno}, column {err.colno}" if isinstance(err, json.JSONDecodeError) else ""
        raise InvalidRequestError(
            f"The request {target} is not valid UTF-8 JSON{position}.", code="invalid_json", target=target
        ) from None
    except (ValueError, RecursionError) as err:
        # int() past its digit limit, NaN/Infinity, a float out of range.
        reason = str(err) if "JSON" in str(err) or "too large" in str(err) else "a number is too large"
        raise InvalidRequestError(
            f"The request {target} is not valid JSON: {reason}.", code="invalid_json", target=target
        ) from None
    if _has_lone_surrogate(payload):
        raise InvalidRequestError(
            f"The request {target} is not valid JSON: a string holds a lone UTF-16 surrogate (\\ud800-\\udfff).",
            code="invalid_json",
            target=target,
        )
    return payload


def _nesting_exceeds(body: bytes | str, limit: int) -> bool:
    """True when brackets nest deeper than ``limit`` outside strings (a cheap scan before parsing,
    which would recurse once per level)."""
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return False
    depth = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):
            depth += 1
            if depth > limit:
                return True
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return False


def _has_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return True
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _too_large(size: int) -> InvalidRequestError:
    return InvalidRequestError(
        f"The message is {size} bytes; Teams refuses any message over {MAX_BODY_BYTES} bytes (its limit is "
        "about 100 KB of text and card measured as UTF-16).",
        code="message_too_large",
        target="body",
        http_status=413,
    )


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


# --- notifications: status, update, recall (docs/API.md, "Sending to many recipients", "Updating and
# recalling a message") -----------------------------------------------------------------------------

DeliveryState = Literal["pending", "sent", "failed", "recalled"]
ChangeOutcome = Literal["updated", "recalled", "not_sent", "failed"]


class DeliveryResult(BaseModel):
    """One recipient of a notification and what happened to their message."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    recipient: Annotated[str, Field(title="Recipient", description="The recipient as given in the request.")]
    state: Annotated[
        DeliveryState,
        Field(
            title="State",
            description="pending (queued or being retried), sent, failed (permanently: see error), or recalled.",
        ),
    ]
    activity_id: Annotated[
        str | None,
        Field(alias="activityId", title="Activity id", description="The id of the sent message, once sent."),
    ] = None
    error: Annotated[
        ErrorDetail | None,
        Field(title="Error", description="Why the message was not sent (failed), or the last transient error."),
    ] = None


class DeliveryCounts(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pending: Annotated[int, Field(title="Pending", description="Recipients not sent yet.")] = 0
    sent: Annotated[int, Field(title="Sent", description="Recipients the message was sent to.")] = 0
    failed: Annotated[int, Field(title="Failed", description="Recipients that cannot be sent to (see errors).")] = 0
    recalled: Annotated[int, Field(title="Recalled", description="Recipients whose message was recalled.")] = 0


class NotificationStatus(BaseModel):
    """``GET /api/notifications/{id}``, and the answer of ``POST /api/notify`` with ``recipients``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    notification_id: Annotated[
        str, Field(alias="notificationId", title="Notification id", description="The id of this notification.")
    ]
    finished: Annotated[
        bool,
        Field(title="Finished", description="True when every recipient is sent, failed permanently, or recalled."),
    ]
    total: Annotated[int, Field(title="Total", description="The number of distinct recipients.")]
    counts: Annotated[DeliveryCounts, Field(title="Counts", description="Recipients by state.")]
    recipients: Annotated[
        list[DeliveryResult],
        Field(title="Recipients", description="One page of recipients and their state (see continuationToken)."),
    ]
    continuation_token: Annotated[
        str | None,
        Field(
            alias="continuationToken",
            title="Continuation token",
            description="Pass as ?continuationToken= to get the next page; null on the last page.",
        ),
    ] = None


class UpdateRequest(BaseModel):
    """The body of ``PUT /api/notifications/{id}``: the new content of the sent message."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: Annotated[str | None, Field(min_length=1, title="Text", description="The new message text (Markdown).")] = (
        None
    )
    card: Annotated[
        dict[str, Any] | None,
        Field(title="Adaptive Card", description="The new Adaptive Card JSON object. Give text, card, or both."),
    ] = None
    summary: Annotated[
        str | None, Field(min_length=1, max_length=1024, title="Summary", description="Optional preview text.")
    ] = None

    @field_validator("card")
    @classmethod
    def _card_is_adaptive(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is not None and value.get("type") != "AdaptiveCard":
            raise ValueError('must be an Adaptive Card object with "type": "AdaptiveCard"')
        return value

    @model_validator(mode="after")
    def _text_or_card(self) -> UpdateRequest:
        if self.text is None and self.card is None:
            raise ValueError("give text, card, or both")
        return self

    def fingerprint(self) -> str:
        canonical = json.dumps(self.model_dump(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


class ChangeResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    recipient: Annotated[str, Field(title="Recipient", description="The recipient as given in the request.")]
    outcome: Annotated[
        ChangeOutcome,
        Field(
            title="Outcome",
            description="updated, recalled (also when it already was), not_sent (nothing to change), or failed "
            "(see error).",
        ),
    ]
    error: Annotated[
        ErrorDetail | None, Field(title="Error", description="Why the change failed for this recipient.")
    ] = None
    # Not part of the answer: how long upstream asked us to wait after a transient failure.
    _retry_after: float | None = PrivateAttr(default=None)


class ChangeResponse(BaseModel):
    """The answer of ``PUT`` and ``DELETE /api/notifications/{id}``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    notification_id: Annotated[
        str, Field(alias="notificationId", title="Notification id", description="The id of the notification.")
    ]
    results: Annotated[list[ChangeResult], Field(title="Results", description="One result per recipient.")]


class FanOutItem(BaseModel):
    """The body of one queued per-recipient send of a large notification (written by the app itself).

    The Functions Service Bus output binding of a Python app sets only the message body, not its
    message id, so the deterministic ``deliveryId`` travels in the body and is the idempotency key."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    delivery_id: Annotated[str, Field(alias="deliveryId", min_length=1, max_length=200)]
    notification_id: Annotated[str, Field(alias="notificationId", min_length=1, max_length=200)]
    recipient: Recipient
    # HMAC tag over notification id, recipient and delivery id (shared.signing): a hand-made item is refused.
    signature: Annotated[str | None, Field(alias="signature", max_length=100)] = None


def parse_update_request(body: bytes, content_type: str | None = None) -> UpdateRequest:
    """Validate the body of ``PUT /api/notifications/{id}`` (same conventions as a send)."""
    payload = _json_object(body, content_type)
    try:
        request = UpdateRequest.model_validate(payload)
    except ValidationError as err:
        raise _validation_error(err.errors(include_url=False, include_input=False), UpdateRequest) from None
    size = len(json.dumps(request.model_dump(), separators=(",", ":"), ensure_ascii=False).encode())
    if size > MAX_BODY_BYTES:
        raise _too_large(size)
    return request
