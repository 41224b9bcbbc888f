"""Notifications: what was sent to whom, and the life of a sent message (status, update, recall).

Every send has a notification id (the Idempotency-Key, or the Service Bus message id, when given;
otherwise generated). A single send over HTTP without a key gets a self-contained id instead
(``single_send_handle``: tenant, recipient, conversation, activity) and no row until an update or a
recall writes one. Two tables in Table Storage:

- ``{TableNamePrefix}notifications``: one row per notification that names several recipients, or
  one keyed by an Idempotency-Key / message id (PartitionKey = escaped id, RowKey = ``notification``):
  tenant, recipient count, the content (so a queued per-recipient send carries only ids), the request
  fingerprint and the source (http or queue); a key reused for another request, tenant or source is
  refused, so one id is one notification.
- ``{TableNamePrefix}deliveries``: one row per recipient of every notification (PartitionKey =
  escaped notification id, RowKey = escaped lower-cased recipient): state (pending, sent, failed,
  recalled), conversation id, service URL, activity id, error code and message, times.

Only the caller's fault (4xx) makes a recipient ``failed``; a failure on our side or upstream's leaves
it ``pending`` with the error, to be sent by a repeat of the request or an operator's replay. Rows
are inserted if absent and rewritten under an ETag match, so concurrent attempts never move one back.

A recipient's send is exactly-once through shared.service.deliver, keyed by a deterministic
``deliveryId`` = hash(notification id, recipient), so a retried request or a redelivered message
never sends twice. Large notifications are fanned out as one Service Bus message per recipient
(``FanOutItem``; the output binding sets only bodies, so the delivery id travels in the body).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime
import hashlib
import json
import logging
import uuid
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from shared.errors import (
    NotifyError,
    RecipientError,
    RequestError,
    RequestInProgressError,
    StaleConversationError,
    TransientError,
)
from shared.models import (
    SYNC_RECIPIENTS,
    ChangeOutcome,
    ChangeResponse,
    ChangeResult,
    DeliveryCounts,
    DeliveryResult,
    DeliveryState,
    ErrorDetail,
    FanOutItem,
    NotificationStatus,
    NotifyRequest,
    UpdateRequest,
    loads_strict,
)
from shared.notify import Message, recipient_hash
from shared.store import TableBacked, escape_key, translate_storage_errors

if TYPE_CHECKING:
    from azure.data.tables.aio import TableClient

    from shared.bootstrap import Services
    from shared.idempotency import Source
    from shared.service import Outcome

logger = logging.getLogger(__name__)

HEADER_ROW = "notification"
MAX_PAGE = 1000
DEFAULT_PAGE = 100
_TRANSACTION = 100  # Table Storage's limit of operations per batch


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def new_notification_id() -> str:
    return str(uuid.uuid4())


def notification_id_for(key: str) -> str:
    """The notification id of a send keyed by ``key``: the key itself, unless it could not be used as
    one path segment of ``/api/notifications/{id}`` (ASP.NET Core leaves ``%2F`` undecoded in route
    values): then ``n-`` + a hash of it. The response's ``notificationId`` is always the one to use."""
    if "/" in key or "\\" in key or key in (".", ".."):
        return "n-" + hashlib.sha256(key.encode()).hexdigest()[:40]
    return key


def delivery_id(notification_id: str, recipient: str) -> str:
    """The idempotency key of one recipient's send: the same for every retry and redelivery."""
    digest = hashlib.sha256(f"{notification_id}\n{recipient.strip().lower()}".encode()).hexdigest()
    return "d-" + digest[:40]


# A single send without an Idempotency-Key gets a self-contained id instead of a delivery row (a
# storage write on the hot path): "s1." + base64url of the compact JSON below. Status answers from it;
# update and recall decode it into the Delivery its row would have held, then write that row.
HANDLE_PREFIX = "s1."
_HANDLE_MAX = 900  # it may become a PartitionKey (Table Storage keys: at most 1 KiB)
_HANDLE_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
# A service URL other than the configured one is accepted in a handle only on Bot Framework hosts:
# a forged handle must never send the bot's token elsewhere.
_TRUSTED_SERVICE_HOSTS = ("smba.trafficmanager.net", ".botframework.com", ".botframework.us", ".botframework.azure.us")


