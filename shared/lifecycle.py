"""The life of a sent notification: its status, and updating or recalling the sent message.

Under ``ApiAuthMode`` EntraId a client sees and changes only the notifications it created (shared.callerauth):
another client's is ``notification_not_found``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from shared.botframework import message_activity
from shared.callerauth import may_access, owner_id
from shared.errors import (
    InvalidRequestError,
    NotifyError,
    RecipientError,
    StaleConversationError,
    TransientError,
    WrongRegionError,
)
from shared.notification_ids import HANDLE_PREFIX, delivery_from_handle
from shared.pipeline import recipient_hash
from shared.request_models import UpdateRequest
from shared.response_models import ChangeResponse, ChangeResult, DeliveryCounts, ErrorDetail, NotificationStatus
from shared.storage.notifications import Delivery, Header, note, recipient_row

if TYPE_CHECKING:
    from shared.bootstrap import Services

# Told each recipient's result of an update or recall as soon as it is known.
ResultCallback = Callable[[ChangeResult], None]

logger = logging.getLogger(__name__)

MAX_PAGE = 1000
DEFAULT_PAGE = 100


async def get_status(
    services: Services, notification_id: str, *, top: int | None, token: str | None
) -> NotificationStatus:
    size = DEFAULT_PAGE if top is None else top
    if not 1 <= size <= MAX_PAGE:
        raise InvalidRequestError(f"top must be between 1 and {MAX_PAGE}.", code="invalid_request", target="top")
    store = services.notifications
    header = await store.get_header(notification_id)
    await _check_owner(services, notification_id, header)
    counts = await store.counts(notification_id)
    total = header.total if header is not None else counts.total()
    if total == 0:
        sent = delivery_from_handle(notification_id, services.settings.service_url, await services.signing.signer())
        if sent is None:
            raise _not_found(notification_id)
        return status_of(notification_id, 1, [sent], [sent], None)
    rows, next_token = await store.page(notification_id, size, token)
    return status_of(notification_id, total, None, rows, next_token, counts)


def status_of(
    notification_id: str,
    total: int,
    all_rows: list[Delivery] | None,
    page: list[Delivery],
    token: str | None,
    counts: DeliveryCounts | None = None,
) -> NotificationStatus:
    if counts is None:
        tally: dict[str, int] = {}
        for row in all_rows or []:
            tally[row.state] = tally.get(row.state, 0) + 1
        counts = DeliveryCounts(**tally)
    known = counts.sent + counts.failed + counts.recalled + counts.pending
    pending = counts.pending + max(0, total - known)
    return NotificationStatus(
        notification_id=notification_id,
        finished=pending == 0,
        total=total,
        counts=msgspec.structs.replace(counts, pending=pending),
        recipients=[r.result() for r in page],
        continuation_token=token,
    )


def _not_found(notification_id: str) -> InvalidRequestError:
    return InvalidRequestError(
        f"No notification has the id '{notification_id}'.", code="notification_not_found", target="id", http_status=404
    )


# --- update and recall ----------------------------------------------------------------------------------


async def _check_owner(services: Services, notification_id: str, header: Header | None) -> None:
    """An Entra ID client sees and changes only its own notifications: another's is not found."""
    if header is not None and not may_access(header.owner):
        raise _not_found(notification_id)
    if header is None and notification_id.startswith(HANDLE_PREFIX) and owner_id():
        # A single send's own id, whose rows (after a change) have no header: the id says whose it is.
        signer = await services.signing.signer()
        if delivery_from_handle(notification_id, services.settings.service_url, signer) is None:
            raise _not_found(notification_id)


async def _targets(services: Services, notification_id: str, recipient: str | None) -> list[Delivery]:
    store = services.notifications
    await _check_owner(services, notification_id, await store.get_header(notification_id))
    if recipient is not None:
        row = await store.get(notification_id, recipient)
        if row is None:
            rows = await _rows(services, notification_id)
            if not rows:
                raise _not_found(notification_id)
            row = next((r for r in rows if recipient_row(r.recipient) == recipient_row(recipient)), None)
            if row is None:
                raise InvalidRequestError(
                    "That recipient is not part of this notification.",
                    code="recipient_not_in_notification",
                    target="recipient",
                    http_status=404,
                )
        return [row]
    rows = await _rows(services, notification_id)
    if not rows:
        raise _not_found(notification_id)
    return rows


