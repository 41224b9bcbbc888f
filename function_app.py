"""The Azure Functions app (Python v2 programming model): triggers only.

Each function parses its input, calls one library function in shared/, and maps the outcome to its
transport: every HTTP function gets an ``Outcome`` from shared.service (whose ``answer`` is the one
error boundary) and renders it with ``_response``. Nothing is built at import time: shared.bootstrap
builds the clients on first use, and each function imports the library inside its body, so indexing
the app (``import function_app`` + ``app.get_functions()``, the host's cold start) loads neither httpx,
msgspec, MSAL nor the Azure SDKs.

| function            | trigger                                                  | library call                        |
| ------------------- | -------------------------------------------------------- | ----------------------------------- |
| notify              | HTTP POST /api/notify (function key)                     | service.handle_notify               |
| notification_create | HTTP POST /api/notifications (function key)              | service.handle_notify_many          |
| notify_queue        | Service Bus %ServiceBusQueueName% (ServiceBusConnection) | queue_delivery.handle_queue_message |
| notification_status | HTTP GET /api/notifications/{id}                         | service.handle_status               |
| notification_update | HTTP PUT /api/notifications/{id}                         | service.handle_update               |
| notification_recall | HTTP DELETE /api/notifications/{id}                      | service.handle_recall               |
| messages            | HTTP POST /api/messages (anonymous; Bot Framework JWT)   | service.handle_messages             |
| health              | HTTP GET /api/health (anonymous)                         | service.handle_health               |
| retention           | timer, daily 02:30 UTC                                   | shared.retention.run_retention      |

The HTTP API (notify, status, update, recall) needs a function key, or, with ApiAuthMode EntraId, an
Entra ID bearer token that the library checks (shared.callerauth).

notify, notification_create and notify_queue also have a Service Bus OUTPUT binding to the same queue: a notification to
more recipients than are sent inline is spread as one message per recipient. The Python worker's
Service Bus output accepts only a str/bytes body (no message id, no list), so the bodies are set as
one JSON array, which the host writes as one message per element; each element carries its
deterministic ``deliveryId``, the idempotency key of that recipient's send.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import azure.functions as func

from shared.authmode import api_auth_mode

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from shared.service import Outcome

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)

# Who may call the HTTP API (ApiAuthMode, shared.callerauth): with function keys the host checks the
# key; with Entra ID the host lets the request in and the app checks the bearer token and app role.
API_AUTH = func.AuthLevel.ANONYMOUS if api_auth_mode() == "EntraId" else func.AuthLevel.FUNCTION


def _response(outcome: Outcome) -> func.HttpResponse:
    """Every HTTP function's answer: the library's ``Outcome`` (shared.service) as an HttpResponse."""
    headers: dict[str, str] = {}
    if outcome.correlation_id is not None:
        headers["x-correlation-id"] = outcome.correlation_id
    if outcome.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(outcome.retry_after)))
    if outcome.replayed:
        headers["Idempotent-Replayed"] = "true"
    if outcome.location is not None:
        headers["Location"] = outcome.location
    if outcome.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if outcome.no_store:
        headers["Cache-Control"] = "no-store"
    if outcome.body is None:
        return func.HttpResponse(status_code=outcome.status, headers=headers)
    return func.HttpResponse(
        json.dumps(outcome.body), status_code=outcome.status, headers=headers, mimetype="application/json"
    )


def _correlation_id(req: func.HttpRequest) -> str | None:
    return req.headers.get("x-correlation-id") or req.headers.get("x-ms-client-tracking-id")


def _emit(out: func.Out[str], messages: tuple[str, ...]) -> None:
    if messages:
        out.set("[" + ",".join(messages) + "]")


async def _send(
    handler: Callable[..., Awaitable[Outcome]], req: func.HttpRequest, fanout: func.Out[str]
) -> func.HttpResponse:
    """A send request (POST /api/notify, /api/notifications) to its handler and back; fan-out to the queue."""
    outcome = await handler(
        req.get_body(),
        content_type=req.headers.get("content-type"),
        idempotency_key=req.headers.get("idempotency-key"),
        correlation_id=_correlation_id(req),
        authorization=req.headers.get("Authorization"),
    )
    _emit(fanout, outcome.messages)
    return _response(outcome)


@app.function_name("notify")
@app.route(route="notify", methods=["POST"], auth_level=API_AUTH)
@app.service_bus_queue_output(arg_name="fanout", queue_name="%ServiceBusQueueName%", connection="ServiceBusConnection")
async def notify(req: func.HttpRequest, fanout: func.Out[str]) -> func.HttpResponse:
    from shared.service import handle_notify

    return await _send(handle_notify, req, fanout)


@app.function_name("notification_create")
@app.route(route="notifications", methods=["POST"], auth_level=API_AUTH)
@app.service_bus_queue_output(arg_name="fanout", queue_name="%ServiceBusQueueName%", connection="ServiceBusConnection")
async def notification_create(req: func.HttpRequest, fanout: func.Out[str]) -> func.HttpResponse:
    """Many recipients for Power Automate: always answers at once with the id (no async polling)."""
    from shared.service import handle_notify_many

    return await _send(handle_notify_many, req, fanout)


@app.function_name("notify_queue")
@app.service_bus_queue_trigger(arg_name="msg", queue_name="%ServiceBusQueueName%", connection="ServiceBusConnection")
@app.service_bus_queue_output(arg_name="fanout", queue_name="%ServiceBusQueueName%", connection="ServiceBusConnection")
async def notify_queue(msg: func.ServiceBusMessage, fanout: func.Out[str]) -> None:
    # Returning completes the message (host.json autoCompleteMessages); raising abandons it, so
    # Service Bus redelivers it and dead-letters it after the queue's maxDeliveryCount.
    from shared.queue_delivery import QueueDelivery, handle_queue_message

    outcome = await handle_queue_message(
        QueueDelivery(
            body=msg.get_body(),
            message_id=msg.message_id,
            delivery_count=msg.delivery_count,
            enqueued_time=msg.enqueued_time_utc,
            correlation_id=msg.correlation_id,
        )
    )
    _emit(fanout, outcome.messages)


@app.function_name("notification_status")
@app.route(route="notifications/{id}", methods=["GET"], auth_level=API_AUTH)
async def notification_status(req: func.HttpRequest) -> func.HttpResponse:
    from shared.service import handle_status

    outcome = await handle_status(
        req.route_params["id"],
        top=req.params.get("top"),
        continuation_token=req.params.get("continuationToken"),
        correlation_id=_correlation_id(req),
        authorization=req.headers.get("Authorization"),
    )
    return _response(outcome)


@app.function_name("notification_update")
@app.route(route="notifications/{id}", methods=["PUT"], auth_level=API_AUTH)
async def notification_update(req: func.HttpRequest) -> func.HttpResponse:
    from shared.service import handle_update

    outcome = await handle_update(
        req.route_params["id"],
        req.get_body(),
        content_type=req.headers.get("content-type"),
        recipient=req.params.get("recipient"),
        correlation_id=_correlation_id(req),
        authorization=req.headers.get("Authorization"),
    )
    return _response(outcome)


@app.function_name("notification_recall")
@app.route(route="notifications/{id}", methods=["DELETE"], auth_level=API_AUTH)
async def notification_recall(req: func.HttpRequest) -> func.HttpResponse:
    from shared.service import handle_recall

    outcome = await handle_recall(
        req.route_params["id"],
        recipient=req.params.get("recipient"),
        correlation_id=_correlation_id(req),
        authorization=req.headers.get("Authorization"),
    )
    return _response(outcome)


@app.function_name("messages")
@app.route(route="messages", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
async def messages(req: func.HttpRequest) -> func.HttpResponse:
    """Bot Framework activities from Teams. Anonymous at the function level: the channel's JWT in the
    Authorization header is the authentication (401 without a valid one)."""
    from shared.service import handle_messages

    return _response(await handle_messages(req.get_body(), authorization=req.headers.get("Authorization")))


# --- personal data retention (issue 17) ---------------------------------------------------------


@app.function_name("retention")
@app.timer_trigger(arg_name="timer", schedule="0 30 2 * * *", run_on_startup=False, use_monitor=True)
async def retention(timer: func.TimerRequest) -> None:
    """Daily at 02:30 UTC: delete rows older than their table's retention (shared.retention.purge)."""
    from shared.retention import run_retention

    await run_retention()


# --- operations: GET /api/health (issue 7) ------------------------------------------------------


@app.function_name("health")
@app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def health(req: func.HttpRequest) -> func.HttpResponse:
    """Liveness and readiness (settings, Table Storage): shared.health.check_health. No secrets, no tenant data."""
    from shared.service import handle_health

    return _response(await handle_health())