def single_send_handle(delivery: Delivery, default_service_url: str) -> str | None:
    """The self-contained notification id of a sent single send, or None when it cannot be one (no
    conversation, an untrusted service URL, too long): the caller then records a row as before."""
    if delivery.state != "sent" or not delivery.conversation_id:
        return None
    fields: dict[str, str | None] = {
        "t": delivery.tenant_id,
        "r": delivery.recipient,
        "c": delivery.conversation_id,
        "a": delivery.activity_id,
    }
    service_url = delivery.service_url or default_service_url
    if service_url != default_service_url:
        if not _trusted_service_url(service_url):
            return None
        fields["u"] = service_url
    raw = json.dumps(fields, separators=(",", ":")).encode()
    handle = HANDLE_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")
    return handle if len(handle) <= _HANDLE_MAX else None


def delivery_from_handle(notification_id: str, default_service_url: str) -> Delivery | None:
    """The sent Delivery a handle stands for, or None when it is not a handle this API returned."""
    if not notification_id.startswith(HANDLE_PREFIX) or len(notification_id) > _HANDLE_MAX:
        return None
    encoded = notification_id[len(HANDLE_PREFIX) :]
    if not encoded or not set(encoded) <= _HANDLE_CHARS:
        return None
    try:
        fields = loads_strict(base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)))
    except (binascii.Error, RequestError):
        return None
    if not isinstance(fields, dict) or not set(fields) <= {"t", "r", "c", "a", "u"}:
        return None
    tenant, recipient, conversation = fields.get("t"), fields.get("r"), fields.get("c")
    activity, service_url = fields.get("a"), fields.get("u", default_service_url)
    if not (
        isinstance(tenant, str)
        and isinstance(recipient, str)
        and isinstance(conversation, str)
        and isinstance(service_url, str)
        and tenant
        and recipient
        and conversation
        and service_url
    ):
        return None
    if activity is not None and not isinstance(activity, str):
        return None
    delivery = Delivery(notification_id, recipient, tenant, "sent", activity, conversation, service_url)
    # One send, one id: only the exact encoding this API returns is accepted.
    if single_send_handle(delivery, default_service_url) != notification_id:
        return None
    return delivery


def _trusted_service_url(url: str) -> bool:
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    return parts.scheme == "https" and any(
        host == h or (h.startswith(".") and host.endswith(h)) for h in _TRUSTED_SERVICE_HOSTS
    )


def status_location(notification_id: str) -> str:
    return "/api/notifications/" + quote(notification_id, safe="")


@dataclass(frozen=True)
class Delivery:
    notification_id: str
    recipient: str
    tenant_id: str
    state: DeliveryState
    activity_id: str | None = None
    conversation_id: str | None = None
    service_url: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    content_fingerprint: str | None = None  # of the last update applied
    etag: str | None = None
    error_status: int | None = None  # HTTP status of the last error (pending: ours or upstream's; failed: 4xx)

    @property
    def needs_operator(self) -> bool:
        """Still pending after a failure on our side that a retry alone will not fix (configuration,
        permissions, an upstream error): kept for an operator's replay rather than redelivered."""
        return self.state == "pending" and self.error_status is not None and self.error_status not in (409, 503)

    def result(self) -> DeliveryResult:
        error = ErrorDetail(code=self.error_code, message=self.error_message or "") if self.error_code else None
        return DeliveryResult(recipient=self.recipient, state=self.state, activity_id=self.activity_id, error=error)


@dataclass(frozen=True)
class Header:
    notification_id: str
    tenant_id: str
    total: int
    fingerprint: str
    content: NotifyRequest  # text, card, summary (recipient fields unset)
    source: str = ""  # "http" (Idempotency-Key) or "queue" (message id); "" on rows written before it


