"""The Azure Functions app (Python v2 programming model): triggers only.

Each function parses its input, calls one library function in shared/, and maps the outcome to its
transport. Nothing is built at import time: shared.bootstrap builds the clients on first use.

| function      | trigger                                          | library call                      |
| ------------- | ------------------------------------------------ | --------------------------------- |
| notify        | HTTP POST /api/notify (function key)             | shared.service.handle_notify      |
| notify_queue  | Service Bus %ServiceBusQueueName% (ServiceBusConnection) | shared.service.handle_queue_message |
| messages      | HTTP POST /api/messages (anonymous; Bot Framework JWT) | shared.inbound.handle_activity |
| health        | HTTP GET /api/health (anonymous)                 | shared.health.check_health        |
"""

from __future__ import annotations

import json

import azure.functions as func

from shared.errors import NotifyError, TransientError  # no dependencies: cheap to import

# The library (httpx, pydantic, MSAL, azure-data-tables, botframework-connector) is imported by each
# function on its first invocation, not when the host indexes the functions: cold start (indexing)
# pays only for azure.functions. After the first call the import statement is a dict lookup.

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


@app.function_name("notify")
@app.route(route="notify", methods=["POST"], auth_level=func.AuthLevel.FUNCTION)
async def notify(req: func.HttpRequest) -> func.HttpResponse:
    from shared.service import handle_notify

    outcome = await handle_notify(
        req.get_body(),
        content_type=req.headers.get("content-type"),
        idempotency_key=req.headers.get("idempotency-key"),
        correlation_id=req.headers.get("x-correlation-id") or req.headers.get("x-ms-client-tracking-id"),
    )
    headers = {"x-correlation-id": outcome.correlation_id or ""}
    if outcome.retry_after is not None:
        headers["Retry-After"] = str(max(1, round(outcome.retry_after)))
    if outcome.replayed:
        headers["Idempotent-Replayed"] = "true"
    return func.HttpResponse(
        json.dumps(outcome.body), status_code=outcome.status, headers=headers, mimetype="application/json"
    )


@app.function_name("notify_queue")
@app.service_bus_queue_trigger(arg_name="msg", queue_name="%ServiceBusQueueName%", connection="ServiceBusConnection")
async def notify_queue(msg: func.ServiceBusMessage) -> None:
    from shared.service import QueueDelivery, handle_queue_message

    # Returning completes the message (host.json autoCompleteMessages); raising abandons it, so
    # Service Bus redelivers it and dead-letters it after the queue's maxDeliveryCount.
    await handle_queue_message(
        QueueDelivery(
            body=msg.get_body(),
            message_id=msg.message_id,
            delivery_count=msg.delivery_count,
            enqueued_time=msg.enqueued_time_utc,
            correlation_id=msg.correlation_id,
        )
    )


@app.function_name("messages")
@app.route(route="messages", methods=["POST"], auth_level=func.AuthLevel.ANONYMOUS)
async def messages(req: func.HttpRequest) -> func.HttpResponse:
    """Bot Framework activities from Teams. Anonymous at the function level: the channel's JWT in the
    Authorization header is the authentication (401 without a valid one)."""
    from shared.bootstrap import get_services
    from shared.inbound import handle_activity

    try:
        await handle_activity(get_services(), req.headers.get("Authorization"), req.get_body())
    except NotifyError as err:
        headers = {"WWW-Authenticate": "Bearer"} if err.http_status == 401 else {}
        if isinstance(err, TransientError):
            headers["Retry-After"] = str(max(1, round(err.retry_after)))
        return func.HttpResponse(
            json.dumps(err.to_body()), status_code=err.http_status, headers=headers, mimetype="application/json"
        )
    return func.HttpResponse(status_code=200)


# --- operations: GET /api/health (issue 7) ------------------------------------------------------


@app.function_name("health")
@app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def health(req: func.HttpRequest) -> func.HttpResponse:
    """Liveness and readiness (settings, Table Storage): shared.health.check_health. No secrets, no tenant data."""
    from shared.health import check_health

    report = await check_health()
    return func.HttpResponse(
        json.dumps(report.to_body()),
        status_code=report.status_code,
        mimetype="application/json",
        headers={"Cache-Control": "no-store"},
    )