async def _rows(services: Services, notification_id: str) -> list[Delivery]:
    """The notification's delivery rows; for a single send's handle not yet changed, the one it decodes to."""
    rows = await services.notifications.all(notification_id)
    if not rows:
        sent = delivery_from_handle(notification_id, services.settings.service_url, await services.signing.signer())
        rows = [sent] if sent is not None else []
    return rows


async def update_notification(
    services: Services,
    notification_id: str,
    update: UpdateRequest,
    recipient: str | None = None,
    on_result: ResultCallback | None = None,
) -> tuple[ChangeResponse, float | None]:
    """Replace the sent message in place for one or every recipient. Idempotent: a recipient whose
    message already shows this content is not called again. Returns the per-recipient results and a
    Retry-After when some failed transiently (repeat the same request). ``on_result`` is called with
    each recipient's result as it is known (the command line's progress)."""
    rows = await _targets(services, notification_id, recipient)
    if recipient is None:
        await services.notifications.set_content(notification_id, update)
    fingerprint = update.fingerprint()
    activity = message_activity(update)

    async def one(row: Delivery) -> ChangeResult:
        if row.state == "recalled":
            return ChangeResult(recipient=row.recipient, outcome="recalled")
        if row.state != "sent" or not row.activity_id or not row.conversation_id:
            return ChangeResult(recipient=row.recipient, outcome="not_sent")
        if row.content_fingerprint == fingerprint:
            return ChangeResult(recipient=row.recipient, outcome="updated")
        conversation_id, activity_id = row.conversation_id, row.activity_id

        async def put(service_url: str) -> None:
            await services.connector.update_activity(
                service_url, conversation_id, activity_id, activity, tenant_id=row.tenant_id
            )

        try:
            async with services.notifier.throttle.slot():
                used = await _on_service_url(services, row, put)
            row = msgspec.structs.replace(row, service_url=used)
        except StaleConversationError:
            # The message (or the conversation) is gone: it was deleted.
            await note(services.notifications, msgspec.structs.replace(row, state="recalled"))
            return ChangeResult(recipient=row.recipient, outcome="recalled")
        # ETag match (insert-if-absent for a handle's first row): a recall that ran meanwhile must not
        # be turned back into "sent" by this write.
        if not await note(services.notifications, msgspec.structs.replace(row, content_fingerprint=fingerprint)):
            current = await services.notifications.get(notification_id, row.recipient)
            if current is not None and current.state == "recalled":
                return ChangeResult(recipient=row.recipient, outcome="recalled")
            if current is not None and current.state == "sent" and current.activity_id == row.activity_id:
                await services.notifications.record(
                    msgspec.structs.replace(current, content_fingerprint=fingerprint), if_match=current.etag
                )
        return ChangeResult(recipient=row.recipient, outcome="updated")

    return await _apply(notification_id, rows, one, on_result)


async def recall_notification(
    services: Services, notification_id: str, recipient: str | None = None, on_result: ResultCallback | None = None
) -> tuple[ChangeResponse, float | None]:
    """Delete the sent message for one or every recipient; recipients still pending are marked
    recalled so they are never sent. Idempotent: a second recall calls nothing and succeeds.
    ``on_result`` as for ``update_notification``."""
    rows = await _targets(services, notification_id, recipient)
    if recipient is None:
        await services.notifications.mark_recalled(notification_id)

    async def one(row: Delivery) -> ChangeResult:
        if row.state == "recalled":
            return ChangeResult(recipient=row.recipient, outcome="recalled")
        if row.state == "pending":
            if await services.notifications.record(msgspec.structs.replace(row, state="recalled"), if_match=row.etag):
                return ChangeResult(recipient=row.recipient, outcome="recalled")
            current = await services.notifications.get(notification_id, row.recipient)
            if current is None or current.state != "sent":
                return ChangeResult(recipient=row.recipient, outcome="not_sent")
            row = current
        if row.state != "sent" or not row.activity_id or not row.conversation_id:
            return ChangeResult(recipient=row.recipient, outcome="not_sent")
        await delete_activity(services, row)
        # The message is deleted: "recalled" is right whatever changed meanwhile (an update's write),
        # so a lost ETag race is settled by writing it over the row as it is now.
        while not await note(services.notifications, msgspec.structs.replace(row, state="recalled")):
            current = await services.notifications.get(notification_id, row.recipient)
            if current is None or current.state == "recalled":
                break
            row = current
        return ChangeResult(recipient=row.recipient, outcome="recalled")

    return await _apply(notification_id, rows, one, on_result)


