"""Queue delivery: what one Service Bus message comes to (a send, one fan-out recipient, or a
many-recipient request), and keeping a message that failed permanently for an operator.

``handle_queue_message``: one Service Bus message -> ``"sent" | "duplicate" | "kept" | "delivered" |
"fanned_out"``, or an exception when the message must be redelivered (transient trouble, or its
failure could not be kept). ``process_queue_body`` is what a queue message comes to, shared by the
trigger and the operator's replay (shared.failures). Over Service Bus a duplicate delivery polls the
key's record for up to ``Waits.queue_in_flight`` and completes as soon as the first attempt has
recorded its result (or sends itself if the first released the key); only a key still held after that
is abandoned, after a short pause, so the queue's delivery attempts outlast the lease. Any other
transient failure waits what upstream asked (Retry-After), up to ``QUEUE_WAIT_SECONDS``, before the
message is redelivered.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from typing import Literal

import msgspec

from shared.bootstrap import Services, Waits, get_services
from shared.callerauth import QUEUE_CALLER, act_as
from shared.delivery import IN_FLIGHT_RETRY_AFTER
from shared.errors import NotifyError, RequestInProgressError, TransientError
from shared.fanout import handle_fan_out_item, send_single, start_notification
from shared.jsonbody import loads_strict
from shared.logcontext import accept_correlation_id, correlation
from shared.notification_ids import notification_id_for
from shared.request_models import FanOutItem, fan_out_item, parse_notify_request
from shared.results import Refused, Sent
from shared.storage.idempotency import check_key

logger = logging.getLogger(__name__)

# Over Service Bus, any transient failure waits out what upstream asked (Retry-After) up to this long
# before the message is redelivered (well inside functionTimeout and the lock's auto-renewal): as long
# as the deployed wait for a key held by another delivery (shared.bootstrap.Waits).
QUEUE_WAIT_SECONDS = Waits().queue_in_flight

QueueResult = Literal["sent", "duplicate", "kept", "delivered", "fanned_out"]


class QueueDelivery(msgspec.Struct, frozen=True):
    """What the Service Bus trigger hands over about one message."""

    body: bytes
    message_id: str
    delivery_count: int | None = None
    enqueued_time: datetime.datetime | None = None
    correlation_id: str | None = None


class QueueOutcome(msgspec.Struct, frozen=True):
    result: QueueResult
    # Fan-out: per-recipient message bodies for the trigger's Service Bus output binding.
    messages: tuple[str, ...] = ()


class QueueWork(msgspec.Struct, frozen=True):
    """What one queue message body came to (``process_queue_body``): a result, the fan-out messages
    to emit, and, when it must be kept for an operator, why."""

    result: QueueResult
    messages: tuple[str, ...] = ()
    failure: Refused | None = None
    activity_id: str | None = None
    conversation_id: str | None = None


async def process_queue_body(services: Services, body: bytes, message_id: str) -> QueueWork:
    """One queue message body, as the queue trigger and an operator's replay both handle it. Raises
    ``TransientError`` when it must be tried again (redelivery, or a later replay)."""
    try:
        key = check_key(message_id, target="messageId")
        item = _fan_out_item(body)
        if item is not None:
            row = await handle_fan_out_item(services, item, wait_seconds=services.waits.queue_in_flight)
            logger.info("fan-out delivery %s: %s", item.delivery_id, row.state)
            if row.needs_operator or row.state == "failed":
                failure = Refused(row.error_status or 500, str(row.error_code), row.error_message or "")
                # A recipient's own fault is final and shown by the status; ours is kept for a replay.
                return QueueWork("kept" if row.needs_operator else "delivered", failure=failure)
            return QueueWork("delivered", activity_id=row.activity_id, conversation_id=row.conversation_id)
        request = parse_notify_request(body)
        if request.recipients is not None:
            fanned = await start_notification(services, request, notification_id_for(key), "queue")
            if fanned.operator_error is not None:
                return QueueWork("kept", fanned.messages, failure=fanned.operator_error)
            if fanned.retry_after is not None:
                raise TransientError("Some recipients could not be sent yet.", retry_after=fanned.retry_after)
            return QueueWork("fanned_out", fanned.messages)
        result = await send_single(
            services,
            request,
            notification_id_for(key),
            source="queue",
            key=key,
            record_failures=False,
            wait_seconds=services.waits.queue_in_flight,
        )
    except TransientError:
        raise
    except NotifyError as err:
        result = Refused.of(err)
    if isinstance(result, Sent):
        return QueueWork(
            "duplicate" if result.replayed else "sent",
            activity_id=result.activity_id,
            conversation_id=result.conversation_id,
        )
    return QueueWork("kept", failure=result)


async def handle_queue_message(delivery: QueueDelivery) -> QueueOutcome:
    """One Service Bus message: sent, a duplicate of a message already sent, kept as a failure, one
    recipient of a fanned-out notification (``delivered``), or a many-recipient request (``fanned_out``:
    up to 20 sent here, more returned as per-recipient messages).

    Raises (so Service Bus redelivers, and dead-letters after maxDeliveryCount) on transient trouble,
    while another delivery of the same message is in flight, and when the failure cannot be kept.
    """
    cid = accept_correlation_id(delivery.correlation_id or delivery.message_id)
    with correlation(cid):
        services = get_services()  # a configuration error raises: nowhere to keep the message
        act_as(QUEUE_CALLER)
        logger.info("queue message %s (correlation %s) from %s", delivery.message_id, cid, QUEUE_CALLER)
        try:
            work = await process_queue_body(services, delivery.body, delivery.message_id)
        except TransientError as err:
            # Abandoning at once would burn the queue's delivery attempts in a second and dead-letter
            # the message during a short outage: wait (the message lock is renewed meanwhile) for as
            # long as upstream asked (Retry-After) or another attempt's lease on the key lasts, up to
            # QUEUE_WAIT_SECONDS per delivery, then let Service Bus redeliver: the redelivery comes no
            # earlier than Retry-After (up to 10 x 120 s), never faster than Teams allows.
            # A key held by another attempt was already waited on (polling its record), and a send Teams
            # did not confirm keeps its key for the lease, which the next delivery polls: only briefly.
            cap = QUEUE_WAIT_SECONDS
            if isinstance(err, RequestInProgressError) or err.code == "delivery_unconfirmed":
                cap = min(cap, IN_FLIGHT_RETRY_AFTER)
            pause = min(err.retry_after, cap)
            logger.warning(
                "queue message %s not sent (%s); delivery %s will be retried after %.0fs",
                delivery.message_id,
                err.code,
                delivery.delivery_count,
                pause,
            )
            await asyncio.sleep(pause)
            raise
        if work.failure is None or work.result != "kept":
            if work.result in ("sent", "duplicate"):
                already = work.result == "duplicate"
                logger.info("queue message %s %s", delivery.message_id, "was already sent" if already else "sent")
            return QueueOutcome(work.result, work.messages)
        record = await services.failures.keep(
            message_id=delivery.message_id,
            error=work.failure.error(),
            http_status=work.failure.status,
            body=delivery.body,
            delivery_count=delivery.delivery_count,
            enqueued_time=delivery.enqueued_time,
            correlation_id=cid,
        )
        logger.warning(
            "queue message %s failed permanently (%s); kept for an operator to replay", record.message_id, record.code
        )
        return QueueOutcome("kept", work.messages)


def _fan_out_item(body: bytes) -> FanOutItem | None:
    """A per-recipient fan-out message (it carries ``deliveryId``), or None for a send request."""
    if b'"deliveryId"' not in body:
        return None
    payload = loads_strict(body)  # hostile JSON is refused here as it would be for a send request
    return fan_out_item(payload)  # None: not ours after all, validated (and reported) as a send request
