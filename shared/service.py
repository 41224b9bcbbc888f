"""What the triggers call: one function per entrypoint, transport-neutral outcomes.

- ``handle_notify``: the HTTP ``POST /api/notify`` request (body bytes + headers) -> an ``Outcome``
  (status, JSON body, Retry-After, correlation id) that function_app.py turns into an HttpResponse.
- ``handle_queue_message``: one Service Bus message -> ``"sent" | "duplicate" | "kept"``, or an
  exception when the message must be redelivered (transient trouble, or its failure could not be kept).
- ``deliver``: the exactly-once send both share (and ``failures.replay_failure``): claim the
  idempotency key, send through the notify pipeline, record or release the key.

An in-flight repeat over HTTP waits briefly (``IN_FLIGHT_WAIT_SECONDS``) for the first attempt's
result and returns it; if the first attempt is still sending after that, it answers 409
``request_in_progress`` with Retry-After. Over Service Bus it raises with the holder's remaining
lease as retry_after; the trigger waits up to ``IN_FLIGHT_QUEUE_WAIT_SECONDS`` of it before the
message is redelivered, so the queue's delivery attempts outlast the lease.
``process_queue_body`` is what a queue message comes to, shared by the trigger and the operator's
replay (shared.failures).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from dataclasses import dataclass, replace
from typing import Any, Literal

from shared.bootstrap import Services, get_services
from shared.errors import NotifyError, RequestError, RequestInProgressError, TransientError
from shared.idempotency import Claimed, InFlight, Recorded, Source, check_key
from shared.logcontext import accept_correlation_id, correlation
from shared.models import FanOutItem, NotifyRequest, NotifyResponse, parse_notify_request, parse_update_request
from shared.notifications import (
    Delivery,
    delivery_from_outcome,
    get_status,
    handle_fan_out_item,
    new_notification_id,
    notification_id_for,
    open_notification,
    recall_notification,
    record_single,
    single_send_handle,
    start_notification,
    update_notification,
)
from shared.notify import Message, recipient_hash

logger = logging.getLogger(__name__)

IN_FLIGHT_WAIT_SECONDS = 5.0
COMPLETE_ATTEMPTS = 3
# Retry-After for an HTTP repeat that found the first attempt still sending: a send takes seconds.
IN_FLIGHT_RETRY_AFTER = 2.0
# Over Service Bus, a redelivery that finds the key held waits out the holder's remaining lease (up to
# 6 min after an unconfirmed send) in steps of at most this long, so the queue's 10 delivery attempts
# (10 x 120 s) outlast the lease, and one step stays well inside functionTimeout (5 min) and the
# lock's auto-renewal (5 min).
IN_FLIGHT_QUEUE_WAIT_SECONDS = 120.0

QueueResult = Literal["sent", "duplicate", "kept", "delivered", "fanned_out"]


@dataclass(frozen=True)
class Outcome:
    status: int
    body: dict[str, Any]
    retry_after: float | None = None
    replayed: bool = False  # the recorded result of an earlier attempt, nothing sent now
    correlation_id: str | None = None
    location: str | None = None  # 202: where to poll the notification's status
    # Fan-out: bodies of the per-recipient Service Bus messages the trigger's output binding writes.
    messages: tuple[str, ...] = ()
    service_url: str | None = None  # of a fresh send (not part of the body); None when replayed
    # Many recipients over Service Bus: the status and error of recipients left pending by a failure
    # on our side (configuration, an upstream error) that redelivery will not fix: keep the message.
    operator_error: tuple[int, dict[str, Any]] | None = None

    @property
    def sent(self) -> bool:
        return self.status == 200

    @property
    def code(self) -> str | None:
        error = self.body.get("error")
        return str(error.get("code")) if isinstance(error, dict) else None


def error_outcome(err: NotifyError) -> Outcome:
    retry_after = err.retry_after if isinstance(err, TransientError) else None
    return Outcome(err.http_status, err.to_body(), retry_after=retry_after)


async def deliver(
    services: Services,
    request: NotifyRequest,
    *,
    source: Source,
    key: str | None,
    record_failures: bool,
    wait_seconds: float = 0.0,
    notification_id: str | None = None,
    fingerprint: str | None = None,
) -> Outcome:
    """Send ``request`` at most once per ``key``. Returns the outcome of a send or of a permanent
    failure; raises ``TransientError`` (the key released) when a retry may succeed, and
    ``RequestInProgressError`` when another attempt holds the key. ``fingerprint`` overrides the
    request's own (a fan-out delivery is identified by its key, whatever the content)."""
    if key is None:
        return await _send(services, request, notification_id)
    tenant = request.tenant_id or services.settings.tenant_id
    fingerprint = fingerprint or request.fingerprint()
    claim = await services.requests.claim(source, tenant, key, fingerprint)
    if isinstance(claim, InFlight) and wait_seconds > 0:
        recorded = await services.requests.wait(source, tenant, key, wait_seconds)
        claim = recorded or await services.requests.claim(source, tenant, key, fingerprint)
    if isinstance(claim, Recorded):
        logger.info("idempotency key already used: returning the recorded result (HTTP %d)", claim.status)
        return Outcome(claim.status, claim.body, replayed=True)
    if isinstance(claim, InFlight):
        raise RequestInProgressError(
            "A request with this idempotency key is still being sent; ask again shortly for its result.",
            target="Idempotency-Key" if source == "http" else "messageId",
            # HTTP: the caller asks again soon. Queue: the redelivery waits for the holder's lease.
            retry_after=IN_FLIGHT_RETRY_AFTER if source == "http" else max(IN_FLIGHT_RETRY_AFTER, claim.retry_after),
        )
    try:
        outcome = await _send(services, request, notification_id)
    except TransientError as err:
        if err.code == "delivery_unconfirmed":
            # Teams may have delivered it: keep the key in flight until its lease ends, so a retry
            # does not send a second copy while the first may still land.
            logger.warning("send not confirmed; the idempotency key stays held until its lease ends")
            raise
        await _release(services, claim)
        raise
    except BaseException:
        # Cancellation (function timeout) or a bug: free the key for a retry.
        await _release(services, claim)
        raise
    # Record what a retry must get again: a send, or the caller's own mistake (4xx). Our configuration
    # and upstream failures (5xx) may be fixed before the retry, so the key is released for it.
    if outcome.sent or (record_failures and outcome.status < 500):
        await _complete(services, claim, outcome, fingerprint)
    else:
        await _release(services, claim)
    return outcome


