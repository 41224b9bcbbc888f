"""The typed results of a send, as the use cases pass them up: ``Sent``, ``Refused`` and ``FanOut``.

No HTTP status or JSON body is parsed back out of them: the HTTP edge (shared.service) renders them,
and the idempotency record of a key-guarded send keeps their rendering (``record_of`` /
``from_record``), so a repeated key replays the same answer.
"""

from __future__ import annotations

from typing import Any

import msgspec

from shared.errors import NotifyError, TransientError
from shared.response_models import NotificationStatus, NotifyResponse, to_body


class Sent(msgspec.Struct, frozen=True):
    """Teams accepted the message (or, ``replayed``, an earlier attempt with the same key did)."""

    recipient: str
    activity_id: str | None  # None when Teams accepted it without an id
    conversation_id: str
    notification_id: str | None = None
    service_url: str | None = None  # of a fresh send; None when replayed
    replayed: bool = False

    def body(self) -> dict[str, Any]:
        """The 200 answer of ``POST /api/notify`` (``NotifyResponse``); ``activityId`` always present."""
        response = NotifyResponse(
            status="sent",
            activity_id=self.activity_id,
            conversation_id=self.conversation_id,
            recipient=self.recipient,
            notification_id=self.notification_id,
        )
        body = {name: value for name, value in to_body(response).items() if value is not None}
        body.setdefault("activityId", None)
        return body


class Refused(msgspec.Struct, frozen=True):
    """Not sent, for good: the caller's fault (4xx), or ours or upstream's (5xx) that a retry alone
    will not fix. ``retry_after``: when a retry may do better (a transient error reported to a caller)."""

    status: int
    code: str
    message: str
    target: str | None = None
    retry_after: float | None = None
    replayed: bool = False  # the recorded result of an earlier attempt with the same key

    @classmethod
    def of(cls, err: NotifyError) -> Refused:
        retry_after = err.retry_after if isinstance(err, TransientError) else None
        return cls(err.http_status, err.code, err.message, err.target, retry_after)

    def error(self) -> dict[str, Any]:
        """``{"code", "message"[, "target"]}``: the error of the answer and of a kept failure."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.target:
            error["target"] = self.target
        return error

    def body(self) -> dict[str, Any]:
        return {"error": self.error()}


SendOutcome = Sent | Refused


def record_of(result: SendOutcome) -> tuple[int, dict[str, Any]]:
    """What an idempotency key records of a send: the status and body its repeat answers with."""
    if isinstance(result, Sent):
        return 200, result.body()
    return result.status, result.body()


def from_record(status: int, body: dict[str, Any]) -> SendOutcome:
    """A recorded result (``record_of``) as the result of a replay."""
    if status == 200:
        activity = body.get("activityId")
        conversation = body.get("conversationId")
        notification = body.get("notificationId")
        return Sent(
            recipient=str(body.get("recipient", "")),
            activity_id=str(activity) if activity is not None else None,
            conversation_id=str(conversation) if conversation is not None else "",
            notification_id=str(notification) if notification is not None else None,
            replayed=True,
        )
    error = body.get("error")
    error = error if isinstance(error, dict) else {}
    target = error.get("target")
    return Refused(
        status,
        str(error.get("code", "notify_error")),
        str(error.get("message", "")),
        str(target) if target else None,
        replayed=True,
    )


class FanOut(msgspec.Struct, frozen=True):
    """A notification to ``recipients``: the status after sending up to SYNC_RECIPIENTS now, or, with
    ``queued``, after recording the rest as pending and returning one Service Bus message body each."""

    status: NotificationStatus
    queued: bool = False
    messages: tuple[str, ...] = ()
    retry_after: float | None = None  # some recipients are pending after transient trouble
    # Over Service Bus: the error of recipients left pending by a failure on our side (configuration,
    # an upstream error) that redelivery will not fix: the message is kept for an operator.
    operator_error: Refused | None = None
