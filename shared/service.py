"""The HTTP edge: ``POST /api/notify``, ``POST /api/notifications`` and
``GET/PUT/DELETE /api/notifications/{id}``, each a request -> an ``Outcome`` (status, JSON body,
Retry-After, correlation id) that function_app.py turns into an HttpResponse. Each first authenticates
its caller (shared.callerauth, ``ApiAuthMode``) and acts as it for the rest of the invocation. The use
cases below return typed results (shared.results); their HTTP statuses and bodies are rendered here.

An in-flight repeat over HTTP waits briefly (``Waits.http_in_flight``) for the first attempt's
result and returns it; if the first attempt is still sending after that, it answers 409
``request_in_progress`` with Retry-After.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from shared.bootstrap import Services, get_services
from shared.callerauth import act_as, owner_id
from shared.delivery import deliver
from shared.errors import InvalidRequestError, NotifyError
from shared.fanout import delivery_from_result, record_single_best_effort, send_single, start_notification
from shared.lifecycle import get_status, recall_notification, update_notification
from shared.logcontext import accept_correlation_id, correlation
from shared.notification_ids import new_notification_id, notification_id_for, single_send_handle, status_location
from shared.request_models import NotifyRequest, parse_notify_request, parse_update_request
from shared.response_models import to_body
from shared.results import FanOut, Refused, SendOutcome, Sent
from shared.storage.idempotency import check_key
from shared.storage.notifications import Delivery

logger = logging.getLogger(__name__)


class Outcome(msgspec.Struct, frozen=True):
    """One HTTP answer, as function_app renders it."""

    status: int
    body: dict[str, Any] | None  # None: an empty body (the bot's messaging endpoint)
    retry_after: float | None = None
    replayed: bool = False  # the recorded result of an earlier attempt, nothing sent now
    correlation_id: str | None = None
    location: str | None = None  # 202: where to poll the notification's status
    # Fan-out: bodies of the per-recipient Service Bus messages the trigger's output binding writes.
    messages: tuple[str, ...] = ()
    no_store: bool = False  # Cache-Control: no-store (health)


def error_outcome(err: NotifyError) -> Outcome:
    return refused_outcome(Refused.of(err))


def refused_outcome(refused: Refused) -> Outcome:
    return Outcome(refused.status, refused.body(), retry_after=refused.retry_after, replayed=refused.replayed)


def send_outcome(result: SendOutcome) -> Outcome:
    if isinstance(result, Refused):
        return refused_outcome(result)
    return Outcome(200, result.body(), replayed=result.replayed)


async def answer(what: str, work: Callable[[], Awaitable[Outcome]]) -> Outcome:
    """The one error boundary of the HTTP functions: a ``NotifyError`` becomes its error answer
    (logged with its code), anything else a logged 500 ``internal_error`` that says nothing more."""
    try:
        return await work()
    except NotifyError as err:
        log = logger.warning if err.http_status >= 500 else logger.info
        log("%s request failed: %s (target %s, HTTP %d)", what, err.code, err.target, err.http_status)
        return error_outcome(err)
    except Exception:
        logger.exception("%s request failed unexpectedly", what)
        return Outcome(500, {"error": {"code": "internal_error", "message": "Unexpected error; it has been logged."}})


def fan_out_outcome(fanned: FanOut) -> Outcome:
    """200 with every recipient's result, or 202 + Location when recipients were queued."""
    body = to_body(fanned.status)
    if fanned.queued:
        location = status_location(fanned.status.notification_id)
        return Outcome(202, body, location=location, messages=fanned.messages)
    return Outcome(200, body, retry_after=fanned.retry_after)


async def _authenticate(services: Services, authorization: str | None, what: str, cid: str) -> None:
    """Who is calling (shared.callerauth); logged with the request's correlation id. Raises 401/403."""
    caller = await services.caller_auth.authenticate(authorization)
    act_as(caller)
    logger.info("%s request %s from %s", what, cid, caller)


async def handle_notify(
    body: bytes,
    *,
    content_type: str | None,
    idempotency_key: str | None = None,
    correlation_id: str | None = None,
    authorization: str | None = None,
) -> Outcome:
    """``POST /api/notify``: authenticate the caller, validate, send at most once per Idempotency-Key,
    map every failure to an error body. Never raises for a request it can answer."""
    cid = accept_correlation_id(correlation_id)

    async def work() -> Outcome:
        services = get_services()
        await _authenticate(services, authorization, "notify", cid)
        request = parse_notify_request(body, content_type)
        key = check_key(idempotency_key) if idempotency_key is not None else None
        notification_id = notification_id_for(key) if key is not None else new_notification_id()
        if request.recipients is not None:
            return fan_out_outcome(await start_notification(services, request, notification_id, "http"))
        if key is None:
            result = await deliver(services, request, source="http", key=None, record_failures=True)
            return await _identify_unkeyed(services, request, notification_id, result)
        result = await send_single(
            services,
            request,
            notification_id,
            source="http",
            key=key,
            record_failures=True,
            wait_seconds=services.waits.http_in_flight,
        )
        return send_outcome(result)

    with correlation(cid):
        return msgspec.structs.replace(await answer("notify", work), correlation_id=cid)


