"""The exactly-once send: claim the idempotency key, send through the notify pipeline, record or
release the key. Used by a single send over HTTP or Service Bus, each fan-out recipient and a replay.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from shared.errors import NotifyError, RequestInProgressError, TransientError
from shared.pipeline import recipient_hash
from shared.request_models import NotifyRequest
from shared.results import Refused, SendOutcome, Sent, from_record, record_of
from shared.storage.idempotency import Claimed, InFlight, Recorded, Source

if TYPE_CHECKING:
    from shared.bootstrap import Services

logger = logging.getLogger(__name__)

# Retry-After for an HTTP repeat that found the first attempt still sending: a send takes seconds.
IN_FLIGHT_RETRY_AFTER = 2.0


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
) -> SendOutcome:
    """Send ``request`` at most once per ``key``. Returns the result of a send or of a permanent
    failure (``replayed``: the one an earlier attempt recorded); raises ``TransientError`` (the key
    released) when a retry may succeed, and ``RequestInProgressError`` when another attempt holds the
    key. ``fingerprint`` overrides the request's own (a fan-out delivery is identified by its key,
    whatever the content)."""
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
        return from_record(claim.status, claim.body)
    if isinstance(claim, InFlight):
        raise RequestInProgressError(
            "A request with this idempotency key is still being sent; ask again shortly for its result.",
            target="Idempotency-Key" if source == "http" else "messageId",
            # HTTP: the caller asks again soon. Queue: the redelivery waits for the holder's lease.
            retry_after=IN_FLIGHT_RETRY_AFTER if source == "http" else max(IN_FLIGHT_RETRY_AFTER, claim.retry_after),
        )
    try:
        result = await _send(services, request, notification_id)
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
    if isinstance(result, Sent) or (record_failures and result.status < 500):
        await _complete(services, claim, result, fingerprint)
    else:
        await _release(services, claim)
    return result


async def _complete(services: Services, claim: Claimed, result: SendOutcome, fingerprint: str) -> None:
    status, body = record_of(result)  # what a repeat of the key answers

    async def record() -> None:
        await services.requests.complete(claim, status, body, fingerprint)

    if not await keep_trying(record, "the result of a key-guarded send", within=services.waits.record_deadline):
        # The send happened: report it. The marker stays in flight (never released: a retry must not
        # send again) until its lease ends; docs/RELIABILITY.md states this residual window.
        logger.error("gave up recording the result of a key-guarded send; the marker stays held until its lease ends")


async def keep_trying(write: Callable[[], Awaitable[Any]], what: str, *, within: float) -> bool:
    """Run a storage write that records a send Teams already confirmed, retrying transient failures
    with backoff for up to ``within`` seconds (``Waits.record_deadline``). False when it never
    succeeded (or failed permanently): the caller reports the send anyway."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    delay = 0.2
    while True:
        try:
            await write()
            return True
        except TransientError as err:
            if loop.time() + delay > deadline:
                logger.error("could not record %s within %.0fs (%s)", what, within, err.code)
                return False
            logger.warning("could not record %s yet (%s); retrying in %.1fs", what, err.code, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
        except NotifyError as err:
            logger.error("could not record %s (%s)", what, err.code)
            return False


async def _release(services: Services, claim: Claimed) -> None:
    try:
        await services.requests.release(claim)
    except NotifyError as err:
        logger.error("could not release an idempotency key (%s); it frees itself when its lease ends", err.code)


async def _send(services: Services, request: NotifyRequest, notification_id: str | None = None) -> SendOutcome:
    """One send through the pipeline. Permanent failures become a ``Refused``; transient ones raise."""
    assert request.recipient is not None, "a send goes to one recipient"
    rhash = recipient_hash(request.tenant_id or services.settings.tenant_id, request.recipient)
    try:
        result = await services.notifier.send(request.recipient, request, request.tenant_id)
    except TransientError as err:
        logger.warning("send to %s failed transiently: %s (retry after %.0fs)", rhash, err.code, err.retry_after)
        raise
    except NotifyError as err:
        logger.warning("send to %s failed: %s (target %s)", rhash, err.code, err.target)
        return Refused.of(err)
    if result.resolved:
        logger.info("sent to %s (cold path)", rhash)
    elif logger.isEnabledFor(logging.DEBUG):
        # A warm send is the common case of a broadcast: its line is DEBUG (the per-send INFO line cost
        # ~3.6% of a warm send's CPU). The caller gets the result, a fan-out's status records it, and
        # cold resolutions and every failure stay at INFO/WARNING.
        logger.debug("sent to %s (warm path)", rhash)
    return Sent(
        recipient=request.recipient,
        activity_id=result.activity_id,
        conversation_id=result.conversation_id,
        notification_id=notification_id,
        service_url=result.service_url,
    )