class NotificationStore(TableBacked):
    """Notification headers and per-recipient delivery rows (see the module docstring)."""

    def __init__(self, headers: TableClient, deliveries: TableClient) -> None:
        super().__init__(headers, deliveries)
        self._headers = headers
        self._deliveries = deliveries

    async def create_header(self, header: Header) -> Header:
        """Insert the header, or return the one already there (a retried request)."""
        from azure.core.exceptions import ResourceExistsError

        await self._ensure_table()
        entity = {
            "PartitionKey": escape_key(header.notification_id),
            "RowKey": HEADER_ROW,
            "NotificationId": header.notification_id,
            "TenantId": header.tenant_id,
            "Total": header.total,
            "Fingerprint": header.fingerprint,
            "Source": header.source,
            "Content": header.content.model_dump_json(by_alias=True, exclude_none=True),
            "CreatedAt": _now(),
        }
        try:
            with translate_storage_errors():
                await self._headers.create_entity(entity)
            return header
        except ResourceExistsError:
            existing = await self.get_header(header.notification_id)
            if existing is None:  # deleted in between: vanishingly rare, let the caller retry
                raise TransientError(
                    "The notification record is contended.", target="storage", retry_after=1.0
                ) from None
            return existing

    async def get_header(self, notification_id: str) -> Header | None:
        from azure.core.exceptions import ResourceNotFoundError

        await self._ensure_table()
        try:
            with translate_storage_errors():
                entity = await self._headers.get_entity(escape_key(notification_id), HEADER_ROW)
        except ResourceNotFoundError:
            return None
        return Header(
            notification_id=str(entity["NotificationId"]),
            tenant_id=str(entity["TenantId"]),
            total=int(entity["Total"]),
            fingerprint=str(entity["Fingerprint"]),
            content=NotifyRequest.model_construct(**_content_fields(json.loads(str(entity["Content"])))),
            source=str(entity.get("Source") or ""),
        )

    async def set_content(self, notification_id: str, update: UpdateRequest) -> None:
        """Later sends of a notification still fanning out use the updated content."""
        from azure.core.exceptions import ResourceNotFoundError
        from azure.data.tables import UpdateMode

        content = update.model_dump_json(exclude_none=True)
        try:
            with translate_storage_errors():
                await self._headers.update_entity(
                    {"PartitionKey": escape_key(notification_id), "RowKey": HEADER_ROW, "Content": content},
                    mode=UpdateMode.MERGE,
                )
        except ResourceNotFoundError:
            pass  # a single-recipient notification has no header

    async def add_pending(self, notification_id: str, tenant_id: str, recipients: list[str]) -> list[Delivery]:
        """Make sure every recipient has a row (new ones pending); returns all rows, in request order."""
        from azure.core.exceptions import ResourceExistsError
        from azure.data.tables import TableTransactionError

        await self._ensure_table()
        existing = {recipient_row(d.recipient): d for d in await self.all(notification_id)}
        missing = [r for r in recipients if recipient_row(r) not in existing]
        partition = escape_key(notification_id)
        now = _now()
        with translate_storage_errors():
            for start in range(0, len(missing), _TRANSACTION):
                chunk = missing[start : start + _TRANSACTION]
                operations: list[Any] = [
                    (
                        "create",
                        {
                            "PartitionKey": partition,
                            "RowKey": recipient_row(r),
                            "NotificationId": notification_id,
                            "Recipient": r,
                            "TenantId": tenant_id,
                            "State": "pending",
                            "CreatedAt": now,
                            "UpdatedAt": now,
                        },
                    )
                    for r in chunk
                ]
                try:
                    await self._deliveries.submit_transaction(operations)
                except TableTransactionError:
                    # A concurrent repeat of the request inserted some of them (and they may have been
                    # sent since): insert the others one by one, never overwriting a row.
                    for _kind, entity in operations:
                        with contextlib.suppress(ResourceExistsError):
                            await self._deliveries.create_entity(entity)
        for r in missing:
            existing[recipient_row(r)] = Delivery(notification_id, r, tenant_id, "pending")
        return [existing[recipient_row(r)] for r in recipients]

    async def get(self, notification_id: str, recipient: str) -> Delivery | None:
        from azure.core.exceptions import ResourceNotFoundError

        await self._ensure_table()
        try:
            with translate_storage_errors():
                entity = await self._deliveries.get_entity(escape_key(notification_id), recipient_row(recipient))
        except ResourceNotFoundError:
            return None
        return _delivery(entity)

    async def record(self, delivery: Delivery, *, if_match: str | None = None) -> bool:
        """Write a recipient's row. With ``if_match`` the write happens only if the row is unchanged
        since it was read (False when it changed: another attempt or a recall got there first)."""
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError
        from azure.data.tables import UpdateMode

        await self._ensure_table()
        entity = _entity(delivery)
        try:
            with translate_storage_errors():
                if if_match is None:
                    await self._deliveries.upsert_entity(entity, mode=UpdateMode.MERGE)
                else:
                    await self._deliveries.update_entity(
                        entity, mode=UpdateMode.MERGE, etag=if_match, match_condition=MatchConditions.IfNotModified
                    )
        except (ResourceModifiedError, ResourceNotFoundError):
            return False
        return True

    async def create(self, delivery: Delivery) -> bool:
        """Insert a recipient's row if it has none (False when another attempt wrote one first)."""
        from azure.core.exceptions import ResourceExistsError

        await self._ensure_table()
        try:
            with translate_storage_errors():
                await self._deliveries.create_entity(_entity(delivery))
        except ResourceExistsError:
            return False
        return True

    async def settle(self, delivery: Delivery, *, likely_new: bool = False) -> Delivery:
        """Write ``delivery`` over a row that is absent (insert-if-absent) or still pending (ETag match),
        never over one that became final meanwhile (sent, failed, recalled by another attempt or a
        recall). Returns the row as it is afterwards. ``likely_new`` (a single send's own row) tries
        the insert first: one storage request instead of a read and a write in the common case."""
        if likely_new and await self.create(delivery):
            return delivery
        for _ in range(5):
            current = await self.get(delivery.notification_id, delivery.recipient)
            if current is None:
                if await self.create(delivery):
                    return delivery
            elif current.state != "pending":
                return current
            elif await self.record(delivery, if_match=current.etag):
                return delivery
        raise TransientError("The delivery record is contended; try again.", target="storage", retry_after=1.0)

    async def all(self, notification_id: str) -> list[Delivery]:
        await self._ensure_table()
        rows: list[Delivery] = []
        with translate_storage_errors():
            async for entity in self._deliveries.query_entities(
                "PartitionKey eq @pk", parameters={"pk": escape_key(notification_id)}
            ):
                rows.append(_delivery(entity))
        return rows

    async def counts(self, notification_id: str) -> DeliveryCounts:
        await self._ensure_table()
        counts: dict[str, int] = {}
        with translate_storage_errors():
            async for entity in self._deliveries.query_entities(
                "PartitionKey eq @pk", parameters={"pk": escape_key(notification_id)}, select=["State"]
            ):
                state = str(entity["State"])
                counts[state] = counts.get(state, 0) + 1
        return DeliveryCounts(**counts)

    async def page(self, notification_id: str, top: int, token: str | None) -> tuple[list[Delivery], str | None]:
        await self._ensure_table()
        continuation = _decode_token(token) if token else None
        rows: list[Delivery] = []
        next_token: str | None = None
        with translate_storage_errors():
            pages = self._deliveries.query_entities(
                "PartitionKey eq @pk", parameters={"pk": escape_key(notification_id)}, results_per_page=top
            ).by_page(continuation_token=continuation)
            async for page in pages:
                async for entity in page:
                    rows.append(_delivery(entity))
                raw = getattr(pages, "continuation_token", None)
                next_token = _encode_token(raw) if raw else None
                break
        return rows, next_token

    async def close(self) -> None:
        await self._headers.close()
        await self._deliveries.close()


