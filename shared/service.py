"""The HTTP use cases: ``POST /api/notify``, ``POST /api/notifications`` and
``GET/PUT/DELETE /api/notifications/{id}``, each a request -> an ``Outcome`` (status, JSON body,
Retry-After, correlation id) that function_app.py turns into an HttpResponse. Each first authenticates
its caller (shared.callerauth, ``ApiAuthMode``) and acts as it for the rest of the invocation.

An in-flight repeat over HTTP waits briefly (``IN_FLIGHT_WAIT_SECONDS``) for the first attempt's
result and returns it; if the first attempt is still sending after that, it answers 409
``request_in_progress`` with Retry-After.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

from shared.bootstrap import Services, get_services
from shared.callerauth import act_as, owner_id
from shared.delivery import Outcome, deliver, error_outcome
from shared.errors import InvalidRequestError, NotifyError
from shared.fanout import delivery_from_outcome, open_notification, record_single_best_effort, start_notification
from shared.lifecycle import get_status, recall_notification, update_notification
from shared.logcontext import accept_correlation_id, correlation
from shared.models import NotifyRequest, parse_notify_request, parse_update_request
from shared.notification_ids import new_notification_id, notification_id_for, single_send_handle
from shared.storage.idempotency import check_key
from shared.storage.notifications import Delivery

logger = logging.getLogger(__name__)

IN_FLIGHT_WAIT_SECONDS = 5.0


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
    with correlation(cid):
        try:
            services = get_services()
            await _authenticate(services, authorization, "notify", cid)
            request = parse_notify_request(body, content_type)
            key = check_key(idempotency_key) if idempotency_key is not None else None
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
                    await record_single_best_effort(services, request, notification_id, outcome)
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
                return replace(error_outcome(auth_err), correlation_id=cid)
        err = InvalidRequestError(
            "This operation sends to recipients (a list of users); use POST /api/notify for one recipient.",
            code="invalid_request",
            target="recipients",
        )
        return replace(error_outcome(err), correlation_id=cid)
    outcome = await handle_notify(
        body,
        content_type=content_type,
        idempotency_key=idempotency_key,
        correlation_id=correlation_id,
        authorization=authorization,
    )
    if outcome.status == 202:
        return replace(outcome, status=200, location=None)
    return outcome


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
    handle = single_send_handle(sent, services.settings.service_url, await services.signing.signer(), owner_id())
    if handle is None:
        await record_single_best_effort(services, request, notification_id, outcome)
    return replace(outcome, body={**outcome.body, "notificationId": handle or notification_id})


# --- /api/notifications/{id} -------------------------------------------------------------------------


async def _answer(correlation_id: str | None, work: Any, authorization: str | None, what: str) -> Outcome:
    cid = accept_correlation_id(correlation_id)
    with correlation(cid):
        try:
            services = get_services()
            await _authenticate(services, authorization, what, cid)
            outcome: Outcome = await work(services)
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
        return Outcome(200, status.model_dump(by_alias=True))

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
        return Outcome(200, response.model_dump(by_alias=True), retry_after=retry_after)

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
        return Outcome(200, response.model_dump(by_alias=True), retry_after=retry_after)

    return await _answer(correlation_id, work, authorization, "recall")