async def _complete(services: Services, claim: Claimed, outcome: Outcome, fingerprint: str) -> None:
    for attempt in range(1, COMPLETE_ATTEMPTS + 1):
        try:
            await services.requests.complete(claim, outcome.status, outcome.body, fingerprint)
            return
        except TransientError as err:
            if attempt == COMPLETE_ATTEMPTS:
                # The send happened: report it. The marker stays in flight until its lease ends.
                logger.error("could not record the result of a key-guarded send (%s); the marker will expire", err.code)
                return
            await asyncio.sleep(0.2 * attempt)
        except NotifyError as err:
            logger.error("could not record the result of a key-guarded send (%s); the marker will expire", err.code)
            return


async def _release(services: Services, claim: Claimed) -> None:
    try:
        await services.requests.release(claim)
    except NotifyError as err:
        logger.error("could not release an idempotency key (%s); it frees itself when its lease ends", err.code)


async def _send(services: Services, request: NotifyRequest, notification_id: str | None = None) -> Outcome:
    """One send through the pipeline. Permanent failures become an Outcome; transient ones raise."""
    assert request.recipient is not None, "a send goes to one recipient"
    rhash = recipient_hash(request.tenant_id or services.settings.tenant_id, request.recipient)
    message = Message(text=request.text, card=request.card, summary=request.summary)
    try:
        result = await services.notifier.send(request.recipient, message, request.tenant_id)
    except TransientError as err:
        logger.warning("send to %s failed transiently: %s (retry after %.0fs)", rhash, err.code, err.retry_after)
        raise
    except NotifyError as err:
        logger.warning("send to %s failed: %s (target %s)", rhash, err.code, err.target)
        return error_outcome(err)
    if result.resolved:
        logger.info("sent to %s (cold path)", rhash)
    elif logger.isEnabledFor(logging.DEBUG):
        # A warm send is the common case of a broadcast: its line is DEBUG (the per-send INFO line cost
        # ~3.6% of a warm send's CPU). The caller gets the result, a fan-out's status records it, and
        # cold resolutions and every failure stay at INFO/WARNING.
        logger.debug("sent to %s (warm path)", rhash)
    response = NotifyResponse(
        status="sent",
        activity_id=result.activity_id,
        conversation_id=result.conversation_id,
        recipient=request.recipient,
        notification_id=notification_id,
    )
    body = response.model_dump(by_alias=True, exclude_none=True)
    body.setdefault("activityId", None)
    return Outcome(200, body, service_url=result.service_url)


