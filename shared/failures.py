"""The operator's work on kept failures (the command-line tool calls these): ``list_failures``,
``get_failure``, ``replay_failure`` and ``drop_failure``.

A replay sends again after fixing the cause, through the same path as the queue message, so a fan-out
recipient's delivery row is updated too; it sends once, because the idempotency records make a replay
of an already-sent message a no-op, then clears the record. The failures themselves are kept by
shared.storage.failures.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from shared.errors import InvalidRequestError
from shared.queue_delivery import process_queue_body
from shared.storage.failures import FailureRecord

if TYPE_CHECKING:
    from shared.bootstrap import Services


@dataclass(frozen=True)
class ReplayResult:
    message_id: str
    outcome: Literal["sent", "already_sent", "failed"]
    code: str | None = None
    message: str | None = None
    activity_id: str | None = None
    conversation_id: str | None = None


async def list_failures(services: Services, *, limit: int | None = None) -> list[FailureRecord]:
    """Kept failures, oldest first."""
    return await services.failures.list(limit)


async def get_failure(services: Services, message_id: str) -> FailureRecord | None:
    return await services.failures.get(message_id)


async def drop_failure(services: Services, message_id: str) -> bool:
    """Forget a kept failure without sending it. False when there was none."""
    return await services.failures.delete(message_id)


async def replay_failure(services: Services, message_id: str) -> ReplayResult:
    """Send a kept message again, once. On success (or when it had been sent already) the failure
    record is cleared; when it fails permanently again the record is updated with the new reason;
    a transient failure raises ``TransientError`` and keeps the record."""
    record = await services.failures.get(message_id)
    if record is None:
        raise InvalidRequestError(
            f"No kept failure for message id '{message_id}'.",
            code="failure_not_found",
            target="messageId",
            http_status=404,
        )
    if record.body_truncated:
        raise InvalidRequestError(
            "The kept body was truncated and cannot be replayed; resend the message from its source.",
            code="body_truncated",
            target="messageId",
            http_status=409,
        )
    # The same path as the queue message (a send, a fan-out recipient, a many-recipient request).
    work = await process_queue_body(services, record.body, message_id)
    if work.failure is None:
        await services.failures.delete(message_id)
        return ReplayResult(
            message_id,
            "already_sent" if work.result == "duplicate" else "sent",
            activity_id=work.activity_id,
            conversation_id=work.conversation_id,
        )
    updated = await services.failures.note_replay_failed(record, work.failure.error(), work.failure.status)
    return ReplayResult(message_id, "failed", updated.code, updated.message)
