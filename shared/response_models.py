"""The answers of the HTTP API (docs/API.md): a send, a notification's status, an update or recall, and every error.

The Power Automate connector's OpenAPI definition (connector/apiDefinition.swagger.json) describes these
same models; a test keeps the two in step. msgspec Structs (see shared.message_content for why);
``to_body`` renders one as its JSON object.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta


class _Answer(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """An answer of the API (forbid_unknown_fields: its JSON Schema has additionalProperties false)."""


def to_body(answer: _Answer) -> dict[str, Any]:
    """The answer as its JSON object (fields under their API names, nested answers as objects)."""
    body: dict[str, Any] = msgspec.to_builtins(answer)
    return body


class NotifyResponse(_Answer):
    """The 200 answer of ``POST /api/notify``."""

    status: Annotated[Literal["sent"], Meta(title="Status", description='Always "sent".')]
    activity_id: (
        Annotated[
            str,
            Meta(
                title="Activity id",
                description="The id of the sent message in the conversation (null if Teams did not return one).",
            ),
        ]
        | None
    ) = msgspec.field(name="activityId")
    conversation_id: Annotated[
        str, Meta(title="Conversation id", description="The 1:1 conversation the message went to.")
    ] = msgspec.field(name="conversationId")
    recipient: Annotated[str, Meta(title="Recipient", description="The recipient as given in the request.")]
    notification_id: (
        Annotated[
            str,
            Meta(
                title="Notification id",
                description="The id to get the status of, update or recall this message (/api/notifications/{id}).",
            ),
        ]
        | None
    ) = msgspec.field(default=None, name="notificationId")


class ErrorDetail(_Answer):
    code: Annotated[str, Meta(title="Error code", description="A stable snake_case code (docs/ERRORS.md).")]
    message: Annotated[str, Meta(title="Message", description="What went wrong and what to do about it.")]
    target: (
        Annotated[str, Meta(title="Target", description="The request field, header, setting or permission at fault.")]
        | None
    ) = None


class ErrorResponse(_Answer):
    """Every 4xx/5xx answer: ``{"error": {"code", "message", "target"}}``."""

    error: Annotated[ErrorDetail, Meta(title="Error", description="The error.")]


# --- notifications: status, update, recall (docs/API.md, "Sending to many recipients", "Updating and
# recalling a message") -----------------------------------------------------------------------------

DeliveryState = Literal["pending", "sent", "failed", "recalled"]
ChangeOutcome = Literal["updated", "recalled", "not_sent", "failed"]


class DeliveryResult(_Answer):
    """One recipient of a notification and what happened to their message."""

    recipient: Annotated[str, Meta(title="Recipient", description="The recipient as given in the request.")]
    state: Annotated[
        DeliveryState,
        Meta(
            title="State",
            description="pending (queued or being retried), sent, failed (permanently: see error), or recalled.",
        ),
    ]
    activity_id: (
        Annotated[str, Meta(title="Activity id", description="The id of the sent message, once sent.")] | None
    ) = msgspec.field(default=None, name="activityId")
    error: (
        Annotated[
            ErrorDetail,
            Meta(title="Error", description="Why the message was not sent (failed), or the last transient error."),
        ]
        | None
    ) = None


class DeliveryCounts(_Answer):
    pending: Annotated[int, Meta(title="Pending", description="Recipients not sent yet.")] = 0
    sent: Annotated[int, Meta(title="Sent", description="Recipients the message was sent to.")] = 0
    failed: Annotated[int, Meta(title="Failed", description="Recipients that cannot be sent to (see errors).")] = 0
    recalled: Annotated[int, Meta(title="Recalled", description="Recipients whose message was recalled.")] = 0

    def total(self) -> int:
        return self.pending + self.sent + self.failed + self.recalled


class NotificationStatus(_Answer):
    """``GET /api/notifications/{id}``, and the answer of ``POST /api/notify`` with ``recipients``."""

    notification_id: Annotated[str, Meta(title="Notification id", description="The id of this notification.")] = (
        msgspec.field(name="notificationId")
    )
    finished: Annotated[
        bool,
        Meta(title="Finished", description="True when every recipient is sent, failed permanently, or recalled."),
    ]
    total: Annotated[int, Meta(title="Total", description="The number of distinct recipients.")]
    counts: Annotated[DeliveryCounts, Meta(title="Counts", description="Recipients by state.")]
    recipients: Annotated[
        list[DeliveryResult],
        Meta(title="Recipients", description="One page of recipients and their state (see continuationToken)."),
    ]
    continuation_token: (
        Annotated[
            str,
            Meta(
                title="Continuation token",
                description="Pass as ?continuationToken= to get the next page; null on the last page.",
            ),
        ]
        | None
    ) = msgspec.field(default=None, name="continuationToken")


class ChangeResult(_Answer):
    recipient: Annotated[str, Meta(title="Recipient", description="The recipient as given in the request.")]
    outcome: Annotated[
        ChangeOutcome,
        Meta(
            title="Outcome",
            description="updated, recalled (also when it already was), not_sent (nothing to change), or failed "
            "(see error).",
        ),
    ]
    error: (
        Annotated[ErrorDetail, Meta(title="Error", description="Why the change failed for this recipient.")] | None
    ) = None


class ChangeResponse(_Answer):
    """The answer of ``PUT`` and ``DELETE /api/notifications/{id}``."""

    notification_id: Annotated[str, Meta(title="Notification id", description="The id of the notification.")] = (
        msgspec.field(name="notificationId")
    )
    results: Annotated[list[ChangeResult], Meta(title="Results", description="One result per recipient.")]