async def handle_notify(
    body: bytes,
    *,
    content_type: str | None,
    idempotency_key: str | None = None,
    correlation_id: str | None = None,
) -> Outcome:
    """``POST /api/notify``: validate, send at most once per Idempotency-Key, map every failure to an
    error body. Never raises for a request it can answer."""
    cid = accept_correlation_id(correlation_id)
    with correlation(cid):
        try:
            request = parse_notify_request(body, content_type)
            key = check_key(idempotency_key) if idempotency_key is not None else None
            services = get_services()
            notification_id = notification_id_for(key) if key is not None else new_notification_id()
            if request.recipients is not None:
                outcome = await start_notification(services, request, notification_id, "http")
            else:
                if key is not None:
                    await open_notification(services, request, notification_id, "http")
                outcome = await deliver(
                    services,
                    request,
                    source="http",
                    key=key,
                    record_failures=True,
                    wait_seconds=IN_FLIGHT_WAIT_SECONDS,
                    notification_id=notification_id if key is not None else None,
                )
                if key is not None:
                    await _record_single_best_effort(services, request, notification_id, outcome)
                else:
                    outcome = await _identify_unkeyed(services, request, notification_id, outcome)
        except NotifyError as err:
            log = logger.warning if err.http_status >= 500 else logger.info
            log("notify request failed: %s (target %s, HTTP %d)", err.code, err.target, err.http_status)
            outcome = error_outcome(err)
        except Exception:
            logger.exception("notify request failed unexpectedly")
            outcome = Outcome(
                500, {"error": {"code": "internal_error", "message": "Unexpected error; it has been logged."}}
            )
        return replace(outcome, correlation_id=cid)


@dataclass(frozen=True)
class QueueDelivery:
    """What the Service Bus trigger hands over about one message."""

    body: bytes
    message_id: str
    delivery_count: int | None = None
    enqueued_time: datetime.datetime | None = None
    correlation_id: str | None = None


@dataclass(frozen=True)
class QueueOutcome:
    result: QueueResult
    # Fan-out: per-recipient message bodies for the trigger's Service Bus output binding.
    messages: tuple[str, ...] = ()


@dataclass(frozen=True)
class QueueWork:
    """What one queue message body came to (``process_queue_body``): a result, the fan-out messages
    to emit, and, when it must be kept for an operator, the status and error body to keep."""

    result: QueueResult
    messages: tuple[str, ...] = ()
    failure: Outcome | None = None
    activity_id: str | None = None
    conversation_id: str | None = None


async def process_queue_body(services: Services, body: bytes, message_id: str) -> QueueWork:
    """One queue message body, as the queue trigger and an operator's replay both handle it. Raises
    ``TransientError`` when it must be tried again (redelivery, or a later replay)."""
    try:
        key = check_key(message_id, target="messageId")
        item = _fan_out_item(body)
        if item is not None:
            row = await handle_fan_out_item(services, item)
            logger.info("fan-out delivery %s: %s", item.delivery_id, row.state)
            if row.needs_operator or row.state == "failed":
                status, error = row.error_status or 500, {"code": row.error_code, "message": row.error_message or ""}
                failure = Outcome(status, {"error": error})
                # A recipient's own fault is final and shown by the status; ours is kept for a replay.
                return QueueWork("kept" if row.needs_operator else "delivered", failure=failure)
            return QueueWork("delivered", activity_id=row.activity_id, conversation_id=row.conversation_id)
        request = parse_notify_request(body)
        if request.recipients is not None:
            fanned = await start_notification(services, request, notification_id_for(key), "queue")
            if fanned.operator_error is not None:
                status, error = fanned.operator_error
                return QueueWork("kept", fanned.messages, failure=Outcome(status, {"error": error}))
            if fanned.retry_after is not None:
                raise TransientError("Some recipients could not be sent yet.", retry_after=fanned.retry_after)
            return QueueWork("fanned_out", fanned.messages)
        notification_id = notification_id_for(key)
        await open_notification(services, request, notification_id, "queue")
        outcome = await deliver(
            services, request, source="queue", key=key, record_failures=False, notification_id=notification_id
        )
        await _record_single_best_effort(services, request, notification_id, outcome)
    except TransientError:
        raise
    except NotifyError as err:
        outcome = error_outcome(err)
    if outcome.sent:
        return QueueWork(
            "duplicate" if outcome.replayed else "sent",
            activity_id=_str_or_none(outcome.body.get("activityId")),
            conversation_id=_str_or_none(outcome.body.get("conversationId")),
        )
    return QueueWork("kept", failure=outcome)


def _str_or_none(value: Any) -> str | None:
    return str(value) if value is not None else None


