"""What the triggers call: one function per entrypoint, transport-neutral outcomes.

- ``handle_notify``: the HTTP ``POST /api/notify`` request (body bytes + headers) -> an ``Outcome``
  (status, JSON body, Retry-After, correlation id) that function_app.py turns into an HttpResponse.
- ``handle_queue_message``: one Service Bus message -> ``"sent" | "duplicate" | "kept"``, or an
  exception when the message must be redelivered (transient trouble, or its failure could not be kept).
- ``deliver``: the exactly-once send both share (and ``failures.replay_failure``): claim the
  idempotency key, send through the notify pipeline, record or release the key.

An in-flight repeat over HTTP waits briefly (``IN_FLIGHT_WAIT_SECONDS``) for the first attempt's
result and returns it; if the first attempt is still sending after that, it answers 409
``request_in_progress`` with Retry-After. Over Service Bus it raises, so the message is redelivered.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from dataclasses import dataclass
from typing import Any, Literal

from shared.bootstrap import Services, get_services
from shared.errors import NotifyError, RequestInProgressError, TransientError
from shared.idempotency import Claimed, InFlight, Recorded, Source, check_key
from shared.logcontext import accept_correlation_id, correlation
from shared.models import NotifyRequest, NotifyResponse, parse_notify_request
from shared.notify import Message, recipient_hash

logger = logging.getLogger(__name__)

IN_FLIGHT_WAIT_SECONDS = 5.0
COMPLETE_ATTEMPTS = 3
# Retry-After for a repeat that found the first attempt still sending: a send takes seconds.
IN_FLIGHT_RETRY_AFTER = 2.0

QueueResult = Literal["sent", "duplicate", "kept"]


@dataclass(frozen=True)
class Outcome:
    status: int
    body: dict[str, Any]
    retry_after: float | None = None
    replayed: bool = False  # the recorded result of an earlier attempt, nothing sent now
    correlation_id: str | None = None

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
) -> Outcome:
    """Send ``request`` at most once per ``key``. Returns the outcome of a send or of a permanent
    failure; raises ``TransientError`` (the key released) when a retry may succeed, and
    ``RequestInProgressError`` when another attempt holds the key."""
    if key is None:
        return await _send(services, request)
    tenant = request.tenant_id or services.settings.tenant_id
    fingerprint = request.fingerprint()
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
            retry_after=IN_FLIGHT_RETRY_AFTER,
        )
    try:
        outcome = await _send(services, request)
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


async def _send(services: Services, request: NotifyRequest) -> Outcome:
    """One send through the pipeline. Permanent failures become an Outcome; transient ones raise."""
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
    logger.info("sent to %s (%s path)", rhash, "cold" if result.resolved else "warm")
    response = NotifyResponse(
        status="sent",
        activity_id=result.activity_id,
        conversation_id=result.conversation_id,
        recipient=request.recipient,
    )
    return Outcome(200, response.model_dump(by_alias=True))


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
            outcome = await deliver(
                services,
                request,
                source="http",
                key=key,
                record_failures=True,
                wait_seconds=IN_FLIGHT_WAIT_SECONDS,
            )
        except NotifyError as err:
            log = logger.warning if err.http_status >= 500 else logger.info
            log("notify request failed: %s (target %s, HTTP %d)", err.code, err.target, err.http_status)
            outcome = error_outcome(err)
        except Exception:
            logger.exception("notify request failed unexpectedly")
            outcome = Outcome(
                500, {"error": {"code": "internal_error", "message": "Unexpected error; it has been logged."}}
            )
        return Outcome(outcome.status, outcome.body, outcome.retry_after, outcome.replayed, cid)


@dataclass(frozen=True)
class QueueDelivery:
    """What the Service Bus trigger hands over about one message."""

    body: bytes
    message_id: str
    delivery_count: int | None = None
    enqueued_time: datetime.datetime | None = None
    correlation_id: str | None = None


async def handle_queue_message(delivery: QueueDelivery) -> QueueResult:
    """One Service Bus message: sent, a duplicate of a message already sent, or kept as a failure.

    Raises (so Service Bus redelivers, and dead-letters after maxDeliveryCount) on transient trouble,
    while another delivery of the same message is in flight, and when the failure cannot be kept.
    """
    cid = accept_correlation_id(delivery.correlation_id or delivery.message_id)
    with correlation(cid):
        services = get_services()  # a configuration error raises: nowhere to keep the message
        try:
            key = check_key(delivery.message_id, target="messageId")
            request = parse_notify_request(delivery.body)
            outcome = await deliver(services, request, source="queue", key=key, record_failures=False)
        except TransientError as err:
            # Abandoning at once would burn the queue's delivery attempts in a second and dead-letter
            # the message during a short outage: wait (the message lock is renewed meanwhile) for
            # what upstream asked, up to RetryMaxDelaySeconds, then let Service Bus redeliver.
            pause = min(err.retry_after, services.settings.retry_max_delay)
            logger.warning(
                "queue message %s not sent (%s); delivery %s will be retried after %.0fs",
                delivery.message_id,
                err.code,
                delivery.delivery_count,
                pause,
            )
            await asyncio.sleep(pause)
            raise
        except NotifyError as err:
            outcome = error_outcome(err)
        if outcome.sent:
            logger.info("queue message %s %s", delivery.message_id, "was already sent" if outcome.replayed else "sent")
            return "duplicate" if outcome.replayed else "sent"
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
        return "kept"
