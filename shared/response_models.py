"""The answers of the HTTP API (docs/API.md): a send, a notification's status, an update or recall, and every error.

The Power Automate connector's OpenAPI definition (connector/apiDefinition.swagger.json) describes these
same models; a test keeps the two in step.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr


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