async def _identify_unkeyed(
    services: Services, request: NotifyRequest, notification_id: str, outcome: Outcome
) -> Outcome:
    """A single send without a key: a sent one gets a self-contained id (no storage write on the hot
    path); one that cannot (see ``single_send_handle``) gets ``notification_id`` and a row, as before.
    A failure names no id, so it needs no row."""
    if not outcome.sent or request.recipient is None:
        return outcome
    tenant = request.tenant_id or services.settings.tenant_id
    sent = delivery_from_outcome(services, Delivery("", request.recipient, tenant, "pending"), outcome)
    handle = single_send_handle(sent, services.settings.service_url)
    if handle is None:
        await _record_single_best_effort(services, request, notification_id, outcome)
    return replace(outcome, body={**outcome.body, "notificationId": handle or notification_id})


async def _record_single_best_effort(
    services: Services, request: NotifyRequest, notification_id: str, outcome: Outcome
) -> None:
    """The delivery row of a single send serves status/update/recall; the send itself is recorded
    by its idempotency key. A storage blip here must not turn a delivered send into a 503 (a caller
    without a key would retry and send twice): log it and go on."""
    try:
        await record_single(services, request, notification_id, outcome)
    except NotifyError as err:
        logger.error("could not record the delivery row of a send (%s); status/update/recall will not see it", err.code)


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
        try:
            work = await process_queue_body(services, delivery.body, delivery.message_id)
        except TransientError as err:
            # Abandoning at once would burn the queue's delivery attempts in a second and dead-letter
            # the message during a short outage: wait (the message lock is renewed meanwhile) for
            # what upstream asked, up to RetryMaxDelaySeconds (another attempt's lease on the key:
            # up to IN_FLIGHT_QUEUE_WAIT_SECONDS), then let Service Bus redeliver.
            cap = services.settings.retry_max_delay
            if isinstance(err, RequestInProgressError):
                cap = max(cap, IN_FLIGHT_QUEUE_WAIT_SECONDS)
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
        outcome = work.failure
        error = outcome.body.get("error")
        record = await services.failures.keep(
            message_id=delivery.message_id,
            error=error if isinstance(error, dict) else {},
            http_status=outcome.status,
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
    try:
        return FanOutItem.model_validate_json(body)
    except ValueError:
        return None  # not ours after all: validated (and reported) as a send request


# --- /api/notifications/{id} -------------------------------------------------------------------------


async def _answer(correlation_id: str | None, work: Any) -> Outcome:
    cid = accept_correlation_id(correlation_id)
    with correlation(cid):
        try:
            outcome: Outcome = await work(get_services())
        except NotifyError as err:
            log = logger.warning if err.http_status >= 500 else logger.info
            log("notification request failed: %s (target %s, HTTP %d)", err.code, err.target, err.http_status)
            outcome = error_outcome(err)
        except Exception:
            logger.exception("notification request failed unexpectedly")
            outcome = Outcome(
                500, {"error": {"code": "internal_error", "message": "Unexpected error; it has been logged."}}
            )
        return replace(outcome, correlation_id=cid)


def _int_param(value: str | None, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise RequestError(f"{name} must be an integer.", code="invalid_request", target=name) from None


async def handle_status(
    notification_id: str,
    *,
    top: str | None = None,
    continuation_token: str | None = None,
    correlation_id: str | None = None,
) -> Outcome:
    """``GET /api/notifications/{id}``: counts by state and one page of recipients."""

    async def work(services: Services) -> Outcome:
        status = await get_status(
            services, notification_id, top=_int_param(top, "top"), token=continuation_token or None
        )
        return Outcome(200, status.model_dump(by_alias=True))

    return await _answer(correlation_id, work)


async def handle_update(
    notification_id: str,
    body: bytes,
    *,
    content_type: str | None,
    recipient: str | None = None,
    correlation_id: str | None = None,
) -> Outcome:
    """``PUT /api/notifications/{id}[?recipient=]``: update the sent message in place."""

    async def work(services: Services) -> Outcome:
        update = parse_update_request(body, content_type)
        response, retry_after = await update_notification(services, notification_id, update, recipient or None)
        return Outcome(200, response.model_dump(by_alias=True), retry_after=retry_after)

    return await _answer(correlation_id, work)


async def handle_recall(
    notification_id: str, *, recipient: str | None = None, correlation_id: str | None = None
) -> Outcome:
    """``DELETE /api/notifications/{id}[?recipient=]``: recall (delete) the sent message."""

    async def work(services: Services) -> Outcome:
        response, retry_after = await recall_notification(services, notification_id, recipient or None)
        return Outcome(200, response.model_dump(by_alias=True), retry_after=retry_after)

    return await _answer(correlation_id, work)