def recipient_row(recipient: str) -> str:
    return escape_key(recipient.strip().lower())


def _content_fields(content: dict[str, Any]) -> dict[str, Any]:
    return {"text": content.get("text"), "card": content.get("card"), "summary": content.get("summary")}


def _entity(d: Delivery) -> dict[str, Any]:
    entity: dict[str, Any] = {
        "PartitionKey": escape_key(d.notification_id),
        "RowKey": recipient_row(d.recipient),
        "NotificationId": d.notification_id,
        "Recipient": d.recipient,
        "TenantId": d.tenant_id,
        "State": d.state,
        "ActivityId": d.activity_id or "",
        "ConversationId": d.conversation_id or "",
        "ServiceUrl": d.service_url or "",
        "ErrorCode": d.error_code or "",
        "ErrorMessage": d.error_message or "",
        "ContentFingerprint": d.content_fingerprint or "",
        "ErrorStatus": d.error_status or 0,
        "UpdatedAt": _now(),
    }
    return entity


def _delivery(entity: Any) -> Delivery:
    def text(name: str) -> str | None:
        value = entity.get(name)
        return str(value) if value else None

    state = str(entity.get("State", "pending"))
    return Delivery(
        notification_id=str(entity["NotificationId"]),
        recipient=str(entity["Recipient"]),
        tenant_id=str(entity["TenantId"]),
        state=state if state in ("pending", "sent", "failed", "recalled") else "pending",  # type: ignore[arg-type]
        activity_id=text("ActivityId"),
        conversation_id=text("ConversationId"),
        service_url=text("ServiceUrl"),
        error_code=text("ErrorCode"),
        error_message=text("ErrorMessage"),
        content_fingerprint=text("ContentFingerprint"),
        error_status=int(entity.get("ErrorStatus") or 0) or None,
        etag=str(entity.metadata["etag"]) if getattr(entity, "metadata", None) else None,
    )


