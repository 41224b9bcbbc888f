"""Fan-out: a notification's recipients sent exactly once each, now (up to SYNC_RECIPIENTS) or as
one Service Bus message per recipient, and the delivery row of every send.

Only the caller's fault (4xx) makes a recipient ``failed``; a failure on our side or upstream's leaves
it ``pending`` with the error, to be sent by a repeat of the request or an operator's replay.
A recipient's send is exactly-once through shared.delivery.deliver, keyed by a deterministic
``deliveryId`` = hash(notification id, recipient), so a retried request or a redelivered message
never sends twice. Large notifications are fanned out as one Service Bus message per recipient
(``FanOutItem``; the output binding sets only bodies, so the delivery id travels in the body).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import msgspec

from shared.callerauth import may_access, owner_id
from shared.delivery import deliver, keep_trying
from shared.errors import InvalidRequestError, NotifyError, RequestInProgressError, TransientError
from shared.lifecycle import delete_activity, status_of
from shared.notification_ids import delivery_id, fan_out_signature, fan_out_signature_valid
from shared.request_models import SYNC_RECIPIENTS, FanOutItem, NotifyRequest, notify_request
from shared.results import FanOut, Refused, SendOutcome, Sent
from shared.storage.notifications import Delivery, Header, note

if TYPE_CHECKING:
    from shared.bootstrap import Services
    from shared.storage.idempotency import Source

logger = logging.getLogger(__name__)


async def send_to_recipient(
    services: Services,
    header: Header,
    recipient: str,
    *,
    wait_seconds: float = 0.0,
    row: Delivery | None = None,
) -> Delivery:
    """One recipient of a notification, exactly once: skipped when already final (sent, failed,
    recalled), else sent through ``deliver`` keyed by the delivery id and recorded. Only the caller's
    fault (4xx) makes the row ``failed``; a failure on our side or upstream's (5xx) leaves it
    ``pending`` with that error, so a repeat of the request or a replay sends it later. A transient
    failure is recorded on the row (still pending) and raised. ``wait_seconds``: how long to wait for
    the result of another attempt holding the delivery's key. ``row``: the recipient's row as the
    caller has just read it (not read again); without it, it is read here."""
    store = services.notifications
    if row is None:
        row = await store.get(header.notification_id, recipient)
    if row is not None and row.state != "pending":
        return row
    request = notify_request({"recipient": recipient, "tenantId": header.tenant_id, **header.content.content_dict()})
    key = delivery_id(header.notification_id, recipient)
    pending = row or Delivery(header.notification_id, recipient, header.tenant_id, "pending")
    try:
        result = await deliver(
            services,
            request,
            source="delivery",
            key=key,
            record_failures=True,
            fingerprint=key,
            wait_seconds=wait_seconds,
        )
    except RequestInProgressError:
        # Another attempt holds the key (or an unconfirmed send keeps it held): its error, if any,
        # says more than "in progress", so the row is left as it is.
        if pending.error_code is None:
            await note(
                store,
                msgspec.structs.replace(
                    pending, error_code="request_in_progress", error_message="A send is in progress.", error_status=409
                ),
            )
        raise
    except TransientError as err:
        await note(
            store,
            msgspec.structs.replace(
                pending, error_code=err.code, error_message=err.message, error_status=err.http_status
            ),
        )
        raise
    delivery = delivery_from_result(services, pending, result)
    if delivery.state == "sent":
        # Teams confirmed it: the row must say so. Storage trouble here is retried (the key already
        # holds the result, so no retry of the request can send again), and the answer reports the
        # send whatever happens to the row.
        written: list[bool] = []

        async def write() -> None:
            written.append(await note(store, delivery))

        if not await keep_trying(write, "a sent delivery row", within=services.waits.record_deadline):
            return delivery
        if written[-1]:
            return delivery
    elif await note(store, delivery):
        return delivery
    # The row changed while we sent: a recall of the whole notification marked it. Honour it.
    current = await store.get(header.notification_id, recipient)
    if current is not None and current.state == "recalled":
        if delivery.state == "sent" and delivery.activity_id:
            await delete_activity(services, delivery)
        return current
    return await store.settle(delivery)


def delivery_from_result(services: Services, pending: Delivery, result: SendOutcome) -> Delivery:
    if isinstance(result, Sent):
        return msgspec.structs.replace(
            pending,
            state="sent",
            activity_id=result.activity_id or None,
            conversation_id=result.conversation_id or None,
            service_url=result.service_url or services.settings.service_url,
            error_code=None,
            error_message=None,
            error_status=None,
        )
    return msgspec.structs.replace(
        pending,
        # Only the caller's fault is final; ours (configuration) or upstream's stays pending.
        state="failed" if result.status < 500 else "pending",
        error_code=result.code,
        error_message=result.message,
        error_status=result.status,
    )


async def open_notification(services: Services, request: NotifyRequest, notification_id: str, source: Source) -> Header:
    """Create the notification's header, or find the one a retry of the same request created. An id is
    one notification: the same id from another source (an HTTP key equal to a Service Bus message id),
    for another tenant or with another request is refused (422 ``idempotency_key_reused``)."""
    recipients = request.recipient_list()
    tenant = request.tenant_id or services.settings.tenant_id
    header = await services.notifications.create_header(
        Header(
            notification_id, tenant, len(recipients), request.fingerprint(), request.content(), source, owner=owner_id()
        )
    )
    same_source = header.source in ("", source)
    same = header.fingerprint == request.fingerprint() and header.tenant_id == tenant and same_source
    if not same or not may_access(header.owner):
        raise InvalidRequestError(
            "This idempotency key was already used for a different request: use a new key for a new message.",
            code="idempotency_key_reused",
            target="Idempotency-Key" if source == "http" else "messageId",
            http_status=422,
        )
    return header


async def start_notification(
    services: Services, request: NotifyRequest, notification_id: str, source: Source = "http"
) -> FanOut:
    """A request naming ``recipients``: up to SYNC_RECIPIENTS are sent now (the status has one result
    each); more are recorded as pending and returned as fan-out messages (``queued``)."""
    recipients = request.recipient_list()
    tenant = request.tenant_id or services.settings.tenant_id
    header = await open_notification(services, request, notification_id, source)
    if len(recipients) <= SYNC_RECIPIENTS:
        results = await asyncio.gather(
            *(send_to_recipient(services, header, r) for r in recipients), return_exceptions=True
        )
        rows: list[Delivery] = []
        for recipient, result in zip(recipients, results, strict=True):
            if isinstance(result, Delivery):
                rows.append(result)
            elif isinstance(result, NotifyError):
                rows.append(
                    Delivery(
                        notification_id,
                        recipient,
                        tenant,
                        "pending",
                        error_code=result.code,
                        error_message=result.message,
                        error_status=result.http_status,
                    )
                )
            else:
                raise result
        status = status_of(notification_id, len(recipients), rows, rows, None)
        transient = any(r.state == "pending" and not r.needs_operator for r in rows)
        # Retry no earlier than upstream asked (the longest Retry-After of those pending).
        waits = [r.retry_after for r in results if isinstance(r, TransientError)]
        retry_after = max(waits) if waits else (services.settings.retry_max_delay if transient else None)
        ours = next((r for r in rows if r.needs_operator), None)
        return FanOut(
            status,
            retry_after=retry_after,
            # Over Service Bus: transient trouble is redelivered; ours alone is kept for a replay.
            operator_error=_refused(ours) if ours is not None and not transient else None,
        )
    rows = await services.notifications.add_pending(notification_id, tenant, recipients)
    signer = await services.signing.signer()
    messages = tuple(
        FanOutItem(
            delivery_id=delivery_id(notification_id, r.recipient),
            notification_id=notification_id,
            recipient=r.recipient,
            signature=fan_out_signature(
                signer, notification_id, r.recipient, delivery_id(notification_id, r.recipient)
            ),
        ).to_json()
        for r in rows
        if r.state == "pending"
    )
    logger.info("notification queued for %d recipients (%d messages)", len(rows), len(messages))
    status = status_of(notification_id, len(recipients), rows, [], None)
    return FanOut(status, queued=True, messages=messages)


def _refused(row: Delivery) -> Refused:
    return Refused(row.error_status or 500, row.error_code or "notify_error", row.error_message or "")


async def handle_fan_out_item(services: Services, item: FanOutItem, *, wait_seconds: float = 0.0) -> Delivery:
    """One queued per-recipient send. Raises ``TransientError`` to have the message redelivered.
    ``wait_seconds``: how long to wait for the result of another attempt holding the delivery's key.

    Only an item this deployment queued is acted on: its signature must match its notification id,
    recipient and delivery id, and the recipient must have a row in that notification. Anything else
    (forged, edited, another deployment's) is ``notification_not_found``. A recalled notification or
    recipient is not sent, whenever the item arrives."""
    signer = await services.signing.signer()
    genuine = (
        item.signature is not None
        and item.delivery_id == delivery_id(item.notification_id, item.recipient)
        and fan_out_signature_valid(signer, item.signature, item.notification_id, item.recipient, item.delivery_id)
    )
    header = await services.notifications.get_header(item.notification_id) if genuine else None
    row = await services.notifications.get(item.notification_id, item.recipient) if header is not None else None
    if header is None or row is None:
        logger.warning("queued item refused: not a notification of this deployment (%s)", item.delivery_id[:12])
        raise InvalidRequestError(
            "No notification of this deployment matches this queued item.",
            code="notification_not_found",
            target="notificationId",
            http_status=404,
        )
    if header.recalled and row.state == "pending":
        if await services.notifications.record(msgspec.structs.replace(row, state="recalled"), if_match=row.etag):
            return msgspec.structs.replace(row, state="recalled")
        row = await services.notifications.get(item.notification_id, item.recipient) or row
    if row.state != "pending":
        return row
    return await send_to_recipient(services, header, item.recipient, wait_seconds=wait_seconds, row=row)


async def send_single(
    services: Services,
    request: NotifyRequest,
    notification_id: str,
    *,
    source: Source,
    key: str,
    record_failures: bool,
    wait_seconds: float,
) -> SendOutcome:
    """A keyed send to one recipient, a notification of its own: its header (a retry with the key
    finds it), the exactly-once send (shared.delivery.deliver) and its delivery row (best effort)."""
    await open_notification(services, request, notification_id, source)
    result = await deliver(
        services,
        request,
        source=source,
        key=key,
        record_failures=record_failures,
        wait_seconds=wait_seconds,
        notification_id=notification_id,
    )
    await record_single_best_effort(services, request, notification_id, result)
    return result


async def record_single(services: Services, request: NotifyRequest, notification_id: str, result: SendOutcome) -> None:
    """The delivery row of a single-recipient send (status, update and recall work on it too)."""
    if request.recipient is None:
        return
    tenant = request.tenant_id or services.settings.tenant_id
    pending = Delivery(notification_id, request.recipient, tenant, "pending")
    if result.replayed:
        existing = await services.notifications.get(notification_id, request.recipient)
        if existing is not None:
            return
    await services.notifications.settle(delivery_from_result(services, pending, result), likely_new=True)


async def record_single_best_effort(
    services: Services, request: NotifyRequest, notification_id: str, result: SendOutcome
) -> None:
    """The delivery row of a single send serves status/update/recall; the send itself is recorded
    by its idempotency key. A storage blip here must not turn a delivered send into a 503 (a caller
    without a key would retry and send twice): log it and go on."""
    try:
        await record_single(services, request, notification_id, result)
    except NotifyError as err:
        logger.error("could not record the delivery row of a send (%s); status/update/recall will not see it", err.code)