async def delete_activity(services: Services, row: Delivery) -> None:
    """Delete a sent message. A 404 (gone already) is success; a 403 (the app uninstalled, the bot
    blocked) raises: Teams deleted nothing, so nothing may be reported recalled."""
    conversation_id, activity_id = row.conversation_id, row.activity_id
    assert activity_id is not None and conversation_id is not None

    async def delete(service_url: str) -> None:
        await services.connector.delete_activity(service_url, conversation_id, activity_id, tenant_id=row.tenant_id)

    async with services.notifier.throttle.slot():
        try:
            await _on_service_url(services, row, delete)
        except StaleConversationError:
            pass  # the conversation is gone, and the message with it


async def _on_service_url(services: Services, row: Delivery, call: Any) -> str:
    """Run ``call(service_url)`` on the row's service URL; one the connector says belongs to another
    region (the tenant moved) is replaced by the configured global ServiceUrl, once. Returns the URL
    that worked."""
    configured = services.settings.service_url
    url = row.service_url or configured
    try:
        await call(url)
    except WrongRegionError:
        if url.rstrip("/") == configured.rstrip("/"):
            raise
        await call(configured)
        return configured
    return url


def _failed(row: Delivery, err: NotifyError) -> ChangeResult:
    log = logger.info if isinstance(err, RecipientError) else logger.warning
    log("change for %s failed: %s", recipient_hash(row.tenant_id, row.recipient), err.code)
    return ChangeResult(
        recipient=row.recipient,
        outcome="failed",
        error=ErrorDetail(code=err.code, message=err.message, target=err.target),
    )


async def _apply(
    notification_id: str, rows: list[Delivery], one: Any, on_result: ResultCallback | None = None
) -> tuple[ChangeResponse, float | None]:
    """Run ``one`` for every row, at most ``_APPLY_CONCURRENCY`` at a time (a 10,000-recipient change
    does not start 10,000 coroutines of storage reads at once); an error of one recipient (a storage
    blip while recording it) is reported for that recipient, not raised for all."""
    gate = asyncio.Semaphore(_APPLY_CONCURRENCY)
    waits: list[float] = []  # how long upstream asked us to wait after each transient failure

    async def bounded(row: Delivery) -> ChangeResult:
        async with gate:
            try:
                result: ChangeResult = await one(row)
            except NotifyError as err:
                result = _failed(row, err)
                if isinstance(err, TransientError) and err.retry_after is not None:
                    waits.append(err.retry_after)
        if on_result is not None:
            on_result(result)
        return result

    outcomes = await asyncio.gather(*(bounded(r) for r in rows), return_exceptions=True)
    results: list[ChangeResult] = []
    for row, outcome in zip(rows, outcomes, strict=True):
        if isinstance(outcome, ChangeResult):
            results.append(outcome)
        elif isinstance(outcome, Exception):
            logger.error(
                "change for %s failed unexpectedly", recipient_hash(row.tenant_id, row.recipient), exc_info=outcome
            )
            results.append(
                ChangeResult(
                    recipient=row.recipient,
                    outcome="failed",
                    error=ErrorDetail(code="internal_error", message="Unexpected error; it has been logged."),
                )
            )
        else:
            raise outcome  # cancellation: the whole request is being cancelled
    transient = [r for r in results if r.error is not None and r.error.code in _TRANSIENT_CODES]
    # Repeat no earlier than upstream asked (the longest Retry-After among the transient failures).
    retry_after = (max(waits) if waits else 1.0) if transient else None
    return ChangeResponse(notification_id=notification_id, results=results), retry_after


_APPLY_CONCURRENCY = 64
_TRANSIENT_CODES = frozenset(
    {
        "upstream_unavailable",
        "request_in_progress",
        "conversation_unavailable",
        "delivery_unconfirmed",
        "internal_error",
    }
)