def _encode_token(raw: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(raw, separators=(",", ":")).encode()).decode().rstrip("=")


def _decode_token(token: str) -> Any:  # by_page is typed str; the tables SDK takes this dict
    """The Table Storage continuation (``{"PartitionKey": ..., "RowKey": ...}``) a page token carries."""
    invalid = RequestError(
        "continuationToken is not one this API returned.", code="invalid_continuation_token", target="continuationToken"
    )
    try:
        raw = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    except (binascii.Error, ValueError, RecursionError) as err:
        raise invalid from err
    if (
        not isinstance(raw, dict)
        or not raw
        or not set(raw) <= {"PartitionKey", "RowKey"}
        or not all(isinstance(v, str) for v in raw.values())
    ):
        raise invalid
    return {str(k): str(v) for k, v in raw.items()}


# --- sending ------------------------------------------------------------------------------------------


async def send_to_recipient(
    services: Services, header: Header, recipient: str, *, key_source: str = "delivery", wait_seconds: float = 0.0
) -> Delivery:
    """One recipient of a notification, exactly once: skipped when already final (sent, failed,
    recalled), else sent through ``deliver`` keyed by the delivery id and recorded. Only the caller's
    fault (4xx) makes the row ``failed``; a failure on our side or upstream's (5xx) leaves it
    ``pending`` with that error, so a repeat of the request or a replay sends it later. A transient
    failure is recorded on the row (still pending) and raised."""
    from shared.service import deliver, keep_trying

    store = services.notifications
    row = await store.get(header.notification_id, recipient)
    if row is not None and row.state != "pending":
        return row
    request = NotifyRequest.model_validate(
        {
            "recipient": recipient,
            "tenantId": header.tenant_id,
            **{k: v for k, v in _content_fields(header.content.model_dump()).items() if v is not None},
        }
    )
    key = delivery_id(header.notification_id, recipient)
    pending = row or Delivery(header.notification_id, recipient, header.tenant_id, "pending")
    try:
        outcome = await deliver(
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
            await _note(
                store,
                replace(
                    pending, error_code="request_in_progress", error_message="A send is in progress.", error_status=409
                ),
            )
        raise
    except TransientError as err:
        await _note(
            store, replace(pending, error_code=err.code, error_message=err.message, error_status=err.http_status)
        )
        raise
    delivery = delivery_from_outcome(services, pending, outcome)
    if delivery.state == "sent":
        # Teams confirmed it: the row must say so. Storage trouble here is retried (the key already
        # holds the result, so no retry of the request can send again), and the answer reports the
        # send whatever happens to the row.
        written: list[bool] = []

        async def write() -> None:
            written.append(await _note(store, delivery))

        if not await keep_trying(write, "a sent delivery row"):
            return delivery
        if written[-1]:
            return delivery
    elif await _note(store, delivery):
        return delivery
    # The row changed while we sent: a recall of the whole notification marked it. Honour it.
    current = await store.get(header.notification_id, recipient)
    if current is not None and current.state == "recalled":
        if delivery.state == "sent" and delivery.activity_id:
            await _delete_activity(services, delivery)
        return current
    return await store.settle(delivery)


async def _note(store: NotificationStore, row: Delivery) -> bool:
    """Write a row read as ``row.etag`` only if unchanged since (insert-if-absent when it had none)."""
    if row.etag is None:
        return await store.create(row)
    return await store.record(row, if_match=row.etag)


def delivery_from_outcome(services: Services, pending: Delivery, outcome: Outcome) -> Delivery:
    if outcome.sent:
        activity = outcome.body.get("activityId")
        conversation = outcome.body.get("conversationId")
        return replace(
            pending,
            state="sent",
            activity_id=str(activity) if activity else None,
            conversation_id=str(conversation) if conversation else None,
            service_url=outcome.service_url or services.settings.service_url,
            error_code=None,
            error_message=None,
            error_status=None,
        )
    error = outcome.body.get("error")
    error = error if isinstance(error, dict) else {}
    return replace(
        pending,
        # Only the caller's fault is final; ours (configuration) or upstream's stays pending.
        state="failed" if outcome.status < 500 else "pending",
        error_code=str(error.get("code", "notify_error")),
        error_message=str(error.get("message", "")),
        error_status=outcome.status,
    )


async def open_notification(services: Services, request: NotifyRequest, notification_id: str, source: Source) -> Header:
    """Create the notification's header, or find the one a retry of the same request created. An id is
    one notification: the same id from another source (an HTTP key equal to a Service Bus message id),
    for another tenant or with another request is refused (422 ``idempotency_key_reused``)."""
    recipients = request.recipient_list()
    tenant = request.tenant_id or services.settings.tenant_id
    content = NotifyRequest.model_construct(text=request.text, card=request.card, summary=request.summary)
    header = await services.notifications.create_header(
        Header(notification_id, tenant, len(recipients), request.fingerprint(), content, source)
    )
    same_source = header.source in ("", source)
    if header.fingerprint != request.fingerprint() or header.tenant_id != tenant or not same_source:
        raise RequestError(
            "This idempotency key was already used for a different request: use a new key for a new message.",
            code="idempotency_key_reused",
            target="Idempotency-Key" if source == "http" else "messageId",
            http_status=422,
        )
    return header


async def start_notification(
    services: Services, request: NotifyRequest, notification_id: str, source: Source = "http"
) -> Outcome:
    """A request naming ``recipients``: up to SYNC_RECIPIENTS are sent now (200 with one result each);
    more are recorded as pending and returned as fan-out messages (202 + Location)."""
    from shared.service import Outcome

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
        status = _status(notification_id, len(recipients), rows, rows, None)
        retry_after = 5.0 if any(r.state == "pending" for r in rows) else None
        transient = any(r.state == "pending" and not r.needs_operator for r in rows)
        ours = next((r for r in rows if r.needs_operator), None)
        return Outcome(
            200,
            status.model_dump(by_alias=True),
            retry_after=retry_after,
            # Over Service Bus: transient trouble is redelivered; ours alone is kept for a replay.
            operator_error=_error_body(ours) if ours is not None and not transient else None,
        )
    rows = await services.notifications.add_pending(notification_id, tenant, recipients)
    messages = tuple(
        FanOutItem(
            delivery_id=delivery_id(notification_id, r.recipient),
            notification_id=notification_id,
            recipient=r.recipient,
        ).model_dump_json(by_alias=True)
        for r in rows
        if r.state == "pending"
    )
    logger.info("notification queued for %d recipients (%d messages)", len(rows), len(messages))
    status = _status(notification_id, len(recipients), rows, [], None)
    return Outcome(202, status.model_dump(by_alias=True), location=status_location(notification_id), messages=messages)


def _error_body(row: Delivery) -> tuple[int, dict[str, Any]]:
    return row.error_status or 500, {"code": row.error_code or "notify_error", "message": row.error_message or ""}


async def handle_fan_out_item(services: Services, item: FanOutItem, *, wait_seconds: float = 0.0) -> Delivery:
    """One queued per-recipient send. Raises ``TransientError`` to have the message redelivered.
    ``wait_seconds``: how long to wait for the result of another attempt holding the delivery's key."""
    if item.delivery_id != delivery_id(item.notification_id, item.recipient):
        raise RequestError(
            "deliveryId does not match notificationId and recipient.", code="invalid_request", target="deliveryId"
        )
    header = await services.notifications.get_header(item.notification_id)
    if header is None:
        raise RequestError(
            f"Notification '{item.notification_id}' does not exist.",
            code="notification_not_found",
            target="notificationId",
            http_status=404,
        )
    return await send_to_recipient(services, header, item.recipient, wait_seconds=wait_seconds)


async def record_single(services: Services, request: NotifyRequest, notification_id: str, outcome: Outcome) -> None:
    """The delivery row of a single-recipient send (status, update and recall work on it too)."""
    if request.recipient is None:
        return
    tenant = request.tenant_id or services.settings.tenant_id
    pending = Delivery(notification_id, request.recipient, tenant, "pending")
    if outcome.replayed:
        existing = await services.notifications.get(notification_id, request.recipient)
        if existing is not None:
            return
    await services.notifications.settle(delivery_from_outcome(services, pending, outcome), likely_new=True)


# --- status -------------------------------------------------------------------------------------------


async def get_status(
    services: Services, notification_id: str, *, top: int | None, token: str | None
) -> NotificationStatus:
    size = DEFAULT_PAGE if top is None else top
    if not 1 <= size <= MAX_PAGE:
        raise RequestError(f"top must be between 1 and {MAX_PAGE}.", code="invalid_request", target="top")
    store = services.notifications
    header = await store.get_header(notification_id)
    counts = await store.counts(notification_id)
    total = header.total if header is not None else sum(counts.model_dump().values())
    if total == 0:
        sent = delivery_from_handle(notification_id, services.settings.service_url)
        if sent is None:
            raise _not_found(notification_id)
        return _status(notification_id, 1, [sent], [sent], None)
    rows, next_token = await store.page(notification_id, size, token)
    return _status(notification_id, total, None, rows, next_token, counts)


def _status(
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
        counts=counts.model_copy(update={"pending": pending}),
        recipients=[r.result() for r in page],
        continuation_token=token,
    )


def _not_found(notification_id: str) -> RequestError:
    return RequestError(
        f"No notification has the id '{notification_id}'.", code="notification_not_found", target="id", http_status=404
    )


# --- update and recall ----------------------------------------------------------------------------------


async def _targets(services: Services, notification_id: str, recipient: str | None) -> list[Delivery]:
    store = services.notifications
    if recipient is not None:
        row = await store.get(notification_id, recipient)
        if row is None:
            rows = await _rows(services, notification_id)
            if not rows:
                raise _not_found(notification_id)
            row = next((r for r in rows if recipient_row(r.recipient) == recipient_row(recipient)), None)
            if row is None:
                raise RequestError(
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
        sent = delivery_from_handle(notification_id, services.settings.service_url)
        rows = [sent] if sent is not None else []
    return rows


async def update_notification(
    services: Services, notification_id: str, update: UpdateRequest, recipient: str | None = None
) -> tuple[ChangeResponse, float | None]:
    """Replace the sent message in place for one or every recipient. Idempotent: a recipient whose
    message already shows this content is not called again. Returns the per-recipient results and a
    Retry-After when some failed transiently (repeat the same request)."""
    rows = await _targets(services, notification_id, recipient)
    if recipient is None:
        await services.notifications.set_content(notification_id, update)
    fingerprint = update.fingerprint()
    activity = Message(text=update.text, card=update.card, summary=update.summary).activity()

    async def one(row: Delivery) -> ChangeResult:
        if row.state == "recalled":
            return ChangeResult(recipient=row.recipient, outcome="recalled")
        if row.state != "sent" or not row.activity_id or not row.conversation_id:
            return ChangeResult(recipient=row.recipient, outcome="not_sent")
        if row.content_fingerprint == fingerprint:
            return ChangeResult(recipient=row.recipient, outcome="updated")
        try:
            async with services.notifier.throttle.slot():
                await services.connector.update(
                    row.service_url or services.settings.service_url,
                    row.conversation_id,
                    row.activity_id,
                    activity,
                    tenant_id=row.tenant_id,
                )
        except StaleConversationError:
            # The message (or the conversation) is gone: it was deleted.
            await _note(services.notifications, replace(row, state="recalled"))
            return ChangeResult(recipient=row.recipient, outcome="recalled")
        except NotifyError as err:
            return _failed(row, err)
        # ETag match (insert-if-absent for a handle's first row): a recall that ran meanwhile must not
        # be turned back into "sent" by this write.
        if not await _note(services.notifications, replace(row, content_fingerprint=fingerprint)):
            current = await services.notifications.get(notification_id, row.recipient)
            if current is not None and current.state == "recalled":
                return ChangeResult(recipient=row.recipient, outcome="recalled")
            if current is not None and current.state == "sent" and current.activity_id == row.activity_id:
                await services.notifications.record(
                    replace(current, content_fingerprint=fingerprint), if_match=current.etag
                )
        return ChangeResult(recipient=row.recipient, outcome="updated")

    return await _apply(notification_id, rows, one)


async def recall_notification(
    services: Services, notification_id: str, recipient: str | None = None
) -> tuple[ChangeResponse, float | None]:
    """Delete the sent message for one or every recipient; recipients still pending are marked
    recalled so they are never sent. Idempotent: a second recall calls nothing and succeeds."""
    rows = await _targets(services, notification_id, recipient)

    async def one(row: Delivery) -> ChangeResult:
        if row.state == "recalled":
            return ChangeResult(recipient=row.recipient, outcome="recalled")
        if row.state == "pending":
            if await services.notifications.record(replace(row, state="recalled"), if_match=row.etag):
                return ChangeResult(recipient=row.recipient, outcome="recalled")
            current = await services.notifications.get(notification_id, row.recipient)
            if current is None or current.state != "sent":
                return ChangeResult(recipient=row.recipient, outcome="not_sent")
            row = current
        if row.state != "sent" or not row.activity_id or not row.conversation_id:
            return ChangeResult(recipient=row.recipient, outcome="not_sent")
        try:
            await _delete_activity(services, row)
        except NotifyError as err:
            return _failed(row, err)
        # The message is deleted: "recalled" is right whatever changed meanwhile (an update's write),
        # so a lost ETag race is settled by writing it over the row as it is now.
        while not await _note(services.notifications, replace(row, state="recalled")):
            current = await services.notifications.get(notification_id, row.recipient)
            if current is None or current.state == "recalled":
                break
            row = current
        return ChangeResult(recipient=row.recipient, outcome="recalled")

    return await _apply(notification_id, rows, one)


async def _delete_activity(services: Services, row: Delivery) -> None:
    assert row.activity_id is not None and row.conversation_id is not None
    async with services.notifier.throttle.slot():
        try:
            await services.connector.delete(
                row.service_url or services.settings.service_url,
                row.conversation_id,
                row.activity_id,
                tenant_id=row.tenant_id,
            )
        except StaleConversationError:
            pass  # the conversation is gone, and the message with it


def _failed(row: Delivery, err: NotifyError) -> ChangeResult:
    log = logger.info if isinstance(err, RecipientError) else logger.warning
    log("change for %s failed: %s", recipient_hash(row.tenant_id, row.recipient), err.code)
    return ChangeResult(
        recipient=row.recipient,
        outcome="failed",
        error=ErrorDetail(code=err.code, message=err.message, target=err.target),
    )


async def _apply(notification_id: str, rows: list[Delivery], one: Any) -> tuple[ChangeResponse, float | None]:
    """Run ``one`` for every row, at most ``_APPLY_CONCURRENCY`` at a time (a 10,000-recipient change
    does not start 10,000 coroutines of storage reads at once); an error of one recipient (a storage
    blip while recording it) is reported for that recipient, not raised for all."""
    gate = asyncio.Semaphore(_APPLY_CONCURRENCY)

    async def bounded(row: Delivery) -> ChangeResult:
        async with gate:
            result: ChangeResult = await one(row)
            return result

    outcomes = await asyncio.gather(*(bounded(r) for r in rows), return_exceptions=True)
    results: list[ChangeResult] = []
    for row, outcome in zip(rows, outcomes, strict=True):
        if isinstance(outcome, ChangeResult):
            results.append(outcome)
        elif isinstance(outcome, NotifyError):
            results.append(_failed(row, outcome))
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
    retry_after = 5.0 if transient else None
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

__all__ = [
    "ChangeOutcome",
    "Delivery",
    "Header",
    "NotificationStore",
    "delivery_from_handle",
    "delivery_id",
    "get_status",
    "handle_fan_out_item",
    "new_notification_id",
    "notification_id_for",
    "open_notification",
    "recall_notification",
    "record_single",
    "send_to_recipient",
    "single_send_handle",
    "start_notification",
    "update_notification",
]