async def handle_notify_many(
    body: bytes,
    *,
    content_type: str | None,
    idempotency_key: str | None = None,
    correlation_id: str | None = None,
    authorization: str | None = None,
) -> Outcome:
    """``POST /api/notifications``, the Power Automate connector's many-recipient action: the request of
    ``POST /api/notify`` with ``recipients``, answered at once with the notification's id and status.
    Queued recipients answer 200 too (``finished`` false) with no Location: a 202 with a Location would
    start Power Automate's asynchronous polling; a flow follows with GET /api/notifications/{id}."""
    try:
        request = parse_notify_request(body, content_type)
    except NotifyError:
        request = None  # handle_notify answers it, with the same error
    if request is not None and request.recipients is None:
        cid = accept_correlation_id(correlation_id)
        with correlation(cid):
            try:  # an unauthenticated caller learns nothing about its body
                await _authenticate(get_services(), authorization, "notify", cid)
            except NotifyError as auth_err:
                return msgspec.structs.replace(error_outcome(auth_err), correlation_id=cid)
        err = InvalidRequestError(
            "This operation sends to recipients (a list of users); use POST /api/notify for one recipient.",
            code="invalid_request",
            target="recipients",
        )
        return msgspec.structs.replace(error_outcome(err), correlation_id=cid)
    outcome = await handle_notify(
        body,
        content_type=content_type,
        idempotency_key=idempotency_key,
        correlation_id=correlation_id,
        authorization=authorization,
    )
    if outcome.status == 202:
        return msgspec.structs.replace(outcome, status=200, location=None)
    return outcome


async def _identify_unkeyed(
    services: Services, request: NotifyRequest, notification_id: str, result: SendOutcome
) -> Outcome:
    """A single send without a key: a sent one gets a self-contained id (no storage write on the hot
    path); one that cannot (see ``single_send_handle``) gets ``notification_id`` and a row, as before.
    A failure names no id, so it needs no row."""
    if not isinstance(result, Sent) or request.recipient is None:
        return send_outcome(result)
    tenant = request.tenant_id or services.settings.tenant_id
    sent = delivery_from_result(services, Delivery("", request.recipient, tenant, "pending"), result)
    handle = single_send_handle(sent, services.settings.service_url, await services.signing.signer(), owner_id())
    if handle is None:
        await record_single_best_effort(services, request, notification_id, result)
    # The id goes last, after the answer's other fields (activityId included).
    return Outcome(200, {**result.body(), "notificationId": handle or notification_id}, replayed=result.replayed)


# --- /api/notifications/{id} -------------------------------------------------------------------------


async def _answer(
    correlation_id: str | None,
    work: Callable[[Services], Awaitable[Outcome]],
    authorization: str | None,
    what: str,
) -> Outcome:
    cid = accept_correlation_id(correlation_id)

    async def authenticated() -> Outcome:
        services = get_services()
        await _authenticate(services, authorization, what, cid)
        return await work(services)

    with correlation(cid):
        return msgspec.structs.replace(await answer("notification", authenticated), correlation_id=cid)


def _int_param(value: str | None, name: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise InvalidRequestError(f"{name} must be an integer.", code="invalid_request", target=name) from None


async def handle_status(
    notification_id: str,
    *,
    top: str | None = None,
    continuation_token: str | None = None,
    correlation_id: str | None = None,
    authorization: str | None = None,
) -> Outcome:
    """``GET /api/notifications/{id}``: counts by state and one page of recipients."""

    async def work(services: Services) -> Outcome:
        status = await get_status(
            services, notification_id, top=_int_param(top, "top"), token=continuation_token or None
        )
        return Outcome(200, to_body(status))

    return await _answer(correlation_id, work, authorization, "status")


async def handle_update(
    notification_id: str,
    body: bytes,
    *,
    content_type: str | None,
    recipient: str | None = None,
    correlation_id: str | None = None,
    authorization: str | None = None,
) -> Outcome:
    """``PUT /api/notifications/{id}[?recipient=]``: update the sent message in place."""

    async def work(services: Services) -> Outcome:
        update = parse_update_request(body, content_type)
        response, retry_after = await update_notification(services, notification_id, update, recipient or None)
        return Outcome(200, to_body(response), retry_after=retry_after)

    return await _answer(correlation_id, work, authorization, "update")


async def handle_recall(
    notification_id: str,
    *,
    recipient: str | None = None,
    correlation_id: str | None = None,
    authorization: str | None = None,
) -> Outcome:
    """``DELETE /api/notifications/{id}[?recipient=]``: recall (delete) the sent message."""

    async def work(services: Services) -> Outcome:
        response, retry_after = await recall_notification(services, notification_id, recipient or None)
        return Outcome(200, to_body(response), retry_after=retry_after)

    return await _answer(correlation_id, work, authorization, "recall")


# --- /api/messages, /api/health ------------------------------------------------------------------


async def handle_messages(body: bytes, *, authorization: str | None) -> Outcome:
    """``POST /api/messages``: one Bot Framework activity from Teams (shared.inbound), answered 200
    with an empty body; the channel's JWT is the authentication (401 without a valid one)."""
    from shared.inbound import handle_activity

    async def work() -> Outcome:
        await handle_activity(get_services(), authorization, body)
        return Outcome(200, None)

    return await answer("messages", work)


async def handle_health() -> Outcome:
    """``GET /api/health``: liveness and readiness (shared.health), never cached."""
    from shared.health import check_health

    async def work() -> Outcome:
        report = await check_health()
        body: dict[str, Any] = {"status": "ok" if report.ok else "unavailable", "checks": report.checks}
        failed = report.failed()
        if failed:
            body["error"] = {"code": failed[0]}
        return Outcome(200 if report.ok else 503, body, no_store=True)

    return await answer("health", work)
